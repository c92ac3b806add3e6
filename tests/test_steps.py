"""The step loop (``thermoeqprop.training.train_steps``) on a classical network, where every
gradient is exact: fresh examples from a source, records every N steps, a fixed data set in
epochs, held-out evaluation, penalties and constraints as optax transformations, the results
folder and its bit-for-bit resume. The warm-start state and the quantum experiment are in
``tests/quantum/test_quantum_experiment.py``."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from thermoeqprop.estimators import FeedforwardBackprop
from thermoeqprop.models import LayeredNetwork
from thermoeqprop.training import (
    StepConfig,
    add_penalty,
    dataset_source,
    held_out,
    project,
    train_steps,
)


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def estimator():
    return FeedforwardBackprop(LayeredNetwork((3, 5, 2)))


def teacher_source(rng_key, step):
    """Fresh examples each step: x ~ N(0, 1)³, targets a fixed smooth map of x in (0, 1)²."""
    x = jax.random.normal(rng_key, (8, 3))
    return x, jax.nn.sigmoid(jnp.stack([x[:, 0] - x[:, 1], x[:, 2]], axis=1))


STOP_AT = []  # steps at which interruptible_source raises


def interruptible_source(rng_key, step):
    """``teacher_source`` that raises :class:`Interrupt` at the steps in ``STOP_AT`` (one
    function for both runs: the source is part of a run's recorded configuration)."""
    if step in STOP_AT:
        raise Interrupt
    return teacher_source(rng_key, step)


def leaves_equal(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(u, v)


def test_fresh_examples_records_every_n_steps_and_the_loss_falls(estimator):
    seen = []

    def source(rng_key, step):
        seen.append(step)
        return teacher_source(rng_key, step)

    config = StepConfig(steps=70, eval_every=30, learning_rate=0.05, seed=1)
    x_test, y_test = teacher_source(jax.random.key(99), 0)
    evaluate = held_out(x_test, y_test)
    # The loop's initial parameters: the first of four keys split from the seed.
    initial = estimator.model.init_params(jax.random.split(jax.random.key(1), 4)[0])
    before = evaluate(estimator, initial, jax.random.key(0))["test_loss"]
    result = train_steps(estimator, source, config, evaluate=evaluate)
    assert seen == list(range(1, 71))
    assert [r["step"] for r in result.history] == [30, 60, 70]
    assert [r["batches"] for r in result.history] == [30, 30, 10]
    assert "epoch" not in result.history[0]  # a stream has no epochs
    # Exact gradients on a smooth teacher: the held-out loss (mean cost of the predictions)
    # falls; recomputed here from the predictions.
    outputs = estimator.predict(result.params, x_test)
    cost = jnp.mean(jax.vmap(estimator.model.cost)(outputs, y_test))
    assert result.history[-1]["test_loss"] == pytest.approx(float(cost), rel=1e-12)
    assert result.history[-1]["test_loss"] < 0.8 * before


def test_dataset_source_draws_each_example_once_per_epoch():
    x = jnp.arange(10.0)[:, None]
    source = dataset_source(x, -x, 3, seed=4, name="ten")
    assert source.steps_per_epoch == 3  # 3 full batches; one example waits for a later epoch
    firsts = [source(jax.random.key(0), step) for step in (1, 2, 3)]
    used = np.concatenate([np.asarray(b[0][:, 0]) for b in firsts])
    assert len(set(used.tolist())) == 9
    np.testing.assert_array_equal(firsts[0][1], -firsts[0][0])  # rows stay paired
    # The order is a function of (seed, epoch) alone, not of the key or of earlier calls.
    again = dataset_source(x, -x, 3, seed=4)(jax.random.key(7), 2)
    np.testing.assert_array_equal(again[0], firsts[1][0])
    second_epoch = np.asarray(source(jax.random.key(0), 4)[0][:, 0])
    assert not np.array_equal(second_epoch, used[:3])
    assert source.epoch(6) == 2.0
    assert "ten" in repr(source) and "10 examples" in repr(source)
    with pytest.raises(ValueError, match="batch_size 11 exceeds the 10 training examples"):
        dataset_source(x, x, 11)


def test_penalty_and_projection_as_transformations(estimator):
    params = estimator.model.init_params(jax.random.key(0))
    grad = jax.tree.map(jnp.ones_like, params)
    # A penalty ½λ‖θ‖² adds λθ to the gradient, as optax's own weight decay does.
    ours = add_penalty(lambda p: 0.05 * optax.tree.norm(p, squared=True))
    theirs = optax.add_decayed_weights(0.1)
    leaves_equal(
        ours.update(grad, ours.init(params), params)[0],
        theirs.update(grad, theirs.init(params), params)[0],
    )
    # A box: every parameter stays within ±0.3 through training, chained after Adam.
    box = project(lambda p: jax.tree.map(lambda leaf: jnp.clip(leaf, -0.3, 0.3), p))
    optimizer = optax.chain(optax.add_decayed_weights(1e-3), optax.adam(0.1), box)
    config = StepConfig(steps=20, eval_every=20)
    result = train_steps(estimator, teacher_source, config, optimizer=optimizer)
    values = np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(result.params)])
    assert np.max(np.abs(values)) <= 0.3 + 1e-15
    assert np.sum(np.abs(values) > 0.3 - 1e-12) > 0  # the bound was reached: it acted
    with pytest.raises(ValueError, match="project needs the parameters"):
        box.update(grad, box.init(params))


