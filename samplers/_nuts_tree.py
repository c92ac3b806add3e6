"""One NUTS chain as a state machine, one leapfrog step at a time (see :mod:`_nuts_async`).

The functions here act on one chain (the runner vmaps them over chains and targets) and
reproduce NumPyro's iterative tree building (``numpyro.infer.hmc_util.build_tree``,
``_double_tree``, ``_iterative_build_subtree``, ``_combine_tree``) and the end of its
``sample_kernel`` step by step. NumPyro's own pieces do the arithmetic where they can be called
as they are (``velocity_verlet``, ``_build_basetree``, the two transition kernels,
``_leaf_idx_to_ckpt_idxs``, ``_get_leaf``, ``euclidean_kinetic_energy``, ``warmup_adapter``);
three are written out here with NumPyro's formulas, because their random draws or their loop
had to change: ``_combine_tree`` (its Bernoulli draw is made ahead, :class:`Chain`),
``_momentum_angle`` for the turning checks (one fused check per checkpoint slot instead of
``_is_iterative_turning``'s while loop) and ``momentum_generator`` (from a normal draw made
ahead, :class:`Draws`). Keys are kept as their ``uint32[2]`` data and split as NumPyro splits
them, by :mod:`samplers._keys`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from numpyro.infer.hmc_util import (
    IntegratorState,
    TreeInfo,
    _biased_transition_kernel,
    _build_basetree,
    _get_leaf,
    _leaf_idx_to_ckpt_idxs,
    _uniform_transition_kernel,
    euclidean_kinetic_energy,
    velocity_verlet,
)

from samplers._hmc_state import HMCInfo, HMCState

MAX_DELTA_ENERGY = 1000.0  # NumPyro's divergence threshold (numpyro.infer.hmc)
KINETIC = euclidean_kinetic_energy


class Subtree(NamedTuple):
    """The subtree of the current doubling, as far as the top-level merge needs it.

    ``z``, ``r``, ``grad`` are its far leaf (the next leapfrog starts there; before its first
    leaf, the tree's edge in the doubling's direction). Its other fields are TreeInfo's.
    """

    z: jax.Array
    r: jax.Array
    grad: jax.Array
    z_proposal: jax.Array
    z_proposal_pe: jax.Array
    z_proposal_grad: jax.Array
    z_proposal_energy: jax.Array
    weight: jax.Array
    r_sum: jax.Array
    turning: jax.Array
    diverging: jax.Array
    sum_accept_probs: jax.Array
    num_proposals: jax.Array

    def as_tree(self, depth) -> TreeInfo:
        """As NumPyro's ``TreeInfo``, both edges at the far leaf (only that one is read)."""
        return TreeInfo(
            self.z, self.r, self.grad, self.z, self.r, self.grad,
            self.z_proposal, self.z_proposal_pe, self.z_proposal_grad, self.z_proposal_energy,
            depth, self.weight, self.r_sum, self.turning, self.diverging,
            self.sum_accept_probs, self.num_proposals,
        )  # fmt: skip


class Chain(NamedTuple):
    """One chain's whole state between ticks."""

    state: HMCState  # after its last finished transition (what the synchronous route holds)
    bad: jax.Array  # first transition whose energy was not finite (0: the start; −1: none)
    energy_current: jax.Array  # Hamiltonian (in units of T) at the start of the transition
    max_depth: jax.Array  # tree depth limit of this transition
    tree: TreeInfo  # the top-level tree built so far
    # Random draws are made one step ahead and carried, so that XLA never fuses a hash into
    # the (many, and broadcast) consumers of a draw, computing it again in each.
    tree_key: jax.Array  # key data of build_tree's doubling loop, after the next doubling's
    next_going_right: jax.Array  # the next doubling's direction,
    next_merge_u: jax.Array  # uniform draw of its top-level merge (Bernoulli: u < p),
    next_sub_key: jax.Array  # and its subtree's key
    going_right: jax.Array  # direction of the current doubling
    merge_u: jax.Array  # uniform draw of the current doubling's top-level merge
    leaf_key: jax.Array  # running key data of the current subtree's leaves (the next split)
    leaf_u: jax.Array  # uniform draw of the next leaf's merge into the subtree
    sub: Subtree
    # NumPyro's turning checkpoints (max tree depth slots), one array per slot: XLA's CPU
    # runtime runs a loop body op after op in the calling thread only where every buffer is
    # small (512 bytes), and otherwise hands its ops to the thread pool one by one; and it
    # hands reductions over whole (chain, slot, n) arrays to a library that is slow at small
    # sizes. The check is one fused computation per slot.
    r_ckpts: tuple[jax.Array, ...]
    r_sum_ckpts: tuple[jax.Array, ...]
    draws: Any  # Draws of the chain's next transition


