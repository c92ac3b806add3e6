r"""Collapsed Gibbs for layered Ising energies: one parity class of layers from its marginal.

In the layered Ising energy of :mod:`samplers._layered`,
:math:`E(s) = -h^\top s - \sum_k s_k^\top J_k s_{k+1}`, the layers of one parity (the *kept*
layers) and those of the other (the *summed* layers) are each conditionally independent given
the other class. Summing the summed spins out is exact,

.. math::
    p(s_K) ∝ \exp\!\Big(\frac{h_K \cdot s_K}{T}\Big) \prod_{i ∉ K} 2\cosh\frac{u_i(s_K)}{T},
    \qquad u_i = h_i + \sum_{j ∈ K} J_{ij} s_j,

so a chain can move on the kept spins alone: one sweep redraws every kept spin in turn from
its conditional law under this marginal (heat bath),

.. math::
    p(s_j = +1 \mid \text{other kept spins}) = σ\Big(\frac{2 h_j}{T} + \sum_{i ∉ K}
    \Big[\log\cosh\frac{u_i^{(j)} + J_{ij}}{T} − \log\cosh\frac{u_i^{(j)} − J_{ij}}{T}\Big]\Big),

with :math:`u^{(j)} = u − J_{·j} s_j` the summed fields without spin j; the fields
:math:`u` are carried along the sweep and updated after each spin (one column of the
couplings), so a sweep costs one pass over the couplings between the classes, like a sweep of
block Gibbs, but in ``|K|`` sequential steps. The kept spins within a layer are not coupled
to each other in ``E``, but they are in the marginal (through the summed spins), which is why
they are redrawn one at a time.

The summed spins are never drawn: their entries of ``position`` are 0. An estimator replaces
them by their conditional expectations given the kept spins (``tanh(u/T)``), which are exact
and remove their noise; the slow modes of block Gibbs, in which both classes move together,
do not exist on the marginal.

Every update also reports its *innovation*, the new spin minus its conditional mean,
:math:`d_j = s_j − \tanh(\mathrm{logit}_j / 2)` (:class:`CollapsedGibbsInfo`). Given
everything before the update, :math:`d_j` has mean exactly 0, so any multiple of it fixed
independently of the chain is a control variate with mean zero, from the start of the chain
on (docs/mathematics.md, "Heat-bath control variates").
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from samplers._base import Kernel
from samplers._layered import _layered_gibbs

__all__ = ["CollapsedGibbsInfo", "CollapsedSpinState", "layered_collapsed_gibbs"]


class CollapsedSpinState(NamedTuple):
    """State of one chain of :func:`layered_collapsed_gibbs`.

    Attributes:
        position: Spins (n,): the kept layers' ±1.0, the summed layers' entries 0.
        energy: The marginal free energy of the kept spins,
            ``−h_K·s_K − T Σ_{i ∉ K} log 2cosh(u_i/T)``, shape ``()``.
        temperature: Temperature ``T > 0``, shape ``()``.
        fields: The fields ``h`` (n,) of the chain's context, computed once at ``init``.
        summed_fields: The fields ``u`` of the summed spins, in their order in ``position``.
    """

    position: jax.Array
    energy: jax.Array
    temperature: jax.Array
    fields: jax.Array
    summed_fields: jax.Array


class CollapsedGibbsInfo(NamedTuple):
    """Facts about one sweep of :func:`layered_collapsed_gibbs`.

    Attributes:
        energy: The marginal free energy after the sweep.
        flip_rate: Fraction of the kept spins whose value changed during the sweep.
        innovations: (k,) for the k kept spins, in their order in ``position``: each update's
            new spin minus its conditional mean given the other kept spins at that moment,
            ``s_j − tanh(logit_j / 2)``; mean exactly 0 given the chain's past.
    """

    energy: jax.Array
    flip_rate: jax.Array
    innovations: jax.Array


def _log_2cosh(z):
    return jnp.logaddexp(z, -z)


@functools.lru_cache(maxsize=64)
def _classes(layer_sizes: tuple[int, ...], kept_parity: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices (int32) of the kept and of the summed spins, in position order."""
    bounds = np.cumsum((0, *layer_sizes))
    kept = [np.arange(bounds[k], bounds[k + 1]) for k in range(len(layer_sizes))
            if k % 2 == kept_parity]  # fmt: skip
    summed = [np.arange(bounds[k], bounds[k + 1]) for k in range(len(layer_sizes))
              if k % 2 != kept_parity]  # fmt: skip
    return np.concatenate(kept).astype(np.int32), np.concatenate(summed).astype(np.int32)


def _cross_couplings(couplings, layer_sizes, kept_parity):
    """``A`` (n_summed, n_kept): the couplings between each summed and each kept spin (block
    by block: each coupling matrix joins one kept and one summed layer)."""
    offsets = {}  # layer -> its first index among the kept or among the summed spins
    counts = [0, 0]  # [kept, summed]
    for k, size in enumerate(layer_sizes):
        group = 0 if k % 2 == kept_parity else 1
        offsets[k] = counts[group]
        counts[group] += size
    cross = jnp.zeros((counts[1], counts[0]), couplings[0].dtype)
    for k, coupling in enumerate(couplings):  # J_k: (n_k, n_{k+1})
        block, (s, c) = (coupling.T, (k + 1, k)) if k % 2 == kept_parity else (coupling, (k, k + 1))
        rows = slice(offsets[s], offsets[s] + layer_sizes[s])
        cols = slice(offsets[c], offsets[c] + layer_sizes[c])
        cross = cross.at[rows, cols].set(block)
    return cross


