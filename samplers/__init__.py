"""samplers: JAX samplers for Gibbs distributions ``p(s) ∝ exp(−E(s)/T)`` of any energy.

Knows nothing of equilibrium propagation: an energy function ``energy_fn(position, context)``
and start positions in; samples of shape ``(chain, draw, ...)`` and per-step diagnostics out.

- kernels (``init(position, context, temperature)``, ``step(rng_key, state, context)``):
  :func:`nuts` (whose chains :func:`sample` runs asynchronously: each starts its next
  trajectory as soon as its last one ends), :func:`hmc` (NumPyro's), :func:`block_gibbs`,
  :func:`layered_gibbs` (layered Ising energies as matrix products),
  :func:`layered_collapsed_gibbs` (one parity class of layers from its exact marginal),
  :func:`metropolis`,
  :func:`parallel_tempering` around any of them (non-reversible by default), its ladder tuned
  by :func:`optimise_schedule` and continued by :func:`resume_tempering`;
- drivers: :func:`sample` (many chains and targets, one compiled call, sharded over devices),
  :func:`anneal` with :func:`geometric_schedule`, :func:`linear_schedule`;
- exact references: :func:`enumerate_spins`, :func:`spin_log_probabilities`,
  :func:`gaussian_reference`;
- diagnostics (ArviZ): :func:`to_inference_data`, :func:`series_inference_data`,
  :func:`ess_bulk`, :func:`ess_tail`, :func:`rhat`, :func:`mcse_mean`, :func:`summary`;
  vectorised in JAX over many quantities:
  :func:`mean_diagnostics_many`, :func:`ess_mean_many`, :func:`mcse_mean_many`,
  :func:`rhat_split_many`, :func:`rhat_rank_many`; how many independent components the
  error of many means holds: :func:`effective_components`; draws per batch mean within a
  budget of numbers: :func:`batch_window`.
"""

from samplers._annealing import anneal, check_schedule, geometric_schedule, linear_schedule
from samplers._arviz import (
    ess_bulk,
    ess_tail,
    gradient_inference_data,
    load_inference_data,
    mcse_mean,
    rhat,
    save_inference_data,
    series_inference_data,
    summary,
    summary_table,
    to_inference_data,
)
from samplers._arviz_plots import save_rank_plot, save_trace_plot
from samplers._base import Kernel, NonFiniteEnergyError
from samplers._batch_means import batch_window, effective_components
from samplers._collapsed_spins import (
    CollapsedGibbsInfo,
    CollapsedSpinState,
    layered_collapsed_gibbs,
)
from samplers._driver import Trace, check_finite, sample
from samplers._exact import (
    GaussianReference,
    SpinReference,
    enumerate_spins,
    gaussian_reference,
    spin_log_probabilities,
    spin_states,
)
from samplers._fast_diagnostics import (
    MeanDiagnostics,
    ess_mean_many,
    mcse_mean_many,
    mean_diagnostics_many,
    rhat_rank_many,
    rhat_split_many,
)
from samplers._hmc import HMCInfo, HMCState, hmc, nuts
from samplers._layered import LayeredSpinState, layered_gibbs, layered_ising_energy
from samplers._resume import resume_tempering
from samplers._schedule import (
    ScheduleResult,
    ScheduleRound,
    communication_barrier,
    equalise_ladder,
    optimise_schedule,
    suggest_num_replicas,
)
from samplers._spins import (
    GibbsInfo,
    MetropolisInfo,
    SpinState,
    block_gibbs,
    check_spin_energy,
    metropolis,
)
from samplers._tempering import (
    TemperingInfo,
    TemperingState,
    geometric_ladder,
    parallel_tempering,
    swap_acceptance,
)

__all__ = [
    "CollapsedGibbsInfo",
    "CollapsedSpinState",
    "GaussianReference",
    "GibbsInfo",
    "HMCInfo",
    "HMCState",
    "Kernel",
    "LayeredSpinState",
    "MeanDiagnostics",
    "MetropolisInfo",
    "NonFiniteEnergyError",
    "ScheduleResult",
    "ScheduleRound",
    "SpinReference",
    "SpinState",
    "TemperingInfo",
    "TemperingState",
    "Trace",
    "anneal",
    "batch_window",
    "block_gibbs",
    "check_finite",
    "check_schedule",
    "check_spin_energy",
    "communication_barrier",
    "effective_components",
    "enumerate_spins",
    "equalise_ladder",
    "ess_bulk",
    "ess_mean_many",
    "ess_tail",
    "gaussian_reference",
    "geometric_ladder",
    "geometric_schedule",
    "gradient_inference_data",
    "hmc",
    "layered_collapsed_gibbs",
    "layered_gibbs",
    "layered_ising_energy",
    "linear_schedule",
    "load_inference_data",
    "mcse_mean",
    "mcse_mean_many",
    "mean_diagnostics_many",
    "metropolis",
    "nuts",
    "optimise_schedule",
    "parallel_tempering",
    "resume_tempering",
    "rhat",
    "rhat_rank_many",
    "rhat_split_many",
    "sample",
    "save_inference_data",
    "save_rank_plot",
    "save_trace_plot",
    "series_inference_data",
    "spin_log_probabilities",
    "spin_states",
    "suggest_num_replicas",
    "summary",
    "summary_table",
    "swap_acceptance",
    "to_inference_data",
]
