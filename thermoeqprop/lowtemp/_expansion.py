r"""The Laplace (low-temperature) expansion of Gibbs averages about the free minimum.

The formulas are in docs/mathematics.md#laplace-expansion and
docs/mathematics.md#temperature-slope-of-the-gradient.

Write :math:`s = s^* + \sqrt T\,u` about a minimum :math:`s^*` of :math:`E` with Hessian
:math:`H`. To the order needed, the Gibbs weight is
:math:`\exp(-\tfrac12 u^\top H u - \tfrac{\sqrt T}{6} E_{ijk} u_i u_j u_k)`, and Wick's theorem
gives, for a smooth observable :math:`f`,

.. math::
    ⟨f⟩_T = f(s^*) + T\big[\tfrac12 \operatorname{tr}(H^{-1}\nabla^2 f) + \nabla f \cdot δ\big]
      + O(T^2), \qquad δ = -\tfrac12 H^{-1} (\nabla^3 E : H^{-1}),

where :math:`(\nabla^3E : H^{-1})_i = E_{ijk} (H^{-1})_{jk}`. :math:`δ` is the first-order
shift of the mean, :math:`⟨s⟩_T = s^* + Tδ + O(T^2)`, and :math:`⟨δs\,δs^\top⟩ = TH^{-1} +
O(T^2)`. With :math:`f = C` this is :math:`L_T = C(s^*) + T c_1 + O(T^2)`.

Derivatives, and why these ones. The Hessian is dense (``jax.hessian``: forward over
reverse), because :math:`H^{-1}` is needed as a matrix for the trace anyway, as in
:class:`~thermoeqprop.estimators.ImplicitDifferentiation`. The third derivative enters only
contracted with :math:`H^{-1}`, so it is taken as the gradient of the scalar
:math:`u \mapsto ⟨H^{-1}, \nabla^2E(u)⟩`: one more reverse pass over the Hessian, O(n²)
memory, where ``jax.jacfwd(jax.hessian(E))`` would build the n³ tensor (8 GB at n = 1000).

The temperature slope of the gradient, :math:`dL_T/dθ = g_0 + T g_1 + O(T^2)`, has
:math:`g_0 = dC(s^*)/dθ` (the T = 0 EP gradient) and :math:`g_1 = dc_1/dθ`, total derivatives in
which :math:`s^*(θ)` moves with θ. Both are reverse-mode gradients through
:func:`free_minimum`, whose derivative is defined by the implicit function theorem
(``jax.custom_vjp``: :math:`\bar θ = -∂_θ(\nabla_s E \cdot H^{-1}\bar s)`), never by
differentiating the iterations of the minimiser. :math:`g_1` needs fourth derivatives of
:math:`E` (the gradient of :math:`c_1` with respect to :math:`s`); autodiff supplies them.

Cost per example: a dense Hessian, an n × n inverse and a few reverse passes over it; meant
for networks of up to a few hundred free units.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from thermoeqprop._protocols import Estimator
from thermoeqprop._result import GradientEstimate
from thermoeqprop._validation import check_positive
from thermoeqprop.estimators.zero_temperature import Relaxation, relax
from thermoeqprop.models._base import EnergyModel

__all__ = [
    "LaplaceExpansion",
    "LowTemperatureExpansion",
    "LowTemperatureGradient",
    "free_minimum",
    "laplace_average",
    "laplace_expansion",
    "low_temperature_gradient",
]

DEFAULT_RELAXATION = Relaxation(tolerance=1e-10, max_iterations=20000)
NEWTON_STEPS = 3


def check_smooth_model(model) -> None:
    """Raise unless ``model`` is a continuous model with states in R^n (no box, no spins)."""
    if not isinstance(model, EnergyModel):
        raise ValueError(f"model must be an EnergyModel, got {type(model).__name__}")
    if model.is_spin:
        raise ValueError(
            f"the Laplace expansion needs continuous states; {type(model).__name__} has spins"
        )
    if model.state_bounds is not None:
        raise ValueError(
            f"the Laplace expansion needs a smooth energy on R^n; {type(model).__name__} "
            f"confines its states to {model.state_bounds}: use a smooth activation such as "
            "'sigmoid'"
        )


def _energy_hessian(model, params, state, x):
    return jax.hessian(model.energy, argnums=1)(params, state, x)


def _minimise(model: EnergyModel, relaxation: Relaxation, params, x):
    """Relax every example, then polish by Newton steps to rounding level.

    The relaxation stops at a gradient of about ``relaxation.tolerance``; a few Newton steps
    from there converge quadratically, so s* (and every finite difference taken through it)
    is exact to float64 rounding. A Newton step is kept only if it lowers the gradient norm.
    """
    dummy = jnp.zeros((x.shape[0], model.num_outputs), x.dtype)
    state = relax(model, params, x, dummy, 0.0, model.initial_state(x), relaxation).state
    grad_fn = jax.grad(model.energy, argnums=1)

    def newton(state_b, x_b):
        def step(_, s):
            g = grad_fn(params, s, x_b)
            proposal = s - jnp.linalg.solve(_energy_hessian(model, params, s, x_b), g)
            better = jnp.linalg.norm(grad_fn(params, proposal, x_b)) < jnp.linalg.norm(g)
            return jnp.where(better, proposal, s)

        return jax.lax.fori_loop(0, NEWTON_STEPS, step, state_b)

    return jax.vmap(newton)(state, x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def free_minimum(model: EnergyModel, relaxation: Relaxation, params, x) -> jax.Array:
    r"""The free minimum :math:`s^*(θ, x)` (batch, n), differentiable by the implicit function
    theorem.

    The forward pass relaxes (heavy-ball descent, :func:`~thermoeqprop.estimators.relax`) and
    polishes with Newton steps; the reverse pass never looks at those iterations. From
    :math:`∇_sE(s^*; θ, x) = 0`, a cotangent :math:`\bar s` pulls back to
    :math:`\bar θ = -∂_θ(∇_sE \cdot v)` and :math:`\bar x = -∂_x(∇_sE \cdot v)` with
    :math:`Hv = \bar s`, one dense solve per example. Reverse mode only (``jax.grad``,
    ``jax.vjp``, ``jax.jacrev``).

    Args:
        model: A smooth continuous energy model (hashable, static).
        relaxation: Minimiser settings (static); use a tight tolerance.
        params: Parameters (pytree).
        x: Inputs (batch, num_inputs).

    Returns:
        States (batch, n) at which ``∇_s E = 0``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from thermoeqprop.models import LayeredNetwork
        >>> net = LayeredNetwork((2, 3, 1))
        >>> params = net.init_params(jax.random.key(0))
        >>> free_minimum(net, DEFAULT_RELAXATION, params, jnp.ones((4, 2))).shape
        (4, 4)
    """
    return _minimise(model, relaxation, params, x)


def _free_minimum_forward(model, relaxation, params, x):
    state = _minimise(model, relaxation, params, x)
    return state, (state, params, x)


def _free_minimum_backward(model, relaxation, residuals, cotangent):
    state, params, x = residuals
    hessians = jax.vmap(_energy_hessian, in_axes=(None, None, 0, 0))(model, params, state, x)
    v = jnp.linalg.solve(hessians, cotangent[..., None])[..., 0]
    grad_state = jax.grad(model.energy, argnums=1)

    def contracted(p, inputs):
        per_example = jax.vmap(grad_state, in_axes=(None, 0, 0))(p, state, inputs)
        return -jnp.sum(per_example * v)

    return jax.grad(contracted, argnums=(0, 1))(params, x)


free_minimum.defvjp(_free_minimum_forward, _free_minimum_backward)


def _moments(model, params, state, x):
    """(H⁻¹, δ, smallest eigenvalue of H) at a state of one example, differentiable in both.

    ``w = ∇³E : H⁻¹`` is the gradient of ``u ↦ ⟨H⁻¹, ∇²E(u)⟩`` with H⁻¹ held fixed for that
    inner derivative only (closed over, not stopped): outer derivatives (for g_1) still see
    H⁻¹ move with s and θ.
    """
    hessian = _energy_hessian(model, params, state, x)
    inverse = jnp.linalg.inv(hessian)
    inverse = 0.5 * (inverse + inverse.T)
    w = jax.grad(lambda u: jnp.vdot(inverse, _energy_hessian(model, params, u, x)))(state)
    return inverse, -0.5 * inverse @ w, jnp.linalg.eigvalsh(hessian)[0]


def _first_order(observable, inverse, shift, state):
    """``½ tr(H⁻¹ ∇²f) + ∇f · δ`` for an observable returning any pytree of arrays."""
    jac = jax.jacrev(observable)(state)
    hess = jax.hessian(observable)(state)
    return jax.tree_util.tree_map(
        lambda j, h: (
            0.5 * jnp.einsum("...ij,ij->...", h, inverse) + jnp.einsum("...i,i->...", j, shift)
        ),
        jac,
        hess,
    )


class LaplaceExpansion(NamedTuple):
    r"""The Laplace expansion of the free Gibbs distribution, per example.

    Attributes:
        state: Free minima :math:`s^*` (batch, n).
        cost: :math:`C(s^*)` (batch,).
        cost_first_order: :math:`c_1` (batch,), so :math:`⟨C⟩_T = C(s^*) + T c_1 + O(T^2)`.
        mean_shift: :math:`δ` (batch, n), so :math:`⟨s⟩_T = s^* + Tδ + O(T^2)`.
        inverse_hessian: :math:`H^{-1}` (batch, n, n), so
            :math:`⟨δs\,δs^\top⟩_T = TH^{-1} + O(T^2)`.
        min_hessian_eigenvalue: Smallest eigenvalue of H (batch,); the expansion holds for
            :math:`T` small against it (times the scale of the third derivatives).
        residual: :math:`\max_i |∇_sE|_i` at :math:`s^*` (batch,).
    """

    state: jax.Array
    cost: jax.Array
    cost_first_order: jax.Array
    mean_shift: jax.Array
    inverse_hessian: jax.Array
    min_hessian_eigenvalue: jax.Array
    residual: jax.Array

    def loss(self, temperature) -> jax.Array:
        """The first-order batch-mean loss :math:`C(s^*) + T c_1`."""
        return jnp.mean(self.cost) + temperature * jnp.mean(self.cost_first_order)


def _expansion_at(model, params, state, x, targets) -> LaplaceExpansion:
    """The expansion at given minima (batch, n); differentiable in params and state."""
    inverse, shift, lowest = jax.vmap(_moments, in_axes=(None, None, 0, 0))(model, params, state, x)

    def per_example(s, h_inv, d, target):
        return _first_order(lambda u: model.cost_fn(u, target), h_inv, d, s)

    grad = jax.vmap(jax.grad(model.energy, argnums=1), in_axes=(None, 0, 0))(params, state, x)
    return LaplaceExpansion(
        state=state,
        cost=model.batch_cost(state, targets),
        cost_first_order=jax.vmap(per_example)(state, inverse, shift, targets),
        mean_shift=shift,
        inverse_hessian=inverse,
        min_hessian_eigenvalue=lowest,
        residual=jnp.max(jnp.abs(grad), axis=-1),
    )


@functools.partial(jax.jit, static_argnums=(0, 1))
def _expansion(model, relaxation, params, x, targets) -> LaplaceExpansion:
    state = _minimise(model, relaxation, params, x)
    return _expansion_at(model, params, state, x, targets)


def laplace_expansion(
    model: EnergyModel, params, x, targets, relaxation: Relaxation = DEFAULT_RELAXATION
) -> LaplaceExpansion:
    r"""Expand the free Gibbs distribution about :math:`s^*` for every example of a batch.

    Compiled with ``jax.jit`` (model and relaxation static).

    Args:
        model: A smooth continuous energy model.
        params: Its parameters.
        x: Inputs (batch, num_inputs).
        targets: Targets (batch, num_outputs).
        relaxation: Settings of the free relaxation (Newton steps then polish it).

    Returns:
        A :class:`LaplaceExpansion`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from thermoeqprop.models import QuadraticNetwork
        >>> net = QuadraticNetwork((2, 3, 1))
        >>> params = net.init_params(jax.random.key(0))
        >>> expansion = laplace_expansion(net, params, jnp.ones((2, 2)), jnp.ones((2, 1)))
        >>> c1 = 0.5 * jnp.linalg.inv(net.precision(params))[-1, -1]  # ½ tr(A⁻¹)_out,out
        >>> bool(jnp.allclose(expansion.cost_first_order, c1, rtol=1e-12))
        True
    """
    check_smooth_model(model)
    model.validate_params(params)
    x, targets = model.validate_inputs(x, targets)
    return _expansion(model, relaxation, params, x, targets)


def laplace_average(
    model: EnergyModel,
    params,
    x,
    observable,
    relaxation: Relaxation = DEFAULT_RELAXATION,
) -> tuple[jax.Array, jax.Array]:
    r"""Zeroth and first-order coefficients of :math:`⟨f⟩_T = f(s^*) + T f_1 + O(T^2)`.

    Compiled with ``jax.jit`` (model, relaxation and observable static).

    Args:
        model: A smooth continuous energy model.
        params: Its parameters.
        x: Inputs (batch, num_inputs).
        observable: A smooth function of one state (n,) returning an array or a pytree of
            arrays. It is a static argument of the compiled computation: pass the same
            function object again to reuse the compilation.
        relaxation: Settings of the free relaxation.

    Returns:
        ``(f(s*), f_1)``, each shaped like the observable's output with a leading batch axis.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from thermoeqprop.models import QuadraticNetwork
        >>> net = QuadraticNetwork((2, 3, 1))
        >>> params = net.init_params(jax.random.key(0))
        >>> value, first = laplace_average(net, params, jnp.ones((2, 2)), lambda s: s)
        >>> float(jnp.max(jnp.abs(first)))  # a Gaussian's mean does not move with T
        0.0
    """
    check_smooth_model(model)
    model.validate_params(params)
    x, _ = model.validate_inputs(x)
    return _average(model, relaxation, observable, params, x)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _average(model, relaxation, observable, params, x):
    state = _minimise(model, relaxation, params, x)

    def per_example(s, x_b):
        inverse, shift, _ = _moments(model, params, s, x_b)
        return observable(s), _first_order(observable, inverse, shift, s)

    return jax.vmap(per_example)(state, x)


class LowTemperatureGradient(NamedTuple):
    r"""The low-temperature expansion of the loss and its gradient, batch means.

    :math:`L_T = L_0 + T c_1 + O(T^2)` and :math:`dL_T/dθ = g_0 + T g_1 + O(T^2)`.

    Attributes:
        loss: :math:`L_0 = \overline{C(s^*)}`.
        loss_first_order: :math:`c_1` (batch mean).
        grad: :math:`g_0`, the T = 0 EP (implicit-function) gradient, a pytree like params.
        grad_first_order: :math:`g_1 = dc_1/dθ` (total derivative), like params.
        expansion: The per-example :class:`LaplaceExpansion` at the same minima.
        diagnostics: ``free_residual`` (largest ``|∇_sE|`` at s*) and
            ``min_hessian_eigenvalue`` over the batch.
    """

    loss: jax.Array
    loss_first_order: jax.Array
    grad: Any
    grad_first_order: Any
    expansion: LaplaceExpansion
    diagnostics: dict[str, jax.Array]

    def predicted_grad(self, temperature) -> Any:
        r""":math:`g_0 + T g_1`, a pytree like params."""
        return jax.tree_util.tree_map(
            lambda g0, g1: g0 + temperature * g1, self.grad, self.grad_first_order
        )

    def predicted_loss(self, temperature) -> jax.Array:
        r""":math:`L_0 + T c_1`."""
        return self.loss + temperature * self.loss_first_order


@functools.partial(jax.jit, static_argnums=(0, 1))
def _low_temperature_gradient(model, relaxation, params, x, targets):
    def terms(p):
        state = free_minimum(model, relaxation, p, x)
        expansion = _expansion_at(model, p, state, x, targets)
        means = jnp.stack([jnp.mean(expansion.cost), jnp.mean(expansion.cost_first_order)])
        return means, expansion

    values, pullback, expansion = jax.vjp(terms, params, has_aux=True)
    # Both gradients from one reverse pass, vectorised over the two cotangents.
    (grads,) = jax.vmap(pullback)(jnp.eye(2, dtype=values.dtype))
    g0 = jax.tree_util.tree_map(lambda g: g[0], grads)
    g1 = jax.tree_util.tree_map(lambda g: g[1], grads)
    diagnostics = {
        "free_residual": jnp.max(expansion.residual),
        "min_hessian_eigenvalue": jnp.min(expansion.min_hessian_eigenvalue),
    }
    return LowTemperatureGradient(values[0], values[1], g0, g1, expansion, diagnostics)


def low_temperature_gradient(
    model: EnergyModel, params, x, targets, relaxation: Relaxation = DEFAULT_RELAXATION
) -> LowTemperatureGradient:
    r""":math:`g_0` and :math:`g_1` of :math:`dL_T/dθ = g_0 + T g_1 + O(T^2)`, and the loss's
    :math:`L_0`, :math:`c_1`.

    Both gradients are reverse-mode derivatives of batch means through :func:`free_minimum`
    (implicit function theorem). Compiled with ``jax.jit`` (model and relaxation static).

    Args:
        model: A smooth continuous energy model.
        params: Its parameters.
        x: Inputs (batch, num_inputs).
        targets: Targets (batch, num_outputs).
        relaxation: Settings of the free relaxation.

    Returns:
        A :class:`LowTemperatureGradient`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from thermoeqprop.models import QuadraticNetwork
        >>> net = QuadraticNetwork((2, 3, 1))
        >>> params = net.init_params(jax.random.key(0))
        >>> x, y = jnp.ones((2, 2)), jnp.ones((2, 1))
        >>> expansion = low_temperature_gradient(net, params, x, y)
        >>> exact = jax.grad(lambda p: jnp.mean(net.expected_cost(p, x, y, 0.3)))(params)
        >>> bool(jnp.allclose(expansion.predicted_grad(0.3)["weights"][1],
        ...                   exact["weights"][1], rtol=1e-10))
        True
    """
    check_smooth_model(model)
    model.validate_params(params)
    x, targets = model.validate_inputs(x, targets)
    return _low_temperature_gradient(model, relaxation, params, x, targets)


@dataclasses.dataclass(frozen=True)
class LowTemperatureExpansion(Estimator):
    r"""The deterministic low-temperature estimator :math:`g_0 + T g_1` (no sampling).

    Returns :math:`dL_T/dθ` and :math:`L_T` to first order in T in the one result type: the
    Hessian-based deterministic learning rule that thermal EP approaches as T → 0. Its error
    is O(T²); it has no Monte Carlo error (``stderr`` is ``None``).

    Args:
        model: A smooth continuous energy model.
        temperature: T ≥ 0 (0 gives the implicit-function T = 0 EP gradient).
        relaxation: Settings of the free relaxation.
    """

    model: EnergyModel
    temperature: float = 0.05
    relaxation: Relaxation = DEFAULT_RELAXATION

    def __post_init__(self):
        check_smooth_model(self.model)
        check_positive("temperature", self.temperature, allow_zero=True)

    def __call__(self, params, x, targets, rng_key=None) -> GradientEstimate:
        result = low_temperature_gradient(self.model, params, x, targets, self.relaxation)
        diagnostics = dict(result.diagnostics)
        diagnostics["loss_first_order"] = result.loss_first_order
        return GradientEstimate(
            grad=result.predicted_grad(self.temperature),
            loss=result.predicted_loss(self.temperature),
            diagnostics=diagnostics,
        )

    def predict(self, params, x, rng_key=None) -> jax.Array:
        """First-order ``⟨output⟩_T`` (batch, num_outputs)."""
        value, first = laplace_average(self.model, params, x, self.model.output, self.relaxation)
        return value + self.temperature * first