def where(mask, new, old):
    """``new`` where ``mask`` else ``old``, leaf by leaf."""
    return jax.tree_util.tree_map(lambda a, b: jnp.where(mask, a, b), new, old)


def _velocity(inverse_mass_matrix, r):
    """``M⁻¹ r`` as NumPyro's ``_momentum_angle`` computes it (``r``: ``(..., n)``)."""
    if inverse_mass_matrix.ndim == 2:
        return jnp.matmul(r, inverse_mass_matrix.T)
    return inverse_mass_matrix * r


def turning_at_checkpoints(inverse_mass_matrix, r_ckpts, r, subtree_r_sums):
    """NumPyro's ``_is_turning(M⁻¹, r_ckpts[i], r, subtree_r_sums[i])`` for every slot ``i``
    (its ``_momentum_angle``, with elementwise sums for the dot products, which XLA fuses on
    CPU where batched ``dot`` calls are slow), and for single vectors alike."""
    v_left = _velocity(inverse_mass_matrix, r_ckpts)
    v_right = _velocity(inverse_mass_matrix, r)
    r_sums = subtree_r_sums - (r_ckpts + r) / 2
    left = jnp.sum(v_left * r_sums, axis=-1)
    right = jnp.sum(v_right * r_sums, axis=-1)
    return (left <= 0) | (right <= 0)


def combine(current: TreeInfo, new: TreeInfo, imm, going_right, u, biased: bool):
    """NumPyro's ``_combine_tree``; its ``bernoulli(key, p)`` is ``u < p`` for the key's
    uniform draw ``u`` (as ``jax.random.bernoulli`` computes it)."""
    z_left, r_left, z_left_grad = where(
        going_right,
        (current.z_left, current.r_left, current.z_left_grad),
        (new.z_left, new.r_left, new.z_left_grad),
    )
    z_right, r_right, z_right_grad = where(
        going_right,
        (new.z_right, new.r_right, new.z_right_grad),
        (current.z_right, current.r_right, current.z_right_grad),
    )
    r_sum = current.r_sum + new.r_sum
    if biased:
        transition_prob = _biased_transition_kernel(current, new)
        turning = new.turning | turning_at_checkpoints(imm, r_left, r_right, r_sum)
    else:
        transition_prob = _uniform_transition_kernel(current, new)
        turning = current.turning
    if u.dtype != transition_prob.dtype:
        raise TypeError(f"uniform draw of {u.dtype} for a probability of {transition_prob.dtype}")
    transition = u < transition_prob
    proposal = where(
        transition,
        (new.z_proposal, new.z_proposal_pe, new.z_proposal_grad, new.z_proposal_energy),
        (current.z_proposal, current.z_proposal_pe, current.z_proposal_grad,
         current.z_proposal_energy),
    )  # fmt: skip
    return TreeInfo(
        z_left, r_left, z_left_grad, z_right, r_right, z_right_grad, *proposal,
        current.depth + 1, jnp.logaddexp(current.weight, new.weight), r_sum, turning,
        new.diverging, current.sum_accept_probs + new.sum_accept_probs,
        current.num_proposals + new.num_proposals,
    )  # fmt: skip


def _next_doubling(c: Chain, tree_key, keys) -> Chain:
    """Draw the next doubling's direction, merge draw and subtree key (build_tree's loop body
    and _double_tree's split), ahead of time."""
    tree_key, direction_key, doubling_key = keys.split(tree_key, 3)
    sub_key, transition_key = keys.split(doubling_key, 2)
    return c._replace(
        tree_key=tree_key, next_going_right=keys.bernoulli(direction_key),
        next_merge_u=keys.uniform(transition_key, c.state.energy.dtype), next_sub_key=sub_key,
    )  # fmt: skip


