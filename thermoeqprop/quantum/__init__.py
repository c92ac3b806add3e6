"""Quantum equilibrium propagation: qubit networks in eigenstates and thermal states.

docs/mathematics.md#eigenstate-ep and docs/mathematics.md#quantum-thermal-states. The pieces:

* operators: :class:`PauliString`, :func:`pauli`, :class:`PauliSum` (dense, sparse and
  matrix-free forms, Hermiticity checks), :func:`qubitwise_commuting_groups`;
* networks: :class:`Hamiltonian` from :func:`fixed`, :func:`input_driven` and
  :func:`trainable` terms with arbitrary Pauli operators; :class:`QuantumNetwork` (a
  :class:`~thermoeqprop._protocols.Model`) with output observables and a cost
  (:class:`SquaredErrorCost` or :class:`ExpectationLoss`), parameters in groups
  (:func:`parameter_group`; initial scales per group); :func:`classifier_network`,
  :func:`sensor_network` (a chain read out by a sensor pair, :func:`projector` outputs);
* estimators (:class:`~thermoeqprop._protocols.Estimator`): :class:`EigenstateEP` (any level,
  dense ``eigh`` or sparse lock-step Lanczos with warm starts carried in a
  :class:`SparseState`, exact or finite shots) and :class:`ThermalEP` (Kubo–Mori covariance
  from one ``eigh``, or nudged; exact density matrices);
* exact references: :func:`linear_response_gradient`, :func:`autodiff_eigenstate_loss`,
  :func:`autodiff_thermal_loss`, :func:`kubo_mori_covariance`;
* measurement: :func:`measurement_plan`, :func:`sample_outcomes`, :func:`shot_estimate`
  (projective, per basis setting) and :func:`gaussian_estimate` (Gaussian, per string).

Quantum work runs in float64/complex128 (importing :mod:`thermoeqprop` enables JAX's x64).

jaxlib 0.10.2's XLA:CPU runtime can hang for ever (every worker thread idle, the result never
ready) on programs that batch several ``eigh`` calls with the surrounding EP arithmetic, as
these estimators do; seen here both deterministically and intermittently. Turning off the
concurrency-optimised scheduler and multi-threaded Eigen removed every hang found. Importing
this package therefore appends ``--xla_cpu_enable_concurrency_optimized_scheduler=false`` and
``--xla_cpu_multi_thread_eigen=false`` to ``XLA_FLAGS`` (each unless already named there) when
no JAX backend has started yet. Set ``THERMOEQPROP_KEEP_XLA_FLAGS=1`` to leave ``XLA_FLAGS``
alone. If JAX ran a computation before this import the flags cannot take effect: set them in
the environment.
"""

from thermoeqprop.quantum import _xla  # noqa: F401  (sets XLA_FLAGS, see above)
from thermoeqprop.quantum._builders import classifier_network, projector, sensor_network
from thermoeqprop.quantum._estimators import (
    OUTCOMES,
    EigenstateEP,
    NudgeStrengthWarning,
    SparseState,
    ThermalEP,
)
from thermoeqprop.quantum._kernels import logarithmic_mean
from thermoeqprop.quantum._network import (
    ExpectationLoss,
    Hamiltonian,
    QuantumNetwork,
    SquaredErrorCost,
)
from thermoeqprop.quantum._pauli import (
    PauliString,
    PauliSum,
    check_hermitian,
    pauli,
    qubitwise_commuting_groups,
)
from thermoeqprop.quantum._references import (
    autodiff_eigenstate_loss,
    autodiff_thermal_loss,
    kubo_mori_covariance,
    linear_response_gradient,
    symmetrized_covariance,
)
from thermoeqprop.quantum._shots import (
    gaussian_estimate,
    measurement_plan,
    sample_outcomes,
    shot_estimate,
)
from thermoeqprop.quantum._terms import Term, fixed, input_driven, parameter_group, trainable

__all__ = [
    "OUTCOMES",
    "EigenstateEP",
    "ExpectationLoss",
    "Hamiltonian",
    "NudgeStrengthWarning",
    "PauliString",
    "PauliSum",
    "QuantumNetwork",
    "SparseState",
    "SquaredErrorCost",
    "Term",
    "ThermalEP",
    "autodiff_eigenstate_loss",
    "autodiff_thermal_loss",
    "check_hermitian",
    "classifier_network",
    "fixed",
    "gaussian_estimate",
    "input_driven",
    "kubo_mori_covariance",
    "linear_response_gradient",
    "logarithmic_mean",
    "measurement_plan",
    "parameter_group",
    "pauli",
    "projector",
    "qubitwise_commuting_groups",
    "sample_outcomes",
    "sensor_network",
    "shot_estimate",
    "symmetrized_covariance",
    "trainable",
]
