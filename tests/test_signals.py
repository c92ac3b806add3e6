"""SIGINT and SIGTERM at any moment of a command, start-up included (thermoeqprop_console).

One results folder is interrupted again and again, as a user pressing Ctrl-C would: during the
imports, at 0.5 s, at 2 s, after the first finished epoch. Each time the command must print
its one line and exit with status 130 (no traceback, no crash), and a last run of the same
command must resume the folder to the end."""

import importlib
import json
import signal
import sys
import time
from pathlib import Path

import pytest
from cli_testing import interrupt_cli, run_cli

from thermoeqprop_console import INTERRUPTED, MESSAGE, interrupts

EPOCHS = 30
ARGS = ["train", "--estimator", "ep", "--hidden", "16", "--epochs", str(EPOCHS), "--batch-size",
        "64", "--no-progress"]  # fmt: skip


def _importing_jax(pid: int) -> bool:
    """Whether the process has loaded JAX's extension (its imports are under way)."""
    try:
        return "jaxlib" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def _metrics_lines(folder: Path) -> int:
    metrics = folder / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.exists() else 0


def _interrupt(folder: Path, when, sig=signal.SIGINT) -> str:
    """Run the command on ``folder``, send ``sig`` once ``when(process)`` holds, and check the
    interrupted command's exit; return its standard error."""
    status, stderr = interrupt_cli(*ARGS, "--results-dir", str(folder), when=when, sig=sig,
                                   timeout=120)  # fmt: skip
    assert status == INTERRUPTED, (status, stderr)
    assert "Traceback" not in stderr and "Fatal Python error" not in stderr, stderr
    assert "Exception ignored" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == MESSAGE, stderr
    return stderr


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/PID/maps")
def test_interrupts_at_any_moment_leave_a_folder_that_resumes(tmp_path):
    folder = tmp_path / "run"

    def after(seconds):
        start = time.monotonic()
        return lambda process: time.monotonic() - start >= seconds

    _interrupt(folder, lambda process: _importing_jax(process.pid))
    assert _metrics_lines(folder) == 0  # during the imports: nothing written
    _interrupt(folder, after(0.5))
    _interrupt(folder, after(2.0), signal.SIGTERM)
    done = _metrics_lines(folder)
    _interrupt(folder, lambda process: _metrics_lines(folder) > done)
    assert _metrics_lines(folder) < EPOCHS, "the interrupt must land mid-run"

    resumed = run_cli(*ARGS, "--results-dir", str(folder))
    assert resumed.returncode == 0, resumed.stderr
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, EPOCHS + 1))
    assert f"epochs: {EPOCHS}" in (folder / "summary.txt").read_text()


class _Finaliser:
    """An object whose finaliser receives a SIGINT: Python swallows exceptions there."""

    def __del__(self):
        signal.raise_signal(signal.SIGINT)
        sum(range(100))  # bytecode for the handler to run on


def test_an_interrupt_swallowed_by_a_finaliser_is_delivered_again():
    with interrupts(), pytest.raises(KeyboardInterrupt):
        _Finaliser()  # collected at once: its finaliser runs the handler, which raises there
        for _ in range(500):  # the redelivered interrupt ends this (0.05 s later)
            time.sleep(0.01)


def test_an_interrupt_during_an_import_waits_for_the_import(tmp_path, monkeypatch):
    (tmp_path / "slow_module_for_signals.py").write_text(
        "import signal\nsignal.raise_signal(signal.SIGINT)\n"
        "total = sum(range(1000))\nFINISHED = True\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with interrupts(), pytest.raises(KeyboardInterrupt):
        module = importlib.import_module("slow_module_for_signals")
        assert module.FINISHED  # the import ran to its end
        for _ in range(500):
            time.sleep(0.01)
    assert sys.modules["slow_module_for_signals"].FINISHED


def test_an_interrupt_inside_a_checkpoint_write_stays_an_interrupt(monkeypatch):
    """A signal that lands while zipfile has a member open for writing makes closing the
    archive raise ValueError in the interrupt's place; the writer gives back the interrupt, so
    the command exits 130, not with an error (seen once in this module's test above)."""
    import numpy as np

    from thermoeqprop import _files

    def interrupted_savez(*args, **kwargs):
        try:
            raise KeyboardInterrupt("signal 2")
        finally:
            raise ValueError("Can't close the ZIP file while there is an open writing handle")

    monkeypatch.setattr(_files.np, "savez", interrupted_savez)
    with pytest.raises(KeyboardInterrupt, match="signal 2"):
        _files.arrays_bytes({"a": np.ones(3)})
    monkeypatch.undo()

    def broken_savez(*args, **kwargs):
        raise ValueError("another error")

    monkeypatch.setattr(_files.np, "savez", broken_savez)
    with pytest.raises(ValueError, match="another error"):
        _files.arrays_bytes({"a": np.ones(3)})