class Draws(NamedTuple):
    """The random draws of one transition that depend on its key alone, made one transition
    ahead (so that they are stored, not recomputed inside every consumer): the momentum's
    normal draw and the first doubling's direction, merge draw and subtree keys."""

    eps: jax.Array
    going_right: jax.Array
    merge_u: jax.Array
    leaf_key: jax.Array
    leaf_u: jax.Array
    tree_key: jax.Array  # build_tree's loop key after the first doubling's split


def transition_draws(key, keys, size: int, dtype) -> Draws:
    """sample_kernel's and build_tree's first splits of the transition key ``key``."""
    _, key_momentum, key_tree = keys.split(key, 3)
    eps = keys.normal(key_momentum, (size,), jnp.result_type(float))  # momentum_generator's
    tree_key, direction_key, doubling_key = keys.split(key_tree, 3)
    sub_key, transition_key = keys.split(doubling_key, 2)
    leaf_key, leaf_transition_key = keys.split(sub_key, 2)
    return Draws(
        eps, keys.bernoulli(direction_key), keys.uniform(transition_key, dtype), leaf_key,
        keys.uniform(leaf_transition_key, dtype), tree_key,
    )  # fmt: skip


def momentum(z, mass_matrix_sqrt, eps):
    """NumPyro's ``momentum_generator`` for an array position, from its normal draw."""
    if mass_matrix_sqrt.ndim == 1:
        r = jnp.multiply(mass_matrix_sqrt, eps)
    else:
        r = jnp.dot(mass_matrix_sqrt, eps)
    return r.reshape(jnp.shape(z))


def initial_chain(state: HMCState, draws: Draws, depths) -> Chain:
    """A chain with every field of the right shape (the values are set by start_transition)."""
    z, u = state.position, jnp.zeros((), state.energy.dtype)
    int_zero, false = jnp.array(0, dtype=jnp.result_type(int)), jnp.array(False)
    tree = TreeInfo(z, z, z, z, z, z, z, u, z, u, int_zero, u, z, false, false, u, int_zero)
    sub = Subtree(z, z, z, z, u, z, u, u, z, false, false, u, int_zero)
    ckpts = (jnp.zeros_like(z),) * max(depths)
    key = draws.tree_key
    return Chain(state, int_zero, u, int_zero, tree, key, false, u, key, false, u, key, u, sub,
                 ckpts, ckpts, draws)  # fmt: skip


def start_transition(c: Chain, state: HMCState, draws: Draws, keys, depths, kernel_warmup):
    """NumPyro's sample_kernel and build_tree up to the first subtree, from the transition's
    draws."""
    temperature = state.temperature  # per chain, as in the kernel's step
    adapt = state.adapt_state
    z = state.position
    pe = state.energy / temperature
    grad = state.energy_grad / temperature
    r = momentum(z, adapt.mass_matrix_sqrt, draws.eps)
    energy_current = pe + KINETIC(adapt.inverse_mass_matrix, r)
    int_zero = jnp.zeros_like(c.tree.depth)
    tree = TreeInfo(
        z, r, grad, z, r, grad, z, pe, grad, energy_current,
        depth=int_zero, weight=jnp.zeros(()), r_sum=r, turning=jnp.array(False),
        diverging=jnp.array(False), sum_accept_probs=jnp.zeros(()), num_proposals=int_zero,
    )  # fmt: skip
    max_depth = jnp.where(state.iteration < kernel_warmup, depths[0], depths[1])
    # The first doubling starts at the initial point whatever its direction.
    sub = c.sub._replace(z=z, r=r, grad=grad, num_proposals=int_zero)
    c = c._replace(
        state=state, energy_current=energy_current, max_depth=max_depth, tree=tree,
        going_right=draws.going_right, merge_u=draws.merge_u, leaf_key=draws.leaf_key,
        leaf_u=draws.leaf_u, sub=sub,
    )  # fmt: skip
    return _next_doubling(c, draws.tree_key, keys)


