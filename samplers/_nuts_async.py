"""Asynchronous NUTS: every chain starts its next trajectory as soon as its last one ends.

The synchronous driver (:mod:`samplers._driver`) vmaps one NUTS *transition* per chain per
scan step. NumPyro builds the tree in ``while_loop`` s, which under ``vmap`` run until the
chain with the longest trajectory is done, so every step costs the longest of the chains'
trajectories (on a 10-D Gaussian about 1.6× the mean with 8 chains, 2.9× with 256). Here NUTS
is a per-chain state machine advanced by *ticks*: each tick is one leapfrog step for every
chain plus the bookkeeping of NumPyro's iterative tree building (``build_tree`` →
``_double_tree`` → ``_iterative_build_subtree``, :mod:`samplers._nuts_tree`). A chain whose
subtree is complete (full, turning or diverging) merges it into its tree (biased, at the top
level) and starts the next doubling in the same tick; a chain whose tree is done (depth limit,
turning, divergence) is finalised as NumPyro's ``sample_kernel`` finalises a transition
(acceptance probability ``sum_accept_probs / num_proposals``, the warm-up adaptation
``wa_update`` while ``iteration < num_warmup``, the running mean acceptance), its draw is
written at its own index of the ``(chain, draw)`` buffers, and its next transition (momentum,
tree, first doubling) is set up, so that its next tick integrates again. A chain that has
made all its transitions freezes; the run ends when every chain (of every target) is done.

Exactness: the arithmetic is NumPyro's, the random keys are split as NumPyro splits them
(``sample_kernel``: 3 ways; the tree loop: 3 ways; ``_double_tree``: 2; every leaf: 2), from the
key the driver would give the chain at that step, and :mod:`samplers._keys` computes the same
keys and draws as ``jax.random``, bit for bit. So each chain's draws, infos, final state and
``nonfinite_step`` equal the synchronous route's for the same key, up to rounding: XLA
compiles the two programs separately, and on CPU it contracts a multiply and an add into one
FMA only inside one fusion, so where the two programs fuse differently the last bits can
differ (NUTS's step-size adaptation amplifies such differences during warm-up; the
synchronous route shows the same against itself under other compilations, e.g. with an extra
batch axis of size 1). The structure below keeps the two in step: in the tests they agree to
0 or a few 1e-12 over 70 transitions in float64.

Cost per tick is what matters on small targets, where XLA's per-operation overhead dominates:

- Two loops. The inner ``while_loop`` runs ticks; it holds only the chains' small arrays (XLA's
  CPU runtime executes a loop body op after op in the calling thread only where every buffer
  is at most 512 bytes, and otherwise hands each op to its thread pool). It stops once a
  quarter of the chains (:data:`FINALISE_FRACTION`) have finished a transition or the first
  of them has waited :data:`WAIT_TICKS` ticks; finished chains wait frozen, which changes no
  draw, only when it is made. The outer loop finalises those chains, vmapped and masked, with
  the draw buffers and the driver's keys, and the adaptation update under a ``lax.cond`` on
  whether any of them is still warming up (a ``cond`` inside ``vmap`` would become a select
  computing both branches).
- Every tick does the leaf, the subtree merge, the checkpoint updates, the turning checks,
  the top-level merge and the next doubling for all chains, masked: with 8 chains some chain
  needs the merge on most ticks anyway, and a ``cond`` costs more than it saves.
- Random draws are made ahead and carried (the next leaf's, the next doubling's, the next
  transition's), with the Threefry hash written out (:mod:`samplers._keys`) instead of
  JAX's CPU lowering, a rolled while loop per call.
- NumPyro's ``_is_iterative_turning`` while loop is a fixed-size masked check over all
  checkpoint slots (the same OR over ``idx_min..idx_max``), one fused computation per slot.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from numpyro.infer.hmc_util import warmup_adapter

from samplers import _nuts_tree as tree_ops
from samplers._keys import make_key_ops

__all__ = ["async_nuts_runner"]

FINALISE_FRACTION = 4  # finalise when 1/FINALISE_FRACTION of all chains have finished ...
WAIT_TICKS = 8  # ... or the first finished chain has waited this many ticks


def async_nuts_runner(
    energy_fn,
    init,
    *,
    kernel_warmup: int,
    target_accept_prob: float,
    max_tree_depth,
    adapt_step_size: bool,
    adapt_mass_matrix: bool,
    dense_mass: bool,
):
    """A kernel's ``run_chains``: ``run_chains(num_warmup, num_samples, batched, axes)``.

    Args:
        energy_fn: ``energy_fn(position, context)``, unscaled.
        init: The NUTS kernel's ``init(position, context, temperature) -> HMCState``.
        kernel_warmup: The kernel's number of adaptation steps (NumPyro's ``num_warmup``).
        target_accept_prob, max_tree_depth, adapt_step_size, adapt_mass_matrix, dense_mass:
            As passed to NumPyro's ``init_kernel``.

    Returns:
        ``run_chains(num_warmup, num_samples, batched, context_axes)`` returning a function
        ``(keys, position, context, temperature) -> (samples, info, final_state, bad)`` over
        keys ``([B,] C)`` and positions ``([B,] C, n)``, to be jitted by the driver.
    """
    depths = max_tree_depth if isinstance(max_tree_depth, tuple) else (max_tree_depth,) * 2
    # NumPyro's init_kernel builds the same adapter (find_heuristic_step_size=False).
    _, wa_update = warmup_adapter(
        kernel_warmup,
        adapt_step_size=adapt_step_size,
        adapt_mass_matrix=adapt_mass_matrix,
        dense_mass=dense_mass,
        target_accept_prob=target_accept_prob,
        regularize_mass_matrix=True,
    )

    def run_chains(num_warmup: int, num_samples: int, batched: bool, context_axes: Any):
        total = num_warmup + num_samples

        def run(keys, position, context, temperature):
            lead = keys.shape
            ko = make_key_ops(keys)

            def lift(fn, *mapped):
                # fn(*mapped, context) over chains, then targets; returns a function of context.
                g = jax.vmap(fn, in_axes=(0,) * len(mapped) + (None,))
                if batched:
                    g = jax.vmap(g, in_axes=(0,) * len(mapped) + (context_axes,))
                return g(*mapped, context)

            # init on its own, as the synchronous driver runs it: every field of the state is a
            # per-chain value from the start (XLA rounds divisions by values shared by all
            # chains differently), and the barrier separates init's arithmetic from the first
            # transition's, as the synchronous route's loop boundary does (measured: without
            # it, FMA contractions across the two made a banana target differ by 2e-8).
            states = jax.lax.optimization_barrier(
                lift(lambda p, ctx: init(p, ctx, temperature), position)
            )

            def first(key, state, _):
                chain_keys = jax.random.key_data(jax.random.split(ko.wrap(key), total))
                size, dtype = state.adapt_state.mass_matrix_sqrt.shape[0], state.energy.dtype
                draws = [
                    tree_ops.transition_draws(chain_keys[t], ko, size, dtype)
                    for t in (0, min(1, total - 1))
                ]
                c = tree_ops.initial_chain(state, draws[0], depths)
                c = tree_ops.start_transition(c, state, draws[0], ko, depths, kernel_warmup)
                bad = jnp.where(jnp.all(jnp.isfinite(state.energy)), -1, 0).astype(c.bad.dtype)
                return c._replace(bad=bad, draws=draws[1]), chain_keys

            chains, chain_keys = lift(first, jax.random.key_data(keys), states)
            n = position.shape[-1]
            dtype = chains.state.position.dtype
            # Each chain's draws in its own rows (a scatter batched over chains, which XLA
            # partitions along the sharded targets or chains).
            buffer = jnp.zeros((*lead, num_samples, n + 6), dtype)

            def advance(c, done, _context):
                # A leaf; where the subtree is done, the top-level merge; where the tree goes
                # on, the next doubling. Chains whose tree is done (waiting to be finalised)
                # and chains past their last transition are frozen: their leapfrog steps only
                # touch the subtree, which the next transition starts afresh.
                c, sub_done = tree_ops.leaf(c, energy_fn, _context, ko)
                sub_done = sub_done & ~done & (c.state.iteration < total)
                c, tree_done = tree_ops.merge(c, sub_done)
                c = tree_ops.start_doubling(c, sub_done & ~tree_done, ko)
                return c, done | tree_done

            def finalise(chains, mask):
                # sample_kernel's end for the chains in mask, the draw rows, the next transition
                old = chains.state
                chains, info, accept_prob = lift(
                    lambda c, m, _: tree_ops.finish(c, m, kernel_warmup), chains, mask
                )
                need_adapt = mask & (old.iteration < kernel_warmup)
                chains = jax.lax.cond(
                    jnp.any(need_adapt),
                    lambda c: lift(
                        lambda c, o, a, m, _: tree_ops.adapt(
                            c, o, a, m, wa_update, kernel_warmup, ko
                        ),
                        c, old, accept_prob, mask,
                    ),
                    lambda c: c,
                    chains,
                )  # fmt: skip
                packed = lift(lambda c, i, _: tree_ops.packed_draw(c, i, dtype), chains, info)
                chains = lift(
                    lambda c, k, m, _: tree_ops.restart(c, k, m, total, ko, depths, kernel_warmup),
                    chains, chain_keys, mask,
                )  # fmt: skip
                draw = old.iteration - num_warmup
                rows = jnp.where(mask & (draw >= 0), draw, num_samples)  # out of range: none
                return chains, rows, packed

            # Two loops: the inner one runs ticks (small buffers only, so that XLA's CPU
            # runtime executes its body op after op in one thread) until enough chains have
            # finished a transition; the outer one finalises those chains (the draw buffer,
            # the adaptation, the driver's keys live there) and goes on. A finalisation costs
            # several ticks, so finished chains wait (frozen) until a quarter of all chains
            # are done or the first has waited WAIT_TICKS ticks; waiting changes no chain's
            # draws, only when they are made.
            batch = max(1, -(-keys.size // FINALISE_FRACTION))

            def active(chains):
                return chains.state.iteration < total

            def inner_cond(carry):
                chains, done, waited = carry
                return (
                    jnp.any(active(chains) & ~done)
                    & (jnp.sum(done) < batch)
                    & (waited < WAIT_TICKS)
                )

            def inner_body(carry):
                chains, done, waited = carry
                chains, done = lift(advance, chains, done)
                return chains, done, jnp.where(jnp.any(done), waited + 1, 0)

            def body(carry):
                chains, buffer = carry
                carry = (chains, jnp.zeros(lead, bool), jnp.zeros((), jnp.int32))
                chains, done, _ = jax.lax.while_loop(inner_cond, inner_body, carry)
                chains, rows, packed = finalise(chains, done)
                buffer = lift(lambda b, r, p, _: b.at[r].set(p, mode="drop"), buffer, rows, packed)
                return chains, buffer

            def cond(carry):
                return jnp.any(active(carry[0]))

            chains, buffer = jax.lax.while_loop(cond, body, (chains, buffer))
            samples, info = tree_ops.unpack_draws(buffer, n, chains.tree.num_proposals.dtype)
            return samples, info, chains.state, chains.bad

        return run

    return run_chains
