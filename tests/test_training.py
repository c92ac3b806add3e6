"""Training loop: learning, results folder, interruption and bit-exact resume, bad input."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from thermoeqprop._provenance import run_environment
from thermoeqprop.data import Dataset, load_dataset
from thermoeqprop.estimators import FeedforwardBackprop, Relaxation, ZeroTemperatureEP
from thermoeqprop.models import LayeredNetwork
from thermoeqprop.training import CheckpointError, TrainConfig, evaluate, load_checkpoint, train


@pytest.fixture(scope="module")
def small_digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def estimator():
    net = LayeredNetwork((64, 64, 10))
    return ZeroTemperatureEP(net, beta=0.5, relaxation=Relaxation(tolerance=1e-5))


CONFIG = TrainConfig(epochs=3, batch_size=32, learning_rate=1e-2, seed=3)


class Interrupt(Exception):
    pass


def test_ep_learns_and_writes_a_results_folder(small_digits, estimator, tmp_path):
    result = train(estimator, small_digits, CONFIG, tmp_path / "run")
    accuracies = [h["test_accuracy"] for h in result.history]
    # 10 classes: chance is 0.1. Three epochs already go far beyond it.
    assert accuracies[-1] > 0.6, accuracies
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["estimator"]["type"] == "ZeroTemperatureEP"
    assert config["train"]["epochs"] == 3
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    assert json.loads(lines[-1])["diag_free_converged_fraction"] == 1.0
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert checkpoints == ["epoch_0002.npz", "epoch_0003.npz"]


def test_interrupted_run_resumes_to_the_same_parameters(small_digits, estimator, tmp_path):
    reference = train(estimator, small_digits, CONFIG, tmp_path / "straight")

    def interrupt_at_epoch_2(current, epoch):
        if epoch == 2:
            raise Interrupt
        return current

    with pytest.raises(Interrupt):
        train(estimator, small_digits, CONFIG, tmp_path / "cut", schedule=interrupt_at_epoch_2)
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1  # the finished epoch is kept
    resumed = train(estimator, small_digits, CONFIG, tmp_path / "cut")
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for a, b in zip(
        jax.tree_util.tree_leaves(reference.params),
        jax.tree_util.tree_leaves(resumed.params),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    assert resumed.history[-1]["test_accuracy"] == reference.history[-1]["test_accuracy"]


def test_corrupted_checkpoint_is_detected_and_named(small_digits, estimator, tmp_path):
    config = TrainConfig(epochs=1, batch_size=64, seed=0)
    result = train(estimator, small_digits, config, tmp_path / "run")
    path = tmp_path / "run" / "checkpoints" / "epoch_0001.npz"
    params = result.params
    opt_state = config.make_optimizer(22).init(params)
    epoch, restored, _ = load_checkpoint(path, params, opt_state)
    assert epoch == 1
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])  # truncated
    with pytest.raises(CheckpointError, match="epoch_0001.npz is truncated or corrupted"):
        train(estimator, small_digits, config, tmp_path / "run")
    # Flip bytes inside an array: the file still opens, the checksum catches it.
    import io
    import zipfile

    buffer = io.BytesIO(raw)
    with zipfile.ZipFile(buffer) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    name = next(n for n in members if n.startswith("params_"))
    data = bytearray(members[name])
    data[-3] ^= 0xFF
    members[name] = bytes(data)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for key, value in members.items():
            archive.writestr(key, value)
    path.write_bytes(out.getvalue())
    with pytest.raises(CheckpointError, match="fails its checksum"):
        load_checkpoint(path, params, opt_state)


def test_results_folder_of_another_configuration_is_refused(small_digits, estimator, tmp_path):
    train(estimator, small_digits, TrainConfig(epochs=1, batch_size=64), tmp_path / "run")
    with pytest.raises(
        ValueError, match="different configuration \\(train.batch_size: 64 there, 32 now\\)"
    ):
        train(estimator, small_digits, TrainConfig(epochs=1, batch_size=32), tmp_path / "run")
    # Under the cosine schedule more epochs would change every later step: refused too.
    with pytest.raises(ValueError, match="train.epochs: 1 there, 2 now"):
        train(estimator, small_digits, TrainConfig(epochs=2, batch_size=64), tmp_path / "run")


def test_versions_are_recorded_and_another_device_count_refuses_a_resume(
    small_digits, estimator, tmp_path
):
    config = TrainConfig(epochs=1, batch_size=64)
    train(estimator, small_digits, config, tmp_path / "run")
    path = tmp_path / "run" / "config.json"
    record = json.loads(path.read_text())
    assert record["environment"] == run_environment()
    assert record["environment"]["device_count"] == jax.device_count()
    # Written by another version on the same devices, or before versions were recorded:
    # versions do not block a resume.
    same_devices = {"thermoeqprop": "0.0.1", "jax": "0.9", "device_count": jax.device_count()}
    for environment in (same_devices, None):
        changed = dict(record)
        if environment is None:
            del changed["environment"]
        else:
            changed["environment"] = environment
        path.write_text(json.dumps(changed))
        result = train(estimator, small_digits, config, tmp_path / "run")
        assert [h["epoch"] for h in result.history] == [1]
        assert json.loads(path.read_text())["environment"] == run_environment()
    # Another device count: the shards, and so the rounding, differ; refused, naming both.
    changed = dict(record)
    changed["environment"] = {**record["environment"], "device_count": 99}
    path.write_text(json.dumps(changed))
    with pytest.raises(ValueError, match=f"99 cpu device\\(s\\).*{jax.device_count()} cpu"):
        train(estimator, small_digits, config, tmp_path / "run")


def test_a_constant_rate_run_extends_to_the_longer_run(small_digits, estimator, tmp_path):
    config = TrainConfig(epochs=2, batch_size=128, lr_schedule="constant", seed=1)
    longer = train(estimator, small_digits, config, tmp_path / "straight")
    short = dataclasses.replace(config, epochs=1)
    train(estimator, small_digits, short, tmp_path / "extended")
    extended = train(estimator, small_digits, config, tmp_path / "extended")
    assert [h["epoch"] for h in extended.history] == [1, 2]
    for a, b in zip(
        jax.tree_util.tree_leaves(longer.params),
        jax.tree_util.tree_leaves(extended.params),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_results_folder_is_named(small_digits, estimator, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(ValueError, match="not writable"):
        train(estimator, small_digits, TrainConfig(epochs=1), locked / "run")


def test_results_folder_under_a_file_is_named(small_digits, estimator, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match="is not writable"):
        train(estimator, small_digits, TrainConfig(epochs=1), blocker / "run")


def test_every_batch_sees_parameters_committed_to_the_default_device(
    small_digits, estimator, monkeypatch
):
    """The first batch gets its parameters as every later one does (updated parameters are
    committed wherever the states were gathered): a compiled function called with fresh,
    uncommitted parameters and then with committed ones compiles twice."""
    seen, call = [], type(estimator).__call__

    def spy(self, params, *args):
        seen.append({leaf.committed for leaf in jax.tree.leaves(params)})
        return call(self, params, *args)

    monkeypatch.setattr(type(estimator), "__call__", spy)
    train(estimator, small_digits, dataclasses.replace(CONFIG, epochs=1))
    assert len(seen) == len(small_digits.labels_train) // CONFIG.batch_size
    assert all(committed == {True} for committed in seen), seen[:3]


def test_predictions_are_made_in_calls_of_one_size(small_digits, estimator):
    """evaluate pads its last call to the batch size with repeats (dropped from the count):
    the same accuracy as one call over every example, and no compilation for 45 examples
    after a run over 40 (a last call of 5 rows would compile everything again)."""
    from compile_counting import COMPILES

    params = estimator.model.init_params(jax.random.key(0))
    x, labels = np.asarray(small_digits.x_test[:45]), np.asarray(small_digits.labels_test[:45])
    outputs = estimator.predict(params, x, jax.random.key(1))
    expected = np.mean(np.asarray(estimator.model.decode_outputs(outputs)) == labels)
    evaluate(estimator, params, x[:40], labels[:40], jax.random.key(2), batch_size=20)
    COMPILES["events"].clear()
    COMPILES["active"] = True
    try:
        accuracy = evaluate(estimator, params, x, labels, jax.random.key(2), batch_size=20)
    finally:
        COMPILES["active"] = False
    assert accuracy == pytest.approx(expected, abs=1e-12)
    assert COMPILES["events"] == []


def test_backprop_baseline_trains_through_the_same_loop(small_digits):
    net = LayeredNetwork((64, 64, 10))
    result = train(FeedforwardBackprop(net), small_digits, CONFIG)
    assert result.history[-1]["test_accuracy"] > 0.6


def test_layer_sizes_that_do_not_fit_the_data_are_named(small_digits):
    with pytest.raises(ValueError, match="takes 30 inputs but dataset 'digits' has 64"):
        train(ZeroTemperatureEP(LayeredNetwork((30, 8, 10))), small_digits, CONFIG)
    with pytest.raises(ValueError, match="distinguishes 3 classes but dataset"):
        train(ZeroTemperatureEP(LayeredNetwork((64, 8, 3))), small_digits, CONFIG)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs must be an integer ≥ 1, got 0"),
        ({"batch_size": 2.5}, "batch_size must be an integer"),
        ({"learning_rate": -1.0}, "learning_rate must be finite and > 0, got -1.0"),
        ({"optimizer": "adagrad"}, "unknown optimizer 'adagrad'"),
        ({"lr_schedule": "step"}, "unknown lr_schedule 'step'"),
    ],
)
def test_bad_training_configuration_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_bad_dataset_is_named():
    with pytest.raises(ValueError, match="label 12, outside the valid range 0 … 9"):
        Dataset("d", np.ones((2, 3)), np.array([0, 12]), np.ones((1, 3)), np.array([1]), 10)
    with pytest.raises(ValueError, match="x_train contains 1 non-finite"):
        Dataset("d", np.array([[np.nan]]), np.array([0]), np.ones((1, 1)), np.array([1]), 10)
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")
