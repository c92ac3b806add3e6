"""The ``thermoeqprop`` console script: signal handling first, the package second.

Importing :mod:`thermoeqprop` takes seconds (JAX, NumPyro, ArviZ), and a Ctrl-C meanwhile
printed a ``KeyboardInterrupt`` traceback from inside some import. This module lives outside
the package, so that importing it imports nothing but the standard library: :func:`main`
sets the handling of SIGINT and SIGTERM first and only then imports and runs
:func:`thermoeqprop.cli.main`. For both signals, at any moment, the command prints one line
(:data:`MESSAGE`) and exits with status :data:`INTERRUPTED` (130):

- During start-up, before the command has read its arguments, nothing is written yet and the
  process ends at once.
- Afterwards (:func:`interrupts`) a signal raises ``KeyboardInterrupt`` in the main thread,
  so the run unwinds (closing progress bars, a Dask cluster, the folder's lock) after its
  last finished unit of work was saved. Two places cannot take an exception: an ``import``
  (an interrupted extension module surfaced as an ``ImportError``, or crashed) and a
  finaliser or garbage-collector callback (JAX registers one; Python swallows the exception
  there, "Exception ignored in …", and the run went on as if nothing had happened). A signal
  landing in either is delivered again a moment later.
- The process then ends with ``os._exit`` once its output is flushed: XLA may still be running
  a computation the interrupt abandoned, and the interpreter's shutdown around it crashed
  with a segmentation fault (exit 139) in about one interrupt in four of ``thermoeqprop
  train`` with a sampled estimator. Nothing is lost by skipping the shutdown: every file of a
  results folder is written atomically and fsynced as it is made, and the folder's lock is
  released by the operating system.

Before Python has started and read its ``site`` module (the first tens of milliseconds) no
Python code runs; a signal then ends the process the ordinary way (killed by SIGINT, which a
shell reports as 130), before anything was written.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import typing

__all__ = ["INTERRUPTED", "MESSAGE", "interrupts", "main"]

#: The exit status of an interrupted command (SIGINT or SIGTERM).
INTERRUPTED = 130
#: What an interrupted command prints on standard error.
MESSAGE = (
    "thermoeqprop: interrupted; finished work is saved in the results folder. "
    "Run the same command again to resume."
)
SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: Seconds before an interrupt swallowed by a finaliser is delivered again.
REDELIVERY_DELAY = 0.05


def _inside_import(frame) -> bool:
    """Whether ``frame`` runs inside an ``import``: an exception raised there can surface as
    an ``ImportError`` of a half-initialised extension module, or crash it."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _raise(signum, frame):
    if _inside_import(frame):  # deliver it once the import has finished
        threading.Timer(REDELIVERY_DELAY, _redeliver, (signum,)).start()
        return
    raise KeyboardInterrupt(f"signal {signum}")


def _exit_now(signum, frame):
    """During start-up, before the command has read its arguments: nothing is written yet,
    so the process ends at once (no exception travels through the imports)."""
    _finish()


def _redeliver(signum: int) -> None:
    import _thread

    # interrupt_main does nothing if the signal is no longer handled by Python (the run ended).
    _thread.interrupt_main(signum)


def _finish() -> typing.NoReturn:
    """Print :data:`MESSAGE`, flush, and end the process with :data:`INTERRUPTED` at once."""
    _default_signals()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    with contextlib.suppress(Exception):
        sys.stderr.write("\n" + MESSAGE + "\n")
        sys.stderr.flush()
    os._exit(INTERRUPTED)


@contextlib.contextmanager
def interrupts():
    """SIGINT and SIGTERM as ``KeyboardInterrupt`` (main thread only), redelivered if a
    finaliser swallowed one; the previous handlers and ``sys.unraisablehook`` are restored
    on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = {signum: signal.signal(signum, _raise) for signum in SIGNALS}
    previous_hook = sys.unraisablehook

    def hook(unraisable):
        error = unraisable.exc_value
        if isinstance(error, KeyboardInterrupt) and str(error).startswith("signal "):
            signum = int(str(error).split()[1])
            threading.Timer(REDELIVERY_DELAY, _redeliver, (signum,)).start()
            return
        previous_hook(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        for signum, handler in previous.items():
            if handler is not None:  # None: installed outside Python, cannot restore
                signal.signal(signum, handler)


def _default_signals() -> None:
    """From here on a signal ends the process the ordinary way (no Python code runs)."""
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_DFL)


def main() -> int:
    """Entry point of the ``thermoeqprop`` console script."""
    for signum in SIGNALS:
        signal.signal(signum, _exit_now)
    try:
        from thermoeqprop.cli import main as run

        code = run()  # handles signals itself (interrupts()) from its first line
    except KeyboardInterrupt:  # past the command's own handling
        _finish()
    _default_signals()
    if code == INTERRUPTED:  # the command has printed MESSAGE
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
