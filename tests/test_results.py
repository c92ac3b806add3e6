"""The results layer (thermoeqprop.results): atomic files, checksums, the lock, config
comparison, metrics lines, the folder's kind."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import xarray as xr

from thermoeqprop.results import (
    CheckpointError,
    CorruptFileError,
    FolderLockedError,
    RunFolder,
    read_arrays,
    read_dataset,
    write_arrays,
    write_atomic,
    write_dataset,
)

CONFIG = {"train": {"epochs": 3, "lr_schedule": "constant", "batch_size": 8}, "dataset": "moons"}


def test_an_interrupted_write_leaves_the_old_file_whole(tmp_path):
    path = tmp_path / "record.json"
    write_atomic(path, b"old contents")

    def crash(handle):
        handle.write(b"new con")
        raise KeyboardInterrupt  # a kill in the middle of the write

    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, crash)
    assert path.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]  # no temporary left


def test_a_process_killed_mid_write_leaves_the_old_file_whole(tmp_path):
    path = tmp_path / "sweep.nc"
    write_atomic(path, b"old contents")
    script = (
        "import os, sys; from pathlib import Path; from thermoeqprop.results import write_atomic\n"
        "def die(handle):\n"
        "    handle.write(b'half of the new')\n"
        "    handle.flush()\n"
        "    os._exit(9)\n"
        "write_atomic(Path(sys.argv[1]), die)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(path)], check=False)
    assert done.returncode == 9
    assert path.read_bytes() == b"old contents"


def test_checksummed_arrays_detect_corruption(tmp_path):
    path = tmp_path / "arrays.npz"
    write_arrays(path, {"params_0": np.arange(6.0), "epoch": np.asarray(2)})
    np.testing.assert_array_equal(read_arrays(path)["params_0"], np.arange(6.0))
    arrays = dict(np.load(path))
    arrays["params_0"] = arrays["params_0"] + 1  # changed behind the checksum's back
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match=r"arrays.npz fails its checksum \(corrupted\)"):
        read_arrays(path)
    assert issubclass(CheckpointError, RuntimeError) and issubclass(CheckpointError, ValueError)


def test_checksummed_datasets_detect_corruption(tmp_path):
    dataset = xr.Dataset(
        {"gradient": (("estimator", "parameter"), [[1.0, np.nan], [0.0, -2.5]])},
        coords={"estimator": ["covariance", "nudged:0.1"], "parameter": ["a", "b"]},
        attrs={"title": "sweep"},
    )
    path = write_dataset(dataset, tmp_path / "part.nc")
    assert "sha256" not in dataset.attrs  # the caller's Dataset is left alone
    xr.testing.assert_identical(read_dataset(path), dataset)
    tampered = xr.load_dataset(path, engine="h5netcdf")
    tampered["gradient"][0, 0] = 1.5
    tampered.to_netcdf(path, engine="h5netcdf")  # keeps the stored checksum
    with pytest.raises(CorruptFileError, match=r"part.nc' fails its checksum.*delete it"):
        read_dataset(path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="part.nc' is unreadable, truncated or corrupted"):
        read_dataset(path)


def test_a_second_writer_is_refused_until_the_first_releases(tmp_path):
    first = RunFolder(tmp_path / "run").create("train", CONFIG)
    with pytest.raises(FolderLockedError, match=f"pid {os.getpid()}.*another folder"):
        RunFolder(tmp_path / "run").create("train", CONFIG)
    # Another process is refused too (flock), with the same one line.
    script = (
        "import sys; from thermoeqprop.results import RunFolder, FolderLockedError\n"
        "try:\n"
        "    RunFolder(sys.argv[1]).create('train', {})\n"
        "except FolderLockedError as error:\n"
        "    print(error); sys.exit(3)\n"
    )
    other = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "run")], capture_output=True, text=True
    )
    assert other.returncode == 3 and "is being written by another process" in other.stdout
    first.release()
    with RunFolder(tmp_path / "run").create("train", CONFIG) as again:
        assert again.kind == "train"
    RunFolder(tmp_path / "run").create("train", CONFIG).release()  # released by the with


def test_another_configuration_is_refused_naming_the_keys(tmp_path):
    RunFolder(tmp_path / "run").create("train", CONFIG).release()
    changed = json.loads(json.dumps(CONFIG))
    changed["train"]["batch_size"] = 16
    changed["dataset"] = "circles"
    with pytest.raises(
        ValueError,
        match=r"different configuration \(dataset: 'moons' there, 'circles' now, "
        r"train.batch_size: 8 there, 16 now\); resume with the same configuration",
    ):
        RunFolder(tmp_path / "run").create("train", changed)
    # The lock is not left behind by a refusal; keys may be left out of the comparison or
    # allowed to grow.
    folder = RunFolder(tmp_path / "run")
    folder.create("train", changed, compared={"train"}, extendable=("batch_size",)).release()
    longer = json.loads(json.dumps(changed))  # now what the folder records
    longer["train"]["epochs"] = 5
    RunFolder(tmp_path / "run").create("train", longer, extendable=("epochs",)).release()
    with pytest.raises(ValueError, match="holds a train run, not a temperature_sweep run"):
        RunFolder(tmp_path / "run").create("temperature_sweep", CONFIG)


def test_config_records_the_kind_and_the_environment_whose_devices_are_compared(tmp_path):
    folder = RunFolder(tmp_path / "run").create("train_steps", {"train": {"steps": 4}})
    folder.release()
    record = folder.read_config()
    assert list(record)[0] == "kind" and record["kind"] == "train_steps"
    assert {"thermoeqprop", "jax", "device_count"} <= set(record["environment"])
    # Another version resumes; another device count or backend is refused, naming both.
    devices, backend = jax.device_count(), jax.default_backend()
    record["environment"] = {"thermoeqprop": "0.0.1", "device_count": devices}
    folder.write_json("config.json", record)
    RunFolder(folder.path).create("train_steps", {"train": {"steps": 4}}).release()
    other = devices + 2
    for was, hint in [({"device_count": other, "jax_backend": "cpu"},
                       f"THERMOEQPROP_CPU_DEVICES={other}"),
                      ({"device_count": other, "jax_backend": "tpu"},
                       f"make {other} tpu device")]:  # fmt: skip
        record["environment"] = was
        folder.write_json("config.json", record)
        with pytest.raises(ValueError) as error:
            RunFolder(folder.path).create("train_steps", {"train": {"steps": 4}})
        message = str(error.value)
        assert f"written on {was['device_count']} {was['jax_backend']} device(s)" in message
        assert f"this run computes on {devices} {backend} device(s)" in message and hint in message
    record["environment"] = {"device_count": devices}  # the backend not recorded: the count
    folder.write_json("config.json", record)
    RunFolder(folder.path).create("train_steps", {"train": {"steps": 4}}).release()
    # A folder written before the kind was recorded resumes and is read by its contents.
    del record["kind"]
    folder.write_json("config.json", record)
    assert RunFolder(folder.path).kind == "train_steps"
    RunFolder(folder.path).create("train_steps", {"train": {"steps": 4}}).release()
    assert RunFolder(tmp_path / "nothing").kind is None
    with pytest.raises(ValueError, match="unknown run kind 'epochs'; valid: \\['train'"):
        RunFolder(tmp_path / "other").create("epochs", {})


def test_a_torn_last_metrics_line_is_ignored(tmp_path):
    folder = RunFolder(tmp_path / "run").create("train", CONFIG)
    for epoch in (1, 2):
        folder.append_metrics({"epoch": epoch, "train_loss": 1.0 / epoch})
    with open(folder / "metrics.jsonl", "a") as handle:
        handle.write('{"epoch": 3, "train_lo')  # killed mid-line
    assert [r["epoch"] for r in folder.read_metrics()] == [1, 2]
    assert [r["epoch"] for r in folder.read_metrics("epoch", upto=1)] == [1]
    folder.rewrite_metrics(folder.read_metrics("epoch", upto=2))
    folder.append_metrics({"epoch": 3, "train_loss": 0.3})
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    folder.release()


def test_an_unwritable_folder_is_named(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="file/run' is not writable"):
        RunFolder(tmp_path / "file" / "run").create("train", CONFIG)


def test_a_folder_recording_former_names_resumes(tmp_path):
    # Renamed fields and options (issue 14) are read under their new names on resume: a spin
    # network's init_scale is init_gain, a quantum network's is init_noise, and sweep's
    # --init-scale is --init-gain; the sampler's init_scale (the chains' spread) stays.
    new = {
        "command_line": {"init_gain": 0.7},
        "model": {"type": "LayeredSpinNetwork", "init_gain": 0.5},
        "estimator": {"model": {"type": "QuantumNetwork", "init_noise": 0.1}},
        "sampling": {"type": "Sampling", "init_scale": 0.5},
    }
    old = {
        "command_line": {"init_scale": 0.7},
        "model": {"type": "LayeredSpinNetwork", "init_scale": 0.5},
        "estimator": {"model": {"type": "QuantumNetwork", "init_scale": 0.1}},
        "sampling": {"type": "Sampling", "init_scale": 0.5},
    }
    folder = RunFolder(tmp_path / "run").create("temperature_sweep", new)
    folder.release()
    folder.write_json("config.json", {"kind": "temperature_sweep"} | old)
    RunFolder(folder.path).create("temperature_sweep", new).release()
    changed = new | {"sampling": {"type": "Sampling", "init_gain": 0.5}}
    with pytest.raises(ValueError, match="sampling.init_gain"):
        RunFolder(folder.path).create("temperature_sweep", changed)


def test_a_damaged_metrics_line_is_refused_naming_the_file_and_line(tmp_path):
    folder = RunFolder(tmp_path / "run").create("train", CONFIG)
    for epoch in (1, 2, 3):
        folder.append_metrics({"epoch": epoch, "train_loss": 1.0 / epoch})
    metrics = folder / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    for damage, problem in [("garbled{\n", "not JSON"), ("[2]\n", "not a JSON object"),
                            ('{"step": 2}\n', "no 'epoch'")]:  # fmt: skip
        metrics.write_text(lines[0] + damage + lines[2])
        with pytest.raises(
            CorruptFileError, match=f"metrics.jsonl' is damaged at line 2 \\({problem}"
        ):
            folder.read_metrics("epoch", upto=3)
    # A damaged last line with its newline is damage too; without it, a line cut short.
    metrics.write_text(lines[0] + lines[1] + "garbled\n")
    with pytest.raises(CorruptFileError, match="at line 3"):
        folder.read_metrics()
    folder.release()
