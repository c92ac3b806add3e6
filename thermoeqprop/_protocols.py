"""The two interfaces the rest of thermoeqprop is written against.

A *model* knows its parameters, how labels become targets and how outputs become labels. An
*estimator* turns (parameters, inputs, targets) into a :class:`~thermoeqprop.GradientEstimate`
and can predict outputs. Training, sweeps and the command line only use these two interfaces,
so a classical energy network and a qubit network train through the same loop.
"""

from __future__ import annotations

import abc
from typing import Any

import jax
import jax.numpy as jnp

from thermoeqprop._result import GradientEstimate
from thermoeqprop._validation import check_labels

__all__ = ["Estimator", "Model"]

PyTree = Any


class Model(abc.ABC):
    """What the training loop needs to know about any network, classical or quantum."""

    num_inputs: int
    num_outputs: int

    @abc.abstractmethod
    def init_params(self, rng_key: jax.Array) -> PyTree:
        """Fresh trainable parameters (a pytree of arrays)."""

    @abc.abstractmethod
    def encode_labels(self, labels: jax.Array) -> jax.Array:
        """Integer class labels, shape (batch,), to targets of shape (batch, num_outputs)."""

    def decode_outputs(self, outputs: jax.Array) -> jax.Array:
        """Outputs of shape (batch, num_outputs) to predicted integer labels (batch,).

        The default is the arg-max over output units; binary models with one output override it.
        """
        return jnp.argmax(outputs, axis=-1)

    @property
    def num_classes(self) -> int:
        """How many classes :meth:`encode_labels` accepts (labels 0 … num_classes − 1)."""
        return self.num_outputs

    def _checked_labels(self, labels) -> jax.Array:
        """``labels`` as an array, raising if concrete ones lie outside 0 … num_classes − 1.

        ``encode_labels`` implementations start with this; traced labels pass unchecked (a
        one-hot code of an out-of-range label would silently be all zeros).
        """
        if isinstance(labels, jax.core.Tracer):
            return labels
        return jnp.asarray(check_labels("labels", labels, self.num_classes))


class Estimator(abc.ABC):
    """A gradient estimator: (params, x, targets, rng_key) → GradientEstimate.

    Subclasses are frozen dataclasses (hashable). What sets the program (the model, a level,
    a shot count, symmetric or one-sided) is static; numbers that do not (β, the
    temperature, tolerances) are passed to compiled code as traced values, so a new value
    reuses the compilation.
    """

    model: Model

    @abc.abstractmethod
    def __call__(
        self, params: PyTree, x: jax.Array, targets: jax.Array, rng_key: jax.Array
    ) -> GradientEstimate:
        """Estimate ``dL/dθ`` for the batch ``x`` (batch, num_inputs), ``targets``
        (batch, num_outputs), where ``L`` is the mean cost over the batch."""

    @abc.abstractmethod
    def predict(self, params: PyTree, x: jax.Array, rng_key: jax.Array) -> jax.Array:
        """Expected outputs (batch, num_outputs) of the free network for inputs ``x``."""
