"""Quantum EP estimators: eigenstate EP and quantum thermal EP (docs/mathematics.md).

Both return :class:`~thermoeqprop.GradientEstimate` with ``grad`` shaped like the parameters
(a flat array), ``loss`` the mean cost over the batch and, with finite shots, standard errors.

Every estimator first measures ``g_s = dL/dc_s`` for each Pauli string ``P_s`` whose
coefficient depends on θ, then applies the chain rule ``dL/dθ = Σ_s g_s ∂c_s/∂θ`` through the
classical coefficient map (for a plain trainable term, ``∂_θ H = P_s``).

The numerical kernels are jit-compiled once per *structural* configuration (model, level,
solver, shots, method, Richardson on or off, which nudged state is followed) and batch shape:
those change the program (array shapes, loops, which kernel), so they are static. The numbers
``beta``, ``temperature``, ``gap_tolerance`` and ``lanczos_tol`` are traced arguments (the
sparse solver's host callback receives them as operands), so a β or temperature scan, or a new
temperature every epoch, reuses the compiled code. Called on concrete values, eigenstate EP
raises ``ValueError`` on a degenerate level or when no example of the batch could be followed
along the nudge, and warns (:class:`NudgeStrengthWarning`) when ``β‖Ĉ‖`` is not small against
the gap; inside a user's ``jit`` it cannot, so it returns NaN gradients and reports
``min_free_gap``, ``outcome`` and ``max_nudge_ratio`` in ``diagnostics`` instead. Expectation
values of the free and nudged states come back in ``observables`` (see
``quantum/_observables.py``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from thermoeqprop._protocols import Estimator
from thermoeqprop._result import GradientEstimate
from thermoeqprop.quantum import _eigen_paths as P
from thermoeqprop.quantum import _kernels as K
from thermoeqprop.quantum._eigen_paths import EigenNumbers, EigenStatic
from thermoeqprop.quantum._following import (
    FOLLOW_MODES,
    OUTCOMES,
    NudgeStrengthWarning,
    check_eigen_estimate,
    eigh,
)
from thermoeqprop.quantum._network import QuantumNetwork
from thermoeqprop.quantum._observables import Example, assemble_estimate, nudged_betas
from thermoeqprop.quantum._pauli import _check_dense_size
from thermoeqprop.quantum._phases import (
    example_keys,
    free_outputs,
    measure,
    phase_keys,
    phase_weights,
)
from thermoeqprop.quantum._shots import measurement_plan

__all__ = ["OUTCOMES", "EigenstateEP", "NudgeStrengthWarning", "ThermalEP"]

_MIN_OVERLAP = 0.5


# --------------------------------------------------------------------------------------------
# validation at the public boundary
# --------------------------------------------------------------------------------------------
def _check_model(model) -> None:
    if not isinstance(model, QuantumNetwork):
        raise ValueError(f"model must be a QuantumNetwork, got {type(model).__name__}")


def _check_beta(beta) -> None:
    if not (isinstance(beta, int | float) and np.isfinite(beta) and beta > 0):
        raise ValueError(f"beta (nudging strength) must be a finite number > 0, got {beta!r}")


def _check_shots(shots) -> None:
    if shots is not None and (
        not isinstance(shots, int | np.integer) or isinstance(shots, bool) or shots < 2
    ):
        raise ValueError(f"shots must be None (exact) or an integer ≥ 2, got {shots!r}")


def _check_batch(model: QuantumNetwork, params, x, targets=None) -> None:
    p_shape = jnp.shape(params)
    if p_shape != (model.hamiltonian.num_params,):
        raise ValueError(
            f"params must have shape ({model.hamiltonian.num_params},) (one entry per "
            f"trainable parameter), got {p_shape}"
        )
    x_shape = jnp.shape(x)
    if len(x_shape) != 2 or x_shape[1] != model.num_inputs:
        raise ValueError(f"x must have shape (batch, {model.num_inputs}), got {x_shape}")
    if targets is not None:
        t_shape = jnp.shape(targets)
        if t_shape != (x_shape[0], model.num_outputs):
            raise ValueError(
                f"targets must have shape ({x_shape[0]}, {model.num_outputs}), got {t_shape}"
            )


# --------------------------------------------------------------------------------------------
# what is compiled in (static) and what is traced (dynamic)
# --------------------------------------------------------------------------------------------
def _static_shots(shots) -> int | None:
    return None if shots is None else int(shots)


class _ThermalStatic(NamedTuple):
    """The settings of :class:`ThermalEP` that shape the program (hashable, static)."""

    model: QuantumNetwork
    method: str
    richardson: bool
    shots: int | None


class _ThermalNumbers(NamedTuple):
    """The settings of :class:`ThermalEP` that are plain numbers (traced)."""

    temperature: float
    beta: float
    gap_tolerance: float


# --------------------------------------------------------------------------------------------
# eigenstate EP
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class EigenstateEP(Estimator):
    """Equilibrium propagation in eigenstate ``k`` of ``H(θ, x)`` (docs/mathematics.md).

    For each example, the network is in level ``k`` of ``H``; with the nudge operator
    ``Ĉ = Σ_j (∂ℓ/∂⟨B_j⟩) B_j`` the estimator solves ``H ± βĈ``, takes the nudged state that
    ``follow`` names, and returns

    ``dL/dc_s ≈ [⟨P_s⟩_{k,+β} − ⟨P_s⟩_{k,−β}] / (2β)``  (bias O(β²); O(β⁴) with
    ``richardson=True``, from ``β`` and ``β/2``).

    Each example's outcome is in ``diagnostics["outcome"]`` (codes 0, 1, 2 for
    ``OUTCOMES = ("followed", "crossed", "refused")``, see ``quantum/_following.py``), with
    ``num_crossed`` and ``num_refused``; refused examples are left out of the batch gradient
    (the loss still averages all). A free gap below ``gap_tolerance``, or every example
    refused, raises ``ValueError``; ``β Σ|γ_k| / gap`` above ``max_nudge_ratio`` for some
    example warns. ``observables`` holds the outputs, their variances and the level energies
    of the free and nudged states (see the module docstring for behaviour under ``jit``).

    Compiled once per ``model``, ``level``, ``richardson``, ``solver``, ``shots``, ``follow``
    and batch shape; ``beta``, ``gap_tolerance`` and ``lanczos_tol`` are traced, so a new
    value (e.g. ``dataclasses.replace(est, beta=1e-4)``) reuses the compiled code.

    Attributes:
        model: The :class:`QuantumNetwork`.
        level: Eigenstate index ``k`` (0 = ground state), counted from the bottom.
        beta: Nudging strength ``β > 0``.
        richardson: Use Richardson extrapolation over ``β`` and ``β/2`` (four nudged solves).
        solver: ``"dense"`` (``eigh``; up to about 12 qubits) or ``"sparse"`` (Lanczos via
            SciPy ARPACK on the host; for the ground state and a few low levels, 16 qubits and
            more).
        shots: ``None`` for exact expectations, or the number of shots per basis setting
            (dense solver only); then ``stderr`` holds the shot-noise standard error.
        gap_tolerance: Smallest accepted gap between level ``k`` and its neighbours.
        lanczos_tol: ARPACK tolerance for the sparse solver (0: machine precision).
        follow: Which nudged state is measured: ``"adiabatic"`` (default) the eigenstate of
            ``H ± βĈ`` with the largest overlap with the free one (level ``k`` continued
            through a crossing; an example whose best overlap is below 1/2 is refused) or
            ``"index"`` level ``k`` of ``H ± βĈ`` itself (e.g. the nudged ground state an
            experiment prepares; an example is then refused only for a nudged gap below
            ``gap_tolerance``).
        max_nudge_ratio: Warn (:class:`NudgeStrengthWarning`) when ``β Σ_k |γ_k| / Δ``, the
            nudge ``Ĉ = Σ_k γ_k Q_k`` against the free gap ``Δ`` of level ``k``, exceeds this
            for some example (in a two-level system the gradient is then off by up to
            ``1 − 1/√(1 + 4r²)``: 29 % at the default 0.5, 2 % at 0.1; see
            ``quantum/_following.py``); ``inf`` never warns. Checked on the host after the
            solve, so a new value does not recompile.

    Example:
        >>> from thermoeqprop.quantum import classifier_network
        >>> net = classifier_network(num_qubits=3, num_inputs=2)
        >>> est = EigenstateEP(net, beta=1e-3)
        >>> params = net.init_params(jax.random.key(0))
        >>> x = jnp.array([[0.3, -0.5]]); y = net.encode_labels(jnp.array([1]))
        >>> est(params, x, y, jax.random.key(1)).grad.shape
        (18,)
    """

    model: QuantumNetwork
    level: int = 0
    beta: float = 1e-3
    richardson: bool = False
    solver: str = "dense"
    shots: int | None = None
    gap_tolerance: float = 1e-8
    lanczos_tol: float = 0.0
    follow: str = "adiabatic"
    max_nudge_ratio: float = 0.5

    def __post_init__(self):
        _check_model(self.model)
        _check_beta(self.beta)
        _check_shots(self.shots)
        if self.follow not in FOLLOW_MODES:
            raise ValueError(f"follow must be one of {FOLLOW_MODES}, got {self.follow!r}")
        if not (isinstance(self.max_nudge_ratio, int | float) and self.max_nudge_ratio > 0):
            raise ValueError(
                f"max_nudge_ratio must be a number > 0 (inf: never warn), got "
                f"{self.max_nudge_ratio!r}"
            )
        d = 1 << self.model.num_qubits
        if not isinstance(self.level, int | np.integer) or not 0 <= self.level < d:
            raise ValueError(
                f"level must be an integer in 0 … {d - 1} for {self.model.num_qubits} qubits, "
                f"got {self.level!r}"
            )
        if self.solver == "dense":
            _check_dense_size(self.model.num_qubits, 3, 8 if self.model.is_real else 16)
        elif self.solver == "sparse":
            if self.shots is not None:
                raise ValueError("shots are supported with solver='dense' only")
            if self.level + 2 >= d - 1:
                raise ValueError(
                    f"solver='sparse' computes low levels only; level={self.level} is too high "
                    f"for dimension {d}: use solver='dense'"
                )
        else:
            raise ValueError(f"solver must be 'dense' or 'sparse', got {self.solver!r}")
        if not self.gap_tolerance >= 0:
            raise ValueError(f"gap_tolerance must be ≥ 0, got {self.gap_tolerance!r}")

    def _split(self) -> tuple[EigenStatic, EigenNumbers]:
        static = EigenStatic(
            self.model,
            int(self.level),
            bool(self.richardson),
            _static_shots(self.shots),
            self.follow == "index",
        )
        # Python floats: traced as weakly typed scalars, like the constants they replace.
        numbers = EigenNumbers(float(self.beta), float(self.gap_tolerance), float(self.lanczos_tol))
        return static, numbers

    def __call__(self, params, x, targets, rng_key) -> GradientEstimate:
        """Gradient of the mean cost over the batch ``x`` (batch, num_inputs)."""
        _check_batch(self.model, params, x, targets)
        run = P.dense_batch if self.solver == "dense" else P.sparse_batch
        estimate = run(*self._split(), params, x, targets, rng_key)
        check_eigen_estimate(estimate, self.level, self.gap_tolerance, self.max_nudge_ratio)
        return estimate

    def predict(self, params, x, rng_key=None) -> jax.Array:
        """Exact outputs ``⟨B_j⟩`` in level ``k``, shape (batch, num_outputs)."""
        _check_batch(self.model, params, x)
        if self.solver == "dense":
            return P.predict_dense(*self._split(), params, x)
        return P.predict_sparse(*self._split(), params, x)


# --------------------------------------------------------------------------------------------
# quantum thermal EP
# --------------------------------------------------------------------------------------------
def _thermal_free(model, temperature, c):
    energies, vectors = eigh(model, c)
    log_p = K.thermal_log_weights(energies, temperature)
    return energies, vectors, log_p


def _kubo_mori_example(est: _ThermalStatic, numbers: _ThermalNumbers, params, x, y, key):
    del key
    model = est.model
    c = model.coefficients(params, x)
    jac = model.string_jacobian(params, x)
    _, vectors, log_p = _thermal_free(model, numbers.temperature, c)
    p = jnp.exp(log_p)
    e_q = K.mixture_expectations(model.output_table, vectors, p)
    loss, outputs, gamma = model.cost_string_coefficients(e_q, y)
    rotated = K.rotate_cost(vectors, model.output_table, gamma)
    covariances, _ = K.kubo_mori_traces(model.trainable_table, vectors, log_p, rotated)
    g = -covariances / numbers.temperature
    zero = jnp.zeros(jac.shape[1])
    return Example(jac.T @ g, zero, loss, jnp.zeros(()), {"free_outputs": outputs})


def _thermal_nudged_example(est: _ThermalStatic, numbers: _ThermalNumbers, params, x, y, key):
    model = est.model
    c = model.coefficients(params, x)
    jac = model.string_jacobian(params, x)
    _, vectors, log_p = _thermal_free(model, numbers.temperature, c)
    p = jnp.exp(log_p)
    key_free, key_nudged = (key, key) if est.shots is None else jax.random.split(key)
    e_q = K.mixture_expectations(model.output_table, vectors, p)
    loss, _, gamma, loss_var = free_outputs(
        model,
        vectors,
        p,
        lambda: e_q,
        y,
        est.shots,
        key_free,
    )
    nudge = model.embed_cost(gamma)
    plan = measurement_plan(model.hamiltonian.trainable_strings)
    grad = jnp.zeros(jac.shape[1])
    var = jnp.zeros(jac.shape[1])
    out_w, nudged = jnp.asarray(model.output_weights), []
    phases = phase_weights(numbers.beta, est.richardson)
    keys = phase_keys(key_nudged, len(phases), est.shots)
    for i, (b, w) in enumerate(phases):
        for sign, k in ((1.0, keys[2 * i]), (-1.0, keys[2 * i + 1])):
            _, vecs, lp = _thermal_free(model, numbers.temperature, c + sign * b * nudge)
            weights = jnp.exp(lp)

            def exact(vecs=vecs, weights=weights):
                rho = (vecs * weights[None, :]) @ jnp.conj(vecs).T
                return K.traces(model.trainable_table, rho)

            mean, v = measure(model, plan, vecs, weights, exact, est.shots, k, jac)
            grad = grad + sign * w * mean
            var = var + w**2 * v
            nudged.append(out_w @ K.mixture_expectations(model.output_table, vecs, weights))
    observables = {"free_outputs": out_w @ e_q, "nudged_outputs": jnp.stack(nudged)}
    return Example(grad, var, loss, loss_var, observables)


@functools.partial(jax.jit, static_argnums=0)
def _thermal_batch(est: _ThermalStatic, numbers: _ThermalNumbers, params, x, targets, rng_key):
    keys = example_keys(rng_key, x.shape[0], est.shots)
    fn = _kubo_mori_example if est.method == "kubo_mori" else _thermal_nudged_example
    per_example = jax.vmap(fn, in_axes=(None, None, None, 0, 0, 0))(
        est, numbers, params, x, targets, keys
    )
    betas = None if est.method == "kubo_mori" else nudged_betas(numbers.beta, est.richardson)
    return assemble_estimate(per_example, betas, numbers.gap_tolerance, est.shots, eigen=False)


@functools.partial(jax.jit, static_argnums=0)
def _thermal_predict(est: _ThermalStatic, numbers: _ThermalNumbers, params, x):
    model = est.model

    def one(xi):
        c = model.coefficients(params, xi)
        _, vectors, log_p = _thermal_free(model, numbers.temperature, c)
        e_q = K.mixture_expectations(model.output_table, vectors, jnp.exp(log_p))
        return jnp.asarray(model.output_weights) @ e_q

    return jax.vmap(one)(x)


@dataclasses.dataclass(frozen=True)
class ThermalEP(Estimator):
    """Quantum thermal EP with exact density matrices ``ρ = e^{−H/T}/Z`` (docs/mathematics.md).

    The objective is ``L_T = ℓ(tr(ρ B_1), …)``, for the squared-error cost ``tr(ρ Ĉ)``.

    * ``method="kubo_mori"`` (no clamping, no nudge): from one ``eigh`` of ``H``,
      ``dL/dc_s = −(1/T) ⟨Ĉ ; P_s⟩_KM = −(1/T) tr(M P_s)`` with
      ``M = U (δC̃ ∘ Λ) U†``, ``C̃ = U†ĈU`` and the logarithmic means
      ``Λ_mn = Λ(p_m, p_n)`` computed in log space. After ``M`` every string costs O(d).
      Not the symmetrised covariance ``½⟨{δĈ, δP}⟩``, which is wrong when ``Ĉ`` or ``P``
      does not commute with ``H``.
    * ``method="nudged"``: ``[tr(ρ_{+β} P_s) − tr(ρ_{−β} P_s)] / (2β)`` from ``H ± βĈ``
      (optionally Richardson-extrapolated, and optionally from finite shots).

    Attributes:
        model: The :class:`QuantumNetwork`.
        temperature: ``T > 0`` (energy units).
        method: ``"kubo_mori"`` or ``"nudged"``.
        beta: Nudging strength for ``"nudged"`` (``None``: 1e-3). Kubo–Mori does not nudge:
            ``beta`` must stay ``None`` and ``richardson`` ``False`` with it (an error
            otherwise, rather than settings silently ignored).
        richardson: Richardson extrapolation for ``"nudged"``.
        shots: Shots per basis setting for ``"nudged"`` (``None``: exact). The Kubo–Mori
            covariance is a response function, not the expectation of one observable, so it
            has no projective-measurement estimator; ``shots`` with it is an error.
        gap_tolerance: Unused by thermal states (degenerate levels are fine); kept so every
            estimator reports the same diagnostics.

    Compiled once per ``model``, ``method``, ``richardson``, ``shots`` and batch shape;
    ``temperature``, ``beta`` and ``gap_tolerance`` are traced, so a temperature sweep or an
    annealed training run (``dataclasses.replace(est, temperature=T)`` every epoch) reuses
    the compiled code.

    Example:
        >>> from thermoeqprop.quantum import classifier_network
        >>> net = classifier_network(num_qubits=3, num_inputs=2)
        >>> est = ThermalEP(net, temperature=0.5)
        >>> params = net.init_params(jax.random.key(0))
        >>> x = jnp.array([[0.3, -0.5]]); y = net.encode_labels(jnp.array([1]))
        >>> bool(jnp.isfinite(est(params, x, y, jax.random.key(1)).loss))
        True
    """

    model: QuantumNetwork
    temperature: float = 0.1
    method: str = "kubo_mori"
    beta: float | None = None
    richardson: bool = False
    shots: int | None = None
    gap_tolerance: float = 0.0

    def __post_init__(self):
        _check_model(self.model)
        if self.method == "nudged" and self.beta is None:
            object.__setattr__(self, "beta", 1e-3)
        if self.method == "kubo_mori" and (self.beta is not None or self.richardson):
            raise ValueError(
                f"method='kubo_mori' does not nudge, so beta and richardson do not apply; got "
                f"beta={self.beta!r}, richardson={self.richardson!r}: leave them at None and "
                f"False, or use method='nudged'"
            )
        if self.beta is not None:
            _check_beta(self.beta)
        _check_shots(self.shots)
        t = self.temperature
        if not (isinstance(t, int | float) and np.isfinite(t) and t > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {t!r}")
        if self.method not in ("kubo_mori", "nudged"):
            raise ValueError(f"method must be 'kubo_mori' or 'nudged', got {self.method!r}")
        if self.method == "kubo_mori" and self.shots is not None:
            raise ValueError(
                "shots are not available with method='kubo_mori': the Kubo–Mori covariance is "
                "not the expectation of an observable; use method='nudged' with shots"
            )
        _check_dense_size(self.model.num_qubits, 4, 8 if self.model.is_real else 16)

    def _split(self) -> tuple[_ThermalStatic, _ThermalNumbers]:
        static = _ThermalStatic(
            self.model, self.method, bool(self.richardson), _static_shots(self.shots)
        )
        beta = 0.0 if self.beta is None else float(self.beta)  # 0.0: unused by Kubo–Mori
        numbers = _ThermalNumbers(float(self.temperature), beta, float(self.gap_tolerance))
        return static, numbers

    def __call__(self, params, x, targets, rng_key) -> GradientEstimate:
        """Gradient of the mean thermal cost over the batch ``x`` (batch, num_inputs)."""
        _check_batch(self.model, params, x, targets)
        return _thermal_batch(*self._split(), params, x, targets, rng_key)

    def predict(self, params, x, rng_key=None) -> jax.Array:
        """Exact thermal outputs ``tr(ρ B_j)``, shape (batch, num_outputs)."""
        _check_batch(self.model, params, x)
        return _thermal_predict(*self._split(), params, x)
