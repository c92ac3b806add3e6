"""The command line: help, config files, results folders, resume after a real kill.

Bad input on the command line is in test_bad_input.py."""

import dataclasses
import importlib.metadata
import json
import signal
import tomllib
from pathlib import Path

import numpy as np
import pytest
from cli_testing import interrupt_cli, run_cli

import thermoeqprop
from thermoeqprop import _cli_train
from thermoeqprop._provenance import package_version, run_environment
from thermoeqprop.cli import main
from thermoeqprop.options import TrainOptions

SMALL = [
    "--estimator",
    "ep",
    "--hidden",
    "16",
    "--epochs",
    "2",
    "--batch-size",
    "64",
    "--no-progress",
]


def test_every_command_has_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "train" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for flag in ("--estimator", "--beta", "--config", "--results-dir", "--epochs"):
        assert flag in out


def test_version_flag_prints_the_package_version():
    done = run_cli("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"thermoeqprop {package_version()}"


def test_package_version_falls_back_to_the_source_tree(monkeypatch):
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert thermoeqprop.__version__ == pyproject["project"]["version"]

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert package_version() == thermoeqprop.__version__
    assert run_environment()["numpyro"] is None  # unknown, not a crash


def test_train_writes_a_results_folder(tmp_path, capsys):
    folder = tmp_path / "run"
    assert main(["train", *SMALL, "--results-dir", str(folder)]) == 0
    for name in ("config.json", "metrics.jsonl", "summary.txt", "training_curves.png"):
        assert (folder / name).is_file(), name
    assert len((folder / "metrics.jsonl").read_text().splitlines()) == 2
    assert "final test accuracy" in (folder / "summary.txt").read_text()
    assert (folder / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    environment = json.loads((folder / "config.json").read_text())["environment"]
    assert environment == run_environment()  # versions and device count of this process
    # Running again finds the run finished and changes nothing.
    before = (folder / "metrics.jsonl").read_text()
    assert main(["train", *SMALL, "--results-dir", str(folder)]) == 0
    assert (folder / "metrics.jsonl").read_text() == before


def test_config_file_sets_values_and_flags_win(tmp_path):
    config = tmp_path / "settings.toml"
    config.write_text(
        'estimator = "ep"\nhidden = [8]\nepochs = 1\nbatch_size = 128\nbeta = 0.25\nseed = 4\n'
    )
    folder = tmp_path / "run"
    assert main(["train", "--config", str(config), "--seed", "5", "--no-progress",
                 "--results-dir", str(folder)]) == 0  # fmt: skip
    recorded = json.loads((folder / "config.json").read_text())["command_line"]
    assert recorded["hidden"] == [8]
    assert recorded["beta"] == 0.25
    assert recorded["seed"] == 5  # the flag wins over the file
    assert recorded["epochs"] == 1


def _final_params(folder):
    checkpoint = sorted((folder / "checkpoints").glob("epoch_*.npz"))[-1]
    with np.load(checkpoint) as data:
        return {k: data[k] for k in data.files if k.startswith("params_")}


KILLED_RUN = ["train", "--estimator", "ep", "--hidden", "32", "--epochs", "6", "--batch-size",
              "32", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run, in a subprocess like the interrupted ones."""
    folder = tmp_path_factory.mktemp("straight")
    assert run_cli(*KILLED_RUN, "--results-dir", str(folder)).returncode == 0
    return folder


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes_to_the_same_result(tmp_path, straight, sig):
    args = KILLED_RUN

    folder = tmp_path / "killed"
    metrics = folder / "metrics.jsonl"
    status, stderr = interrupt_cli(
        *args,
        "--results-dir",
        str(folder),
        when=lambda _: metrics.exists() and len(metrics.read_text().splitlines()) >= 2,
        sig=sig,
    )
    finished = len(metrics.read_text().splitlines())
    assert 2 <= finished < 6, "the kill must land mid-run"
    if sig == signal.SIGTERM:
        assert status == 130
        assert "Run the same command again to resume" in stderr
        assert "Traceback" not in stderr

    resumed = run_cli(*args, "--results-dir", str(folder))
    assert resumed.returncode == 0, resumed.stderr
    epochs = [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()]
    assert epochs == [1, 2, 3, 4, 5, 6]
    a, b = _final_params(straight), _final_params(folder)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_thermal_training_writes_gradient_uncertainty(tmp_path, capsys):
    folder = tmp_path / "thermal"
    args = ["train", "--hidden", "8", "--epochs", "1", "--batch-size", "256", "--num-samples",
            "10", "--num-warmup", "10", "--no-progress", "--results-dir", str(folder)]  # fmt: skip
    assert main(args) == 0
    summary = (folder / "summary.txt").read_text()
    assert "estimator: covariance at T = 0.02" in summary
    assert "mean relative gradient MCSE" in summary
    record = json.loads((folder / "metrics.jsonl").read_text().splitlines()[0])
    assert record["relative_stderr"] > 0
    assert record["temperature"] == 0.02
    assert "diag_rhat_max" in record
    # The rank-normalised R-hat of the last batch's series, over every component; the median
    # batch's relative MCSE lies between the best and the worst (diag_relative_stderr).
    assert 1.0 < record["rank_rhat_max_last_batch"] < 10.0
    assert record["rank_rhat_median_last_batch"] <= record["rank_rhat_max_last_batch"]
    # every draw: the default importance sampling's 3 × 10 pilot and 10 final draws a group
    assert record["rank_rhat_entries_last_batch"] == 40
    assert record["diag_draws_per_entry"] == 1
    assert 0 < record["relative_stderr_median"] <= record["diag_relative_stderr"]
    assert (record["diag_num_chains"], record["batches"]) == (2, 5)  # 1437 // 256 batches
    # One line per finished epoch, and the health table with limits for this run's size.
    out = capsys.readouterr().out
    assert "epoch 1/1  loss " in out and "gradient rel. MCSE" in out, out
    assert "rank R-hat max" in out and "rank R-hat, worst component (last batch)" in summary
    assert "gradient health, epoch 1 (2 chains × 40 draws per estimate" in summary
    assert "split R-hat, worst component (worst batch)" in summary
    assert summary.split("gradient health")[1] in out
    # Run again on the finished folder: it says it resumes, and there is nothing left to do.
    assert main(args) == 0
    assert "after epoch 1 of 1 (checkpoint epoch_0001.npz): nothing left to do" in (
        capsys.readouterr().out
    )


def test_spin_network_and_annealed_temperature(tmp_path):
    folder = tmp_path / "spin"
    args = ["train", "--model", "spin", "--dataset", "moons", "--hidden", "6", "--epochs", "2",
            "--batch-size", "64", "--num-samples", "20", "--num-warmup", "10", "--temperature",
            "0.5", "--anneal-from", "2.0", "--no-progress",
            "--results-dir", str(folder)]  # fmt: skip
    assert main(args) == 0
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    np.testing.assert_allclose([r["temperature"] for r in records], [2.0, 0.5])
    assert "LayeredSpinNetwork (2, 6, 1)" in (folder / "summary.txt").read_text()


def test_heat_bath_control_variates_from_the_command_line(tmp_path):
    """``--control-variates heat_bath`` reaches the estimator and is recorded: a spin run with
    collapsed sampling (the MCSE gain itself is tested in tests/test_heat_bath_controls.py)."""
    folder = tmp_path / "controls"
    args = ["train", "--model", "spin", "--dataset", "moons", "--hidden", "4", "2", "--epochs",
            "1", "--batch-size", "16", "--num-chains", "4", "--num-samples", "200",
            "--num-warmup", "20", "--temperature", "1", "--collapse", "on", "--control-variates",
            "heat_bath", "--no-progress", "--results-dir", str(folder)]  # fmt: skip
    assert main(args) == 0
    config = json.loads((folder / "config.json").read_text())
    assert config["command_line"]["control_variates"] == "heat_bath"
    names = {field.name for field in dataclasses.fields(TrainOptions)}
    options = TrainOptions(**{k: v for k, v in config["command_line"].items() if k in names})
    assert _cli_train.build_estimator(options, 2, 2).control_variates == "heat_bath"
    record = json.loads((folder / "metrics.jsonl").read_text().splitlines()[0])
    assert 0 < record["relative_stderr"] < 0.2, record["relative_stderr"]
    # The worst batch's MCSE ratio without ÷ with the controls is recorded for the health table.
    assert np.isfinite(record["diag_control_variate_gain"]), record
