"""Bad input end to end: one table across the command line and the Python API.

Every row is a mistake a user can make. On the command line it must end the program with exit
status 2 and ONE line on standard error, ``thermoeqprop COMMAND: error: …``, that names the bad
value and what would be valid, never a traceback (from inside JAX or anywhere else). In Python
it must raise ``ValueError`` (or a subclass) with a one-line message that does the same. Each
row gives a fragment of the expected message, which includes the offending value.

Module-specific refusals (model structures, sampler states, Pauli strings…) are tested beside
their modules; this table is the front door.
"""

import json
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from thermoeqprop.cli import main

TRAIN = ["train", "--estimator", "ep", "--hidden", "16", "--epochs", "2", "--batch-size", "64",
         "--no-progress"]  # fmt: skip
SWEEP = ["sweep", "--model", "spin", "--hidden", "3", "--dataset", "random", "--num-inputs", "2",
         "--num-classes", "2", "--num-examples", "3", "--seeds", "0", "--num-chains", "4",
         "--num-samples", "200", "--num-warmup", "100", "--no-progress"]  # fmt: skip
QUANTUM = ["quantum", "--qubits", "3", "--num-examples", "40", "--test-fraction", "0.5",
           "--batch-size", "5", "--epochs", "1", "--quiet"]  # fmt: skip


def _config(text, suffix=".json"):
    """A setup that writes a config file and passes it with ``--config``."""

    def setup(tmp_path):
        path = tmp_path / f"settings{suffix}"
        path.write_text(text)
        return ["--config", str(path)]

    return setup


def _not_utf8(tmp_path):
    path = tmp_path / "settings.json"
    path.write_bytes(b'{"beta": "\xff"}')
    return ["--config", str(path)]


def _two_configs(tmp_path):
    return [*_config('{"beta": 0.2}')(tmp_path), "--config", str(tmp_path / "other.json")]


def _under_a_file(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    return ["--results-dir", str(blocker / "run")]


def _corrupted_checkpoint(tmp_path):
    folder = tmp_path / "run"
    assert main([*TRAIN, "--results-dir", str(folder)]) == 0
    checkpoint = folder / "checkpoints" / "epoch_0002.npz"  # the one a rerun resumes from
    checkpoint.write_bytes(checkpoint.read_bytes()[:200])  # cut short, as by a full disk
    return ["--results-dir", str(folder)]


def _tampered_checkpoint(tmp_path):
    folder = tmp_path / "run"
    assert main([*TRAIN, "--results-dir", str(folder)]) == 0
    checkpoint = folder / "checkpoints" / "epoch_0002.npz"
    with np.load(checkpoint) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["params_0"] = arrays["params_0"] + 1.0  # a valid archive whose contents changed
    np.savez(checkpoint, **arrays)
    return ["--results-dir", str(folder)]


def _corrupted_sweep_part(tmp_path):
    folder = tmp_path / "run"
    assert main([*SWEEP, "--temperatures", "0.5", "1.0", "--results-dir", str(folder)]) == 0
    (folder / "parts" / "T000.nc").write_bytes(b"\x89HDF\r\n garbage")
    return ["--temperatures", "0.5", "1.0", "--results-dir", str(folder)]


def _empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    return [str(tmp_path / "empty")]


def _sweep_config_only(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"kind": "temperature_sweep"}))
    return [str(folder)]


#: Folders locked by a setup ("another run" writing them), released after each test.
_HELD = []


@pytest.fixture(autouse=True)
def _release_held_locks():
    """Close the lock files a setup holds once its test is done (left to the garbage
    collector, they were reported as unclosed files when a test process ended)."""
    yield
    while _HELD:
        _HELD.pop().release()


def _locked_folder(tmp_path):
    from thermoeqprop.results import RunFolder

    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    folder.lock()  # flock is per open file: this process's run is refused like another's
    _HELD.append(folder)
    return ["--results-dir", str(folder.path)]