def test_interrupted_run_resumes_bit_for_bit(estimator, tmp_path):
    """A kill inside the data source at step 23 (records every 10 steps, a chained optimiser
    whose state is checkpointed too): the rerun repeats steps 21–23 and ends where an
    uninterrupted run ends, with the same metrics lines (but the clock)."""
    config = StepConfig(steps=40, eval_every=10, learning_rate=0.05, seed=2)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.05))
    evaluate = held_out(*teacher_source(jax.random.key(5), 0))
    kwargs = {"optimizer": optimizer, "evaluate": evaluate, "extra_config": {"clip": 1.0}}
    straight = train_steps(estimator, interruptible_source, config, tmp_path / "straight", **kwargs)
    STOP_AT.append(23)
    try:
        with pytest.raises(Interrupt):
            train_steps(estimator, interruptible_source, config, tmp_path / "cut", **kwargs)
    finally:
        STOP_AT.clear()
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [10, 20]
    logged = []
    resumed = train_steps(
        estimator, interruptible_source, config, tmp_path / "cut", log=logged.append, **kwargs
    )
    assert logged == [
        f"resuming {tmp_path / 'cut'} after step 20 of 40 (checkpoint step_00000020.npz): "
        "steps 21–40 to go"
    ]
    leaves_equal(straight.params, resumed.params)
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed.history] == [
        {k: v for k, v in r.items() if k not in drop} for r in straight.history
    ]
    names = sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir())
    assert names == ["step_00000030.npz", "step_00000040.npz"]


def test_another_configuration_is_refused_and_a_constant_run_extends(estimator, tmp_path):
    short = StepConfig(steps=10, eval_every=5, learning_rate=0.05)
    train_steps(estimator, teacher_source, short, tmp_path / "run")
    other = StepConfig(steps=10, eval_every=2, learning_rate=0.05)
    with pytest.raises(ValueError, match="train.eval_every: 5 there, 2 now"):
        train_steps(estimator, teacher_source, other, tmp_path / "run")
    # Constant rate: more steps continue the run exactly (step s depends on (seed, s) alone).
    longer = StepConfig(steps=20, eval_every=5, learning_rate=0.05)
    extended = train_steps(estimator, teacher_source, longer, tmp_path / "run")
    straight = train_steps(estimator, teacher_source, longer, tmp_path / "straight")
    assert [r["step"] for r in extended.history] == [5, 10, 15, 20]
    leaves_equal(extended.params, straight.params)
    # Under a cosine schedule the length is part of every step: refused.
    cosine = StepConfig(steps=10, eval_every=5, learning_rate=0.05, lr_schedule="cosine")
    train_steps(estimator, teacher_source, cosine, tmp_path / "cosine")
    longer_cosine = StepConfig(steps=20, eval_every=5, learning_rate=0.05, lr_schedule="cosine")
    with pytest.raises(ValueError, match="train.steps: 10 there, 20 now"):
        train_steps(estimator, teacher_source, longer_cosine, tmp_path / "cosine")


def test_non_finite_loss_is_named(estimator):
    def poisoned(rng_key, step):  # finite targets whose squared error overflows
        x, y = teacher_source(rng_key, step)
        return x, y * (1e300 if step == 3 else 1.0)

    with pytest.raises(
        FloatingPointError, match="steps 1–4: the loss became non-finite at batch 3"
    ):
        train_steps(estimator, poisoned, StepConfig(steps=4, eval_every=4))


def test_steps_that_blow_the_couplings_up_stop_the_run_and_keep_the_last_good_ones(
    estimator, tmp_path
):
    # Plain gradient descent whose rate jumps from 0.1 to 1e12 at step 5: steps 1–4 are good,
    # steps 5–8 multiply the energy scale by far more than 1/√ε.
    rate = optax.piecewise_constant_schedule(0.1, {4: 1e13})
    config = StepConfig(steps=12, eval_every=4)
    folder = tmp_path / "run"
    with pytest.raises(FloatingPointError) as stopped:
        train_steps(estimator, teacher_source, config, folder, optimizer=optax.sgd(rate))
    message = str(stopped.value)
    assert message.startswith("steps 5–8: the couplings blew up: the energy scale grew from")
    assert message.endswith(f"(steps 1–4 are saved in {folder})"), message
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [4]
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["step_00000004.npz"]
