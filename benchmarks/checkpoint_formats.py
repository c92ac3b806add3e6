"""Checkpoints: the project's checksummed ``.npz`` files against orbax-checkpoint.

Not part of the test suite; it needs ``pip install orbax-checkpoint`` (0.12.8 measured),
which the project does not depend on (the decision and its reasons are in the docstring of
``thermoeqprop/_runs.py`` and in docs/design.md, "Checkpoints"). Measures, on the pytree of
the default ``thermoeqprop train`` run (a 64-128-10 layered network and its Adam state):

1. import time of each (a fresh interpreter, ``import numpy`` against
   ``import orbax.checkpoint``);
2. seconds per save and per restore (median of ``--repeats``);
3. SIGKILL mid-save: a child process writes checkpoints in a loop and is killed at random
   moments; afterwards the newest checkpoint either side reports as complete must restore;
4. a flipped byte in a saved checkpoint: is it detected on restore?

Usage: ``python benchmarks/checkpoint_formats.py [--repeats 20] [--kills 20]``; prints one
line per measurement.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _files_module():
    """thermoeqprop/_files.py alone (numpy only), without importing the package."""
    spec = importlib.util.spec_from_file_location("_files", ROOT / "thermoeqprop" / "_files.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tree(seed: int = 0) -> dict[str, np.ndarray]:
    """Parameters and Adam moments of the default train network, flattened by name."""
    rng = np.random.default_rng(seed)
    shapes = {"w0": (64, 128), "b0": (128,), "w1": (128, 10), "b1": (10,)}
    out = {}
    for prefix in ("params_", "opt_mu_", "opt_nu_"):
        for name, shape in shapes.items():
            out[prefix + name] = rng.normal(size=shape)
    out["opt_count"] = np.asarray(7, dtype=np.int32)
    return out


def import_seconds(module: str) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    runs = [float(subprocess.check_output([sys.executable, "-c", code])) for _ in range(3)]
    return min(runs)


def npz_save(path: Path, arrays) -> None:
    _files_module().write_arrays(path, arrays)


def timings(repeats: int, folder: Path) -> dict[str, float]:
    files = _files_module()
    import orbax.checkpoint as ocp

    arrays = tree()
    result = {}
    save, load = [], []
    for i in range(repeats):
        path = folder / f"epoch_{i:04d}.npz"
        t = time.perf_counter()
        files.write_arrays(path, arrays)
        save.append(time.perf_counter() - t)
        t = time.perf_counter()
        files.read_arrays(path)
        load.append(time.perf_counter() - t)
    result["npz save"], result["npz restore"] = statistics.median(save), statistics.median(load)
    checkpointer = ocp.StandardCheckpointer()
    save, load = [], []
    for i in range(repeats):
        path = folder / f"orbax_{i:04d}"
        t = time.perf_counter()
        checkpointer.save(path, arrays)
        checkpointer.wait_until_finished()
        save.append(time.perf_counter() - t)
        t = time.perf_counter()
        checkpointer.restore(path)
        load.append(time.perf_counter() - t)
    checkpointer.close()
    result["orbax save"], result["orbax restore"] = statistics.median(save), statistics.median(load)
    return result


CHILD = """
import sys, numpy as np
sys.path.insert(0, {here!r})
from checkpoint_formats import tree, _files_module
from pathlib import Path
folder, kind = Path(sys.argv[1]), sys.argv[2]
if kind == "orbax":
    import orbax.checkpoint as ocp
    manager = ocp.CheckpointManager(folder.absolute(), options=ocp.CheckpointManagerOptions(
        max_to_keep=2, enable_async_checkpointing=False))
else:
    files = _files_module()
print("ready", flush=True)
for step in range(1, 100000):
    arrays = tree(step)
    if kind == "orbax":
        manager.save(step, args=ocp.args.StandardSave(arrays))
    else:
        files.write_arrays(folder / f"step_{{step:08d}}.npz", arrays)
"""


def kill_trials(kind: str, trials: int, folder: Path) -> tuple[int, int]:
    """(trials whose newest complete checkpoint restored, trials) after SIGKILL mid-save."""
    files = _files_module()
    good = 0
    for trial in range(trials):
        where = folder / f"{kind}_{trial}"
        where.mkdir()
        process = subprocess.Popen(
            [sys.executable, "-c", CHILD.format(here=str(Path(__file__).parent)), str(where),
             kind],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        process.stdout.readline()
        time.sleep(random.uniform(0.3, 1.5))
        process.send_signal(signal.SIGKILL)
        process.wait()
        try:
            if kind == "orbax":
                import orbax.checkpoint as ocp

                manager = ocp.CheckpointManager(where.absolute())
                step = manager.latest_step()
                restored = manager.restore(step, args=ocp.args.StandardRestore(tree(step)))
                expected = tree(step)
                manager.close()
            else:
                newest = sorted(where.glob("step_*.npz"))[-1]
                step = int(newest.stem.split("_")[1])
                restored, expected = files.read_arrays(newest), tree(step)
            ok = all(np.array_equal(restored[k], expected[k]) for k in expected)
            good += ok
        except Exception as exc:  # a lost guarantee: record it
            print(f"  {kind} trial {trial}: {type(exc).__name__}: {exc}"[:300])
    return good, trials


def flipped_byte(folder: Path) -> dict[str, str]:
    """Flip one byte in the largest data file of a saved checkpoint; what does restore say?"""
    files = _files_module()
    import orbax.checkpoint as ocp

    out = {}
    arrays = tree()
    path = folder / "flip.npz"
    files.write_arrays(path, arrays)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    try:
        files.read_arrays(path)
        out["npz"] = "restored without complaint"
    except Exception as exc:
        out["npz"] = f"refused: {str(exc)[:90]}"
    target = folder / "flip_orbax"
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(target, arrays)
    checkpointer.wait_until_finished()
    biggest = max((p for p in target.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    biggest.write_bytes(bytes(data))
    try:
        restored = checkpointer.restore(target)
        same = all(np.array_equal(restored[k], arrays[k]) for k in arrays)
        out["orbax"] = "restored, values " + ("unchanged" if same else "CHANGED, no error")
    except Exception as exc:
        out["orbax"] = f"refused: {type(exc).__name__}: {str(exc)[:90]}"
    checkpointer.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--kills", type=int, default=20)
    args = parser.parse_args()
    random.seed(0)
    print(f"import numpy: {import_seconds('numpy'):.3f} s; "
          f"import orbax.checkpoint: {import_seconds('orbax.checkpoint'):.3f} s")  # fmt: skip
    folder = Path(tempfile.mkdtemp(prefix="checkpoint_formats_"))
    try:
        for name, seconds in timings(args.repeats, folder).items():
            print(f"{name}: {1000 * seconds:.2f} ms (median of {args.repeats})")
        for kind in ("npz", "orbax"):
            good, trials = kill_trials(kind, args.kills, folder)
            print(f"SIGKILL mid-save, {kind}: newest complete checkpoint restored in "
                  f"{good}/{trials} trials")  # fmt: skip
        for kind, what in flipped_byte(folder).items():
            print(f"one flipped byte, {kind}: {what}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
