r"""Layered continuous networks with the Scellier–Bengio (Hopfield-like) energy.

For layers :math:`s_0 = x` (clamped input), :math:`s_1, …, s_L` (free: hidden layers and the
output layer), couplings :math:`W_k` between adjacent layers and biases :math:`b_k`:

.. math::
    E(s; θ, x) = \tfrac12 \sum_{k=1}^{L} \lVert s_k \rVert^2
      - \sum_{k=0}^{L-1} ρ(s_k)^\top W_k\, ρ(s_{k+1}) - \sum_{k=1}^{L} b_k^\top ρ(s_k),

with :math:`ρ(s_0) = x`. The coupling between layers k and k+1 is symmetric by construction:
one matrix serves both directions. The quadratic network (linear ρ) is in ``quadratic.py``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from thermoeqprop.models._base import EnergyModel
from thermoeqprop.models.costs import SquaredError

__all__ = ["ACTIVATIONS", "LayeredNetwork"]


def _sigmoid(s):
    # Logistic with slope 1 at s = 1/2: the smooth counterpart of the hard sigmoid.
    return jax.nn.sigmoid(4.0 * (s - 0.5))


def _hard_sigmoid(s):
    # clip(s, 0, 1) written so that its derivative at the bounds is the one from inside the box
    # (1), as the box-constrained relaxation needs; jnp.clip would give 1/2 there.
    return s + jax.nn.relu(-s) - jax.nn.relu(s - 1.0)


def _linear(s):
    return s


ACTIVATIONS = {
    "sigmoid": _sigmoid,
    "hard_sigmoid": _hard_sigmoid,
    "tanh": jnp.tanh,
    "linear": _linear,
}


def split_layers(state: jax.Array, sizes: tuple[int, ...]) -> list[jax.Array]:
    """Split a flat state (…, n) into its layers, sizes ``sizes``."""
    out, start = [], 0
    for size in sizes:
        out.append(state[..., start : start + size])
        start += size
    return out


def layered_energy(params, state, x, layer_sizes, rho) -> jax.Array:
    """The Scellier–Bengio energy of one state; shared by the layered and quadratic networks."""
    layers = split_layers(state, layer_sizes[1:])
    activations = [x] + [rho(s) for s in layers]
    energy = 0.5 * sum(jnp.sum(s**2) for s in layers)
    for k, w in enumerate(params["weights"]):
        energy -= activations[k] @ w @ activations[k + 1]
    for k, b in enumerate(params["biases"]):
        energy -= b @ activations[k + 1]
    return energy


def glorot_params(rng_key, layer_sizes, gain=1.0, dtype=float) -> dict[str, Any]:
    """Glorot-uniform couplings scaled by ``gain``, zero biases."""
    keys = jax.random.split(rng_key, len(layer_sizes) - 1)
    weights = []
    for key, n_in, n_out in zip(keys, layer_sizes[:-1], layer_sizes[1:], strict=True):
        limit = gain * jnp.sqrt(6.0 / (n_in + n_out))
        weights.append(jax.random.uniform(key, (n_in, n_out), dtype, -limit, limit))
    biases = [jnp.zeros((n,), dtype) for n in layer_sizes[1:]]
    return {"weights": tuple(weights), "biases": tuple(biases)}


def check_layer_sizes(layer_sizes) -> tuple[int, ...]:
    sizes = tuple(layer_sizes)
    if len(sizes) < 2 or any(not isinstance(n, int) or isinstance(n, bool) for n in sizes):
        raise ValueError(
            "layer_sizes must be a sequence of at least two integers "
            f"(inputs, [hidden …,] outputs), got {layer_sizes!r}"
        )
    if any(n < 1 for n in sizes):
        raise ValueError(f"every layer size must be ≥ 1, got layer_sizes={sizes}")
    return sizes


@dataclasses.dataclass(frozen=True)
class LayeredNetwork(EnergyModel):
    """A layered continuous network: inputs, any number of hidden layers, outputs.

    Args:
        layer_sizes: ``(num_inputs, hidden_1, …, num_outputs)``.
        activation: One of :data:`ACTIVATIONS`: ``"sigmoid"`` (smooth, default; every
            derivative exists, as the implicit-function reference, the Laplace expansion and
            HMC need), ``"hard_sigmoid"`` (states confined to [0, 1], as in Scellier & Bengio
            2017), ``"tanh"`` or ``"linear"``.
        cost: Cost on the outputs ``ρ(s_L)``; default squared error against one-hot targets.
        init_gain: Scale of the Glorot-uniform initial couplings.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> net = LayeredNetwork((4, 8, 3))
        >>> params = net.init_params(jax.random.key(0))
        >>> net.energy(params, jnp.zeros(net.state_size), jnp.ones(4)).shape
        ()
    """

    layer_sizes: tuple[int, ...]
    activation: str = "sigmoid"
    cost: Any = SquaredError()
    init_gain: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "layer_sizes", check_layer_sizes(self.layer_sizes))
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; valid: {sorted(ACTIVATIONS)}"
            )

    @property
    def num_inputs(self) -> int:
        return self.layer_sizes[0]

    @property
    def num_outputs(self) -> int:
        return self.layer_sizes[-1]

    @property
    def state_size(self) -> int:
        return sum(self.layer_sizes[1:])

    @property
    def architecture(self) -> str:
        """The layer sizes, e.g. ``"(64, 128, 10)"``."""
        return str(self.layer_sizes)

    @property
    def state_bounds(self):
        return (0.0, 1.0) if self.activation == "hard_sigmoid" else None

    @property
    def rho(self):
        return ACTIVATIONS[self.activation]

    def init_params(self, rng_key):
        return glorot_params(rng_key, self.layer_sizes, self.init_gain)

    def energy(self, params, state, x):
        return layered_energy(params, state, x, self.layer_sizes, self.rho)

    def output(self, state):
        return self.rho(state[..., self.state_size - self.num_outputs :])

    def encode_labels(self, labels):
        return jax.nn.one_hot(self._checked_labels(labels), self.num_outputs, dtype=float)