def _config_not_an_object(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.json").write_text("[1, 2]")
    return [str(folder)]


def _as_results_dir(setup):
    return lambda tmp_path: ["--results-dir", *setup(tmp_path)]


def _edited_metrics(command_line, edit):
    """A finished run whose metrics.jsonl lines are replaced by ``edit(lines)`` (an empty
    list deletes the file)."""

    def setup(tmp_path):
        folder = tmp_path / "run"
        assert main([*command_line, "--results-dir", str(folder)]) == 0
        metrics = folder / "metrics.jsonl"
        lines = edit(metrics.read_text().splitlines(keepends=True))
        if lines:
            metrics.write_text("".join(lines))
        else:
            metrics.unlink()
        return ["--results-dir", str(folder)]

    return setup


def _garbled_metrics(command_line):
    """A finished run whose metrics.jsonl has a garbled first line."""
    return _edited_metrics(command_line, lambda lines: ['{"epoch": 1, "train_lo\n', *lines[1:]])


def _metrics_without(keep):
    """A finished ``train`` run whose metrics.jsonl keeps only the lines ``keep`` selects
    (deleted as a whole when none is left)."""
    return _edited_metrics(TRAIN, lambda lines: [x for i, x in enumerate(lines) if keep(i)])


def _other_devices(tmp_path):
    """A finished run whose config.json says it ran on 3 more CPU devices than this process."""
    folder = tmp_path / "run"
    assert main([*TRAIN, "--results-dir", str(folder)]) == 0
    record = json.loads((folder / "config.json").read_text())
    record["environment"]["device_count"] += 3
    (folder / "config.json").write_text(json.dumps(record))
    return ["--results-dir", str(folder)]


def _file_as_out(tmp_path):
    (tmp_path / "a-file").write_text("x")
    return ["--out", str(tmp_path / "a-file"), *_empty_folder(tmp_path)]


# (command line before the setup's arguments, setup or None, fragment of the message)
CLI_CASES = {
    # train: flags
    "train negative beta": (
        TRAIN + ["--beta", "-0.5"],
        None,
        "beta must be finite and > 0, got -0.5",
    ),
    "train NaN beta": (TRAIN + ["--beta", "nan"], None, "beta must be finite and > 0, got nan"),
    "train zero learning rate": (
        TRAIN + ["--learning-rate", "0"],
        None,
        "learning_rate must be finite and > 0, got 0",
    ),
    "train zero epochs": (TRAIN + ["--epochs", "0"], None, "epochs must be an integer ≥ 1, got 0"),
    "train batch larger than data": (
        TRAIN + ["--batch-size", "100000"],
        None,
        "batch_size 100000 exceeds the 1437 training examples",
    ),
    "train empty hidden layer": (
        TRAIN + ["--hidden", "0"],
        None,
        "every layer size must be ≥ 1, got layer_sizes=(64, 0, 10)",
    ),
    "train negative tolerance": (
        TRAIN + ["--tolerance", "-1"],
        None,
        "tolerance must be finite and > 0, got -1",
    ),
    "train negative temperature": (
        TRAIN + ["--estimator", "covariance", "--temperature", "-1"],
        None,
        "temperature must be finite and > 0, got -1",
    ),
    "train one chain": (
        TRAIN + ["--estimator", "covariance", "--num-chains", "1"],
        None,
        "num_chains must be an integer ≥ 2, got 1",
    ),
    "train spin sampler on continuous states": (
        TRAIN + ["--estimator", "covariance", "--sampler", "gibbs"],
        None,
        "'gibbs' needs spins",
    ),
    "train heat-bath controls without collapsed spin sampling": (
        TRAIN + ["--estimator", "covariance", "--control-variates", "heat_bath"],
        None,
        "needs a layered spin network and Sampling(collapse=True); got LayeredNetwork",
    ),
    "train heat-bath controls with too few draws": (
        TRAIN
        + "--estimator covariance --model spin --collapse on --control-variates heat_bath".split(),
        None,
        "needs at least 110 draws per half (10 per coefficient and intercept); got 80",
    ),
    "train exact without a reference": (
        TRAIN + ["--estimator", "exact"],
        None,
        "ThermalExact needs a spin network",
    ),
    "train annealing at T = 0": (
        TRAIN + ["--anneal-from", "0.1"],
        None,
        "--anneal-from needs a thermal estimator",
    ),
    "train annealing upwards": (
        TRAIN + ["--estimator", "covariance", "--anneal-from", "0.01", "--temperature", "0.1"],
        None,
        "anneal_from must exceed the final temperature 0.1, got 0.01",
    ),
    "train quadratic with cross-entropy": (
        TRAIN + ["--model", "quadratic", "--cost", "cross_entropy"],
        None,
        "needs cost 'squared_error', got 'cross_entropy'",
    ),
    "train thermal hard sigmoid": (
        TRAIN + ["--estimator", "covariance", "--activation", "hard_sigmoid"],
        None,
        "use a smooth activation",
    ),
    "train unknown estimator flag": (
        TRAIN + ["--estimator", "magic"],
        None,
        "--estimator has value 'magic'; valid: ['covariance', 'nudged',",
    ),
    "train unknown sampler flag": (
        TRAIN + ["--sampler", "slice"],
        None,
        "--sampler has value 'slice'; valid: ['auto', 'hmc',",
    ),
    "train HMC jitter of one": (
        TRAIN + ["--estimator", "covariance", "--hmc-jitter", "1"],
        None,
        "hmc_jitter must be a number in [0, 1), got 1.0",
    ),
    "train sampler dtype": (
        TRAIN + ["--estimator", "covariance", "--sampler-dtype", "float16"],
        None,
        "--sampler-dtype has value 'float16'; valid: ['float32']",
    ),
    "train not a number": (
        TRAIN + ["--temperature", "warm"],
        None,
        "argument --temperature: invalid number value: 'warm'",
    ),
    "train fractional epochs flag": (
        TRAIN + ["--epochs", "1.5"],
        None,
        "--epochs has value '1.5'; valid: an integer",
    ),
    "train not an integer in a list flag": (
        TRAIN + ["--hidden", "16", "x"],
        None,
        "--hidden has value 'x'; valid: a list of integers",
    ),
    # train: values of the right type that mean nothing for the network (_validation), and
    # runs that would not fit in memory (_resources): refused before anything is allocated
    "train temperature too high for the floats": (
        TRAIN + ["--estimator", "covariance", "--temperature", "1e300"],
        None,
        "temperature 1e+300 is meaningless for this network (energy scale 191): above 1.28e+10",
    ),
    "train temperature too low for the floats": (
        TRAIN + ["--estimator", "covariance", "--temperature", "1e-300"],
        None,
        "temperature 1e-300 is meaningless for this network (energy scale 191): below 4.24e-14",
    ),
    "train nudge stronger than the network": (
        TRAIN + ["--beta", "1e6"],
        None,
        "beta 1e+06 makes the nudge β·C (up to 1e+07) larger than the network's own energy "
        "(scale 191)",
    ),
    "train hundred million chains": (
        TRAIN + ["--estimator", "covariance", "--num-chains", "100000000"],
        None,
        "available; reduce --num-chains, --num-samples, --batch-size or --hidden",
    ),
    "train hidden layer of 1e8 units": (
        TRAIN + ["--hidden", "100000000"],
        None,
        "this run needs about 1.4 TiB of memory (states kept 1.1 TiB), this machine has",
    ),
    # train: config files
    "train unknown config key": (TRAIN, _config('{"epoch": 3}'), "unknown config key(s) ['epoch']"),
    "train config value of the wrong type": (
        TRAIN,
        _config('{"beta": "strong"}'),
        "config key 'beta' has value 'strong'",
    ),
    "train unknown estimator in config": (
        TRAIN,
        _config('{"estimator": "magic"}'),
        "config key 'estimator' has value 'magic'; valid: ['covariance'",
    ),
    "train unknown sampler in config": (
        TRAIN,
        _config('sampler = "slice"\n', ".toml"),
        "config key 'sampler' has value 'slice'; valid: ['auto'",
    ),
    "train fractional epochs in config": (
        TRAIN,
        _config("epochs = 1.7\n", ".toml"),
        "config key 'epochs' has value 1.7; valid: an integer",
    ),
    "train infinite epochs in config": (
        TRAIN,
        _config("epochs = inf\n", ".toml"),
        "config key 'epochs' has value inf; valid: an integer",
    ),
    "train boolean temperature in config": (
        TRAIN,
        _config("temperature = true\n", ".toml"),
        "config key 'temperature' has value True; valid: a number",
    ),
    "train top-level number in config": (
        TRAIN,
        _config("3"),
        "must hold a table of settings (key = value), got a number (3)",
    ),
    "train string for an integer list in config": (
        TRAIN,
        _config('{"hidden": "8"}'),
        "config key 'hidden' has value '8'; valid: a list of integers",
    ),
    "train number as a folder name in config": (
        TRAIN,
        _config('{"results_dir": 3}'),
        "config key 'results_dir' has value 3; valid: a string",
    ),
    "train string for a switch in config": (
        TRAIN,
        _config('{"no_progress": "yes"}'),
        "config key 'no_progress' has value 'yes'; valid: true or false",
    ),
    "train null config": (
        TRAIN,
        _config("null"),
        "must hold a table of settings (key = value), got null (None)",
    ),
    "train config not UTF-8": (
        TRAIN,
        _not_utf8,
        "is not UTF-8 text (invalid start byte at byte 10)",
    ),
    "train two config files": (TRAIN, _two_configs, "--config is given 2 times"),
    "train seed beyond 64 bits": (
        TRAIN + ["--seed", str(2**70)],
        None,
        "--seed (config key seed) must be an integer in 0 … 9223372036854775807 (2**63 − 1), got "
        "1180591620717411303424",
    ),
    "train negative seed": (
        TRAIN + ["--seed", "-1"],
        None,
        "--seed (config key seed) must be an integer in 0 … 9223372036854775807 (2**63 − 1), "
        "got -1",
    ),
    "train number beyond a float in config": (
        TRAIN,
        _config('{"beta": 1%s}' % ("0" * 400)),
        "config key 'beta' has an integer of 401 digits, beyond the range of a number",
    ),
    "train broken JSON": (TRAIN, _config("{not json"), "is not valid JSON"),
    "train broken TOML": (TRAIN, _config("epochs = = 3", ".toml"), "is not valid TOML"),
    "train missing config file": (
        TRAIN + ["--config", "/nonexistent/settings.json"],
        None,
        "config file '/nonexistent/settings.json' does not exist",
    ),
    # train: results folders and checkpoints
    "train results folder under a file": (TRAIN, _under_a_file, "is not writable"),
    "train truncated checkpoint": (
        TRAIN,
        _corrupted_checkpoint,
        "epoch_0002.npz is truncated or corrupted",
    ),
    "train tampered checkpoint": (TRAIN, _tampered_checkpoint, "epoch_0002.npz fails its checksum"),
    "train empty results folder name": (
        TRAIN + ["--results-dir", ""],
        None,
        "--results-dir is empty (''); give a folder name (write . for the current directory)",
    ),
    "train folder being written by another run": (
        TRAIN,
        _locked_folder,
        "is being written by another process (pid",
    ),
    "train config.json not an object": (
        TRAIN,
        _as_results_dir(_config_not_an_object),
        "config.json' holds a JSON array, not an object",
    ),
    "train resumed on another device count": (
        TRAIN,
        _other_devices,
        f"device(s) and this run computes on {jax.device_count()} cpu device(s); a resume is bit "
        f"for bit only on the same devices: set THERMOEQPROP_CPU_DEVICES={jax.device_count() + 3}",
    ),
    "train garbled metrics line": (
        TRAIN,
        _garbled_metrics(TRAIN),
        "metrics.jsonl' is damaged at line 1 (not JSON",
    ),
    "train metrics file deleted": (
        TRAIN,
        _metrics_without(lambda i: False),
        "metrics.jsonl' lacks epochs 1–2 (2 of the 2 it must hold up to the checkpoint's epoch 2)",
    ),
    "train metrics line deleted": (
        TRAIN,
        _metrics_without(lambda i: i != 0),
        "metrics.jsonl' lacks epoch 1 (1 of the 2 it must hold up to the checkpoint's epoch 2)",
    ),
    # sweep
    "sweep negative temperature": (
        SWEEP + ["--temperatures", "-1"],
        None,
        "temperatures must be finite and > 0, got [-1.0]",
    ),
    "sweep temperature too high for the floats": (
        SWEEP + ["--temperatures", "0.5", "1e300"],
        None,
        "temperature 1e+300 is meaningless for this network (energy scale 6.04)",
    ),
    "sweep hundred million chains": (
        SWEEP + ["--num-chains", "100000000"],
        None,
        "reduce --num-chains, --num-samples, --num-examples or --hidden",
    ),
    "sweep unknown estimator": (
        SWEEP + ["--estimators", "magic"],
        None,
        "unknown estimator 'magic'",
    ),
    "sweep NUTS on spins": (SWEEP + ["--sampler", "nuts"], None, "needs continuous states"),
    "sweep tempering over one temperature": (
        SWEEP + ["--tempering", "--temperatures", "0.5"],
        None,
        "tempering needs at least two temperatures",
    ),
    "sweep no examples": (
        SWEEP + ["--num-examples", "0"],
        None,
        "num_examples must be an integer ≥ 1, got 0",
    ),
    "sweep one chain": (
        SWEEP + ["--num-chains", "1"],
        None,
        "num_chains must be an integer ≥ 2, got 1",
    ),
    "sweep zero beta": (
        SWEEP + ["--beta", "0"],
        None,
        "beta of estimator 'nudged' must be finite and > 0",
    ),
    "sweep unwritable folder": (
        SWEEP + ["--results-dir", "/dev/null/sweep"],
        None,
        "is not writable",
    ),
    "sweep unknown config key": (
        SWEEP,
        _config('{"temperature": 0.5}'),
        "unknown config key(s) ['temperature']",
    ),
    "sweep string for a seed list in config": (
        SWEEP,
        _config('seeds = "0 1"\n', ".toml"),
        "config key 'seeds' has value '0 1'; valid: a list of integers",
    ),
    "sweep parameter seed beyond 64 bits in config": (
        SWEEP,
        _config('{"param_seed": 9223372036854775808}'),
        "--param-seed (config key param_seed) must be an integer in 0 … 9223372036854775807",
    ),
    "sweep corrupted part": (SWEEP, _corrupted_sweep_part, "T000.nc' is unreadable"),
    "sweep empty results folder name": (
        SWEEP + ["--results-dir", " "],
        None,
        "--results-dir is empty",
    ),
    "sweep folder being written by another run": (
        SWEEP,
        _locked_folder,
        "is being written by another process (pid",
    ),
    "sweep config.json not an object": (
        SWEEP,
        _as_results_dir(_config_not_an_object),
        "config.json' holds a JSON array, not an object",
    ),
    # quantum
    "quantum temperature too high for the floats": (
        QUANTUM + ["--estimator", "covariance", "--temperature", "1e12"],
        None,
        "temperature 1e+12 is meaningless for this network (energy scale 17.4): above 1.17e+09",
    ),
    "quantum ten billion examples": (
        QUANTUM + ["--num-examples", "10000000000"],
        None,
        "this run needs about 1.2 TiB of memory (data 1.2 TiB)",
    ),
    "quantum too many qubits": (
        QUANTUM + ["--qubits", "40"],
        None,
        "--qubits must be in 2 … 12 for training with --solver dense, got 40",
    ),
    "quantum sparse solver for a thermal estimator": (
        QUANTUM + ["--estimator", "covariance", "--solver", "sparse"],
        None,
        "--solver sparse needs --estimator ep or eigenstate, got 'covariance'",
    ),
    "quantum shot model without shots": (
        QUANTUM + ["--shot-model", "gaussian"],
        None,
        "--shot-model gaussian and --error-signal noisy describe finite shots: give --shots N",
    ),
    "quantum unknown error signal": (
        QUANTUM + ["--shots", "10", "--error-signal", "loud"],
        None,
        "--error-signal has value 'loud'; valid: ['noisy', 'exact']",
    ),
    "quantum evaluation every zero steps": (
        QUANTUM + ["--eval-every", "0"],
        None,
        "eval_every must be an integer ≥ 1, got 0",
    ),
    "quantum zero epochs": (QUANTUM + ["--epochs", "0"], None, "epochs must be an integer ≥ 1"),
    "quantum shots with Kubo–Mori": (
        QUANTUM + ["--estimator", "covariance", "--shots", "100"],
        None,
        "shots are not available with method",
    ),
    "quantum negative temperature": (
        QUANTUM + ["--estimator", "covariance", "--temperature", "-0.1"],
        None,
        "temperature must be a finite number > 0, got -0.1",
    ),
    "quantum level beyond the spectrum": (
        QUANTUM + ["--estimator", "eigenstate", "--level", "8"],
        None,
        "level must be an integer in 0 … 7 for 3 qubits, got 8",
    ),
    "quantum batch larger than data": (
        QUANTUM + ["--batch-size", "500"],
        None,
        "batch_size 500 exceeds the 20 training examples",
    ),
    "quantum test fraction above one": (
        QUANTUM + ["--test-fraction", "1.5"],
        None,
        "test_fraction must lie in (0, 1), got 1.5",
    ),
    "quantum unknown dataset in config": (
        QUANTUM,
        _config('{"dataset": "spirals"}'),
        "config key 'dataset' has value 'spirals'; valid: ['moons', 'circles']",
    ),
    "quantum seed beyond 64 bits": (
        QUANTUM + ["--seed", str(2**64)],
        None,
        "--seed (config key seed) must be an integer in 0 … 9223372036854775807 (2**63 − 1), got "
        "18446744073709551616",
    ),
    "quantum results folder under a file": (QUANTUM, _under_a_file, "is not writable"),
    "quantum empty results folder name": (
        QUANTUM + ["--results-dir", ""],
        None,
        "--results-dir is empty",
    ),
    "quantum folder being written by another run": (
        QUANTUM,
        _locked_folder,
        "is being written by another process (pid",
    ),
    "quantum config.json not an object": (
        QUANTUM,
        _as_results_dir(_config_not_an_object),
        "config.json' holds a JSON array, not an object",
    ),
    "quantum garbled metrics line": (
        QUANTUM,
        _garbled_metrics(QUANTUM),
        "metrics.jsonl' is damaged at line 1 (not JSON",
    ),
    # diagnose
    "diagnose missing folder": (
        ["diagnose", "/nonexistent/run"],
        None,
        "'/nonexistent/run' does not exist or is not a folder",
    ),
    "diagnose empty folder": (
        ["diagnose"],
        _empty_folder,
        "neither a sweep nor a training results folder",
    ),
    "diagnose sweep without series": (["diagnose"], _sweep_config_only, "has no gradient series"),
    "diagnose empty run folder name": (["diagnose", ""], None, "RUN_FOLDER is empty ('')"),
    "diagnose empty output folder name": (
        ["diagnose", "--out", ""],
        _empty_folder,
        "--out is empty",
    ),
    "diagnose output folder that is a file": (
        ["diagnose"],
        _file_as_out,
        "a-file' is a file; give a folder for the tables and plots",
    ),
    "diagnose config.json not an object": (
        ["diagnose"],
        _config_not_an_object,
        "config.json' holds a JSON array, not an object",
    ),
    "diagnose garbled metrics line": (
        ["diagnose"],
        lambda tmp_path: _garbled_metrics(TRAIN)(tmp_path)[1:],
        "metrics.jsonl' is damaged at line 1 (not JSON",
    ),
    "diagnose zero parameters": (
        ["diagnose", "--max-parameters", "0"],
        _empty_folder,
        "max_parameters must be an integer ≥ 1, got 0",
    ),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_command_line_gives_one_line_naming_the_value(case, tmp_path, capsys):
    argv, setup, fragment = CLI_CASES[case]
    argv = [*argv, *(setup(tmp_path) if setup else [])]
    if argv[0] in ("train", "sweep", "quantum") and "--results-dir" not in argv:
        argv += ["--results-dir", str(tmp_path / "results")]
    capsys.readouterr()  # what a setup printed
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse refuses before main's own handling
        code = exit_info.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"thermoeqprop {argv[0]}: error: "), err
    assert fragment in err, err
    assert "Traceback" not in err


# Runs that go bad midway: one line naming the epoch and the reason, exit status 3, and the
# bad epoch is not saved (thermoeqprop._health.epoch_faults, check_parameters_after).
FAULT_CASES = {
    "learning rate that blows the couplings up": (
        [*TRAIN, "--batch-size", "512", "--learning-rate", "1e12"],
        "epoch 1: the couplings blew up: the energy scale grew from 191 to",
    ),
    "relaxation that never converges": (
        [*TRAIN, "--batch-size", "512", "--max-iterations", "1"],
        "epoch 1: no example's free relaxation reached the tolerance in some batch",
    ),
    # The step loop of `quantum` (train_steps) checks its steps as train checks epochs.
    "quantum learning rate that blows the couplings up": (
        [*QUANTUM, "--learning-rate", "1e12"],
        "steps 1–4: the couplings blew up: the energy scale grew from 17.5 to",
    ),
}


@pytest.mark.parametrize("case", list(FAULT_CASES))
def test_a_run_that_goes_bad_stops_with_one_line_naming_the_epoch(case, tmp_path, capsys):
    argv, fragment = FAULT_CASES[case]
    folder = tmp_path / "run"
    code = main([*argv, "--results-dir", str(folder)])
    err = capsys.readouterr().err.strip()
    assert code == 3, err
    assert err.startswith(f"thermoeqprop {argv[0]}: error: ") and len(err.splitlines()) == 1, err
    assert fragment in err and "Traceback" not in err, err
    assert (folder / "metrics.jsonl").read_text() == ""  # the bad epoch was not saved
    assert not list((folder / "checkpoints").iterdir())


# ---------------------------------------------------------------------------- Python API


def _spin():
    from thermoeqprop.models import SpinNetwork

    return SpinNetwork.layered((2, 3, 1))


def _layered():
    from thermoeqprop.models import LayeredNetwork

    return LayeredNetwork((4, 5, 3))


def _ep(**kwargs):
    from thermoeqprop.estimators import ZeroTemperatureEP

    return ZeroTemperatureEP(_layered(), **({"beta": 0.1} | kwargs))


def _ep_call(x, targets):
    estimator = _ep()
    params = estimator.model.init_params(jax.random.key(0))
    return estimator(params, x, targets, jax.random.key(1))


def _call_with_params(estimator, change):
    """``estimator`` on a batch of 2 with its model's initial parameters changed by
    ``change(params)``."""
    params = change(estimator.model.init_params(jax.random.key(0)))
    x = jnp.zeros((2, estimator.model.num_inputs))
    targets = jnp.zeros((2, estimator.model.num_outputs))
    return estimator(params, x, targets, jax.random.key(1))


def _not_positive_definite(params):
    """Couplings of 5 between the hidden layer and the outputs: A = I − K has a negative
    eigenvalue."""
    return params | {"weights": (params["weights"][0], 5 * jnp.ones_like(params["weights"][1]))}


def _exact_quadratic():
    from thermoeqprop.estimators import ThermalExact
    from thermoeqprop.models import QuadraticNetwork

    return ThermalExact(QuadraticNetwork((4, 5, 3)), temperature=0.5)


def _sample(**change):
    import samplers

    def energy_fn(position, context):
        return 0.5 * jnp.sum(position**2)

    local = samplers.hmc(energy_fn, num_warmup=0, num_steps=2)
    args = {"rng_key": jax.random.key(0), "kernel": local, "position": jnp.zeros((2, 3)),
            "temperature": 1.0, "num_samples": 2} | change  # fmt: skip
    if change.pop("tempered", False):
        args["kernel"] = samplers.parallel_tempering(local)
        args["position"] = jnp.zeros((2, 3, 3))
    return samplers.sample(**{k: v for k, v in args.items() if k != "tempered"})


def _sweep(**change):
    from thermoeqprop.sweep import temperature_sweep

    net = _spin()
    args = {"temperatures": [0.5, 1.0], "x": jnp.ones((2, 2)),
            "targets": net.encode_labels(jnp.array([0, 1]))} | change  # fmt: skip
    return temperature_sweep(net, net.init_params(jax.random.key(0)), args.pop("x"),
                             args.pop("targets"), args.pop("temperatures"), **args)  # fmt: skip


def _quantum(name, *args, **kwargs):
    import thermoeqprop.quantum as quantum

    return lambda: getattr(quantum, name)(*args, **kwargs)


def _train_with(config=None, **kwargs):
    from thermoeqprop.data import load_dataset
    from thermoeqprop.estimators import ZeroTemperatureEP
    from thermoeqprop.models import LayeredNetwork
    from thermoeqprop.training import TrainConfig, train

    config = TrainConfig(epochs=1) if config is None else config
    net = kwargs.pop("net", LayeredNetwork((64, 8, 10)))
    estimator = kwargs.pop("estimator", ZeroTemperatureEP(net))
    return train(estimator, load_dataset("digits"), config, **kwargs)


def _on_digits(name, **kwargs):
    """The estimator ``name`` on the network of :func:`_train_with`."""
    import thermoeqprop.estimators as estimators
    from thermoeqprop.models import LayeredNetwork

    return getattr(estimators, name)(LayeredNetwork((64, 8, 10)), **kwargs)


def _thermal(**kwargs):
    from thermoeqprop.estimators import ThermalCovariance

    return ThermalCovariance(_layered(), **({"temperature": 0.1} | kwargs))


def _sampling(**kwargs):
    from thermoeqprop.estimators import Sampling

    return Sampling(**kwargs)


def _training_config(**kwargs):
    from thermoeqprop.training import TrainConfig

    return TrainConfig(**kwargs)


def _train_steps(source, **kwargs):
    from thermoeqprop.quantum import EigenstateEP, classifier_network
    from thermoeqprop.training import StepConfig, train_steps

    estimator = EigenstateEP(classifier_network(2, 2))
    return train_steps(estimator, source, StepConfig(steps=1), **kwargs)


def _step_config(**kwargs):
    from thermoeqprop.training import StepConfig

    return StepConfig(**kwargs)


def _dataset(*args, **kwargs):
    from thermoeqprop.data import load_dataset

    return load_dataset(*args, **kwargs)


# name: (call, fragment of the message)
API_CASES = {
    "NaN in the inputs": (
        lambda: _ep_call(jnp.full((2, 4), jnp.nan), jnp.zeros((2, 3))),
        "x contains 8 non-finite value(s) (NaN or inf), the first at index (0, 0)",
    ),
    "infinite target": (
        lambda: _ep_call(jnp.zeros((1, 4)), jnp.array([[0.0, jnp.inf, 0.0]])),
        "targets contains 1 non-finite value(s)",
    ),
    "NaN parameters at T = 0": (
        lambda: _call_with_params(
            _ep(), lambda p: p | {"biases": (p["biases"][0].at[2].set(jnp.nan), p["biases"][1])}
        ),
        "params['biases'][0] holds 1 non-finite value(s) (NaN or inf), the first at index (2,) "
        "= nan; parameters must be finite",
    ),
    "infinite parameters of a thermal estimator": (
        lambda: _call_with_params(
            _thermal(), lambda p: p | {"weights": (p["weights"][0] * jnp.inf, p["weights"][1])}
        ),
        "params['weights'][0] holds",
    ),
    "quadratic network without a Gibbs law": (
        lambda: _call_with_params(_exact_quadratic(), _not_positive_definite),
        "the precision matrix A = I − K of this QuadraticNetwork is not positive definite "
        "(smallest eigenvalue",
    ),
    "inputs of the wrong width": (
        lambda: _ep_call(jnp.zeros((2, 5)), jnp.zeros((2, 3))),
        "x must have shape (batch, 4) (examples × input features), got shape (2, 5)",
    ),
    "inputs and targets of different lengths": (
        lambda: _ep_call(jnp.zeros((2, 4)), jnp.zeros((3, 3))),
        "x has 2 examples but targets has 3",
    ),
    "label out of range": (
        lambda: _layered().encode_labels(jnp.array([0, 3])),
        "label 3, outside the valid range 0 … 2 (3 classes)",
    ),
    "layer sizes that do not fit the data": (
        lambda: _train_with(net=_layered()),
        "the model takes 4 inputs but dataset 'digits' has 64 features",
    ),
    "zero nudging": (lambda: _ep(beta=0.0), "beta must be finite and > 0, got 0.0"),
    "negative temperature": (
        lambda: _thermal(temperature=-1.0),
        "temperature must be finite and > 0, got -1.0",
    ),
    "unknown sampler name": (
        lambda: _sampling(method="slice"),
        "unknown sampling method 'slice'; valid: ('auto', 'nuts', 'hmc', 'gibbs', 'metropolis', "
        "'importance')",
    ),
    "unknown optimizer name": (
        lambda: _training_config(optimizer="rmsprop"),
        "unknown optimizer 'rmsprop'; valid: ['adam', 'sgd', 'momentum']",
    ),
    "evaluation every zero steps": (
        lambda: _step_config(eval_every=0),
        "eval_every must be an integer ≥ 1, got 0",
    ),
    "data source of the wrong width": (
        lambda: _train_steps(lambda key, step: (jnp.zeros((4, 3)), jnp.zeros((4, 1)))),
        "x from the data source at step 1 must have shape (batch, 2) (examples × input "
        "features), got shape (4, 3)",
    ),
    "data source without targets": (
        lambda: _train_steps(lambda key, step: jnp.zeros((4, 2))),
        "the data source must return (x, targets), got an array of shape (4, 2) at step 1",
    ),
    "initial scale for an unknown group": (
        _quantum(
            "classifier_network", 2, 2, init_noise={"field": 0.1, "coupling": 0.1, "inputs": 0.1}
        ),  # fmt: skip
        "init_noise must give a number for each parameter group ['coupling', 'field', "
        "'input'] and no other; missing ['input'], unknown ['inputs']",
    ),
    "projector on a bit of 2": (
        _quantum("projector", {0: 2}, 2),
        "projector bits must be 0 or 1, got 2 for qubit 0",
    ),
    "unknown dataset name": (
        lambda: _dataset("mnist"),
        "unknown dataset 'mnist'; valid datasets are ['circles', 'digits', 'moons']",
    ),
    "training at a temperature the floats cannot resolve": (
        lambda: _train_with(estimator=_on_digits("ThermalCovariance", temperature=1e300)),
        "temperature 1e+300 is meaningless for this network",
    ),
    "training with a nudge stronger than the network": (
        lambda: _train_with(estimator=_on_digits("ZeroTemperatureEP", beta=1e6)),
        "beta 1e+06 makes the nudge β·C",
    ),
    "training that would not fit in memory": (
        lambda: _train_with(
            estimator=_on_digits("ThermalCovariance", sampling=_sampling(num_chains=10**8))
        ),
        "this run needs about",
    ),
    "results folder under a file": (None, "is not writable"),  # built in the test (needs tmp_path)
    "sampler at T = 0": (
        lambda: _sample(temperature=0.0),
        "temperature must be a finite number > 0, got 0.0",
    ),
    "non-finite sampler start": (
        lambda: _sample(position=jnp.zeros((2, 3)).at[1, 2].set(jnp.nan)),
        "chain 1 has position[1, 2] = nan",
    ),
    "ladder that is not monotone": (
        lambda: _sample(tempered=True, temperature=jnp.array([1.0, 3.0, 2.0])),
        "strictly increasing",
    ),
    "sweep with a repeated temperature": (
        lambda: _sweep(temperatures=[0.5, 0.5]),
        "temperatures must be distinct",
    ),
    "sweep at a temperature the floats cannot resolve": (
        lambda: _sweep(temperatures=[0.5, 1e300]),
        "temperature 1e+300 is meaningless for this network",
    ),
    "sweep with an unknown estimator": (
        lambda: _sweep(estimators=["magic"]),
        "unknown estimator 'magic'",
    ),
    "non-Hermitian term": (
        _quantum("trainable", [(0.5j, "XY")], 0.1),
        "not Hermitian: the coefficient of XY is 0.5j",
    ),
    "qubit index out of range": (
        _quantum("pauli", "X0 Z4", num_qubits=4),
        "qubit index 4 in 'X0 Z4' is out of range; valid indices are 0 … 3",
    ),
    "repeated qubit index": (_quantum("pauli", "X1 Y1", num_qubits=3), "qubit index 1 is repeated"),
    "dense request too large for memory": (
        lambda: _quantum("pauli", {0: "X"}, 24)().to_dense(),
        "24 qubits needs about",
    ),
}


@pytest.mark.parametrize("case", list(API_CASES))
def test_python_api_raises_one_line_naming_the_value(case, tmp_path):
    call, fragment = API_CASES[case]
    if call is None:  # the results folder case
        blocker = tmp_path / "a-file"
        blocker.write_text("not a folder")

        def call():
            return _train_with(results_dir=blocker / "run")

    with pytest.raises(ValueError) as error:
        call()
    message = str(error.value)
    assert fragment in message, message
    assert "\n" not in message, message


def test_the_table_is_large_enough():
    assert len(CLI_CASES) + len(API_CASES) >= 25


def test_a_corrupted_checkpoint_is_named_in_python_too(tmp_path):
    from thermoeqprop.training import CheckpointError

    folder = tmp_path / "run"
    _train_with(results_dir=folder)
    checkpoint = folder / "checkpoints" / "epoch_0001.npz"
    with zipfile.ZipFile(checkpoint, "a") as archive:  # a stray member: no longer our file
        archive.writestr("params_99.npy", b"junk")
    with pytest.raises(CheckpointError, match="epoch_0001.npz fails its checksum"):
        _train_with(results_dir=folder)  # the same run again: it resumes from that file
