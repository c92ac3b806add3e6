"""What produced a run: the package's version and the environment it ran in.

Every results folder's ``config.json`` records :func:`run_environment` under the key
``"environment"`` (docs/design.md, section "Results folders"). Those facts describe the
invocation, not the configuration: resuming a run under another version is allowed, and the
record then holds the facts of the invocation that wrote it last. The JAX backend and device
count are compared (:class:`thermoeqprop.results.RunFolder`): a sampled estimate is sharded
over the devices, its rounding follows them, and a resume on other devices is refused.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

__all__ = ["ENVIRONMENT_KEY", "package_version", "run_environment"]

#: The key of :func:`run_environment` in ``config.json``; ignored when configs are compared.
ENVIRONMENT_KEY = "environment"


def _distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def package_version() -> str:
    """The installed distribution's version, or the source tree's ``__version__``.

    ``importlib.metadata`` answers for an installed (or editable) ``thermoeqprop``; a source
    checkout put on ``sys.path`` without installing falls back to
    ``thermoeqprop.__version__``.
    """
    version = _distribution_version("thermoeqprop")
    if version is not None:
        return version
    from thermoeqprop import __version__

    return __version__


def run_environment() -> dict[str, Any]:
    """JSON-friendly facts of this process: package, JAX and NumPyro versions, devices.

    Example:
        >>> sorted(run_environment())
        ['device_count', 'jax', 'jax_backend', 'jaxlib', 'numpyro', 'python', 'thermoeqprop']
    """
    import platform

    import jax

    return {
        "thermoeqprop": package_version(),
        "jax": jax.__version__,
        "jaxlib": _distribution_version("jaxlib"),
        "numpyro": _distribution_version("numpyro"),
        "python": platform.python_version(),
        "jax_backend": jax.default_backend(),
        "device_count": jax.device_count(),
    }
