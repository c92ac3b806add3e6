r"""Temperature sweeps: thermal gradient estimators across a grid of temperatures and seeds.

:func:`temperature_sweep` runs the chosen estimators (covariance, nudged at any β, one-sided or
symmetric, named by :mod:`thermoeqprop.registry`; or any thermal estimator, classical or
quantum, given as such or as a factory of the temperature) at every temperature and seed and
returns an :class:`xarray.Dataset` with dims ``(estimator, temperature, seed, parameter)``.
Every sampled gradient comes with its Monte Carlo standard error (MCSE, from the effective
sample size of its per-draw series, or as the estimator reports it), and is compared with
every exact answer that exists (docs/mathematics.md#exact-thermal-references):

- the exact thermal gradient :math:`dL_T/dθ` (spin networks up to 20 spins by enumeration, the
  quadratic network in closed form, qubit networks by ``jax.grad`` through ``expm`` of the
  density matrix), and the exact *expectation of each named estimator*: the
  gradient itself for the covariance estimator, the finite-β difference
  :math:`[∂_θA(β) − ∂_θA(−β)]/2β` for the nudged one, so that an error splits into the
  estimator's bias (deterministic, O(β²) or O(β)) and its Monte Carlo error (the z-scores);
- the T = 0 EP gradient (implicit differentiation at the free minimum, continuous models),
  with which the thermal gradient must align as T → 0 (``cosine_zero_temperature``).

With ``tempering=True`` ONE parallel-tempering run whose ladder is the temperature grid serves
every temperature: each rung's draws give that temperature's estimate (one run per nudge sign
for nudged estimators). Sampling cost per temperature is then the same as a plain sweep's, but
the low temperatures profit from the replica exchange. The Dataset then also holds the
ladder's per-pair swap rates (``swap_probability``, ``swap_rate``), the local communication
barrier ``local_barrier`` λ over the pair midpoints ``pair_temperature``, the cumulative
``cumulative_barrier`` Λ(β) at every rung and the global barrier ``global_barrier`` Λ, per
estimator and seed (:mod:`thermoeqprop._barrier`); a sweep without tempering has none of them.

With ``results_dir`` the sweep is resumable: it saves one *unit* at a time (a temperature, or
with tempering a seed, since one run covers the whole grid), atomically, and a re-run skips the
finished units. Keys derive from (seed, estimator, temperature index) alone, so a resumed sweep
equals an uninterrupted one bit for bit (wall times aside).

With ``client`` (a ``dask.distributed.Client``, ``"local:N"`` or a scheduler's address) the
sweep runs on Dask: one task per (estimator, seed, temperature), or per tempered run, each
saved under ``tasks/`` as it arrives and folded into its unit's part once the unit is complete;
a task whose worker dies runs again elsewhere, and the Dataset is the serial one
(docs/dask.md).

Results folder::

    config.json        what was swept (checked on resume), and the "environment" of the
                       invocation that wrote it (versions, not checked; backend and
                       device count, which a resume must match)
    parts/UNIT.nc      one Dataset per finished unit (T003.nc, or seed001.nc with tempering)
    series/UNIT_EST.nc ArviZ InferenceData of the per-draw gradient series (for ``diagnose``)
    sweep.nc           the Dataset of every finished unit, rewritten after each one
    tasks/NAME.npz     on Dask: finished tasks of units not yet complete
"""

from __future__ import annotations

from thermoeqprop.sweep._folder import load_sweep, save_sweep
from thermoeqprop.sweep._run import temperature_sweep
from thermoeqprop.sweep._spec import (
    ESTIMATOR_KINDS,
    EstimatorSpec,
    GivenEstimator,
    has_exact_reference,
    matched_budgets,
    parse_estimator,
)

__all__ = [
    "ESTIMATOR_KINDS",
    "EstimatorSpec",
    "GivenEstimator",
    "has_exact_reference",
    "load_sweep",
    "matched_budgets",
    "parse_estimator",
    "save_sweep",
    "temperature_sweep",
]
