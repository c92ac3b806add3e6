r"""Equilibrium propagation at zero temperature (Scellier & Bengio 2017;
docs/mathematics.md#zero-temperature-ep).

The free state :math:`s^*_0` minimises :math:`E`; the nudged state :math:`s^*_β` minimises
:math:`F_β = E + βC`, relaxed from :math:`s^*_0`. The loss :math:`L = C(s^*_0)` has gradient
:math:`dL/dθ = \frac{d}{dβ}\,∂_θE(s^*_β)\big|_{β=0}`, estimated one-sided,
:math:`[∂_θE(s^*_β) - ∂_θE(s^*_0)]/β` (bias O(β)), or symmetrically,
:math:`[∂_θE(s^*_β) - ∂_θE(s^*_{-β})]/(2β)` (bias O(β²)). The reference is the implicit
function theorem: :math:`dL/dθ = -∇_sC \cdot H^{-1} \cdot ∂_s∂_θE` with :math:`H = ∇_s^2E(s^*_0)`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from thermoeqprop._protocols import Estimator
from thermoeqprop._result import GradientEstimate
from thermoeqprop._validation import check_positive, check_probability
from thermoeqprop.models._base import EnergyModel

__all__ = [
    "ImplicitDifferentiation",
    "Relaxation",
    "RelaxationResult",
    "ZeroTemperatureEP",
    "relax",
]


@dataclasses.dataclass(frozen=True)
class Relaxation:
    """Settings of the energy minimiser that finds free and nudged states.

    Heavy-ball gradient descent with a per-example adaptive step: a step that would raise the
    energy is rejected, the momentum dropped and the step halved; accepted steps grow it by
    10 %. The energy therefore decreases monotonically to a stationary point. It stops when the
    largest projected-gradient component falls below ``tolerance`` for every example, or after
    ``max_iterations``; either way the residual and iteration count are reported.

    Args:
        tolerance: Convergence threshold on ``max_i |∇_s F|_i`` (projected onto the state box
            for bounded states).
        max_iterations: Iteration budget per relaxation.
        step_size: Initial (and largest) step size.
        momentum: Heavy-ball momentum in [0, 1).
    """

    tolerance: float = 1e-6
    max_iterations: int = 2000
    step_size: float = 0.5
    momentum: float = 0.6

    def __post_init__(self):
        check_positive("tolerance", self.tolerance)
        check_positive("step_size", self.step_size)
        if self.momentum != 0:
            check_probability("momentum", self.momentum)
        if int(self.max_iterations) < 1:
            raise ValueError(f"max_iterations must be ≥ 1, got {self.max_iterations!r}")


class _RelaxationValues(NamedTuple):
    """The numbers of a :class:`Relaxation` as a pytree, passed to compiled code as dynamic
    arguments so that a new tolerance, budget or step reuses the compilation (none of them
    changes the program: ``max_iterations`` only bounds a ``lax.while_loop``)."""

    tolerance: float
    max_iterations: int
    step_size: float
    momentum: float

    @classmethod
    def of(cls, relaxation: Relaxation) -> _RelaxationValues:
        # Plain Python numbers (weakly typed once traced, like the constants they replace);
        # int and float versions of one setting would otherwise compile twice.
        return cls(
            float(relaxation.tolerance),
            int(relaxation.max_iterations),
            float(relaxation.step_size),
            float(relaxation.momentum),
        )


class RelaxationResult(NamedTuple):
    """Outcome of :func:`relax`, one entry per example.

    Attributes:
        state: Relaxed states (batch, n).
        residual: Final ``max_i |projected ∇_s F|_i`` (batch,).
        iterations: Iterations used (batch,).
        converged: Whether ``residual < tolerance`` (batch,).
    """

    state: jax.Array
    residual: jax.Array
    iterations: jax.Array
    converged: jax.Array


def _project(model: EnergyModel, state):
    if model.state_bounds is None:
        return state
    low, high = model.state_bounds
    return jnp.clip(state, low, high)


def _projected_residual(model: EnergyModel, state, grad):
    """``max_i |P(s − ∇F) − s|_i``: the gradient, with components that push a unit against its
    box bound removed (those units sit at a constrained minimum)."""
    return jnp.max(jnp.abs(_project(model, state - grad) - state), axis=-1)


def relax(
    model: EnergyModel,
    params,
    x: jax.Array,
    targets: jax.Array,
    beta,
    initial_state: jax.Array,
    relaxation: Relaxation = Relaxation(),
) -> RelaxationResult:
    """Minimise ``F_β(s) = E(s; θ, x) + β C(s; y)`` for every example of a batch.

    Args:
        model: The energy model.
        params: Its parameters.
        x: Inputs (batch, num_inputs).
        targets: Targets (batch, num_outputs); unused when ``beta`` is 0.
        beta: Nudging strength (may be traced, of either sign).
        initial_state: Start (batch, n).
        relaxation: Minimiser settings (a :class:`Relaxation`, or anything with its four
            attributes; they may be traced).

    Returns:
        A :class:`RelaxationResult`.
    """

    value_and_grad = jax.vmap(
        jax.value_and_grad(model.total_energy, argnums=1), in_axes=(None, 0, 0, 0, None)
    )
    dtype = initial_state.dtype
    noise_floor = 64 * jnp.finfo(dtype).eps

    def cond(carry):
        _, _, _, _, _, done, iteration, _ = carry
        return jnp.logical_and(~jnp.all(done), iteration < relaxation.max_iterations)

    def body(carry):
        state, velocity, energy, grad, step, done, iteration, counts = carry
        proposal = _project(model, state + relaxation.momentum * velocity - step[:, None] * grad)
        new_energy, new_grad = value_and_grad(params, proposal, x, targets, beta)
        accept = (new_energy <= energy + noise_floor * (1 + jnp.abs(energy))) & ~done
        accept_col = accept[:, None]
        velocity = jnp.where(accept_col, proposal - state, jnp.where(done[:, None], velocity, 0))
        state = jnp.where(accept_col, proposal, state)
        energy = jnp.where(accept, new_energy, energy)
        grad = jnp.where(accept_col, new_grad, grad)
        step = jnp.where(
            done, step, jnp.where(accept, jnp.minimum(1.1 * step, relaxation.step_size), step / 2)
        )
        counts = counts + (~done).astype(counts.dtype)
        done = done | (_projected_residual(model, state, grad) < relaxation.tolerance)
        return state, velocity, energy, grad, step, done, iteration + 1, counts

    state = _project(model, initial_state)
    energy, grad = value_and_grad(params, state, x, targets, beta)
    batch = state.shape[0]
    done = _projected_residual(model, state, grad) < relaxation.tolerance
    carry = (
        state,
        jnp.zeros_like(state),
        energy,
        grad,
        jnp.full((batch,), relaxation.step_size, dtype),
        done,
        jnp.asarray(0),
        jnp.zeros((batch,), jnp.int32),
    )
    state, _, _, grad, _, done, _, counts = jax.lax.while_loop(cond, body, carry)
    return RelaxationResult(state, _projected_residual(model, state, grad), counts, done)


def _phase_diagnostics(prefix: str, result: RelaxationResult) -> dict[str, jax.Array]:
    return {
        f"{prefix}_residual": jnp.max(result.residual),
        f"{prefix}_iterations": jnp.max(result.iterations),
        f"{prefix}_converged_fraction": jnp.mean(result.converged.astype(float)),
    }


def _check_model(model):
    if not isinstance(model, EnergyModel):
        raise ValueError(f"model must be an EnergyModel, got {type(model).__name__}")
    if model.is_spin:
        raise ValueError(
            f"zero-temperature EP needs continuous states; {type(model).__name__} has spins. "
            "Use a finite-temperature estimator for spin networks."
        )


@dataclasses.dataclass(frozen=True)
class ZeroTemperatureEP(Estimator):
    """Equilibrium propagation at T = 0, one-sided or symmetric.

    Calls are compiled with ``jax.jit``: one compilation per model, ``symmetric`` and batch
    shape. ``beta`` and the :class:`Relaxation` numbers are traced arguments, so a β scan or a
    new tolerance reuses the compiled code.

    Args:
        model: A continuous :class:`~thermoeqprop.models.EnergyModel`.
        beta: Nudging strength, > 0.
        symmetric: Nudge at ±β (bias O(β²)) instead of 0 and β (bias O(β)).
        relaxation: Minimiser settings for both phases. An unconverged residual r adds an
            error of order r / β to the estimate: use a tolerance well below β times the
            precision you need.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from thermoeqprop.models import LayeredNetwork
        >>> net = LayeredNetwork((2, 4, 1))
        >>> ep = ZeroTemperatureEP(net, beta=0.1)
        >>> est = ep(net.init_params(jax.random.key(0)), jnp.ones((3, 2)), jnp.ones((3, 1)),
        ...          jax.random.key(1))
        >>> est.grad["weights"][0].shape
        (2, 4)
    """

    model: EnergyModel
    beta: float = 0.5
    symmetric: bool = True
    relaxation: Relaxation = Relaxation()

    def __post_init__(self):
        _check_model(self.model)
        check_positive("beta", self.beta)

    def __call__(self, params, x, targets, rng_key=None) -> GradientEstimate:
        self.model.validate_params(params)
        x, targets = self.model.validate_inputs(x, targets)
        relaxation = _RelaxationValues.of(self.relaxation)
        return _ep_estimate(
            self.model, self.symmetric, params, x, targets, float(self.beta), relaxation
        )

    def predict(self, params, x, rng_key=None) -> jax.Array:
        self.model.validate_params(params)
        x, _ = self.model.validate_inputs(x)
        return _free_output(self.model, params, x, _RelaxationValues.of(self.relaxation))

    def relax_free(self, params, x) -> RelaxationResult:
        """The free phase alone (batch of relaxed states with residuals)."""
        self.model.validate_params(params)
        x, _ = self.model.validate_inputs(x)
        return _free_phase(self.model, params, x, _RelaxationValues.of(self.relaxation))


@functools.partial(jax.jit, static_argnums=0)
def _free_phase(model, params, x, relaxation: _RelaxationValues):
    dummy = jnp.zeros((x.shape[0], model.num_outputs), x.dtype)
    return relax(model, params, x, dummy, 0.0, model.initial_state(x), relaxation)


@functools.partial(jax.jit, static_argnums=0)
def _free_output(model, params, x, relaxation: _RelaxationValues):
    return model.batch_output(_free_phase(model, params, x, relaxation).state)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _ep_estimate(model, symmetric: bool, params, x, targets, beta, relaxation: _RelaxationValues):
    free = relax(model, params, x, targets, 0.0, model.initial_state(x), relaxation)
    plus = relax(model, params, x, targets, beta, free.state, relaxation)
    diagnostics = _phase_diagnostics("free", free) | _phase_diagnostics("nudged_plus", plus)
    if symmetric:
        minus = relax(model, params, x, targets, -beta, free.state, relaxation)
        diagnostics |= _phase_diagnostics("nudged_minus", minus)
        low, scale = minus.state, 2 * beta
    else:
        low, scale = free.state, beta
    grad_high = model.energy_param_grad(params, plus.state, x)
    grad_low = model.energy_param_grad(params, low, x)
    grad = jax.tree_util.tree_map(lambda a, b: (a - b) / scale, grad_high, grad_low)
    loss = jnp.mean(model.batch_cost(free.state, targets))
    return GradientEstimate(grad=grad, loss=loss, diagnostics=diagnostics)


@dataclasses.dataclass(frozen=True)
class ImplicitDifferentiation(Estimator):
    r"""The exact T = 0 gradient by the implicit function theorem (the reference for EP).

    At the free minimum :math:`s^*` with Hessian :math:`H`,
    :math:`dL/dθ = -∇_sC\,H^{-1}\,∂_s∂_θE`, averaged over the batch. Units pinned at a bound
    of the state box (hard sigmoid) do not move under small parameter changes and are removed
    from the linear system. Dense Hessians: meant for networks of up to a few thousand units.

    The diagnostic ``min_hessian_eigenvalue`` (smallest over the batch) measures how close a
    free state is to a bifurcation. EP's O(β) or O(β²) bias grows as it shrinks: near a
    bifurcation a nudge of size β can even carry the state into another basin, and only a
    smaller β recovers the gradient.

    Compiled once per model and batch shape (the :class:`Relaxation` numbers are traced).

    Args:
        model: A continuous energy model.
        relaxation: Minimiser settings for the free phase (use a tight tolerance).
    """

    model: EnergyModel
    relaxation: Relaxation = Relaxation(tolerance=1e-10, max_iterations=20000)

    def __post_init__(self):
        _check_model(self.model)

    def __call__(self, params, x, targets, rng_key=None) -> GradientEstimate:
        self.model.validate_params(params)
        x, targets = self.model.validate_inputs(x, targets)
        return _implicit_estimate(
            self.model, params, x, targets, _RelaxationValues.of(self.relaxation)
        )

    def predict(self, params, x, rng_key=None) -> jax.Array:
        self.model.validate_params(params)
        x, _ = self.model.validate_inputs(x)
        return _free_output(self.model, params, x, _RelaxationValues.of(self.relaxation))


def _free_mask(model: EnergyModel, state, grad):
    """1 for units free to move, 0 for units pinned at a bound by the energy gradient."""
    if model.state_bounds is None:
        return jnp.ones_like(state)
    low, high = model.state_bounds
    pinned = ((state <= low) & (grad > 0)) | ((state >= high) & (grad < 0))
    return (~pinned).astype(state.dtype)


@functools.partial(jax.jit, static_argnums=0)
def _implicit_estimate(model, params, x, targets, relaxation: _RelaxationValues):
    free = relax(model, params, x, targets, 0.0, model.initial_state(x), relaxation)
    grad_state = jax.grad(model.energy, argnums=1)

    def adjoint(state, xi, target):
        # Solve (M H M + I − M) v = M ∇_s C on the free units.
        mask = _free_mask(model, state, grad_state(params, state, xi))
        hessian = jax.hessian(model.energy, argnums=1)(params, state, xi)
        system = mask[:, None] * hessian * mask[None, :] + jnp.diag(1 - mask)
        v = jnp.linalg.solve(system, mask * jax.grad(model.cost_fn)(state, target))
        return v, jnp.linalg.eigvalsh(system)[0]

    v, lowest = jax.vmap(adjoint)(free.state, x, targets)

    def contracted(p):
        per_example = jax.vmap(lambda s, xi, vi: jnp.vdot(grad_state(p, s, xi), vi))
        return -jnp.mean(per_example(free.state, x, v))

    grad = jax.grad(contracted)(params)
    loss = jnp.mean(model.batch_cost(free.state, targets))
    diagnostics = _phase_diagnostics("free", free) | {"min_hessian_eigenvalue": jnp.min(lowest)}
    return GradientEstimate(grad=grad, loss=loss, diagnostics=diagnostics)
