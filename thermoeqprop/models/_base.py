"""The energy-model interface: ``E(s; θ, x)`` and ``C(s; y)`` for one example."""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from thermoeqprop._protocols import Model
from thermoeqprop._validation import check_labels

__all__ = ["EnergyModel"]

PyTree = Any


class EnergyModel(Model):
    """A network whose state ``s`` (a flat vector of its free units) has an energy.

    Subclasses are frozen dataclasses and implement :meth:`energy`, :meth:`output`,
    :meth:`init_params` and :meth:`encode_labels` for ONE example; batching is by ``jax.vmap``
    (the helpers below). Inputs are clamped: they enter the energy, never the state.

    Attributes:
        state_size: Number of free units ``n`` (the length of a state vector).
        cost: The cost on the outputs, ``C(output(s), y)``.
        state_bounds: ``None`` for states in R^n, or ``(low, high)`` when states are confined
            to a box (the hard-sigmoid network) or are spins (``(-1, 1)`` with ``is_spin``).
        is_spin: Whether the states are ±1 spins (default ``False``: continuous units).
        blocks: Groups of units that are conditionally independent given the rest, for block
            Gibbs sampling and the Rao–Blackwellised spin estimators; ``None`` (the default)
            for a model without them.

    The samplers and estimators ask a model only through these members and the properties
    below (:attr:`multilinear`, :attr:`ising_layer_sizes`), never whether it happens to have
    some other attribute; a new model overrides the defaults that do not fit it.
    """

    family: ClassVar[str] = "classical"
    state_size: int
    cost: Any
    state_bounds: tuple[float, float] | None = None
    is_spin: bool = False
    blocks: tuple[tuple[int, ...], ...] | None = None

    @property
    def multilinear(self) -> bool:
        """Whether ``E + βC`` is multilinear in every spin by construction, so block Gibbs
        need not check it (default ``False``; spin networks with the squared-error cost)."""
        return False

    @property
    def ising_layer_sizes(self) -> tuple[int, ...] | None:
        """The free layers' sizes of a layered Ising form (:meth:`ising_form`), which
        :func:`samplers.layered_gibbs` samples with matrix products; ``None`` (the default)
        for a model without one."""
        return None

    def ising_form(self, params: PyTree, x: jax.Array, target: jax.Array, beta):
        """``E + βC`` of one example as layered Ising ``(couplings, fields)``, up to a
        constant; only for a model whose :attr:`ising_layer_sizes` is not ``None``."""
        raise NotImplementedError(f"{type(self).__name__} has no layered Ising form")

    @property
    def num_units(self) -> int:
        return self.state_size

    @property
    def architecture(self) -> str:
        """The number of free units, e.g. ``"12 units"`` (layered networks give their sizes)."""
        return f"{self.state_size} units"

    @abc.abstractmethod
    def energy(self, params: PyTree, state: jax.Array, x: jax.Array) -> jax.Array:
        """Energy ``E(s; θ, x)`` of one state (n,) with input ``x`` (num_inputs,): a scalar."""

    @abc.abstractmethod
    def output(self, state: jax.Array) -> jax.Array:
        """The output units' readout (num_outputs,) of one state."""

    def cost_fn(self, state: jax.Array, target: jax.Array) -> jax.Array:
        """Cost ``C(s; y)`` of one state."""
        return self.cost(self.output(state), target)

    def total_energy(
        self, params: PyTree, state: jax.Array, x: jax.Array, target: jax.Array, beta
    ) -> jax.Array:
        """Nudged energy ``F_β = E + β C`` of one state."""
        return self.energy(params, state, x) + beta * self.cost_fn(state, target)

    def initial_state(self, x: jax.Array) -> jax.Array:
        """Start state of the relaxation or of the chains for inputs ``x`` (batch, n_in)."""
        return jnp.zeros((x.shape[0], self.state_size), dtype=x.dtype)

    # Batched helpers: (batch, n) states, (batch, num_inputs) inputs.
    def batch_energy(self, params, states, x):
        return jax.vmap(self.energy, in_axes=(None, 0, 0))(params, states, x)

    def batch_output(self, states):
        return jax.vmap(self.output)(states)

    def batch_cost(self, states, targets):
        return jax.vmap(self.cost_fn)(states, targets)

    def energy_param_grad(self, params, states, x):
        """``∂_θ E`` averaged over the batch: a pytree shaped like ``params``."""

        def mean_energy(p):
            return jnp.mean(self.batch_energy(p, states, x))

        return jax.grad(mean_energy)(params)

    def validate_labels(self, labels) -> np.ndarray:
        return check_labels("labels", labels, self.num_classes)