@functools.lru_cache(maxsize=64)
def _collapsed_gibbs(interaction_fn: Callable, layer_sizes: tuple[int, ...],
                     kept_parity: int) -> Kernel:  # fmt: skip
    kept, summed = _classes(layer_sizes, kept_parity)
    num_spins = sum(layer_sizes)
    # Starts and shapes are those of block Gibbs on the same layers.
    validate = _layered_gibbs(interaction_fn, layer_sizes).validate

    def marginal_energy(h_kept, spins, u, temperature):
        return -h_kept @ spins - temperature * jnp.sum(_log_2cosh(u / temperature))

    def init(position: jax.Array, context: Any, temperature: Any) -> CollapsedSpinState:
        couplings, fields = interaction_fn(context)
        position = jnp.asarray(position)
        dtype = position.dtype
        fields = jnp.asarray(fields, dtype=dtype)
        temperature = jnp.asarray(temperature, dtype=dtype)
        position = jnp.zeros_like(position).at[kept].set(position[kept])
        cross = _cross_couplings(couplings, layer_sizes, kept_parity).astype(dtype)
        u = fields[summed] + cross @ position[kept]
        energy = marginal_energy(fields[kept], position[kept], u, temperature)
        return CollapsedSpinState(position, energy, temperature, fields, u)

    def step(rng_key: jax.Array, state: CollapsedSpinState, context: Any):
        couplings, _ = interaction_fn(context)
        dtype = state.position.dtype
        t = state.temperature
        cross = _cross_couplings(couplings, layer_sizes, kept_parity).astype(dtype)
        uniforms = jax.random.uniform(rng_key, (kept.size,), dtype)
        h_kept = state.fields[kept]

        def update(j, carry):
            spins, u, innovations = carry
            column = cross[:, j]
            rest = u - column * spins[j]
            logit = 2.0 * h_kept[j] / t + jnp.sum(
                _log_2cosh((rest + column) / t) - _log_2cosh((rest - column) / t)
            )
            spin = jnp.where(uniforms[j] < jax.nn.sigmoid(logit), 1.0, -1.0).astype(dtype)
            innovations = innovations.at[j].set(spin - jnp.tanh(0.5 * logit))
            return spins.at[j].set(spin), rest + column * spin, innovations

        start = (state.position[kept], state.summed_fields, jnp.zeros(kept.size, dtype))
        spins, u, innovations = jax.lax.fori_loop(0, kept.size, update, start)
        position = state.position.at[kept].set(spins)
        energy = marginal_energy(h_kept, spins, u, t)
        flip_rate = jnp.mean(spins != state.position[kept], dtype=dtype)
        info = CollapsedGibbsInfo(energy=energy, flip_rate=flip_rate, innovations=innovations)
        return state._replace(position=position, energy=energy, summed_fields=u), info

    return Kernel(
        init=init,
        step=step,
        configuration_fields=("position", "energy", "summed_fields"),
        num_warmup=0,
        validate=validate,
        name=f"layered collapsed Gibbs ({num_spins - kept.size} of {num_spins} spins summed)",
    )


def layered_collapsed_gibbs(
    interaction_fn: Callable, layer_sizes: Sequence[int], kept_parity: int
) -> Kernel:
    """Collapsed Gibbs for a layered Ising energy: the layers of one parity drawn from their
    exact marginal, the others summed out (module docstring).

    Args:
        interaction_fn: As for :func:`samplers.layered_gibbs`: ``context -> (couplings,
            fields)``, hashable.
        layer_sizes: The sizes ``(n_1, …, n_L)`` of the layers, ``L ≥ 2``.
        kept_parity: 0 to keep layers 1, 3, … (indices 0, 2, … of ``layer_sizes``), 1 to
            keep layers 2, 4, ….

    Returns:
        A :class:`Kernel` with :class:`CollapsedSpinState` states and
        :class:`CollapsedGibbsInfo` infos (``flip_rate`` over the kept spins, the updates'
        innovations). Positions hold 0 for the summed spins; starts
        are ±1 for every spin, as for block Gibbs (the summed ones are ignored).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> kernel = layered_collapsed_gibbs(lambda c: c, (2, 3), 1)
        >>> context = ((0.5 * jnp.ones((2, 3)),), jnp.zeros(5))
        >>> state = jax.jit(kernel.init)(jnp.ones(5), context, 1.0)
        >>> state, info = jax.jit(kernel.step)(jax.random.key(0), state, context)
        >>> [float(v) for v in state.position[:2]]
        [0.0, 0.0]
    """
    if not callable(interaction_fn):
        raise ValueError(f"interaction_fn must be callable, got {interaction_fn!r}.")
    sizes = tuple(layer_sizes)
    if len(sizes) < 2 or any(
        isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1 for n in sizes
    ):
        raise ValueError(
            f"layer_sizes must be at least two positive integers, got {layer_sizes!r}."
        )
    if kept_parity not in (0, 1) or isinstance(kept_parity, bool):
        raise ValueError(f"kept_parity must be 0 or 1, got {kept_parity!r}.")
    return _collapsed_gibbs(interaction_fn, tuple(int(n) for n in sizes), int(kept_parity))
