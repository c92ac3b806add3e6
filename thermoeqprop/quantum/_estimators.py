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

import jax
import jax.numpy as jnp
import numpy as np

from thermoeqprop._protocols import Estimator
from thermoeqprop._result import GradientEstimate
from thermoeqprop.quantum import _eigen_paths as P
from thermoeqprop.quantum._checks import (
    check_batch,
    check_beta,
    check_model,
    check_shots,
    static_shots,
)
from thermoeqprop.quantum._eigen_paths import EigenNumbers, EigenStatic
from thermoeqprop.quantum._following import (
    FOLLOW_MODES,
    OUTCOMES,
    NudgeStrengthWarning,
    check_eigen_estimate,
)
from thermoeqprop.quantum._network import QuantumNetwork
from thermoeqprop.quantum._pauli import _check_dense_size
from thermoeqprop.quantum._sparse_paths import SparseState, predict_sparse, sparse_batch
from thermoeqprop.quantum._thermal import ThermalEP

__all__ = ["OUTCOMES", "EigenstateEP", "NudgeStrengthWarning", "SparseState", "ThermalEP"]


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

    Compiled once per ``model``, ``level``, ``richardson``, ``solver``, the shot settings,
    ``follow``, ``blas_threads`` and batch shape; ``beta``, ``gap_tolerance`` and
    ``lanczos_tol`` are traced, so a new value (e.g. ``dataclasses.replace(est, beta=1e-4)``)
    reuses the compiled code.

    The sparse solver can start from the free states of the previous call:
    ``estimate, state = est.call_with_state(params, x, targets, key, state)`` returns a
    :class:`SparseState` to pass back next time (``None``: a cold start, as ``__call__``
    always makes). The estimate then differs from a cold start only within the solver
    tolerance, and the state is an array, so a checkpoint that keeps it resumes exactly.
    ``initial_state(batch_size)`` is the state of a cold start, the shape to restore a
    checkpointed one into; :func:`thermoeqprop.training.train_steps` carries the state from
    step to step and checkpoints it.

    Attributes:
        model: The :class:`QuantumNetwork`.
        level: Eigenstate index ``k`` (0 = ground state), counted from the bottom.
        beta: Nudging strength ``β > 0``.
        richardson: Use Richardson extrapolation over ``β`` and ``β/2`` (four nudged solves).
        solver: ``"dense"`` (``eigh``; up to about 12 qubits) or ``"sparse"`` (lock-step
            Lanczos on the host, every example of the batch together, warm-started; for the
            ground state and a few low levels, 16 qubits and more; see
            ``quantum/_sparse_paths.py``).
        shots: ``None`` for exact expectations, or the number of shots ``N`` per basis setting
            (projective) or per Pauli string (Gaussian); then ``stderr`` holds the shot-noise
            standard error. Either solver.
        shot_model: ``"projective"`` (``N`` bit strings per qubit-wise commuting basis
            setting, strings of one setting read from the same shots) or ``"gaussian"``
            (each string ``N(⟨P⟩, (1 − ⟨P⟩²)/N)``, independently; see
            ``quantum/_shots.py``).
        error_signal: ``"noisy"`` (the free outputs, hence the loss and the nudge ``Ĉ``,
            are read from shots too) or ``"exact"`` (from the exact free state: only the
            nudged measurements are noisy, and the loss is exact).
        gap_tolerance: Smallest accepted gap between level ``k`` and its neighbours.
        lanczos_tol: Relative residual tolerance of the sparse solver: a Ritz pair is
            accepted when ``‖Hψ − Eψ‖ ≤ max(lanczos_tol, ε) Σ_s |c_s|`` (0: machine
            precision ``ε``).
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
        blas_threads: BLAS threads of the sparse solver's host work (threadpoolctl, set
            while it runs); ``None`` leaves the pools as they are. Its products are small,
            so 1 is fastest and keeps parallel workers from oversubscribing the cores.

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
    shot_model: str = "projective"
    error_signal: str = "noisy"
    blas_threads: int | None = 1

    def __post_init__(self):
        check_model(self.model)
        check_beta(self.beta)
        check_shots(self.shots, self.shot_model, self.error_signal)
        threads = self.blas_threads
        if threads is not None and (
            not isinstance(threads, int | np.integer) or isinstance(threads, bool) or threads < 1
        ):
            raise ValueError(f"blas_threads must be None or an integer ≥ 1, got {threads!r}")
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
            static_shots(self),
            self.follow == "index",
            None if self.blas_threads is None else int(self.blas_threads),
        )
        # Python floats: traced as weakly typed scalars, like the constants they replace.
        numbers = EigenNumbers(float(self.beta), float(self.gap_tolerance), float(self.lanczos_tol))
        return static, numbers

    def __call__(self, params, x, targets, rng_key) -> GradientEstimate:
        """Gradient of the mean cost over the batch ``x`` (batch, num_inputs)."""
        return self.call_with_state(params, x, targets, rng_key)[0]

    def call_with_state(
        self, params, x, targets, rng_key, state: SparseState | None = None
    ) -> tuple[GradientEstimate, SparseState | None]:
        """The estimate, warm-started from ``state``, and the state for the next call.

        Args:
            params: Parameters, shape (num_params,).
            x: Inputs, shape (batch, num_inputs).
            targets: Targets, shape (batch, num_outputs).
            rng_key: PRNG key (shots).
            state: The :class:`SparseState` returned by the previous call (its batch size
                must match ``x``), or ``None`` for a cold start. The dense solver needs no
                warm start and returns ``state`` unchanged.
        """
        check_batch(self.model, params, x, targets)
        if self.solver == "dense":
            estimate = P.dense_batch(*self._split(), params, x, targets, rng_key)
        else:
            start = self._start(state, jnp.shape(x)[0])
            estimate, state = sparse_batch(*self._split(), params, x, targets, rng_key, start)
        check_eigen_estimate(estimate, self.level, self.gap_tolerance, self.max_nudge_ratio)
        return estimate, state

    def initial_state(self, batch_size: int) -> SparseState | None:
        """The state before the first call: no warm start, the same as ``state=None`` in
        :meth:`call_with_state` (a training loop restores a checkpointed state into its
        shape); ``None`` for the dense solver, which carries nothing."""
        if self.solver == "dense":
            return None
        return SparseState(self._start(None, int(batch_size)))

    def _start(self, state, batch: int) -> jax.Array:
        d = 1 << self.model.num_qubits
        dtype = jnp.float64 if self.model.is_real else jnp.complex128
        if state is None:
            return jnp.zeros((batch, d), dtype)
        if not isinstance(state, SparseState) or jnp.shape(state.free_states) != (batch, d):
            got = state.free_states if isinstance(state, SparseState) else state
            raise ValueError(
                f"state must be None or the SparseState of the previous call, with "
                f"free_states of shape ({batch}, {d}) for this batch; got "
                f"{type(state).__name__} of shape {np.shape(got)}"
            )
        return jnp.asarray(state.free_states, dtype)

    def predict(self, params, x, rng_key=None) -> jax.Array:
        """Exact outputs ``⟨B_j⟩`` in level ``k``, shape (batch, num_outputs)."""
        check_batch(self.model, params, x)
        if self.solver == "dense":
            return P.predict_dense(*self._split(), params, x)
        return predict_sparse(*self._split(), params, x)
