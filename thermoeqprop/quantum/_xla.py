"""Work around a hang of jaxlib 0.10.2's XLA:CPU scheduler (see the package docstring)."""

import os as _os

__all__ = ["avoid_xla_cpu_scheduler_hang"]

_FLAGS = (
    ("xla_cpu_enable_concurrency_optimized_scheduler", "false"),
    ("xla_cpu_multi_thread_eigen", "false"),
)


def avoid_xla_cpu_scheduler_hang() -> None:
    if _os.environ.get("THERMOEQPROP_KEEP_XLA_FLAGS") == "1":
        return
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        return
    flags = _os.environ.get("XLA_FLAGS", "")
    for name, value in _FLAGS:
        if name not in flags:
            flags = f"{flags} --{name}={value}".strip()
    _os.environ["XLA_FLAGS"] = flags


avoid_xla_cpu_scheduler_hang()
