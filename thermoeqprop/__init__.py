"""thermoeqprop: equilibrium propagation at zero and finite temperature, classical and quantum.

Importing the package turns on JAX's 64-bit mode (as NetKet does): exact references and
quantum computations need float64, and mixing precisions silently is worse than the cost.
Set ``THERMOEQPROP_X64=0`` before import to keep JAX's float32 default for throughput.

It also splits the CPU into one XLA device per core (at most 4), unless a count was given
to JAX (``JAX_NUM_CPU_DEVICES``, ``XLA_FLAGS``' ``--xla_force_host_platform_device_count``) or
its CPU backend has already started: ``samplers.sample`` shards the examples (or chains) of a
thermal estimate over the devices and each device runs its own sampler loops
(``jax.shard_map``), so the chains' many small sequential steps run on every core instead of
one. ``THERMOEQPROP_CPU_DEVICES=N`` sets the count; 1 keeps a single CPU device. Importing
``samplers`` alone leaves JAX's device count as it is.
"""

import os


def _cpu_devices() -> int:
    """The number of CPU devices to ask XLA for (``THERMOEQPROP_CPU_DEVICES``, default auto)."""
    value = os.environ.get("THERMOEQPROP_CPU_DEVICES", "auto").strip()
    if value == "auto":
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cores = os.cpu_count() or 1
        return max(1, min(cores, 4))
    if not value.isdigit() or int(value) < 1:
        raise ValueError(
            f"THERMOEQPROP_CPU_DEVICES must be 'auto' or an integer >= 1, got {value!r}"
        )
    return int(value)


def _split_the_cpu() -> None:
    # JAX's ``jax_num_cpu_devices`` takes effect only before its CPU backend starts (its first
    # computation); afterwards it raises, and the count stays what it was. A count set by the
    # user (JAX_NUM_CPU_DEVICES, the config, or XLA's own flag) is left alone.
    count = _cpu_devices()
    if (
        count > 1
        and jax.config.jax_num_cpu_devices < 0
        and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", "")
    ):
        try:
            jax.config.update("jax_num_cpu_devices", count)
        except RuntimeError:  # the backend has already started
            pass


import jax  # noqa: E402

_split_the_cpu()

if os.environ.get("THERMOEQPROP_X64", "1") != "0":
    jax.config.update("jax_enable_x64", True)

from thermoeqprop._protocols import Estimator, Model  # noqa: E402
from thermoeqprop._result import GradientEstimate  # noqa: E402

__version__ = "0.1.0"

__all__ = ["Estimator", "GradientEstimate", "Model", "__version__"]
