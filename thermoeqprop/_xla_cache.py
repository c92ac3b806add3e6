"""The commands' persistent XLA compilation cache (docs/cli/index.md, "What every command
shares", "Compilation cache").

Most of a thermal run's first epoch is compilation: the default ``thermoeqprop train``'s first
epoch took 40 s against 6–9 s for a later one, and a resumed run compiled it all again. Each
command therefore keeps the programs that took more than :data:`MIN_COMPILE_SECONDS` to
compile in a cache on disk (JAX's persistent compilation cache), so that the next run with
the same shapes loads them: the first epoch of a second one-epoch ``train`` took 20 s instead
of 40 s (run of 2026-12-06). A loaded executable is the one compiled, so no result changes.

Where: ``THERMOEQPROP_XLA_CACHE`` (a folder, or ``off``), else
``$XDG_CACHE_HOME/thermoeqprop/xla`` (``~/.cache/thermoeqprop/xla``). A cache the user set for
JAX itself (``JAX_COMPILATION_CACHE_DIR``) is left alone. At most :data:`MAX_BYTES` on disk,
the least recently used programs removed first; JAX takes a file lock (``filelock``) around
every read and write, so the workers of a sweep share it safely. A folder that cannot be
created turns the cache off with a warning.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path

__all__ = ["cache_folder", "use_compilation_cache"]

#: The environment variable naming the folder, or ``off``.
CACHE_ENV = "THERMOEQPROP_XLA_CACHE"
#: Programs that compile faster are not stored (JAX's default is 1 s; at 0.2 s the second
#: one-epoch train's first epoch took 20 s, at 1 s 24 s).
MIN_COMPILE_SECONDS = 0.2
#: The cache's size limit (a default train writes about 2 MB).
MAX_BYTES = 2 * 2**30
_OFF = {"off", "0", "false", "no", "none"}


def cache_folder(environ: Mapping[str, str] = os.environ) -> Path | None:
    """The folder of the commands' cache, or None (``THERMOEQPROP_XLA_CACHE=off``, or a cache
    of JAX's own set by ``JAX_COMPILATION_CACHE_DIR``, which JAX uses as it is)."""
    if environ.get("JAX_COMPILATION_CACHE_DIR"):
        return None
    value = environ.get(CACHE_ENV, "").strip()
    if value.lower() in _OFF:
        return None
    if value:
        return Path(value).expanduser()
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "thermoeqprop" / "xla"


def use_compilation_cache(environ=os.environ) -> Path | None:
    """Turn the cache on for this process and, through the environment, for the processes it
    starts (a sweep's workers); the folder, or None where it stays off."""
    folder = cache_folder(environ)
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        warnings.warn(
            f"compilation cache off: cannot create {str(folder)!r} ({exc.strerror}); set "
            f"{CACHE_ENV} to a writable folder, or to 'off'",
            stacklevel=2,
        )
        return None
    import jax

    settings = {
        "JAX_COMPILATION_CACHE_DIR": str(folder),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": str(MIN_COMPILE_SECONDS),
        "JAX_COMPILATION_CACHE_MAX_SIZE": str(MAX_BYTES),
    }
    for name, value in settings.items():
        environ[name] = value
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return folder
