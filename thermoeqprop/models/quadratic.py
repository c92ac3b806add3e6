r"""The quadratic network: a layered network with linear units, whose Gibbs law is Gaussian.

Its energy is the layered energy with ρ(s) = s, which is exactly
:math:`E = \tfrac12 s^\top A s - b(x)^\top s` with precision :math:`A = I - K` (K holds the
couplings between adjacent free layers, symmetric) and :math:`b(x) = \text{biases} + W_0^\top x`
on the first hidden layer. The Gibbs distribution at temperature T is Gaussian with mean
:math:`A^{-1} b` and covariance :math:`T A^{-1}` (docs/mathematics.md#gaussian-closed-form), so
every thermal expectation of a quadratic cost is closed form: the exact reference of the
finite-temperature estimators.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from thermoeqprop.models._base import EnergyModel
from thermoeqprop.models.costs import SquaredError
from thermoeqprop.models.layered import check_layer_sizes, glorot_params, layered_energy

__all__ = ["QuadraticNetwork"]


@dataclasses.dataclass(frozen=True)
class QuadraticNetwork(EnergyModel):
    """Layered network of linear units; Gaussian Gibbs distribution in closed form.

    Args:
        layer_sizes: ``(num_inputs, hidden_1, …, num_outputs)``.
        cost: Must be :class:`SquaredError` for the closed-form expected cost.
        init_gain: Scale of the initial couplings; kept small so that ``A`` is positive
            definite (checked by :meth:`check_positive_definite`).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> net = QuadraticNetwork((2, 3, 1))
        >>> params = net.init_params(jax.random.key(0))
        >>> mean, cov = net.gaussian_moments(params, jnp.ones((5, 2)), temperature=0.1)
        >>> mean.shape, cov.shape
        ((5, 4), (4, 4))
    """

    layer_sizes: tuple[int, ...]
    cost: Any = SquaredError()
    init_gain: float = 0.3

    def __post_init__(self):
        object.__setattr__(self, "layer_sizes", check_layer_sizes(self.layer_sizes))
        if not isinstance(self.cost, SquaredError):
            raise ValueError(
                f"QuadraticNetwork needs a SquaredError cost for its closed form, got {self.cost}"
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

    def init_params(self, rng_key):
        return glorot_params(rng_key, self.layer_sizes, self.init_gain)

    def energy(self, params, state, x):
        return layered_energy(params, state, x, self.layer_sizes, lambda s: s)

    def output(self, state):
        return state[..., self.state_size - self.num_outputs :]

    def encode_labels(self, labels):
        return jax.nn.one_hot(self._checked_labels(labels), self.num_outputs, dtype=float)

    def validate_params(self, params) -> None:
        """Finite parameters, and a positive definite precision ``A``: otherwise
        ``exp(−E/T)`` cannot be normalised and no Gibbs law (nor a free minimum) exists."""
        super().validate_params(params)
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(params)):
            return
        # On the host, in NumPy: no JAX program is compiled for a check (compilations are
        # counted by tests that a new temperature reuses its program).
        n = self.state_size
        a = np.eye(n)
        offsets = np.cumsum((0,) + self.layer_sizes[1:])
        for k, w in enumerate(params["weights"][1:]):
            r0, r1, c1 = offsets[k], offsets[k + 1], offsets[k + 2]
            a[r0:r1, r1:c1] -= np.asarray(w)
            a[r1:c1, r0:r1] -= np.asarray(w).T
        lowest = float(np.linalg.eigvalsh(a)[0])
        if not lowest > 0:
            raise ValueError(
                f"the precision matrix A = I − K of this QuadraticNetwork is not positive "
                f"definite (smallest eigenvalue {lowest:.4g}): exp(−E/T) has no Gibbs law and "
                "E no minimum; couplings must keep every eigenvalue of A above 0 (smaller "
                "init_gain, or a smaller learning rate)"
            )

    def precision(self, params) -> jax.Array:
        """The matrix ``A = I − K`` (n, n) of the energy ``½ sᵀAs − bᵀs``."""
        n = self.state_size
        a = jnp.eye(n, dtype=params["weights"][0].dtype)
        offsets = np.cumsum((0,) + self.layer_sizes[1:])
        for k, w in enumerate(params["weights"][1:]):
            r0, r1, c1 = offsets[k], offsets[k + 1], offsets[k + 2]
            a = a.at[r0:r1, r1:c1].add(-w).at[r1:c1, r0:r1].add(-w.T)
        return a

    def linear_term(self, params, x) -> jax.Array:
        """The vector ``b(x)`` (batch, n) of the energy ``½ sᵀAs − bᵀs``."""
        b = jnp.concatenate(params["biases"])
        first = x @ params["weights"][0]
        pad = jnp.zeros((x.shape[0], self.state_size - first.shape[1]), dtype=first.dtype)
        return b + jnp.concatenate([first, pad], axis=1)

    def gaussian_moments(self, params, x, temperature):
        """Mean (batch, n) and covariance (n, n) of the Gibbs distribution at ``temperature``."""
        a = self.precision(params)
        mean = jnp.linalg.solve(a, self.linear_term(params, x).T).T
        return mean, temperature * jnp.linalg.inv(a)

    def expected_cost(self, params, x, targets, temperature) -> jax.Array:
        """Exact ``⟨C⟩`` (batch,) under the Gibbs distribution, for the squared-error cost:
        ``½‖μ_out − y‖² + ½ T tr(A⁻¹)_out``."""
        mean, cov = self.gaussian_moments(params, x, temperature)
        k = self.num_outputs
        bias = 0.5 * jnp.sum((mean[:, -k:] - targets) ** 2, axis=1)
        return bias + 0.5 * jnp.trace(cov[-k:, -k:])

    def check_positive_definite(self, params) -> None:
        """Raise if ``A`` is not positive definite (the Gibbs distribution would not exist)."""
        low = float(jnp.linalg.eigvalsh(self.precision(params))[0])
        if not low > 0:
            raise ValueError(
                f"the quadratic network's precision matrix A = I − K has smallest eigenvalue "
                f"{low:.4g}; it must be > 0 for a Gibbs distribution to exist (shrink the "
                "couplings)"
            )