def start_doubling(c: Chain, mask, keys) -> Chain:
    """One iteration of build_tree's loop up to the subtree (its draws were made ahead)."""
    leaf_key, transition_key = keys.split(c.next_sub_key, 2)
    z, r, grad = _get_leaf(c.tree, c.next_going_right)
    sub = c.sub._replace(z=z, r=r, grad=grad, num_proposals=jnp.zeros_like(c.sub.num_proposals))
    new = c._replace(
        going_right=c.next_going_right, merge_u=c.next_merge_u, leaf_key=leaf_key,
        leaf_u=keys.uniform(transition_key, c.state.energy.dtype), sub=sub,
    )  # fmt: skip
    new = _next_doubling(new, c.tree_key, keys)
    return where(mask, new, c)


def leaf(c: Chain, energy_fn, context, keys):
    """One iteration of _iterative_build_subtree's loop: a leapfrog step, a leaf, its merge
    into the subtree and the turning check. Returns the chain and whether the subtree is done."""
    adapt = c.state.adapt_state
    imm, step_size = adapt.inverse_mass_matrix, adapt.step_size
    temperature = c.state.temperature
    _, vv_update = velocity_verlet(lambda z: energy_fn(z, context) / temperature, KINETIC)
    s = c.sub
    new_leaf = _build_basetree(
        vv_update, KINETIC, s.z, s.r, s.grad, imm, step_size, c.going_right,
        c.energy_current, MAX_DELTA_ENERGY,
    )  # fmt: skip
    merged = combine(s.as_tree(c.tree.depth), new_leaf, imm, c.going_right, c.leaf_u, False)
    tree = where(s.num_proposals == 0, new_leaf, merged)
    # Checkpoints: written at even leaf indices, checked over idx_min..idx_max at odd ones.
    leaf_idx = s.num_proposals
    idx_min, idx_max = _leaf_idx_to_ckpt_idxs(leaf_idx)
    slots = jnp.arange(len(c.r_ckpts))
    write = (leaf_idx % 2 == 0) & (slots == idx_max)
    r_leaf = new_leaf.r_right
    r_ckpts = tuple(jnp.where(w, r_leaf, x) for w, x in zip(write, c.r_ckpts, strict=True))
    r_sum_ckpts = tuple(
        jnp.where(w, tree.r_sum, x) for w, x in zip(write, c.r_sum_ckpts, strict=True)
    )
    turning_at = jnp.stack([
        turning_at_checkpoints(imm, r_ckpt, r_leaf, tree.r_sum - r_sum_ckpt + r_ckpt)
        for r_ckpt, r_sum_ckpt in zip(r_ckpts, r_sum_ckpts, strict=True)
    ])  # fmt: skip
    turning = jnp.any(turning_at & (slots >= idx_min) & (slots <= idx_max))
    sub = Subtree(
        new_leaf.z_right, r_leaf, new_leaf.z_right_grad, tree.z_proposal, tree.z_proposal_pe,
        tree.z_proposal_grad, tree.z_proposal_energy, tree.weight, tree.r_sum, turning,
        tree.diverging, tree.sum_accept_probs, tree.num_proposals,
    )  # fmt: skip
    done = (sub.num_proposals >= 2**c.tree.depth) | turning | sub.diverging
    leaf_key, transition_key = keys.split(c.leaf_key, 2)  # the next leaf's keys
    c = c._replace(
        leaf_key=leaf_key, leaf_u=keys.uniform(transition_key, c.state.energy.dtype), sub=sub,
        r_ckpts=r_ckpts, r_sum_ckpts=r_sum_ckpts,
    )  # fmt: skip
    return c, done


def merge(c: Chain, mask):
    """_double_tree's top-level (biased) merge of the finished subtree; is the tree done?"""
    imm = c.state.adapt_state.inverse_mass_matrix
    tree = combine(c.tree, c.sub.as_tree(c.tree.depth), imm, c.going_right, c.merge_u, True)
    tree = where(mask, tree, c.tree)
    done = mask & ((tree.depth >= c.max_depth) | tree.turning | tree.diverging)
    return c._replace(tree=tree), done


