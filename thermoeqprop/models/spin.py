r"""Binary spin (Ising) networks, on any graph the user gives or layered with dense couplings.

States are spins :math:`s_i \in \{-1, +1\}`; inputs :math:`x_a` act as fields through input
couplings. With couplings :math:`J_e` on edges :math:`e = (i, j)`, fields :math:`h_i` and input
couplings :math:`W_{e'}` on input edges :math:`e' = (a, i)`:

.. math::
    E(s; θ, x) = -\sum_{(i,j)} J_{ij} s_i s_j - \sum_i h_i s_i - \sum_{(a,i)} W_{ai}\, x_a s_i.

The energy is multilinear in each spin (no self-coupling), so the conditional law of a spin
given the rest follows from one gradient, as block Gibbs samplers use.

- :class:`SpinNetwork` keeps an arbitrary graph in sparse form: parameters
  ``{"couplings": (num_edges,), "fields": (num_spins,), "input_weights": (num_input_edges,)}``;
  without given blocks, a greedy graph colouring supplies them, so block (chromatic) Gibbs
  samples any graph.
- :class:`LayeredSpinNetwork` (what :meth:`SpinNetwork.layered` builds) keeps the couplings
  between adjacent layers as dense matrices, ``{"couplings": (J_1, …), "fields": (num_spins,),
  "input_weights": (num_inputs, first layer)}``, so energies, parameter gradients and the
  conditional fields of block Gibbs are matrix products over all states at once. Raveled,
  its parameters are those of the equivalent edge list (:meth:`LayeredSpinNetwork.to_graph`)
  in the same order, and it draws the same initial values.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from thermoeqprop._deprecated import renamed_fields
from thermoeqprop.models._base import EnergyModel
from thermoeqprop.models.costs import SquaredError
from thermoeqprop.models.layered import check_layer_sizes, split_layers

__all__ = ["LayeredSpinNetwork", "SpinNetwork"]


def _check_pairs(name, pairs, first_limit, second_limit, *, distinct):
    out = []
    seen = set()
    for pair in pairs:
        try:
            i, j = (int(v) for v in pair)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be pairs of integers, got {pair!r}") from None
        if not (0 <= i < first_limit and 0 <= j < second_limit):
            raise ValueError(
                f"{name} entry {pair!r} is out of range: indices must lie in "
                f"0 … {first_limit - 1} and 0 … {second_limit - 1}"
            )
        if distinct and i == j:
            raise ValueError(f"{name} entry {pair!r} couples a spin to itself; not allowed")
        key = tuple(sorted((i, j))) if distinct else (i, j)
        if key in seen:
            raise ValueError(f"{name} lists the pair {pair!r} twice")
        seen.add(key)
        out.append((i, j))
    return tuple(out)


def greedy_colouring(num_spins: int, edges) -> tuple[tuple[int, ...], ...]:
    """Blocks of mutually uncoupled spins: a greedy colouring, largest degree first.

    Every colour class is conditionally independent given the others, so one block-Gibbs
    sweep redraws each class at once. Greedy colouring uses at most (max degree + 1) colours.
    """
    neighbours: list[set[int]] = [set() for _ in range(num_spins)]
    for i, j in edges:
        neighbours[i].add(j)
        neighbours[j].add(i)
    colour = [-1] * num_spins
    for i in sorted(range(num_spins), key=lambda k: (-len(neighbours[k]), k)):
        taken = {colour[j] for j in neighbours[i]}
        colour[i] = next(c for c in range(num_spins) if c not in taken)
    return tuple(
        tuple(i for i in range(num_spins) if colour[i] == c) for c in range(max(colour) + 1)
    )


class _SpinModel(EnergyModel):
    """What spin networks share: ±1 states, output spins, the multilinear squared error."""

    state_bounds = (-1.0, 1.0)
    is_spin = True

    @property
    def num_outputs(self) -> int:
        return len(self.output_units)

    @property
    def num_classes(self) -> int:
        return 2 if self.num_outputs == 1 else self.num_outputs

    def output(self, state):
        return state[..., np.asarray(self.output_units)]

    def cost_fn(self, state, target):
        """Cost of one spin state. The squared error is written in its multilinear form
        ``½ Σ_o (1 + y_o²) − Σ_o y_o s_o``, equal to ``½ Σ_o (s_o − y_o)²`` on spins (s² = 1)
        but with the exact Gibbs field ``2 ∂C/∂s_i``, as block Gibbs needs when nudging."""
        if isinstance(self.cost, SquaredError):
            return 0.5 * jnp.sum(1.0 + target**2) - jnp.dot(target, self.output(state))
        return self.cost(self.output(state), target)

    @property
    def multilinear(self) -> bool:
        """Whether ``E + βC`` is multilinear in every spin by construction (no check needed)."""
        return isinstance(self.cost, SquaredError)

    def initial_state(self, x):
        return jnp.ones((x.shape[0], self.state_size), dtype=x.dtype)

    def encode_labels(self, labels):
        labels = self._checked_labels(labels)
        if self.num_outputs == 1:
            return (2.0 * labels - 1.0)[:, None]
        return 2.0 * jax.nn.one_hot(labels, self.num_outputs, dtype=float) - 1.0

    def decode_outputs(self, outputs):
        if self.num_outputs == 1:
            return (outputs[:, 0] > 0).astype(jnp.int32)
        return jnp.argmax(outputs, axis=-1)


@renamed_fields
@dataclasses.dataclass(frozen=True)
class SpinNetwork(_SpinModel):
    """An Ising network on a graph, its couplings in sparse (edge-list) form.

    Args:
        num_inputs: Number of input features.
        num_spins: Number of spins (all free; inputs are clamped fields).
        edges: Pairs ``(i, j)`` of coupled spins (undirected, no self-loops, no repeats).
        input_edges: Pairs ``(a, i)``: input feature ``a`` acts on spin ``i``.
        output_units: Indices of the output spins.
        blocks: Groups of spins that are conditionally independent given the rest (for block
            Gibbs); by default a greedy colouring of the graph (:func:`greedy_colouring`).
        cost: Cost on the output spins; default squared error against ±1 targets.
        init_gain: Scale of the initial couplings (``init_scale``, its former name, is a
            deprecated alias).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> net = SpinNetwork(2, 3, edges=((0, 1), (1, 2), (0, 2)), input_edges=((0, 0),),
        ...                   output_units=(2,))
        >>> net.blocks  # a triangle needs three colours
        ((0,), (1,), (2,))
        >>> params = net.init_params(jax.random.key(0))
        >>> net.energy(params, jnp.ones(3), jnp.zeros(2)).shape
        ()
    """

    num_inputs: int
    num_spins: int
    edges: tuple[tuple[int, int], ...]
    input_edges: tuple[tuple[int, int], ...]
    output_units: tuple[int, ...]
    blocks: tuple[tuple[int, ...], ...] | None = None
    cost: Any = SquaredError()
    init_gain: float = 0.5

    def __post_init__(self):
        if int(self.num_spins) < 1 or int(self.num_inputs) < 0:
            raise ValueError(
                f"num_spins must be ≥ 1 and num_inputs ≥ 0, got num_spins={self.num_spins}, "
                f"num_inputs={self.num_inputs}"
            )
        n = self.num_spins
        object.__setattr__(self, "edges", _check_pairs("edges", self.edges, n, n, distinct=True))
        object.__setattr__(
            self,
            "input_edges",
            _check_pairs("input_edges", self.input_edges, self.num_inputs, n, distinct=False),
        )
        outputs = tuple(int(o) for o in self.output_units)
        if not outputs or len(set(outputs)) != len(outputs) or not all(0 <= o < n for o in outputs):
            raise ValueError(
                f"output_units must be distinct spin indices in 0 … {n - 1}, got {outputs}"
            )
        object.__setattr__(self, "output_units", outputs)
        if self.blocks is None:
            object.__setattr__(self, "blocks", greedy_colouring(n, self.edges))
            return
        blocks = tuple(tuple(int(i) for i in b) for b in self.blocks)
        flat = sorted(i for b in blocks for i in b)
        if flat != list(range(n)):
            raise ValueError(
                f"blocks must partition the spins 0 … {n - 1} exactly once, got {blocks}"
            )
        block_of = {i: k for k, b in enumerate(blocks) for i in b}
        for i, j in self.edges:
            if block_of[i] == block_of[j]:
                raise ValueError(
                    f"block {blocks[block_of[i]]} holds the coupled pair ({min(i, j)}, "
                    f"{max(i, j)}); spins in a block must be conditionally independent"
                )
        object.__setattr__(self, "blocks", blocks)

    @classmethod
    def layered(cls, layer_sizes, **kwargs) -> LayeredSpinNetwork:
        """A layered network ``(num_inputs, hidden…, num_outputs)`` with all-to-all couplings
        between adjacent layers, kept as dense matrices (:class:`LayeredSpinNetwork`)."""
        return LayeredSpinNetwork(layer_sizes, **kwargs)

    @property
    def state_size(self) -> int:
        return self.num_spins

    @property
    def architecture(self) -> str:
        """The number of spins, e.g. ``"12 spins"``."""
        return f"{self.num_spins} spins"

    def init_params(self, rng_key):
        degree = np.zeros(self.num_spins)
        for i, j in self.edges:
            degree[i] += 1
            degree[j] += 1
        return _init_spin_params(
            rng_key,
            len(self.edges),
            self.num_spins,
            len(self.input_edges),
            self.init_gain / np.sqrt(max(1.0, degree.mean())),
            self.init_gain / np.sqrt(max(1, self.num_inputs)),
        )

    def energy(self, params, state, x):
        energy = -jnp.dot(params["fields"], state)
        if self.edges:
            i, j = np.asarray(self.edges).T
            energy -= jnp.sum(params["couplings"] * state[i] * state[j])
        if self.input_edges:
            a, i = np.asarray(self.input_edges).T
            energy -= jnp.sum(params["input_weights"] * x[a] * state[i])
        return energy


def _init_spin_params(rng_key, num_edges, num_spins, num_input_edges, scale, in_scale):
    """Normal couplings and input weights (as flat vectors), zero fields."""
    k_coupling, k_input = jax.random.split(rng_key)
    return {
        "couplings": scale * jax.random.normal(k_coupling, (num_edges,)),
        "fields": jnp.zeros((num_spins,)),
        "input_weights": in_scale * jax.random.normal(k_input, (num_input_edges,)),
    }


@renamed_fields
@dataclasses.dataclass(frozen=True)
class LayeredSpinNetwork(_SpinModel):
    r"""A layered Ising network with dense couplings between adjacent layers.

    Layers ``(num_inputs, hidden…, num_outputs)``; the inputs are clamped fields on the first
    free layer, every other layer is free spins, and with :math:`s_1, …, s_L` the free layers

    .. math::
        E(s; θ, x) = -x^\top W_{\rm in} s_1 - \sum_{k=1}^{L-1} s_k^\top J_k s_{k+1} - h^\top s.

    Parameters ``{"couplings": (J_1, …, J_{L−1}), "fields": (num_spins,), "input_weights":
    W_in (num_inputs, size of s_1)}``. Each layer is one block of block Gibbs, and every
    quantity the samplers and estimators need is a product of these matrices with all states
    at once. :meth:`to_graph` gives the same network as an edge list (:class:`SpinNetwork`):
    same energy, same raveled parameters, same initial draws.

    Args:
        layer_sizes: ``(num_inputs, hidden_1, …, num_outputs)``.
        cost: Cost on the output spins; default squared error against ±1 targets.
        init_gain: Scale of the initial couplings (``init_scale``, its former name, is a
            deprecated alias).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> net = SpinNetwork.layered((3, 4, 2))
        >>> params = net.init_params(jax.random.key(0))
        >>> [j.shape for j in params["couplings"]], params["input_weights"].shape
        ([(4, 2)], (3, 4))
        >>> net.blocks
        ((0, 1, 2, 3), (4, 5))
    """

    layer_sizes: tuple[int, ...]
    cost: Any = SquaredError()
    init_gain: float = 0.5

    def __post_init__(self):
        object.__setattr__(self, "layer_sizes", check_layer_sizes(self.layer_sizes))

    @property
    def num_inputs(self) -> int:
        return self.layer_sizes[0]

    @property
    def num_spins(self) -> int:
        return sum(self.layer_sizes[1:])

    @property
    def state_size(self) -> int:
        return self.num_spins

    @property
    def architecture(self) -> str:
        """The layer sizes, e.g. ``"(64, 128, 10)"``."""
        return str(self.layer_sizes)

    @property
    def ising_layer_sizes(self) -> tuple[int, ...] | None:
        """The free layers' sizes when :meth:`ising_form` applies (the squared-error cost)."""
        return tuple(self.layer_sizes[1:]) if self.multilinear else None

    @property
    def blocks(self) -> tuple[tuple[int, ...], ...]:
        offsets = np.cumsum((0,) + self.layer_sizes[1:])
        return tuple(
            tuple(range(int(a), int(b))) for a, b in zip(offsets[:-1], offsets[1:], strict=True)
        )

    @property
    def output_units(self) -> tuple[int, ...]:
        return self.blocks[-1]

    def to_graph(self) -> SpinNetwork:
        """The same network as an edge list, edges in the ravel order of the couplings."""
        layers = self.blocks
        edges = tuple(
            (i, j) for a, b in zip(layers[:-1], layers[1:], strict=True) for i in a for j in b
        )
        input_edges = tuple((a, i) for a in range(self.num_inputs) for i in layers[0])
        return SpinNetwork(
            num_inputs=self.num_inputs,
            num_spins=self.num_spins,
            edges=edges,
            input_edges=input_edges,
            output_units=self.output_units,
            blocks=layers,
            cost=self.cost,
            init_gain=self.init_gain,
        )

    def graph_params(self, params):
        """These parameters in the layout of :meth:`to_graph` (flat couplings and weights)."""
        return {
            "couplings": jnp.concatenate([jnp.ravel(j) for j in params["couplings"]])
            if params["couplings"]
            else jnp.zeros((0,), params["fields"].dtype),
            "fields": params["fields"],
            "input_weights": jnp.ravel(params["input_weights"]),
        }

    def init_params(self, rng_key):
        sizes = self.layer_sizes[1:]
        pairs = list(zip(sizes[:-1], sizes[1:], strict=True))
        num_edges = sum(a * b for a, b in pairs)
        mean_degree = 2.0 * num_edges / self.num_spins
        flat = _init_spin_params(
            rng_key,
            num_edges,
            self.num_spins,
            self.num_inputs * sizes[0],
            self.init_gain / np.sqrt(max(1.0, mean_degree)),
            self.init_gain / np.sqrt(max(1, self.num_inputs)),
        )
        splits = np.cumsum([a * b for a, b in pairs])[:-1]
        couplings = tuple(
            c.reshape(shape)
            for c, shape in zip(jnp.split(flat["couplings"], splits), pairs, strict=True)
        )
        return {
            "couplings": couplings,
            "fields": flat["fields"],
            "input_weights": flat["input_weights"].reshape(self.num_inputs, sizes[0]),
        }

    def ising_form(self, params, x, target, beta):
        """``E + βC`` of one example as a layered Ising energy, up to a constant.

        Returns ``(couplings, fields)`` with ``fields = h + (x W_in on the first layer) +
        (β y on the outputs)``, the form :func:`samplers.layered_gibbs` samples; the dropped
        constant is ``β ½ Σ_o (1 + y_o²)``. Only for the squared-error cost (:attr:`multilinear`).
        """
        if not self.multilinear:
            raise ValueError(
                f"ising_form needs the squared-error cost (multilinear on spins), got {self.cost}"
            )
        n, k = self.num_spins, self.num_outputs
        first = x @ params["input_weights"]
        external = jnp.zeros(n, first.dtype).at[: first.shape[-1]].add(first)
        return params["couplings"], params["fields"] + external.at[n - k :].add(beta * target)

    def energy(self, params, state, x):
        layers = split_layers(state, self.layer_sizes[1:])
        # (x W_in) first: under vmap over chains it is one product per example, not per chain.
        energy = -jnp.dot(params["fields"], state) - (x @ params["input_weights"]) @ layers[0]
        for k, coupling in enumerate(params["couplings"]):
            energy -= layers[k] @ coupling @ layers[k + 1]
        return energy
