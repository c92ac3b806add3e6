"""One HMC transition, written out: NumPyro's ``sample_kernel`` for ``algo="HMC"``, faster.

NumPyro's ``hmc(...)`` returns ``sample_kernel(hmc_state, model_args)``, which splits the
step's key three ways, draws the momentum, integrates ``num_steps`` leapfrog steps, accepts or
rejects by a Bernoulli draw, and updates the warm-up adaptation while ``i < num_warmup``. On a
small target (a 10-D Gaussian: 8 leapfrog steps of a 10 × 10 matvec) the work of a transition
is a few hundred floating-point operations, and what it costs is XLA's per-operation overhead:
each of the three ``jax.random`` calls lowers on CPU to a rolled Threefry loop (an XLA while
loop of a dozen small operations), and the leapfrog ``fori_loop`` is a while loop of its own.

:func:`hmc_sample_kernel` returns a function with ``sample_kernel``'s signature and results
that does the same arithmetic with NumPyro's own pieces (``velocity_verlet``,
``euclidean_kinetic_energy``, ``warmup_adapter``'s update, ``_get_num_steps``) but

- draws its keys, momentum and acceptance variable through :mod:`samplers._keys` (the same
  bits as ``jax.random``, with the Threefry hash written out so that it fuses with the
  arithmetic around it);
- unrolls the leapfrog loop when the number of steps is fixed (``num_steps``): its body is
  inlined ``num_steps`` times, with no loop around it.

So for the same key a transition gives NumPyro's draws, up to floating-point rounding (XLA
compiles the two programs separately and may contract multiply-adds differently): the tests
compare the two transition by transition.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from numpyro.infer.hmc import HMCState as NumPyroHMCState
from numpyro.infer.hmc import _get_num_steps
from numpyro.infer.hmc_util import IntegratorState, velocity_verlet, warmup_adapter

from samplers._keys import make_key_ops
from samplers._nuts_tree import KINETIC, MAX_DELTA_ENERGY, adapt_state_update, momentum

__all__ = ["hmc_sample_kernel"]

# Fixed step counts up to this many are unrolled; beyond it the integrator stays a loop (the
# compiled program grows with the unrolled steps, and on large targets the loop's overhead is
# negligible beside the steps themselves).
MAX_UNROLLED_STEPS = 16


def hmc_sample_kernel(
    potential_fn_gen,
    *,
    num_warmup: int,
    num_steps: int | None,
    target_accept_prob: float,
    adapt_step_size: bool,
    adapt_mass_matrix: bool,
    dense_mass: bool,
):
    """``sample_kernel(hmc_state, model_args) -> hmc_state`` for NumPyro's HMC states.

    Args:
        potential_fn_gen: ``potential_fn_gen(*model_args) -> (z -> potential energy)``.
        num_warmup: Adaptation steps (NumPyro's ``num_warmup``: its window schedule).
        num_steps: Fixed leapfrog steps, or ``None`` for ``⌈trajectory_length / ε⌉`` steps of
            ``trajectory_length / num_steps`` (the state's ``trajectory_length``).
        target_accept_prob, adapt_step_size, adapt_mass_matrix, dense_mass: As given to
            NumPyro's ``init_kernel``, which builds the same adapter.
    """
    # NumPyro's init_kernel builds this adapter (find_heuristic_step_size=False).
    _, wa_update = warmup_adapter(
        num_warmup,
        adapt_step_size=adapt_step_size,
        adapt_mass_matrix=adapt_mass_matrix,
        dense_mass=dense_mass,
        target_accept_prob=target_accept_prob,
        regularize_mass_matrix=True,
    )

    def sample_kernel(hmc_state: NumPyroHMCState, model_args: tuple[Any, ...] = ()):
        keys = make_key_ops(hmc_state.rng_key)
        data = jax.random.key_data(hmc_state.rng_key)
        next_key, key_momentum, key_transition = keys.split(data, 3)
        adapt = hmc_state.adapt_state
        z = hmc_state.z
        eps = keys.normal(key_momentum, adapt.mass_matrix_sqrt.shape[:1], jnp.result_type(float))
        r = momentum(z, adapt.mass_matrix_sqrt, eps)
        vv_state = IntegratorState(z, r, hmc_state.potential_energy, hmc_state.z_grad)
        _, vv_update = velocity_verlet(potential_fn_gen(*model_args), KINETIC)
        step_size, imm = adapt.step_size, adapt.inverse_mass_matrix

        def leapfrog(_, val):
            return vv_update(step_size, imm, val)

        if num_steps is not None:
            steps = num_steps
            unroll = num_steps <= MAX_UNROLLED_STEPS
            new = jax.lax.fori_loop(0, steps, leapfrog, vv_state, unroll=unroll or 1)
        else:
            steps = _get_num_steps(step_size, hmc_state.trajectory_length)
            step_size = hmc_state.trajectory_length / steps
            new = jax.lax.fori_loop(0, steps, leapfrog, vv_state)
        energy_old = vv_state.potential_energy + KINETIC(imm, vv_state.r)
        energy_new = new.potential_energy + KINETIC(imm, new.r)
        delta = energy_new - energy_old
        delta = jnp.where(jnp.isnan(delta), jnp.inf, delta)
        accept_prob = jnp.clip(jnp.exp(-delta), None, 1.0)
        diverging = delta > MAX_DELTA_ENERGY
        accept = keys.bernoulli(key_transition, accept_prob)
        vv_state, energy = jax.tree.map(
            lambda a, b: jnp.where(accept, a, b), (new, energy_new), (vv_state, energy_old)
        )
        warming_up = hmc_state.i < num_warmup
        adapt = jax.lax.cond(
            warming_up,
            lambda a: adapt_state_update(wa_update, hmc_state.i, accept_prob, vv_state, a, keys),
            lambda a: a,
            adapt,
        )
        itr = hmc_state.i + 1
        n = jnp.where(warming_up, itr, itr - num_warmup)
        mean_accept_prob = (
            hmc_state.mean_accept_prob + (accept_prob - hmc_state.mean_accept_prob) / n
        )
        return NumPyroHMCState(
            itr, vv_state.z, vv_state.z_grad, vv_state.potential_energy, energy, None,
            hmc_state.trajectory_length, jnp.asarray(steps, jnp.result_type(int)), accept_prob,
            mean_accept_prob, diverging, adapt, keys.wrap(next_key),
        )  # fmt: skip

    return sample_kernel
