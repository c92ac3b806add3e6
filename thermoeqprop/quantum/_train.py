"""A small training loop and data preparation for qubit classifiers.

Kept inside the quantum package until the shared loop (``thermoeqprop.training``) and data
loaders (``thermoeqprop.data``) land on main; it uses only the ``Model``/``Estimator``
interfaces, so switching is a matter of calling the shared loop instead.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from thermoeqprop._protocols import Estimator

__all__ = ["TwoClassData", "accuracy", "load_two_class", "train_classifier"]


@dataclasses.dataclass(frozen=True)
class TwoClassData:
    """Features scaled to [−1, 1] per column (fitted on the training split) and 0/1 labels."""

    name: str
    x_train: np.ndarray
    labels_train: np.ndarray
    x_test: np.ndarray
    labels_test: np.ndarray


def load_two_class(
    name: str = "moons",
    num_train: int = 200,
    num_test: int = 200,
    noise: float | None = None,
    seed: int = 0,
) -> TwoClassData:
    """A fixed split of scikit-learn's ``make_moons`` or ``make_circles`` (nothing downloaded).

    Args:
        name: ``"moons"`` (noise 0.1 by default) or ``"circles"`` (noise 0.05, factor 0.5).
        num_train: Training examples.
        num_test: Held-out examples.
        noise: Gaussian noise of the generator (default per data set).
        seed: Generator seed; the split is the first ``num_train`` of a shuffled draw.

    Example:
        >>> data = load_two_class("moons", num_train=10, num_test=5)
        >>> data.x_train.shape, data.x_test.shape
        ((10, 2), (5, 2))
    """
    from sklearn.datasets import make_circles, make_moons

    total = num_train + num_test
    if name == "moons":
        x, labels = make_moons(total, noise=0.1 if noise is None else noise, random_state=seed)
    elif name == "circles":
        x, labels = make_circles(
            total, noise=0.05 if noise is None else noise, factor=0.5, random_state=seed
        )
    else:
        raise ValueError(f"data set must be 'moons' or 'circles', got {name!r}")
    lo, hi = x[:num_train].min(axis=0), x[:num_train].max(axis=0)
    x = 2.0 * (x - lo) / (hi - lo) - 1.0
    return TwoClassData(name, x[:num_train], labels[:num_train], x[num_train:], labels[num_train:])


def accuracy(estimator: Estimator, params, x, labels, rng_key=None) -> float:
    """Fraction of ``labels`` that the model's decoded predictions get right."""
    outputs = estimator.predict(params, jnp.asarray(x), rng_key)
    predicted = np.asarray(estimator.model.decode_outputs(outputs))
    return float(np.mean(predicted == np.asarray(labels)))


def train_classifier(
    estimator: Estimator,
    data: TwoClassData,
    *,
    epochs: int = 30,
    batch_size: int = 20,
    learning_rate: float = 0.05,
    rng_key: jax.Array,
    params=None,
    callback: Callable[[dict], None] | None = None,
):
    """Train with Adam (cosine-decayed step size) on the estimator's gradients.

    Args:
        estimator: Any :class:`~thermoeqprop._protocols.Estimator`.
        data: The split.
        epochs: Passes over the training set.
        batch_size: Examples per step (the last partial batch is dropped).
        learning_rate: Initial Adam step size, decayed by a cosine to a tenth of it.
        rng_key: PRNG key, split into initialisation, shuffling and estimator keys.
        params: Start here instead of ``estimator.model.init_params``.
        callback: Called with each epoch's metrics dictionary.

    Returns:
        ``(params, history)`` where ``history`` is a list of per-epoch metric dictionaries
        (``epoch``, ``loss``, ``grad_stderr``, ``train_accuracy``, ``test_accuracy``,
        ``seconds``).
    """
    model = estimator.model
    key_init, key_loop = jax.random.split(rng_key)
    if params is None:
        params = model.init_params(key_init)
    x_train = jnp.asarray(data.x_train)
    targets = model.encode_labels(jnp.asarray(data.labels_train))
    n = x_train.shape[0]
    steps = max(n // batch_size, 1)
    # Cosine decay to a tenth: late epochs stop bouncing between nearby minima.
    schedule = optax.cosine_decay_schedule(learning_rate, epochs * steps, alpha=0.1)
    optimizer = optax.adam(schedule)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, x, targets, key):
        estimate = estimator(params, x, targets, key)
        updates, opt_state = optimizer.update(estimate.grad, opt_state, params)
        stderr = (
            jnp.zeros(())
            if estimate.stderr is None
            else jnp.sqrt(jnp.mean(jnp.asarray(estimate.stderr) ** 2))
        )
        return optax.apply_updates(params, updates), opt_state, estimate.loss, stderr

    history = []
    for epoch in range(epochs):
        start = time.perf_counter()
        key_loop, key_perm, key_steps = jax.random.split(key_loop, 3)
        order = np.asarray(jax.random.permutation(key_perm, n))
        losses, stderrs = [], []
        for i, key in enumerate(jax.random.split(key_steps, steps)):
            idx = order[i * batch_size : (i + 1) * batch_size]
            params, opt_state, loss, stderr = step(
                params, opt_state, x_train[idx], targets[idx], key
            )
            losses.append(float(loss))
            stderrs.append(float(stderr))
        if not np.all(np.isfinite(np.asarray(params))):
            raise FloatingPointError(
                f"parameters became non-finite at epoch {epoch + 1}; a level was degenerate or "
                f"could not be tracked (see the estimator's diagnostics)"
            )
        record = {
            "epoch": epoch + 1,
            "loss": float(np.mean(losses)),
            "grad_stderr": float(np.mean(stderrs)),
            "train_accuracy": accuracy(estimator, params, data.x_train, data.labels_train),
            "test_accuracy": accuracy(estimator, params, data.x_test, data.labels_test),
            "seconds": time.perf_counter() - start,
        }
        history.append(record)
        if callback is not None:
            callback(record)
    return params, history
