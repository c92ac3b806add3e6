"""Quantum thermal EP with exact density matrices (docs/mathematics.md): :class:`ThermalEP`.

See ``quantum/_estimators.py`` for what is compiled in and what is traced.
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
from thermoeqprop.quantum._checks import (
    check_batch,
    check_beta,
    check_model,
    check_shots,
    static_shots,
)
from thermoeqprop.quantum._eigen_paths import split_key
from thermoeqprop.quantum._following import eigh
from thermoeqprop.quantum._network import QuantumNetwork
from thermoeqprop.quantum._observables import Example, assemble_estimate, nudged_betas
from thermoeqprop.quantum._pauli import _check_dense_size
from thermoeqprop.quantum._phases import (
    ShotSettings,
    example_keys,
    free_outputs,
    measure,
    phase_keys,
    phase_weights,
)
from thermoeqprop.quantum._shots import measurement_plan

__all__ = ["ThermalEP"]


class _ThermalStatic(NamedTuple):
    """The settings of :class:`ThermalEP` that shape the program (hashable, static)."""

    model: QuantumNetwork
    method: str
    richardson: bool
    shots: ShotSettings


class _ThermalNumbers(NamedTuple):
    """The settings of :class:`ThermalEP` that are plain numbers (traced)."""

    temperature: float
    beta: float
    gap_tolerance: float


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
    key_free, key_nudged = split_key(key, est.shots)
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
    keys = phase_keys(key_nudged, len(phases), est.shots.shots)
    for i, (b, w) in enumerate(phases):
        for sign, k in ((1.0, keys[2 * i]), (-1.0, keys[2 * i + 1])):
            _, vecs, lp = _thermal_free(model, numbers.temperature, c + sign * b * nudge)
            weights = jnp.exp(lp)

            def exact(vecs=vecs, weights=weights):
                rho = (vecs * weights[None, :]) @ jnp.conj(vecs).T
                return K.traces(model.trainable_table, rho)

            mean, v = measure(plan, vecs, weights, exact, est.shots, k, jac)
            grad = grad + sign * w * mean
            var = var + w**2 * v
            nudged.append(out_w @ K.mixture_expectations(model.output_table, vecs, weights))
    observables = {"free_outputs": out_w @ e_q, "nudged_outputs": jnp.stack(nudged)}
    return Example(grad, var, loss, loss_var, observables)


@functools.partial(jax.jit, static_argnums=0)
def _thermal_batch(est: _ThermalStatic, numbers: _ThermalNumbers, params, x, targets, rng_key):
    keys = example_keys(rng_key, x.shape[0], est.shots.shots)
    fn = _kubo_mori_example if est.method == "kubo_mori" else _thermal_nudged_example
    per_example = jax.vmap(fn, in_axes=(None, None, None, 0, 0, 0))(
        est, numbers, params, x, targets, keys
    )
    betas = None if est.method == "kubo_mori" else nudged_betas(numbers.beta, est.richardson)
    return assemble_estimate(
        per_example, betas, numbers.gap_tolerance, est.shots.shots, eigen=False
    )


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
        shots: Shots per basis setting (projective) or per string (Gaussian) for
            ``"nudged"`` (``None``: exact). The Kubo–Mori covariance is a response function,
            not the expectation of one observable, so it has no projective-measurement
            estimator; ``shots`` with it is an error.
        shot_model: ``"projective"`` or ``"gaussian"``, as for :class:`EigenstateEP`.
        error_signal: ``"noisy"`` or ``"exact"`` free outputs, as for :class:`EigenstateEP`.
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
    shot_model: str = "projective"
    error_signal: str = "noisy"

    def __post_init__(self):
        check_model(self.model)
        if self.method == "nudged" and self.beta is None:
            object.__setattr__(self, "beta", 1e-3)
        if self.method == "kubo_mori" and (self.beta is not None or self.richardson):
            raise ValueError(
                f"method='kubo_mori' does not nudge, so beta and richardson do not apply; got "
                f"beta={self.beta!r}, richardson={self.richardson!r}: leave them at None and "
                f"False, or use method='nudged'"
            )
        if self.beta is not None:
            check_beta(self.beta)
        check_shots(self.shots, self.shot_model, self.error_signal)
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
        static = _ThermalStatic(self.model, self.method, bool(self.richardson), static_shots(self))
        beta = 0.0 if self.beta is None else float(self.beta)  # 0.0: unused by Kubo–Mori
        numbers = _ThermalNumbers(float(self.temperature), beta, float(self.gap_tolerance))
        return static, numbers

    def __call__(self, params, x, targets, rng_key) -> GradientEstimate:
        """Gradient of the mean thermal cost over the batch ``x`` (batch, num_inputs)."""
        check_batch(self.model, params, x, targets)
        return _thermal_batch(*self._split(), params, x, targets, rng_key)

    def predict(self, params, x, rng_key=None) -> jax.Array:
        """Exact thermal outputs ``tr(ρ B_j)``, shape (batch, num_outputs)."""
        check_batch(self.model, params, x)
        return _thermal_predict(*self._split(), params, x)
