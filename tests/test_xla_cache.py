"""The commands' persistent compilation cache (thermoeqprop/_xla_cache.py): where it lives,
when it is off, and that a second run loads what the first compiled, with the same results."""

import json
import subprocess
from pathlib import Path

import pytest
from cli_testing import COMMAND, environment

from thermoeqprop._xla_cache import CACHE_ENV, cache_folder, use_compilation_cache

RUN = ["train", "--estimator", "ep", "--hidden", "16", "--epochs", "1", "--batch-size", "64",
       "--no-progress"]  # fmt: skip


def test_the_folder_follows_the_environment(tmp_path):
    home = {"XDG_CACHE_HOME": str(tmp_path)}
    assert cache_folder(home) == tmp_path / "thermoeqprop" / "xla"
    assert cache_folder({**home, CACHE_ENV: str(tmp_path / "mine")}) == tmp_path / "mine"
    for off in ("off", "OFF", "0", "none"):
        assert cache_folder({**home, CACHE_ENV: off}) is None
    # A cache set for JAX itself is JAX's to use as it is.
    assert cache_folder({**home, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax")}) is None
    assert cache_folder({}) == Path.home() / ".cache" / "thermoeqprop" / "xla"


def test_a_folder_that_cannot_be_made_turns_the_cache_off_with_a_warning(tmp_path):
    (tmp_path / "file").write_text("")
    environ = {CACHE_ENV: str(tmp_path / "file" / "xla")}
    with pytest.warns(UserWarning, match=r"compilation cache off: cannot create .*file/xla"):
        assert use_compilation_cache(environ) is None
    assert "JAX_COMPILATION_CACHE_DIR" not in environ


def _run(folder: Path, cache: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in environment().items()
           if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}  # fmt: skip
    env[CACHE_ENV] = cache
    done = subprocess.run([*COMMAND, *RUN, "--results-dir", str(folder)], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done


def _metrics(folder: Path) -> dict:
    record = json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])
    return {k: v for k, v in record.items() if "seconds" not in k}


def test_a_second_run_loads_what_the_first_compiled(tmp_path):
    cache = tmp_path / "xla"
    _run(tmp_path / "first", str(cache))
    stored = {p.name for p in cache.glob("*-cache")}
    assert stored, "the first run stored no program"
    # With a size limit JAX records each entry's last use beside it (and locks the folder).
    used = {p.name: p.read_bytes() for p in cache.glob("*-atime")}
    assert len(used) == len(stored)
    _run(tmp_path / "second", str(cache))
    # The second run read every program the first stored, and stored none anew.
    assert {p.name for p in cache.glob("*-cache")} == stored
    assert all(p.read_bytes() != used[p.name] for p in cache.glob("*-atime"))
    assert _metrics(tmp_path / "second") == _metrics(tmp_path / "first")
