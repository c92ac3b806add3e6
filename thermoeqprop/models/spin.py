r"""Binary spin (Ising) networks, layered or on any graph the user gives.

States are spins :math:`s_i \in \{-1, +1\}`; inputs :math:`x_a` act as fields through input
couplings. With couplings :math:`J_e` on edges :math:`e = (i, j)`, fields :math:`h_i` and input
couplings :math:`W_{e'}` on input edges :math:`e' = (a, i)`:

.. math::
    E(s; θ, x) = -\sum_{(i,j)} J_{ij} s_i s_j - \sum_i h_i s_i - \sum_{(a,i)} W_{ai}\, x_a s_i.

The energy is multilinear in each spin (no self-coupling), so the conditional law of a spin
given the rest follows from one gradient, as block Gibbs samplers use. Parameters are
``{"couplings": (num_edges,), "fields": (num_spins,), "input_weights": (num_input_edges,)}``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from thermoeqprop.models._base import EnergyModel
from thermoeqprop.models.costs import SquaredError
from thermoeqprop.models.layered import check_layer_sizes

__all__ = ["SpinNetwork"]


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


@dataclasses.dataclass(frozen=True)
class SpinNetwork(EnergyModel):
    """An Ising network on a graph.

    Args:
        num_inputs: Number of input features.
        num_spins: Number of spins (all free; inputs are clamped fields).
        edges: Pairs ``(i, j)`` of coupled spins (undirected, no self-loops, no repeats).
        input_edges: Pairs ``(a, i)``: input feature ``a`` acts on spin ``i``.
        output_units: Indices of the output spins.
        blocks: Optional groups of spins that are conditionally independent given the rest
            (for block Gibbs); :meth:`layered` fills them in.
        cost: Cost on the output spins; default squared error against ±1 targets.
        init_scale: Scale of the initial couplings.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> net = SpinNetwork.layered((3, 4, 2))
        >>> params = net.init_params(jax.random.key(0))
        >>> net.energy(params, jnp.ones(6), jnp.zeros(3)).shape
        ()
    """

    num_inputs: int
    num_spins: int
    edges: tuple[tuple[int, int], ...]
    input_edges: tuple[tuple[int, int], ...]
    output_units: tuple[int, ...]
    blocks: tuple[tuple[int, ...], ...] | None = None
    cost: Any = SquaredError()
    init_scale: float = 0.5

    state_bounds = (-1.0, 1.0)
    is_spin = True

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
        if self.blocks is not None:
            blocks = tuple(tuple(int(i) for i in b) for b in self.blocks)
            flat = sorted(i for b in blocks for i in b)
            if flat != list(range(n)):
                raise ValueError(
                    f"blocks must partition the spins 0 … {n - 1} exactly once, got {blocks}"
                )
            adjacency = {tuple(sorted(e)) for e in self.edges}
            for b in blocks:
                members = set(b)
                for i, j in adjacency:
                    if i in members and j in members:
                        raise ValueError(
                            f"block {b} holds the coupled pair ({i}, {j}); spins in a block "
                            "must be conditionally independent"
                        )
            object.__setattr__(self, "blocks", blocks)

    @classmethod
    def layered(cls, layer_sizes, **kwargs) -> SpinNetwork:
        """A layered network ``(num_inputs, hidden…, num_outputs)`` with all-to-all couplings
        between adjacent layers; inputs drive the first free layer; one block per layer."""
        sizes = check_layer_sizes(layer_sizes)
        offsets = np.cumsum((0,) + sizes[1:])
        layers = [tuple(range(offsets[k], offsets[k + 1])) for k in range(len(sizes) - 1)]
        edges = tuple(
            (i, j) for a, b in zip(layers[:-1], layers[1:], strict=True) for i in a for j in b
        )
        input_edges = tuple((a, i) for a in range(sizes[0]) for i in layers[0])
        return cls(
            num_inputs=sizes[0],
            num_spins=int(offsets[-1]),
            edges=edges,
            input_edges=input_edges,
            output_units=layers[-1],
            blocks=tuple(layers),
            **kwargs,
        )

    @property
    def num_outputs(self) -> int:
        return len(self.output_units)

    @property
    def num_classes(self) -> int:
        return 2 if self.num_outputs == 1 else self.num_outputs

    @property
    def state_size(self) -> int:
        return self.num_spins

    def init_params(self, rng_key):
        k_coupling, k_input = jax.random.split(rng_key)
        degree = np.zeros(self.num_spins)
        for i, j in self.edges:
            degree[i] += 1
            degree[j] += 1
        scale = self.init_scale / np.sqrt(max(1.0, degree.mean()))
        in_scale = self.init_scale / np.sqrt(max(1, self.num_inputs))
        return {
            "couplings": scale * jax.random.normal(k_coupling, (len(self.edges),)),
            "fields": jnp.zeros((self.num_spins,)),
            "input_weights": in_scale * jax.random.normal(k_input, (len(self.input_edges),)),
        }

    def energy(self, params, state, x):
        energy = -jnp.dot(params["fields"], state)
        if self.edges:
            i, j = np.asarray(self.edges).T
            energy -= jnp.sum(params["couplings"] * state[i] * state[j])
        if self.input_edges:
            a, i = np.asarray(self.input_edges).T
            energy -= jnp.sum(params["input_weights"] * x[a] * state[i])
        return energy

    def output(self, state):
        return state[..., np.asarray(self.output_units)]

    def cost_fn(self, state, target):
        """Cost of one spin state. The squared error is written in its multilinear form
        ``½ Σ_o (1 + y_o²) − Σ_o y_o s_o``, equal to ``½ Σ_o (s_o − y_o)²`` on spins (s² = 1)
        but with the exact Gibbs field ``2 ∂C/∂s_i``, as block Gibbs needs when nudging."""
        if isinstance(self.cost, SquaredError):
            return 0.5 * jnp.sum(1.0 + target**2) - jnp.dot(target, self.output(state))
        return self.cost(self.output(state), target)

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
