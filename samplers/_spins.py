"""Samplers for spins in {−1, +1}: block Gibbs (heat bath) and single-site Metropolis.

Block Gibbs needs energies that are *multilinear in each spin* (no self-interaction, so that
``E`` is affine in every single ``s_i``): then the conditional field is exact from one
gradient, ``E(s_i=+1) − E(s_i=−1) = 2 ∂E/∂s_i``, and

    p(s_i = +1 | rest) = 1 / (1 + exp(2 ∂E/∂s_i / T)).

A *block* is a set of units that are conditionally independent given the others (no coupling
inside the block: a layer of a layered network, one side of a bipartite graph, one colour of a
graph colouring); all its units are redrawn at once from one gradient evaluation. Both
requirements are checked at the public boundary on a random state (:func:`check_spin_energy`).
Metropolis needs neither: it evaluates the energy of each proposed single flip.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from samplers._base import EnergyFn, Kernel, check_positions, check_temperature

__all__ = [
    "GibbsInfo",
    "MetropolisInfo",
    "SpinState",
    "block_gibbs",
    "check_spin_energy",
    "metropolis",
]


class SpinState(NamedTuple):
    """State of one spin chain.

    Attributes:
        position: Spins as floats ±1.0, shape ``(n,)``.
        energy: ``E(position, context)``, unscaled, shape ``()``.
        temperature: Temperature ``T > 0``, shape ``()``.
    """

    position: jax.Array
    energy: jax.Array
    temperature: jax.Array


class GibbsInfo(NamedTuple):
    """Facts about one block-Gibbs sweep (one pass over every block, in order).

    Attributes:
        energy: Energy after the sweep, unscaled.
        flip_rate: Fraction of spins whose value changed during the sweep, in the dtype of
            the energy.
    """

    energy: jax.Array
    flip_rate: jax.Array


class MetropolisInfo(NamedTuple):
    """Facts about one Metropolis sweep (``n`` single-flip proposals at random sites).

    Attributes:
        energy: Energy after the sweep, unscaled.
        acceptance_rate: Fraction of the ``n`` proposed flips that were accepted.
    """

    energy: jax.Array
    acceptance_rate: jax.Array


def _init(energy_fn: EnergyFn):
    def init(position: jax.Array, context: Any, temperature: Any) -> SpinState:
        position = jnp.asarray(position)
        return SpinState(
            position=position,
            energy=energy_fn(position, context),
            temperature=jnp.asarray(temperature, dtype=position.dtype),
        )

    return init


def _check_spins(positions: Any) -> np.ndarray:
    x = check_positions(positions)
    bad = np.abs(x) != 1.0
    if np.any(bad):
        chain, i = (int(k) for k in np.argwhere(bad)[0])
        raise ValueError(
            f"spins must be ±1.0; chain {chain} has position[{i}] = {float(x[chain, i])!r}."
        )
    return x


def check_spin_starts(positions: Any, temperature: Any, num_spins: int, holder: str) -> None:
    """Starts (num, n) of ±1 spins, ``n == num_spins`` (what ``holder`` says holds), and T."""
    x = _check_spins(positions)
    if x.shape[1] != num_spins:
        raise ValueError(f"position has {x.shape[1]} spins but {holder} {num_spins} units.")
    check_temperature(temperature)


@functools.partial(jax.jit, static_argnums=(0,))
def _spin_energy_probe(energy_fn: EnergyFn, position, context, units, flip_mask):
    """Energy differences by single flips at ``units``, gradients there, and at a block flip."""

    def with_spin(i, value):
        return energy_fn(position.at[i].set(value), context)

    difference = jax.vmap(lambda i: with_spin(i, 1.0) - with_spin(i, -1.0))(units)
    energy, grad = jax.value_and_grad(energy_fn)(position, context)
    flipped = jnp.where(flip_mask, -position, position)
    grad_flipped = jax.grad(energy_fn)(flipped, context)
    return difference, grad, grad_flipped, energy


def check_spin_energy(
    energy_fn: EnergyFn,
    num_spins: int,
    context: Any = (),
    blocks: Sequence[Sequence[int]] | None = None,
    *,
    rng_key: jax.Array | None = None,
    max_units: int = 256,
    rtol: float = 1e-6,
) -> None:
    """Check that an energy suits gradient-field Gibbs sampling, on random ±1 states.

    Checks that ``E(s_i=+1) − E(s_i=−1) = 2 ∂E/∂s_i`` for every unit when ``n <= max_units``,
    else for ``max_units`` units drawn at random (multilinearity in each spin; a
    self-interaction on a unit outside the drawn subset goes undetected), and, when ``blocks``
    are given, that flipping a random half of a block leaves the gradient of the block's other
    units unchanged (no coupling inside a block).

    Args:
        energy_fn: ``energy_fn(position, context) -> scalar``.
        num_spins: Number of spins ``n``.
        context: The energy's context (one target, no batch axis).
        blocks: Optional tuple of tuples of unit indices.
        rng_key: Key for the random states; a fixed key when ``None``.
        max_units: Largest number of units whose single-flip difference is evaluated.
        rtol: Relative tolerance of both checks, relative to the largest field (or to the
            rounding error of the energy in its precision, when that is larger).

    The probe is compiled with ``jax.jit`` (static ``energy_fn``) and reused across calls.

    Raises:
        ValueError: Naming the first unit (or block and unit) where the check fails.

    Example:
        >>> import jax.numpy as jnp
        >>> J = jnp.array([[0.0, 1.0], [1.0, 0.0]])
        >>> check_spin_energy(lambda s, c: -0.5 * s @ J @ s, 2, blocks=((0,), (1,)))
    """
    rng_key = jax.random.key(0) if rng_key is None else rng_key
    key_state, key_units, key_blocks = jax.random.split(rng_key, 3)
    position = jax.random.rademacher(key_state, (num_spins,), dtype=float)
    units = jax.random.permutation(key_units, num_spins)[: min(num_spins, max_units)]
    difference, grad, _, energy = _spin_energy_probe(
        energy_fn, position, context, units, jnp.zeros(num_spins, dtype=bool)
    )
    difference, grad = np.asarray(difference), np.asarray(grad)
    # Tolerance: rtol of the largest field, or rounding of E itself in its own precision
    # (E(+1) − E(−1) is a difference of two energies of that size).
    eps = float(jnp.finfo(jnp.result_type(difference)).eps)
    scale = max(1.0, float(np.max(np.abs(grad))), float(abs(energy)) * 1e3 * eps / rtol)
    gap = np.abs(difference - 2.0 * grad[np.asarray(units)])
    if np.any(~(gap <= rtol * scale)):
        k = int(np.argmax(~(gap <= rtol * scale)))
        i = int(units[k])
        raise ValueError(
            "the energy is not multilinear in each spin, so the Gibbs field 2 ∂E/∂s_i is not "
            f"exact: at unit {i}, E(s_i=+1) − E(s_i=−1) = {float(difference[k])!r} but 2 ∂E/∂s_i = "
            f"{float(2.0 * grad[i])!r}. Remove self-interactions (s_i² terms), or use metropolis()."
        )
    if blocks is None:
        return
    for b, (block, key) in enumerate(
        zip(blocks, jax.random.split(key_blocks, len(blocks)), strict=True)
    ):
        block = np.asarray(block, dtype=int)
        if block.size < 2:
            continue
        half = np.asarray(jax.random.bernoulli(key, 0.5, (block.size,)))
        flip_mask = np.zeros(num_spins, dtype=bool)
        flip_mask[block[half]] = True
        _, grad_0, grad_1, _ = _spin_energy_probe(
            energy_fn, position, context, units[:1], jnp.asarray(flip_mask)
        )
        kept = block[~half]
        change = np.abs(np.asarray(grad_1)[kept] - np.asarray(grad_0)[kept])
        if np.any(~(change <= rtol * scale)):
            i = int(kept[int(np.argmax(~(change <= rtol * scale)))])
            raise ValueError(
                f"block {b} is not conditionally independent: flipping other units of the block "
                f"changes ∂E/∂s_{i} by {float(np.max(change))!r}. Units inside one block must "
                "not interact (use the layers of a layered network or a graph colouring)."
            )


def _context_fingerprint(context: Any) -> str | None:
    """A digest of a context's structure, dtypes, shapes and values; None if it has no bytes.

    Lets a kernel remember which contexts it has checked: two contexts with equal digests hold
    equal numbers. Leaves that are not plain numbers (object arrays, PRNG keys) give None.
    """
    leaves, treedef = jax.tree_util.tree_flatten(context)
    digest = hashlib.blake2b(str(treedef).encode(), digest_size=20)
    for leaf in leaves:
        try:
            values = np.ascontiguousarray(np.asarray(leaf))
        except TypeError:
            return None
        if values.dtype.hasobject:
            return None
        digest.update(f"{values.dtype.str}{values.shape}".encode())
        digest.update(values.tobytes())
    return digest.hexdigest()


def _check_blocks(blocks: Any, num_spins: int | None = None) -> tuple[tuple[int, ...], ...]:
    try:
        blocks = tuple(tuple(int(i) for i in block) for block in blocks)
    except TypeError as error:
        raise ValueError(
            f"blocks must be a tuple of tuples of unit indices, got {blocks!r}."
        ) from error
    if len(blocks) == 0 or any(len(block) == 0 for block in blocks):
        raise ValueError(f"blocks must be non-empty tuples of unit indices, got {blocks!r}.")
    units = [i for block in blocks for i in block]
    if len(set(units)) != len(units):
        dup = next(i for i in units if units.count(i) > 1)
        raise ValueError(f"blocks must be disjoint; unit {dup} appears more than once.")
    if num_spins is not None and sorted(units) != list(range(num_spins)):
        missing = sorted(set(range(num_spins)) - set(units))
        extra = sorted(set(units) - set(range(num_spins)))
        raise ValueError(
            f"blocks must partition the units 0..{num_spins - 1} of the position; "
            f"missing {missing[:10]}, out of range {extra[:10]}."
        )
    return blocks


@functools.lru_cache(maxsize=128)
def _block_gibbs(
    energy_fn: EnergyFn, blocks: tuple[tuple[int, ...], ...], check_energy: bool
) -> Kernel:
    num_spins = sum(len(block) for block in blocks)
    block_indices = tuple(np.asarray(block, dtype=np.int32) for block in blocks)
    grad_fn = jax.grad(energy_fn)
    checked: dict[str, None] = {}  # fingerprints of the contexts that passed, oldest first

    def step(rng_key: jax.Array, state: SpinState, context: Any) -> tuple[SpinState, GibbsInfo]:
        keys = jax.random.split(rng_key, len(block_indices))
        position = state.position
        start = position
        for key, idx in zip(keys, block_indices, strict=True):
            field = grad_fn(position, context)[idx]
            # p(+1 | rest) = sigmoid(-2 field / T); compare in log space for stability.
            p_up = jax.nn.sigmoid(-2.0 * field / state.temperature)
            up = jax.random.uniform(key, idx.shape, dtype=position.dtype) < p_up
            position = position.at[idx].set(jnp.where(up, 1.0, -1.0).astype(position.dtype))
        energy = energy_fn(position, context)
        # The mean of booleans is float32 whatever the x64 setting; follow the energy's dtype.
        flip_rate = jnp.mean(position != start, dtype=energy.dtype)
        info = GibbsInfo(energy=energy, flip_rate=flip_rate)
        return state._replace(position=position, energy=energy), info

    def validate(positions: Any, context: Any, temperature: Any) -> None:
        check_spin_starts(positions, temperature, num_spins, "the blocks partition")
        if not check_energy:
            return
        fingerprint = _context_fingerprint(context)
        if fingerprint is not None and fingerprint in checked:
            return
        check_spin_energy(energy_fn, num_spins, context, blocks)
        if fingerprint is not None:
            checked[fingerprint] = None
            if len(checked) > 64:
                del checked[next(iter(checked))]

    return Kernel(
        init=_init(energy_fn),
        step=step,
        configuration_fields=("position", "energy"),
        num_warmup=0,
        validate=validate,
        name="block Gibbs",
    )


def block_gibbs(
    energy_fn: EnergyFn, blocks: Sequence[Sequence[int]], *, check_energy: bool = True
) -> Kernel:
    """Block Gibbs (heat-bath) sampling of spins ±1 by exact conditional fields.

    One ``step`` is one sweep: for each block in order, every unit of the block is redrawn
    from ``p(s_i = +1 | rest) = sigmoid(−2 ∂E/∂s_i / T)``, all at once, from one gradient.
    Requirements (checked by the driver on a random state): ``energy_fn`` is multilinear in
    each spin, units within a block do not interact, and the blocks partition all units.

    Args:
        energy_fn: ``energy_fn(position, context) -> scalar``, ``position`` of shape ``(n,)``
            holding ±1.0, differentiable (any JAX-traceable expression, e.g. ``-s @ J @ s / 2``
            with zero diagonal).
        blocks: Tuple of tuples of unit indices, e.g. the layers of a layered network;
            ``tuple((i,) for i in range(n))`` gives single-site Gibbs on any graph.
        check_energy: Check the two requirements with :func:`check_spin_energy` when the driver
            first meets a context value (it evaluates single flips of up to 256 units:
            measurable next to a short run of a large network). The kernel remembers the
            last 64 context values that passed (by a digest of their bytes), so repeated calls
            with one context, such as the chunks of :func:`samplers.optimise_schedule` or
            :func:`samplers.resume_tempering`, check once. Pass False only for an energy that
            meets them by construction, such as an Ising energy without self-couplings.

    Returns:
        A :class:`Kernel` with :class:`SpinState` states and :class:`GibbsInfo` infos.
        Equal arguments return the same kernel object.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> J = jnp.array([[0.0, 1.0], [1.0, 0.0]])
        >>> kernel = block_gibbs(lambda s, c: -0.5 * s @ J @ s, blocks=((0,), (1,)))
        >>> state = jax.jit(kernel.init)(jnp.array([1.0, -1.0]), (), 0.5)
        >>> state, info = jax.jit(kernel.step)(jax.random.key(0), state, ())
        >>> state.position.shape
        (2,)
    """
    if not callable(energy_fn):
        raise ValueError(f"energy_fn must be callable, got {energy_fn!r}.")
    return _block_gibbs(energy_fn, _check_blocks(blocks), bool(check_energy))


@functools.lru_cache(maxsize=128)
def _metropolis(energy_fn: EnergyFn) -> Kernel:
    def step(
        rng_key: jax.Array, state: SpinState, context: Any
    ) -> tuple[SpinState, MetropolisInfo]:
        num_spins = state.position.shape[0]
        key_sites, key_accept = jax.random.split(rng_key)
        sites = jax.random.randint(key_sites, (num_spins,), 0, num_spins)
        log_u = jnp.log(jax.random.uniform(key_accept, (num_spins,), dtype=state.energy.dtype))

        def propose(carry, site_and_log_u):
            position, energy = carry
            site, log_uniform = site_and_log_u
            proposal = position.at[site].multiply(-1.0)
            proposal_energy = energy_fn(proposal, context)
            # Accept with min(1, exp(-ΔE/T)); a NaN ΔE compares False and is rejected.
            accept = log_uniform < -(proposal_energy - energy) / state.temperature
            position = jnp.where(accept, proposal, position)
            energy = jnp.where(accept, proposal_energy, energy)
            return (position, energy), accept

        (position, energy), accepted = jax.lax.scan(
            propose, (state.position, state.energy), (sites, log_u)
        )
        info = MetropolisInfo(energy=energy, acceptance_rate=jnp.mean(accepted, dtype=energy.dtype))
        return state._replace(position=position, energy=energy), info

    def validate(positions: Any, context: Any, temperature: Any) -> None:
        _check_spins(positions)
        check_temperature(temperature)

    return Kernel(
        init=_init(energy_fn),
        step=step,
        configuration_fields=("position", "energy"),
        num_warmup=0,
        validate=validate,
        name="Metropolis",
    )


def metropolis(energy_fn: EnergyFn) -> Kernel:
    """Single-site Metropolis for spins ±1 on any energy (any graph, any interaction order).

    One ``step`` is a sweep of ``n`` proposals; each flips one uniformly chosen spin and is
    accepted with probability ``min(1, exp(−ΔE/T))``, ``ΔE`` from two energy evaluations.

    Args:
        energy_fn: ``energy_fn(position, context) -> scalar``, ``position`` of shape ``(n,)``
            holding ±1.0.

    Returns:
        A :class:`Kernel` with :class:`SpinState` states and :class:`MetropolisInfo` infos.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> kernel = metropolis(lambda s, c: -jnp.prod(s))
        >>> state = jax.jit(kernel.init)(jnp.ones(3), (), 1.0)
        >>> state, info = jax.jit(kernel.step)(jax.random.key(0), state, ())
        >>> float(info.acceptance_rate) <= 1.0
        True
    """
    if not callable(energy_fn):
        raise ValueError(f"energy_fn must be callable, got {energy_fn!r}.")
    return _metropolis(energy_fn)
