"""Quantum EP estimators: eigenstate EP (MATH.md §4) and quantum thermal EP (§5).

Both return :class:`~thermoeqprop.GradientEstimate` with ``grad`` shaped like the parameters
(a flat array), ``loss`` the mean cost over the batch and, with finite shots, standard errors.

Every estimator first measures ``g_s = dL/dc_s`` for each Pauli string ``P_s`` whose
coefficient depends on θ, then applies the chain rule ``dL/dθ = Σ_s g_s ∂c_s/∂θ`` through the
classical coefficient map (for a plain trainable term, ``∂_θ H = P_s``).

The numerical kernels are jit-compiled once per *structural* configuration (model, level,
solver, shots, method, Richardson on or off) and batch shape: those change the program (array
shapes, loops, which kernel), so they are static. The numbers ``beta``, ``temperature``,
``gap_tolerance`` and ``lanczos_tol`` are traced arguments (the sparse solver's host callback
receives them as operands), so a β or temperature scan, or a new temperature every epoch,
reuses the compiled code. ``__call__`` raises ``ValueError`` on a
degenerate level or lost level tracking when called on concrete values; inside a user's
``jit`` it cannot raise, so it returns NaN gradients and reports ``min_gap`` and
``min_overlap`` in ``diagnostics`` instead.
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
from thermoeqprop.quantum import _kernels as K
from thermoeqprop.quantum._network import QuantumNetwork
from thermoeqprop.quantum._pauli import _check_dense_size
from thermoeqprop.quantum._phases import (
    example_keys,
    free_outputs,
    measure,
    phase_keys,
    phase_weights,
)
from thermoeqprop.quantum._shots import measurement_plan
from thermoeqprop.quantum._sparse import lowest_levels, sparse_from_table, state_expectations_np

__all__ = ["EigenstateEP", "ThermalEP"]

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


def _is_concrete(value) -> bool:
    return not isinstance(value, jax.core.Tracer)


def _raise_if_invalid(estimate: GradientEstimate, level: int, gap_tolerance: float) -> None:
    gap = estimate.diagnostics["min_gap"]
    overlap = estimate.diagnostics["min_overlap"]
    if not (_is_concrete(gap) and _is_concrete(overlap)):
        return
    where = int(estimate.diagnostics["worst_example"])
    if not float(gap) >= gap_tolerance:
        raise ValueError(
            f"level {level} is degenerate or nearly so: its gap to a neighbouring level is "
            f"{float(gap):.3g} (example {where} of the batch, free or nudged), below "
            f"gap_tolerance={gap_tolerance:g}; the eigenstate and its gradient are not defined "
            f"there. Choose a non-degenerate level, break the symmetry (e.g. a small field), or "
            f"lower gap_tolerance if that gap is real"
        )
    if not float(overlap) >= _MIN_OVERLAP:
        raise ValueError(
            f"level {level} could not be tracked along the nudge: the best overlap of the "
            f"nudged eigenstates with the free one is {float(overlap):.3g} (example {where}), "
            f"below {_MIN_OVERLAP}; beta is too large for the gap, use a smaller beta"
        )


# --------------------------------------------------------------------------------------------
# what is compiled in (static) and what is traced (dynamic)
# --------------------------------------------------------------------------------------------
def _static_shots(shots) -> int | None:
    return None if shots is None else int(shots)


class _EigenStatic(NamedTuple):
    """The settings of :class:`EigenstateEP` that shape the program (hashable, static)."""

    model: QuantumNetwork
    level: int
    richardson: bool
    shots: int | None


class _EigenNumbers(NamedTuple):
    """The settings of :class:`EigenstateEP` that are plain numbers (traced)."""

    beta: float
    gap_tolerance: float
    lanczos_tol: float


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
# dense kernels
# --------------------------------------------------------------------------------------------
def _eigh(model: QuantumNetwork, coefficients: jax.Array):
    return jnp.linalg.eigh(K.assemble(model.table, coefficients), symmetrize_input=False)


def _gap_at(energies: jax.Array, index) -> jax.Array:
    """Distance from level ``index`` to its nearest neighbour (inf for a 1-level system)."""
    last = energies.shape[0] - 1
    below = energies[index] - energies[jnp.maximum(index - 1, 0)]
    above = energies[jnp.minimum(index + 1, last)] - energies[index]
    below = jnp.where(index > 0, below, jnp.inf)
    above = jnp.where(index < last, above, jnp.inf)
    return jnp.minimum(below, above)


def _tracked_state(model, coefficients, reference):
    """The eigenvector with the largest overlap with ``reference`` (level tracking)."""
    energies, vectors = _eigh(model, coefficients)
    overlaps = jnp.abs(jnp.conj(vectors).T @ reference) ** 2
    j = jnp.argmax(overlaps)
    return vectors[:, j], overlaps[j], _gap_at(energies, j)


def _eigen_example(est: _EigenStatic, numbers: _EigenNumbers, params, x, y, key):
    model = est.model
    c = model.coefficients(params, x)
    jac = model.string_jacobian(params, x)
    energies, vectors = _eigh(model, c)
    psi = vectors[:, est.level]
    gap = _gap_at(energies, est.level)
    key_free, key_nudged = (key, key) if est.shots is None else jax.random.split(key)

    loss, outputs, gamma, loss_var = free_outputs(
        model,
        psi[:, None],
        jnp.ones(1),
        lambda: K.state_expectations(model.output_table, psi),
        y,
        est.shots,
        key_free,
    )
    nudge = model.embed_cost(gamma)
    plan = measurement_plan(model.hamiltonian.trainable_strings)
    grad = jnp.zeros(jac.shape[1])
    var = jnp.zeros(jac.shape[1])
    overlap = jnp.ones(())
    phases = phase_weights(numbers.beta, est.richardson)
    keys = phase_keys(key_nudged, len(phases), est.shots)
    for i, (b, w) in enumerate(phases):
        for sign, k in ((1.0, keys[2 * i]), (-1.0, keys[2 * i + 1])):
            state, ov, g = _tracked_state(model, c + sign * b * nudge, psi)
            mean, v = measure(
                model,
                plan,
                state[:, None],
                jnp.ones(1),
                lambda s=state: K.state_expectations(model.trainable_table, s),
                est.shots,
                k,
                jac,
            )
            grad = grad + sign * w * mean
            var = var + w**2 * v
            overlap = jnp.minimum(overlap, ov)
            gap = jnp.minimum(gap, g)
    return grad, var, loss, loss_var, outputs, gap, overlap


def _assemble_estimate(per_example, gap_tolerance, shots: int | None) -> GradientEstimate:
    """Batch means and diagnostics; ``shots`` is None for exact (non-stochastic) estimates."""
    grad, var, loss, loss_var, outputs, gap, overlap = per_example
    batch = grad.shape[0]
    bad = jnp.logical_or(jnp.min(gap) < gap_tolerance, jnp.min(overlap) < _MIN_OVERLAP)
    g = jnp.where(bad, jnp.nan, jnp.mean(grad, axis=0))
    diagnostics = {
        "min_gap": jnp.min(gap),
        "min_overlap": jnp.min(overlap),
        "worst_example": jnp.argmin(jnp.where(gap < gap_tolerance, gap, overlap)),
    }
    if shots is None:
        return GradientEstimate(g, jnp.mean(loss), diagnostics=diagnostics)
    return GradientEstimate(
        g,
        jnp.mean(loss),
        stderr=jnp.sqrt(jnp.sum(var, axis=0)) / batch,
        loss_stderr=jnp.sqrt(jnp.sum(loss_var)) / batch,
        diagnostics={**diagnostics, "shots": jnp.asarray(shots)},
    )


@functools.partial(jax.jit, static_argnums=0)
def _eigen_dense_batch(est: _EigenStatic, numbers: _EigenNumbers, params, x, targets, rng_key):
    keys = example_keys(rng_key, x.shape[0], est.shots)
    per_example = jax.vmap(_eigen_example, in_axes=(None, None, None, 0, 0, 0))(
        est, numbers, params, x, targets, keys
    )
    return _assemble_estimate(per_example, numbers.gap_tolerance, est.shots)


@functools.partial(jax.jit, static_argnums=0)
def _eigen_predict_dense(est: _EigenStatic, numbers: _EigenNumbers, params, x):
    del numbers  # the free eigenstate depends on no traced setting
    model = est.model

    def one(xi):
        _, vectors = _eigh(model, model.coefficients(params, xi))
        e_q = K.state_expectations(model.output_table, vectors[:, est.level])
        return jnp.asarray(model.output_weights) @ e_q

    return jax.vmap(one)(x)


# --------------------------------------------------------------------------------------------
# sparse (Lanczos) path, on the host through pure_callback
# --------------------------------------------------------------------------------------------
def _sparse_free_host(est: _EigenStatic, c, lanczos_tol):
    model = est.model
    h = sparse_from_table(model.table, np.asarray(c))
    energies, vectors = lowest_levels(h, est.level + 2, tol=float(lanczos_tol))
    psi = vectors[:, est.level]
    gap = np.min(np.diff(energies)[max(est.level - 1, 0) : est.level + 1])
    e_q = state_expectations_np(model.output_table, psi)
    return psi.astype(_state_dtype(model)), np.float64(gap), e_q.astype(np.float64)


def _sparse_nudged_host(est: _EigenStatic, c, nudge, psi, beta, lanczos_tol):
    model = est.model
    c, nudge, psi = np.asarray(c), np.asarray(nudge), np.asarray(psi)
    g = np.zeros(len(model.hamiltonian.trainable_strings))
    min_gap, min_overlap = np.inf, 1.0
    tol = float(lanczos_tol)
    for b, w in phase_weights(float(beta), est.richardson):
        for sign in (1.0, -1.0):
            h = sparse_from_table(model.table, c + sign * b * nudge)
            energies, vectors = lowest_levels(h, est.level + 2, start=psi, tol=tol)
            overlaps = np.abs(vectors.conj().T @ psi) ** 2
            j = int(np.argmax(overlaps))
            padded = np.concatenate([[-np.inf], energies, [np.inf]])
            # the level just above the last computed one is unknown: only trust j < k − 1
            upper = padded[j + 2] - padded[j + 1] if j + 1 < len(energies) else np.inf
            min_gap = min(min_gap, upper, padded[j + 1] - padded[j])
            min_overlap = min(min_overlap, float(overlaps[j]))
            g += sign * w * state_expectations_np(model.trainable_table, vectors[:, j])
    return g, np.float64(min_gap), np.float64(min_overlap)


def _state_dtype(model):
    return np.float64 if model.is_real else np.complex128


def _sparse_example(est: _EigenStatic, numbers: _EigenNumbers, params, x, y, key):
    del key
    model = est.model
    d = 1 << model.num_qubits
    c = model.coefficients(params, x)
    jac = model.string_jacobian(params, x)
    psi, gap, e_q = jax.pure_callback(
        functools.partial(_sparse_free_host, est),
        (
            jax.ShapeDtypeStruct((d,), _state_dtype(model)),
            jax.ShapeDtypeStruct((), jnp.float64),
            jax.ShapeDtypeStruct((len(model.output_strings),), jnp.float64),
        ),
        c,
        numbers.lanczos_tol,
        vmap_method="sequential",
    )
    loss, outputs, gamma = model.cost_string_coefficients(e_q, y)
    g, gap_n, overlap = jax.pure_callback(
        functools.partial(_sparse_nudged_host, est),
        (
            jax.ShapeDtypeStruct((len(model.hamiltonian.trainable_strings),), jnp.float64),
            jax.ShapeDtypeStruct((), jnp.float64),
            jax.ShapeDtypeStruct((), jnp.float64),
        ),
        c,
        model.embed_cost(gamma),
        psi,
        numbers.beta,
        numbers.lanczos_tol,
        vmap_method="sequential",
    )
    zero = jnp.zeros(jac.shape[1])
    return jac.T @ g, zero, loss, jnp.zeros(()), outputs, jnp.minimum(gap, gap_n), overlap


@functools.partial(jax.jit, static_argnums=0)
def _eigen_sparse_batch(est: _EigenStatic, numbers: _EigenNumbers, params, x, targets, rng_key):
    keys = jax.random.split(rng_key, x.shape[0])
    per_example = jax.vmap(_sparse_example, in_axes=(None, None, None, 0, 0, 0))(
        est, numbers, params, x, targets, keys
    )
    return _assemble_estimate(per_example, numbers.gap_tolerance, None)


@functools.partial(jax.jit, static_argnums=0)
def _eigen_predict_sparse(est: _EigenStatic, numbers: _EigenNumbers, params, x):
    model = est.model
    d = 1 << model.num_qubits

    def one(xi):
        _, _, e_q = jax.pure_callback(
            functools.partial(_sparse_free_host, est),
            (
                jax.ShapeDtypeStruct((d,), _state_dtype(model)),
                jax.ShapeDtypeStruct((), jnp.float64),
                jax.ShapeDtypeStruct((len(model.output_strings),), jnp.float64),
            ),
            model.coefficients(params, xi),
            numbers.lanczos_tol,
            vmap_method="sequential",
        )
        return jnp.asarray(model.output_weights) @ e_q

    return jax.vmap(one)(x)


# --------------------------------------------------------------------------------------------
# eigenstate EP
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class EigenstateEP(Estimator):
    """Equilibrium propagation in eigenstate ``k`` of ``H(θ, x)`` (MATH.md §4).

    For each example, the network is in level ``k`` of ``H``; with the nudge operator
    ``Ĉ = Σ_j (∂ℓ/∂⟨B_j⟩) B_j`` the estimator solves ``H ± βĈ``, follows level ``k`` by the
    largest overlap with the free eigenstate (so a level that changes index along the nudge
    is still the same state), and returns

    ``dL/dc_s ≈ [⟨P_s⟩_{k,+β} − ⟨P_s⟩_{k,−β}] / (2β)``  (bias O(β²); O(β⁴) with
    ``richardson=True``, from ``β`` and ``β/2``).

    A gap below ``gap_tolerance`` at the free or a nudged point raises ``ValueError`` (see the
    module docstring for behaviour under ``jit``).

    Compiled once per ``model``, ``level``, ``richardson``, ``solver``, ``shots`` and batch
    shape; ``beta``, ``gap_tolerance`` and ``lanczos_tol`` are traced, so a new value (e.g.
    ``dataclasses.replace(est, beta=1e-4)``) reuses the compiled code.

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

    def __post_init__(self):
        _check_model(self.model)
        _check_beta(self.beta)
        _check_shots(self.shots)
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

    def _split(self) -> tuple[_EigenStatic, _EigenNumbers]:
        static = _EigenStatic(
            self.model, int(self.level), bool(self.richardson), _static_shots(self.shots)
        )
        # Python floats: traced as weakly typed scalars, like the constants they replace.
        numbers = _EigenNumbers(
            float(self.beta), float(self.gap_tolerance), float(self.lanczos_tol)
        )
        return static, numbers

    def __call__(self, params, x, targets, rng_key) -> GradientEstimate:
        """Gradient of the mean cost over the batch ``x`` (batch, num_inputs)."""
        _check_batch(self.model, params, x, targets)
        run = _eigen_dense_batch if self.solver == "dense" else _eigen_sparse_batch
        estimate = run(*self._split(), params, x, targets, rng_key)
        _raise_if_invalid(estimate, self.level, self.gap_tolerance)
        return estimate

    def predict(self, params, x, rng_key=None) -> jax.Array:
        """Exact outputs ``⟨B_j⟩`` in level ``k``, shape (batch, num_outputs)."""
        _check_batch(self.model, params, x)
        if self.solver == "dense":
            return _eigen_predict_dense(*self._split(), params, x)
        return _eigen_predict_sparse(*self._split(), params, x)


