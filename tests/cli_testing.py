"""Running ``thermoeqprop`` in a real subprocess, and interrupting it mid-run.

With ``THERMOEQPROP_TEST_SEED_OFFSET`` set (tests/seed_offset.py) the subprocess shifts its
seeds as the test's own process does, so that its results can be compared with the test's."""

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import seed_offset

ROOT = Path(__file__).resolve().parents[1]
#: The command's program, with the seed offset applied first when one is set.
_SHIFTED = (
    "import runpy, seed_offset; seed_offset.apply_from_environment(); "
    "runpy.run_module('thermoeqprop.cli', run_name='__main__', alter_sys=True)"
)


def _environment() -> dict[str, str]:
    paths = [ROOT, ROOT / "tests"] if seed_offset.offset() else [ROOT]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, paths)))


def _command(args) -> list[str]:
    program = ["-c", _SHIFTED] if seed_offset.offset() else ["-m", "thermoeqprop.cli"]
    return [sys.executable, *program, *args]


def run_cli(*args: str, cwd=None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m thermoeqprop.cli ARGS`` to the end; text output captured."""
    return subprocess.run(
        _command(args),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=_environment(),
    )


def interrupt_cli(
    *args: str, when: Callable[[], bool], sig: int, timeout: float = 240
) -> tuple[int, str]:
    """Start the command, send ``sig`` as soon as ``when()`` holds (polled every 50 ms), and
    return its exit status and standard error."""
    process = subprocess.Popen(
        _command(args),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=_environment(),
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
