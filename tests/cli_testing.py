"""Running ``thermoeqprop`` in a real subprocess, and interrupting it mid-run.

The subprocess runs the console script's module (``python -m thermoeqprop_console``), as the
installed ``thermoeqprop`` command does: signal handling before the package's imports."""

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The ``thermoeqprop`` command, from this source tree.
COMMAND = [sys.executable, "-m", "thermoeqprop_console"]


def environment() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT))


def run_cli(*args: str, cwd=None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``thermoeqprop ARGS`` to the end; text output captured."""
    return subprocess.run(
        COMMAND + list(args),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=environment(),
    )


def interrupt_cli(
    *args: str, when: Callable[[], bool], sig: int, timeout: float = 240
) -> tuple[int, str]:
    """Start the command, send ``sig`` as soon as ``when()`` holds (polled every 50 ms), and
    return its exit status and standard error."""
    process = subprocess.Popen(
        COMMAND + list(args),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=environment(),
    )
    deadline = time.time() + timeout
    try:
        while not when():
            if process.poll() is not None or time.time() > deadline:
                raise AssertionError(
                    f"the run ended or timed out before the interrupt point "
                    f"(status {process.poll()})"
                )
            time.sleep(0.05)
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, stderr.decode()
