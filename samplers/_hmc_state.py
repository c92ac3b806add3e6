"""State and per-step facts of an HMC or NUTS chain (:func:`samplers.hmc`, :func:`samplers.nuts`).

A module of their own so that the NUTS kernel (:mod:`samplers._hmc`) and its asynchronous
runner (:mod:`samplers._nuts_tree`) share them without importing each other.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["HMCInfo", "HMCState"]


class HMCState(NamedTuple):
    """State of one HMC or NUTS chain.

    Attributes:
        position: Current position, shape ``(n,)``.
        energy: ``E(position, context)``, unscaled by the temperature, shape ``()``.
        energy_grad: ``∇E(position, context)``, shape ``(n,)``.
        temperature: Temperature ``T > 0`` of the target ``exp(−E/T)``, shape ``()``.
        iteration: Number of steps taken so far (adaptation runs while ``< num_warmup``).
        adapt_state: NumPyro's ``HMCAdaptState`` (step size, inverse mass matrix, dual-averaging
            and Welford accumulators); its step size is the adapted one, never a jittered one.
        trajectory_length: Integration time of plain HMC; unused by NUTS; ``None`` when the
            number of leapfrog steps is fixed.
        mean_accept_prob: Running mean acceptance probability (reset after warm-up).
    """

    position: jax.Array
    energy: jax.Array
    energy_grad: jax.Array
    temperature: jax.Array
    iteration: jax.Array
    adapt_state: Any
    trajectory_length: Any
    mean_accept_prob: jax.Array

    def with_temperature(self, temperature: Any) -> HMCState:
        """The same chain at another temperature, with the mass matrix rescaled to match.

        The target's covariance scales like T, so the inverse mass matrix (an estimate of
        it) is multiplied by ``T_new / T_old``; for a locally quadratic energy the adapted step
        size then stays right. Annealing and adaptive ladders move temperatures this way.
        """
        temperature = jnp.asarray(temperature, dtype=self.temperature.dtype)
        ratio = temperature / self.temperature
        adapt = self.adapt_state
        adapt = adapt._replace(
            inverse_mass_matrix=adapt.inverse_mass_matrix * ratio,
            mass_matrix_sqrt=adapt.mass_matrix_sqrt / jnp.sqrt(ratio),
            mass_matrix_sqrt_inv=adapt.mass_matrix_sqrt_inv * jnp.sqrt(ratio),
        )
        return self._replace(temperature=temperature, adapt_state=adapt)


class HMCInfo(NamedTuple):
    """Facts about one HMC or NUTS step (all scalars for one chain).

    Attributes:
        acceptance_rate: Metropolis acceptance probability (NUTS: mean over the tree).
        is_divergent: Whether the trajectory diverged (energy error above 1000).
        energy: ``E(position, context)`` after the step, unscaled.
        hamiltonian: Total energy ``E/T + kinetic`` of the returned point, in units of T
            (ArviZ's ``energy``, for BFMI).
        step_size: Step size the integrator used in this step (HMC: jittered after warm-up,
            and ``integration time / num_integration_steps`` for a ``trajectory_length``).
        num_integration_steps: Number of leapfrog steps taken.
    """

    acceptance_rate: jax.Array
    is_divergent: jax.Array
    energy: jax.Array
    hamiltonian: jax.Array
    step_size: jax.Array
    num_integration_steps: jax.Array
