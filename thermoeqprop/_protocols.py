"""The two interfaces the rest of thermoeqprop is written against (exported as
``thermoeqprop.Model`` and ``thermoeqprop.Estimator``).

A *model* knows its parameters, how labels become targets and how outputs become labels. An
*estimator* turns (parameters, inputs, targets) into a :class:`~thermoeqprop.GradientEstimate`
and can predict outputs. Training, sweeps and the command line only use these two interfaces,
and only the members declared here (docs/design.md#the-two-interfaces): no driver asks an
estimator or a model whether it happens to have some other member, so a classical energy
network and a qubit network train through the same loop.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from thermoeqprop._result import GradientEstimate
from thermoeqprop._validation import check_labels, check_matrix, check_params

__all__ = ["Estimator", "Model"]

PyTree = Any


class Model(abc.ABC):
    """What the training loop needs to know about any network, classical or quantum.

    Attributes:
        num_inputs: Input features per example.
        num_outputs: Output units (or output observables) per example.
        cost: The per-example cost ``cost(outputs, target)`` of outputs (num_outputs,)
            against a target (num_outputs,), a scalar; a held-out evaluation averages it.
        family: Which estimators apply (:mod:`thermoeqprop.registry` picks an estimator's
            factory by it): ``"classical"`` for energy models
            (:class:`~thermoeqprop.models.EnergyModel`), ``"quantum"`` for qubit networks
            (:class:`~thermoeqprop.quantum.QuantumNetwork`); a class variable.
    """

    num_inputs: int
    num_outputs: int
    cost: Callable[[jax.Array, jax.Array], jax.Array]
    family: ClassVar[str | None] = None

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

    @property
    def num_units(self) -> int:
        """Free units of a state (an energy model's ``state_size``) or qubits (a quantum
        network's ``num_qubits``): the count the energy-scale and memory checks use; 0 where a
        model does not say."""
        return 0

    @property
    def architecture(self) -> str:
        """A few words on the network's size for progress lines and summaries, e.g.
        ``"(64, 128, 10)"`` (layer sizes), ``"12 spins"`` or ``"6 qubits"``."""
        return f"{self.num_inputs} inputs, {self.num_outputs} outputs"

    def validate_inputs(self, x, targets=None):
        """Check inputs (batch, num_inputs) and targets (batch, num_outputs) at the boundary.

        Returns them as arrays of the default float dtype.
        """
        x = check_matrix("x", x, self.num_inputs, "examples × input features")
        if targets is None:
            return jnp.asarray(x, dtype=float), None
        targets = check_matrix("targets", targets, self.num_outputs, "examples × output units")
        if targets.shape[0] != x.shape[0]:
            raise ValueError(
                f"x has {x.shape[0]} examples but targets has {targets.shape[0]}; they must match"
            )
        return jnp.asarray(x, dtype=float), jnp.asarray(targets, dtype=float)

    def validate_params(self, params) -> None:
        """Check concrete parameters at the boundary: finite everywhere (models with more to
        check, a Gibbs law that must exist, say, extend this). Traced ones pass unchecked."""
        check_params(params)

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

    Beside the two abstract methods, every estimator has the members below with defaults
    that fit a stateless estimator of one sample-free result; an estimator overrides those
    that apply to it. ``tests/test_api_protocols.py`` checks every registered estimator
    against this contract.

    Attributes:
        model: The :class:`Model` whose gradient it estimates.
        temperature: ``T`` of a thermal estimator, which training records with each epoch
            and an annealing schedule replaces (``dataclasses.replace``); ``None`` (the
            default) for estimators with no temperature (T = 0 EP, eigenstates, backprop).
    """

    model: Model
    temperature: float | None = None

    @abc.abstractmethod
    def __call__(
        self, params: PyTree, x: jax.Array, targets: jax.Array, rng_key: jax.Array
    ) -> GradientEstimate:
        """Estimate ``dL/dθ`` for the batch ``x`` (batch, num_inputs), ``targets``
        (batch, num_outputs), where ``L`` is the mean cost over the batch."""

    @abc.abstractmethod
    def predict(self, params: PyTree, x: jax.Array, rng_key: jax.Array) -> jax.Array:
        """Expected outputs (batch, num_outputs) of the free network for inputs ``x``."""

    def initial_state(self, batch_size: int) -> PyTree:
        """The state :meth:`call_with_state` starts from for batches of ``batch_size``: a
        pytree of arrays, which a training loop checkpoints and restores into this shape.

        The default (a stateless estimator) is ``None``; the sparse eigenstate solver
        carries its warm starts here.
        """
        del batch_size
        return None

    def call_with_state(
        self, params: PyTree, x: jax.Array, targets: jax.Array, rng_key: jax.Array, state: PyTree
    ) -> tuple[GradientEstimate, PyTree]:
        """The estimate from ``state`` (that of the previous call, or :meth:`initial_state`)
        and the state for the next call. The default ignores the state: ``(self(params, x,
        targets, rng_key), state)``."""
        return self(params, x, targets, rng_key), state

    def estimate_with_series(
        self, params: PyTree, x: jax.Array, targets: jax.Array, rng_key: jax.Array
    ) -> tuple[GradientEstimate, Any]:
        """The estimate (the same as ``self(params, x, targets, rng_key)``) and the per-draw
        series whose mean it is, a :class:`~thermoeqprop.estimators.GradientSeries` for ArviZ
        diagnostics; the default (an estimator that does not average draws) gives ``None``."""
        return self(params, x, targets, rng_key), None
