r"""Block Gibbs for layered Ising energies, as matrix products.

A layered Ising energy over layers :math:`s_1, …, s_L` (spins ±1) with dense couplings
:math:`J_k` between adjacent layers and fields :math:`h`:

.. math::
    E(s) = -h^\top s - \sum_{k=1}^{L-1} s_k^\top J_k\, s_{k+1}.

Each layer is conditionally independent given its neighbours, with field
:math:`φ_k = h_k + J_{k-1}^\top s_{k-1} + J_k s_{k+1}` and
:math:`p(s_k = +1 \mid \text{rest}) = σ(2 φ_k / T)` per unit. One sweep redraws the layers in
order, so it multiplies each coupling matrix twice with the chain's state (once per
direction): the least a sweep can do. The energy after the sweep comes for free: with
:math:`d_k = J_{k-1}^\top s_{k-1}` taken from the already redrawn layer below,
:math:`E = -\sum_k s_k \cdot (h_k + d_k)`. Under ``vmap`` over chains and targets with
couplings shared by all of them (``samplers.sample(..., context_axes=...)``) every product is
one matrix product over all states at once.

The generic :func:`samplers.block_gibbs` samples the same law from any multilinear energy by
automatic differentiation; this kernel is the same sampler with the structure written out.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from samplers._base import Kernel
from samplers._spins import GibbsInfo, check_spin_starts

__all__ = ["LayeredSpinState", "layered_gibbs", "layered_ising_energy"]


class LayeredSpinState(NamedTuple):
    """State of one chain of :func:`layered_gibbs`.

    Attributes:
        position: Spins as floats ±1.0, shape ``(n,)``, the layers one after another.
        energy: ``E(position)`` of the layered Ising energy, shape ``()``.
        temperature: Temperature ``T > 0``, shape ``()``.
        fields: The fields ``h`` (n,) of the chain's context, computed once at ``init``
            (they may hold products such as an input times its weights that do not change
            along a chain).
    """

    position: jax.Array
    energy: jax.Array
    temperature: jax.Array
    fields: jax.Array


def _split(position: jax.Array, sizes: tuple[int, ...]) -> list[jax.Array]:
    bounds = np.cumsum((0, *sizes))
    return [position[..., bounds[k] : bounds[k + 1]] for k in range(len(sizes))]


def layered_ising_energy(position: jax.Array, couplings: Sequence[jax.Array], fields: jax.Array):
    """``E(s) = −h·s − Σ_k s_k·J_k s_{k+1}`` of one state (n,); layer sizes from ``couplings``.

    Example:
        >>> import jax.numpy as jnp
        >>> float(layered_ising_energy(jnp.ones(3), (jnp.ones((1, 2)),), jnp.zeros(3)))
        -2.0
    """
    sizes = (couplings[0].shape[0], *(c.shape[1] for c in couplings)) if couplings else None
    layers = _split(position, sizes) if sizes else [position]
    energy = -jnp.dot(fields, position)
    for k, coupling in enumerate(couplings):
        energy -= layers[k] @ coupling @ layers[k + 1]
    return energy


@functools.lru_cache(maxsize=64)
def _layered_gibbs(interaction_fn: Callable, layer_sizes: tuple[int, ...]) -> Kernel:
    num_spins = sum(layer_sizes)

    def init(position: jax.Array, context: Any, temperature: Any) -> LayeredSpinState:
        couplings, fields = interaction_fn(context)
        position = jnp.asarray(position)
        fields = jnp.asarray(fields, dtype=position.dtype)
        return LayeredSpinState(
            position=position,
            energy=layered_ising_energy(position, couplings, fields),
            temperature=jnp.asarray(temperature, dtype=position.dtype),
            fields=fields,
        )

    def step(rng_key: jax.Array, state: LayeredSpinState, context: Any):
        couplings, _ = interaction_fn(context)  # the fields are the state's (XLA drops these)
        keys = jax.random.split(rng_key, len(layer_sizes))
        layers = _split(state.position, layer_sizes)
        fields = _split(state.fields, layer_sizes)
        dtype = state.position.dtype
        energy = jnp.zeros((), dtype)
        for k, key in enumerate(keys):
            below = fields[k] if k == 0 else fields[k] + layers[k - 1] @ couplings[k - 1]
            field = below if k == len(layer_sizes) - 1 else below + couplings[k] @ layers[k + 1]
            up = jax.random.uniform(key, field.shape, dtype) < jax.nn.sigmoid(
                2.0 * field / state.temperature
            )
            layers[k] = jnp.where(up, 1.0, -1.0).astype(dtype)
            # Pair (k−1, k) with both layers redrawn, and layer k's own fields.
            energy -= layers[k] @ below
        position = jnp.concatenate(layers)
        flip_rate = jnp.mean(position != state.position, dtype=dtype)
        info = GibbsInfo(energy=energy, flip_rate=flip_rate)
        return state._replace(position=position, energy=energy), info

    def validate(positions: Any, context: Any, temperature: Any) -> None:
        check_spin_starts(positions, temperature, num_spins, f"the layers {layer_sizes} hold")
        couplings, fields = interaction_fn(context)
        expected = [(a, b) for a, b in zip(layer_sizes[:-1], layer_sizes[1:], strict=True)]
        shapes = [tuple(np.shape(c)) for c in couplings]
        if shapes != expected or tuple(np.shape(fields)) != (num_spins,):
            raise ValueError(
                f"interaction_fn must return couplings of shapes {expected} and fields of shape "
                f"({num_spins},) for layers {layer_sizes}; got couplings {shapes} and fields "
                f"{tuple(np.shape(fields))}."
            )

    return Kernel(
        init=init,
        step=step,
        configuration_fields=("position", "energy"),
        num_warmup=0,
        validate=validate,
        name="layered block Gibbs",
    )


def layered_gibbs(interaction_fn: Callable, layer_sizes: Sequence[int]) -> Kernel:
    """Block Gibbs (heat bath) for a layered Ising energy, one layer per block, by matmuls.

    One ``step`` is one sweep over the layers in order; see the module docstring for the
    energy, the conditional fields and the cost of a sweep. The law is that of
    :func:`samplers.block_gibbs` with the layers as blocks on :func:`layered_ising_energy`.

    Args:
        interaction_fn: ``interaction_fn(context) -> (couplings, fields)``: a tuple of the
            ``L − 1`` coupling matrices ``J_k`` of shapes ``(n_k, n_{k+1})`` and the fields
            ``h`` of shape ``(n,)``. Called once per chain at ``init`` for the fields, which
            the state keeps, and in every step for the couplings (so an expensive field, such
            as an input times its weight matrix, is computed once per chain). Hashable: equal
            arguments return the same kernel object, so compiled code is reused.
        layer_sizes: The sizes ``(n_1, …, n_L)`` of the layers; ``position`` holds them one
            after another.

    Returns:
        A :class:`Kernel` with :class:`LayeredSpinState` states and :class:`GibbsInfo` infos.
        ``state.energy`` is :func:`layered_ising_energy` (what parallel tempering compares).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> kernel = layered_gibbs(lambda c: c, (2, 3))
        >>> context = ((0.5 * jnp.ones((2, 3)),), jnp.zeros(5))
        >>> state = jax.jit(kernel.init)(jnp.ones(5), context, 1.0)
        >>> state, info = jax.jit(kernel.step)(jax.random.key(0), state, context)
        >>> bool(jnp.isclose(state.energy, layered_ising_energy(state.position, *context)))
        True
    """
    if not callable(interaction_fn):
        raise ValueError(f"interaction_fn must be callable, got {interaction_fn!r}.")
    sizes = tuple(layer_sizes)
    if not sizes or any(
        isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1 for n in sizes
    ):
        raise ValueError(f"layer_sizes must be positive integers, got {layer_sizes!r}.")
    return _layered_gibbs(interaction_fn, tuple(int(n) for n in sizes))
