"""Running ``thermoeqprop`` in a real subprocess, and interrupting it mid-run.

The subprocess runs the console script's module (``python -m thermoeqprop_console``), as the
installed ``thermoeqprop`` command does: signal handling before the package's imports. With
``THERMOEQPROP_TEST_SEED_OFFSET`` set (tests/seed_offset.py) it shifts its seeds first, as the
test's own process does, so that its results can be compared with the test's."""

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import seed_offset

ROOT = Path(__file__).resolve().parents[1]
#: The ``thermoeqprop`` command, from this source tree.
COMMAND = [sys.executable, "-m", "thermoeqprop_console"]
#: The same, with the seed offset applied first (imports JAX before the console's handlers).
_SHIFTED = (
    "import runpy, seed_offset; seed_offset.apply_from_environment(); "
    "runpy.run_module('thermoeqprop_console', run_name='__main__', alter_sys=True)"
)


def environment() -> dict[str, str]:
    paths = [ROOT, ROOT / "tests"] if seed_offset.offset() else [ROOT]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, paths)))


def _command(args) -> list[str]:
    program = [sys.executable, "-c", _SHIFTED] if seed_offset.offset() else COMMAND
    return [*program, *args]


def run_cli(*args: str, cwd=None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``thermoeqprop ARGS`` to the end; text output captured."""
    return subprocess.run(
        _command(args),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=environment(),
    )


def interrupt_cli(
    *args: str, when: Callable[[subprocess.Popen], bool], sig: int, timeout: float = 240
) -> tuple[int, str]:
    """Start the command, send ``sig`` as soon as ``when(process)`` holds (polled every 10 ms),
    and return its exit status and standard error."""
    process = subprocess.Popen(
        _command(args),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=environment(),
    )
    deadline = time.time() + timeout
    try:
        while not when(process):
            if process.poll() is not None or time.time() > deadline:
                raise AssertionError(
                    f"the run ended or timed out before the interrupt point "
                    f"(status {process.poll()})"
                )
            time.sleep(0.01)
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, stderr.decode()
