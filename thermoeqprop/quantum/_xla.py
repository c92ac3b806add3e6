"""Work around a hang of jaxlib 0.10.2's XLA:CPU scheduler (see the package docstring)."""

import os as _os

__all__ = ["avoid_xla_cpu_scheduler_hang"]


def avoid_xla_cpu_scheduler_hang() -> None:
    if _os.environ.get("THERMOEQPROP_KEEP_XLA_FLAGS") == "1":
        return
    flags = _os.environ.get("XLA_FLAGS", "")
    if "concurrency_optimized_scheduler" in flags:
        return
    from jax._src import xla_bridge

    if not xla_bridge.backends_are_initialized():
        flag = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
        _os.environ["XLA_FLAGS"] = f"{flags} {flag}".strip()


avoid_xla_cpu_scheduler_hang()