def finish(c: Chain, mask, kernel_warmup):
    """sample_kernel after build_tree, but for the adaptation update (:func:`adapt`)."""
    tree, state = c.tree, c.state
    temperature = state.temperature
    accept_prob = tree.sum_accept_probs / tree.num_proposals
    itr = state.iteration + 1
    n = jnp.where(state.iteration < kernel_warmup, itr, itr - kernel_warmup)
    mean_accept_prob = state.mean_accept_prob + (accept_prob - state.mean_accept_prob) / n
    energy = tree.z_proposal_pe * temperature
    new_state = state._replace(
        position=tree.z_proposal, energy=energy, energy_grad=tree.z_proposal_grad * temperature,
        iteration=itr, mean_accept_prob=mean_accept_prob,
    )  # fmt: skip
    info = HMCInfo(
        acceptance_rate=accept_prob, is_divergent=tree.diverging, energy=energy,
        hamiltonian=tree.z_proposal_energy, step_size=state.adapt_state.step_size,
        num_integration_steps=tree.num_proposals,
    )  # fmt: skip
    bad = jnp.where((c.bad < 0) & ~jnp.all(jnp.isfinite(energy)), itr, c.bad)
    new = c._replace(state=where(mask, new_state, state), bad=jnp.where(mask, bad, c.bad))
    return new, info, accept_prob


def adapt_state_update(wa_update, iteration, accept_prob, z_info, adapt_state, keys):
    """NumPyro's ``wa_update(iteration, accept_prob, z_info, adapt_state)``, with the split of
    the key its adaptation state carries (for a step-size search that is off) done by ``keys``:
    ``wa_update`` gets no key, so it runs no rolled Threefry loop."""
    key = adapt_state.rng_key
    new = wa_update(iteration, accept_prob, z_info, adapt_state._replace(rng_key=None))
    if key is not None:
        key_data = keys.split(jax.random.key_data(key), 2)[0]
        impl = jax.random.key_impl(key)
        new = new._replace(rng_key=jax.random.wrap_key_data(key_data, impl=impl))
    return new


def adapt(c: Chain, old: HMCState, accept_prob, mask, wa_update, kernel_warmup, keys):
    """NumPyro's wa_update while iteration < num_warmup (``old``: the state before ``finish``)."""
    t = c.tree
    z_info = IntegratorState(t.z_proposal, None, t.z_proposal_pe, t.z_proposal_grad)
    new = adapt_state_update(wa_update, old.iteration, accept_prob, z_info, old.adapt_state, keys)
    keep = mask & (old.iteration < kernel_warmup)
    return c._replace(state=c.state._replace(adapt_state=where(keep, new, old.adapt_state)))


def restart(c: Chain, chain_keys, mask, total: int, keys, depths, kernel_warmup) -> Chain:
    """The next transition's momentum, tree and first doubling (from the draws made for it),
    and the draws of the one after (from the driver's key of that step)."""
    go = mask & (c.state.iteration < total)
    new = start_transition(c, c.state, c.draws, keys, depths, kernel_warmup)
    key = chain_keys[jnp.minimum(c.state.iteration + 1, total - 1)]
    new = new._replace(draws=transition_draws(key, keys, c.draws.eps.shape[0], c.merge_u.dtype))
    return where(go, new, c)


def packed_draw(c: Chain, info: HMCInfo, dtype) -> Any:
    """The position and the infos of a finished transition as one row of the draw buffer."""
    scalars = (
        info.acceptance_rate, info.is_divergent, info.energy, info.hamiltonian,
        info.step_size, info.num_integration_steps,
    )  # fmt: skip
    return jnp.concatenate([c.state.position, jnp.stack(scalars, -1).astype(dtype)], -1)


def unpack_draws(out, n: int, int_dtype) -> tuple[jax.Array, HMCInfo]:
    """Inverse of :func:`packed_draw` over ``(..., n + 6)`` rows."""
    info = HMCInfo(
        acceptance_rate=out[..., n], is_divergent=out[..., n + 1] > 0.5,
        energy=out[..., n + 2], hamiltonian=out[..., n + 3], step_size=out[..., n + 4],
        num_integration_steps=out[..., n + 5].astype(int_dtype),
    )  # fmt: skip
    return out[..., :n], info