# --------------------------------------------------------------------------------------------
# quantum thermal EP
# --------------------------------------------------------------------------------------------
def _thermal_free(model, temperature, c):
    energies, vectors = _eigh(model, c)
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
    return jac.T @ g, zero, loss, jnp.zeros(()), outputs, jnp.asarray(jnp.inf), jnp.ones(())


def _thermal_nudged_example(est: _ThermalStatic, numbers: _ThermalNumbers, params, x, y, key):
    model = est.model
    c = model.coefficients(params, x)
    jac = model.string_jacobian(params, x)
    _, vectors, log_p = _thermal_free(model, numbers.temperature, c)
    p = jnp.exp(log_p)
    key_free, key_nudged = (key, key) if est.shots is None else jax.random.split(key)
    loss, outputs, gamma, loss_var = free_outputs(
        model,
        vectors,
        p,
        lambda: K.mixture_expectations(model.output_table, vectors, p),
        y,
        est.shots,
        key_free,
    )
    nudge = model.embed_cost(gamma)
    plan = measurement_plan(model.hamiltonian.trainable_strings)
    grad = jnp.zeros(jac.shape[1])
    var = jnp.zeros(jac.shape[1])
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
    return grad, var, loss, loss_var, outputs, jnp.asarray(jnp.inf), jnp.ones(())


@functools.partial(jax.jit, static_argnums=0)
def _thermal_batch(est: _ThermalStatic, numbers: _ThermalNumbers, params, x, targets, rng_key):
    keys = example_keys(rng_key, x.shape[0], est.shots)
    fn = _kubo_mori_example if est.method == "kubo_mori" else _thermal_nudged_example
    per_example = jax.vmap(fn, in_axes=(None, None, None, 0, 0, 0))(
        est, numbers, params, x, targets, keys
    )
    estimate = _assemble_estimate(per_example, numbers.gap_tolerance, est.shots)
    diagnostics = {
        k: v for k, v in estimate.diagnostics.items() if k not in ("min_gap", "min_overlap")
    }
    diagnostics.pop("worst_example")
    return estimate._replace(diagnostics=diagnostics)


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
    """Quantum thermal EP with exact density matrices ``ρ = e^{−H/T}/Z`` (MATH.md §5).

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
