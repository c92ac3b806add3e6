r"""Mode jumps for collapsed sampling (docs/mathematics.md, "Mode jumps").

At trained parameters some inputs have two competing outputs: the outputs' marginal law has
two winner-take-all modes and HMC, whose trajectories stay in one basin at low T, switches
between them rarely. Between HMC transitions a chain here proposes a translation by a fixed
vector ``±d`` (sign uniform) and accepts it with probability
``min(1, exp(−[E(s ± d) − E(s)] / T))``.

Why it is exact: for a fixed ``d`` the proposal ``s → s + σ d``, ``σ = ±1`` with probability
½ each, is symmetric (``q(s, s + d) = ½ = q(s + d, s)``), so Metropolis' acceptance satisfies
detailed balance with ``p(s) ∝ exp(−E(s)/T)`` for every ``d``; the composition with HMC
leaves ``p`` invariant. ``d`` depends on the parameters and the input only, never on the
chain: it is the kept part of ``s_B − s_A``, the difference of two T = 0 minima, ``s_A``
the free relaxation's minimum and ``s_B`` the minimum reached by relaxing freely again after
nudging ``s_A`` towards the runner-up output (:func:`jump_vectors`). Where there is no second
minimum, ``s_B = s_A`` and the jump is the identity (nothing moves; not counted as accepted).

Translation, not reflection: swapping the values of the two competing outputs is an exact
involution too, but the two minima are not mirror images (the other outputs, the biases and
the collapsed layer's fields differ), and the swapped state lands off the other mode; on the
main job it was accepted in under 1 % of transitions. The translation lands where the other
minimum is, up to the chain's own fluctuation around its mode.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from samplers import Kernel
from samplers._keys import make_key_ops

__all__ = ["JUMP_STREAM", "JumpInfo", "jump_vectors", "with_jumps"]

# The fold-in constant of the jump's draws: distinct from HMC's jitter stream and far above
# the few keys NumPyro splits a step's key into.
JUMP_STREAM = 0x3D7A5
# Nudging strength that moves the relaxed state towards the runner-up output.
NUDGE_BETA = 4.0
# Two relaxed states closer than this are one minimum (the relaxations stop at |∇F| < 1e-6).
SAME_MINIMUM = 1e-3


def _jump_info(info_type):
    """A NamedTuple type with ``info_type``'s fields and ``jump_accepted``."""
    fields = (*info_type._fields, "jump_accepted")
    return NamedTuple(f"Jump{info_type.__name__}", [(name, jax.Array) for name in fields])


JumpInfo = functools.lru_cache(maxsize=8)(_jump_info)


def _sign_and_uniform(rng_key, dtype):
    """Two independent draws from fold-ins of the step's key: a sign (±1, ½ each) and a
    uniform in [0, 1), through the written-out Threefry hash where it applies (as HMC's
    jitter: JAX's CPU lowering of the hash is a loop that costs a fifth of a small step)."""
    if jax.dtypes.issubdtype(rng_key.dtype, jax.dtypes.prng_key):
        ops = make_key_ops(rng_key)
        if ops.fast:
            data = jax.random.key_data(rng_key)
            sign_bit = ops.uniform(ops.fold_in(data, JUMP_STREAM), dtype) < 0.5
            uniform = ops.uniform(ops.fold_in(data, JUMP_STREAM + 1), dtype)
            return jnp.where(sign_bit, 1.0, -1.0).astype(dtype), uniform
    sign_bit = jax.random.uniform(jax.random.fold_in(rng_key, JUMP_STREAM), (), dtype) < 0.5
    uniform = jax.random.uniform(jax.random.fold_in(rng_key, JUMP_STREAM + 1), (), dtype)
    return jnp.where(sign_bit, 1.0, -1.0).astype(dtype), uniform


def with_jumps(kernel: Kernel, energy_fn) -> Kernel:
    """``kernel`` followed, every step, by a Metropolis translation by ``±d``.

    ``d`` is the last leaf of the context (``(n,)`` per chain); ``kernel``'s state must carry
    ``position``, ``energy`` and ``energy_grad`` (HMC, NUTS). The step's key goes to
    ``kernel`` unchanged (the jump draws from a fold-in of it), so with ``d = 0`` the chain is
    the base kernel's, bit for bit. The info gains ``jump_accepted`` (bool: a translation by a
    nonzero ``d`` was accepted). A whole-run ``run_chains`` (NUTS' asynchronous route) is
    dropped: the driver scans ``step``."""
    value_and_grad = jax.value_and_grad(energy_fn)

    def step(rng_key, state, context):
        state, info = kernel.step(rng_key, state, context)
        jump = context[-1]
        sign, uniform = _sign_and_uniform(rng_key, jump.dtype)
        proposal = state.position + sign * jump
        energy, energy_grad = value_and_grad(proposal, context)
        log_ratio = -(energy - state.energy) / state.temperature
        log_u = jnp.log(uniform)
        # d = 0 moves nothing: keep the base kernel's state to the last bit.
        accept = jnp.any(jump != 0) & jnp.isfinite(energy) & (log_u < log_ratio)
        state = state._replace(
            position=jnp.where(accept, proposal, state.position),
            energy=jnp.where(accept, energy, state.energy),
            energy_grad=jnp.where(accept, energy_grad, state.energy_grad),
        )
        return state, JumpInfo(type(info))(*info, accept)

    return kernel._replace(step=step, name=f"{kernel.name}+jumps", run_chains=None)


@functools.partial(jax.jit, static_argnums=(0, 1))
def jump_vectors(model, kept, params, x, targets, beta):
    """``d`` per example (batch, n_kept) and the kept part of the free minimum ``s_A``.

    ``s_A`` minimises ``F_β`` (the phase's own nudge) from the model's initial state;
    ``s_B`` minimises ``F_β`` again, starting from the minimum of ``E + NUDGE_BETA · C(·; e)``
    reached from ``s_A``, with ``e`` the one-hot code of the runner-up output at ``s_A`` (one
    output: 1 if it is below ½, else 0). ``kept`` is a tuple of state indices. Any ``d`` keeps
    the jumps exact; these only make them land where the law has mass."""
    from thermoeqprop.estimators.zero_temperature import Relaxation, relax

    relaxation = Relaxation(tolerance=1e-6)
    kept = jnp.asarray(kept, dtype=jnp.int32)
    first = relax(model, params, x, targets, beta, model.initial_state(x), relaxation).state
    outputs = jax.vmap(model.output)(first)
    if outputs.shape[-1] > 1:
        runner_up = jnp.argsort(outputs, axis=-1)[:, -2]
        other = jax.nn.one_hot(runner_up, outputs.shape[-1], dtype=x.dtype)
    else:  # one output: push it to the other end of the activation's range
        other = (outputs < 0.5).astype(x.dtype)
    pushed = relax(model, params, x, other, NUDGE_BETA, first, relaxation).state
    # Back to the phase's own F_β: with β = 0 the targets do not enter.
    second = relax(model, params, x, targets, beta, pushed, relaxation).state
    d = second[:, kept] - first[:, kept]
    # Back in the same minimum, d is the relaxation's residual (about 1e-7): no jump.
    same = jnp.linalg.norm(d, axis=-1, keepdims=True) < SAME_MINIMUM
    return jnp.where(same, 0.0, d), first[:, kept]
