r"""Temperature sweeps: thermal gradient estimators across a grid of temperatures and seeds.

:func:`temperature_sweep` runs the chosen estimators (covariance, nudged at any β, one-sided or
symmetric) at every temperature and seed and returns an :class:`xarray.Dataset` with dims
``(estimator, temperature, seed, parameter)``. Every sampled gradient comes with its Monte Carlo
standard error (MCSE, from the effective sample size of its per-draw series), and is compared
with every exact answer that exists (docs/mathematics.md#exact-thermal-references):

- the exact thermal gradient :math:`dL_T/dθ` (spin networks up to 20 spins by enumeration, the
  quadratic network in closed form), and the exact *expectation of each estimator*: the
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

Results folder::

    config.json        what was swept (checked on resume), and the "environment" of the
                       invocation that wrote it (versions, device count; not checked)
    parts/UNIT.nc      one Dataset per finished unit (T003.nc, or seed001.nc with tempering)
    series/UNIT_EST.nc ArviZ InferenceData of the per-draw gradient series (for ``diagnose``)
    sweep.nc           the Dataset of every finished unit, rewritten after each one
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import xarray as xr
from jax.flatten_util import ravel_pytree

import samplers
import thermoeqprop
from thermoeqprop._barrier import BarrierTable, describe_barrier, joinable_parts, ladder_barrier
from thermoeqprop._provenance import ENVIRONMENT_KEY, run_environment
from thermoeqprop._runs import describe, write_atomic
from thermoeqprop._validation import check_positive
from thermoeqprop.estimators.thermal import (
    MAX_ENUMERATED_SPINS,
    Sampling,
    ThermalCovariance,
    ThermalExact,
    ThermalNudged,
    draw_states,
    parameter_names,
    series_window,
)
from thermoeqprop.estimators.zero_temperature import ImplicitDifferentiation
from thermoeqprop.models._base import EnergyModel
from thermoeqprop.models.quadratic import QuadraticNetwork

__all__ = [
    "ESTIMATOR_KINDS",
    "EstimatorSpec",
    "has_exact_reference",
    "load_sweep",
    "matched_budgets",
    "parse_estimator",
    "save_sweep",
    "temperature_sweep",
]

ESTIMATOR_KINDS = ("covariance", "nudged", "nudged-one-sided")
DEFAULT_SERIES_PARAMETERS = 64
DEFAULT_SAMPLING = Sampling()
NETCDF_ENGINE = "h5netcdf"
SAMPLER_STATISTICS = (
    "acceptance_rate",
    "flip_rate",
    "divergences",
    "mean_integration_steps",
    "swap_rate_min",
    "round_trips",
)


@dataclasses.dataclass(frozen=True)
class EstimatorSpec:
    """One estimator of a sweep.

    Attributes:
        label: Canonical name, the sweep's ``estimator`` coordinate: ``"covariance"``,
            ``"nudged:0.1"`` (symmetric, β = 0.1) or ``"nudged-one-sided:0.1"``.
        kind: One of :data:`ESTIMATOR_KINDS`.
        beta: Nudging strength (NaN for the covariance estimator).
    """

    label: str
    kind: str
    beta: float

    @property
    def symmetric(self) -> bool:
        return self.kind == "nudged"

    def build(self, model: EnergyModel, temperature: float, sampling: Sampling):
        if self.kind == "covariance":
            return ThermalCovariance(model, temperature, sampling)
        return ThermalNudged(model, temperature, self.beta, self.symmetric, sampling)


def parse_estimator(spec: str, beta: float = 0.1) -> EstimatorSpec:
    """Parse ``"covariance"``, ``"nudged"``, ``"nudged:0.05"``, ``"nudged-one-sided[:β]"``.

    A nudged estimator without ``:β`` takes ``beta``.

    Example:
        >>> parse_estimator("nudged", 0.2).label, parse_estimator("nudged-one-sided:0.05").beta
        ('nudged:0.2', 0.05)
    """
    if not isinstance(spec, str):
        raise ValueError(f"an estimator must be named by a string, got {spec!r}")
    kind, _, value = spec.strip().partition(":")
    if kind not in ESTIMATOR_KINDS:
        raise ValueError(
            f"unknown estimator {spec!r}; valid: {list(ESTIMATOR_KINDS)}, nudged ones "
            "optionally with their β as 'nudged:0.05'"
        )
    if kind == "covariance":
        if value:
            raise ValueError(f"the covariance estimator takes no β, got {spec!r}")
        return EstimatorSpec("covariance", kind, math.nan)
    if value:
        try:
            beta = float(value)
        except ValueError:
            raise ValueError(f"estimator {spec!r}: β {value!r} is not a number") from None
    beta = check_positive(f"beta of estimator {spec!r}", beta)
    return EstimatorSpec(f"{kind}:{beta:g}", kind, beta)


def matched_budgets(
    estimators: Sequence[str], sampling: Sampling, beta: float = 0.1
) -> dict[str, Sampling]:
    """Sampler settings giving every estimator the same number of sampler steps per example.

    The covariance estimator samples one phase; nudged ones sample two. An estimator with
    fewer phases gets proportionally more draws and warm-up steps, so that
    phases × chains × (warm-up + draws) is the same for all.

    Example:
        >>> budgets = matched_budgets(["covariance", "nudged"], Sampling(num_samples=100))
        >>> budgets["covariance"].num_samples, budgets["nudged"].num_samples
        (200, 100)
    """
    specs = [parse_estimator(name, beta) for name in estimators]
    phases = {spec.label: 1 if spec.kind == "covariance" else 2 for spec in specs}
    most = max(phases.values())
    out = {}
    for name, spec in zip(estimators, specs, strict=True):
        factor = most // phases[spec.label]
        out[name] = dataclasses.replace(
            sampling,
            num_samples=sampling.num_samples * factor,
            num_warmup=sampling.num_warmup * factor,
        )
    return out


def _check_temperatures(temperatures) -> np.ndarray:
    try:
        t = np.asarray(temperatures, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"temperatures must be numbers, got {temperatures!r}") from None
    if t.size == 0:
        raise ValueError("temperatures is empty; give at least one temperature")
    if not np.all(np.isfinite(t)) or np.any(t <= 0):
        raise ValueError(f"temperatures must be finite and > 0, got {t.tolist()}")
    if np.unique(t).size != t.size:
        raise ValueError(f"temperatures must be distinct, got {t.tolist()}")
    return np.sort(t)


def _check_seeds(seeds) -> list[int]:
    seeds = [seeds] if isinstance(seeds, int | np.integer) else list(seeds)
    if not seeds:
        raise ValueError("seeds is empty; give at least one seed")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int | np.integer) or s < 0:
            raise ValueError(f"seeds must be integers ≥ 0, got {s!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    return [int(s) for s in seeds]


def _check_sampling(sampling, specs, raw_names) -> dict[str, Sampling]:
    if isinstance(sampling, Sampling):
        chosen = {spec.label: sampling for spec in specs}
    elif isinstance(sampling, Mapping):
        known = set(raw_names) | {spec.label for spec in specs}
        unknown = sorted(str(k) for k in sampling if k not in known)
        if unknown:
            raise ValueError(
                f"sampling names estimators {unknown} that the sweep does not run; its "
                f"estimators are {raw_names}"
            )
        chosen = {}
        for spec, raw in zip(specs, raw_names, strict=True):
            value = sampling.get(raw, sampling.get(spec.label))
            if value is None:
                raise ValueError(
                    f"sampling has no entry for estimator {raw!r}; give one per estimator "
                    f"(keys {raw_names}) or a single Sampling"
                )
            chosen[spec.label] = value
    else:
        raise ValueError(f"sampling must be a Sampling or a mapping, got {type(sampling).__name__}")
    for label, value in chosen.items():
        if not isinstance(value, Sampling):
            raise ValueError(f"sampling for {label!r} must be a Sampling, got {value!r}")
        if value.target_relative_stderr is not None:
            raise ValueError(
                "a sweep compares estimators at a fixed budget: target_relative_stderr must be "
                f"None, got {value.target_relative_stderr!r} for {label!r}; set num_samples"
            )
    return chosen


def has_exact_reference(model: EnergyModel) -> bool:
    """Whether :class:`ThermalExact` applies (quadratic network, or ≤ 20 spins)."""
    if isinstance(model, QuadraticNetwork):
        return True
    return bool(model.is_spin and model.state_size <= MAX_ENUMERATED_SPINS)


def _series_indices(names: list[str], selection) -> np.ndarray:
    num = len(names)
    if selection is None:
        selection = DEFAULT_SERIES_PARAMETERS
    if isinstance(selection, int | np.integer) and not isinstance(selection, bool):
        if selection < 1:
            raise ValueError(f"series_parameters must be ≥ 1, got {selection}")
        if selection >= num:
            return np.arange(num)
        return np.unique(np.linspace(0, num - 1, int(selection)).round().astype(int))
    lookup = {name: i for i, name in enumerate(names)}
    indices = []
    for item in selection:
        if isinstance(item, str):
            if item not in lookup:
                raise ValueError(
                    f"series parameter {item!r} is not a parameter name; names look like "
                    f"{names[:3]}"
                )
            indices.append(lookup[item])
        elif isinstance(item, int | np.integer) and 0 <= item < num:
            indices.append(int(item))
        else:
            raise ValueError(f"series parameter {item!r} must be a name or an index < {num}")
    return np.asarray(sorted(set(indices)), dtype=int)


def _fingerprint(*arrays) -> str:
    digest = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a, dtype=np.float64))
        digest.update(str(a.shape).encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]", "_", label)


def _unit_key(seed: int, label: str, index: int) -> jax.Array:
    key = jax.random.fold_in(jax.random.key(seed), zlib.crc32(label.encode()) & 0x7FFFFFFF)
    return jax.random.fold_in(key, index)


def _record_from_estimate(estimate, series, wall_time, num_steps) -> dict[str, Any]:
    grad, _ = ravel_pytree(estimate.grad)
    stderr, _ = ravel_pytree(estimate.stderr)
    gradient_series = np.asarray(series.gradient)
    stats = {
        name: float(estimate.diagnostics[name])
        for name in SAMPLER_STATISTICS
        if name in estimate.diagnostics
    }
    return dict(
        gradient=np.asarray(grad),
        stderr=np.asarray(stderr),
        loss=float(estimate.loss),
        loss_stderr=float(estimate.loss_stderr),
        ess=series.ess,
        rhat=series.rhat,
        series=gradient_series,
        cost_series=np.asarray(series.cost),
        wall_time=wall_time,
        num_steps=num_steps,
        **stats,
    )


def _ladder_trace(model, sampling, params, x, targets, beta, ladder, rng_key):
    """One parallel-tempering run whose ladder is ``ladder`` (the sweep's temperature grid)."""
    ladder = np.asarray(ladder, dtype=float)
    return draw_states(model, sampling, params, x, targets, beta, ladder, rng_key).trace


def _rung_statistics(traces, rung: int) -> dict[str, float]:
    """Sampler facts at one rung of tempered runs (means over phases; divergences summed)."""
    out: dict[str, float] = {}
    fields = {
        "acceptance_rate": "acceptance_rate",
        "flip_rate": "flip_rate",
        "is_divergent": "divergences",
        "num_integration_steps": "mean_integration_steps",
    }
    for field, name in fields.items():
        values = [
            np.asarray(getattr(t.info.local, field))[..., rung]
            for t in traces
            if hasattr(t.info.local, field)
        ]
        if values:
            if name == "divergences":
                out[name] = float(np.sum([v.sum() for v in values]))
            else:
                out[name] = float(np.mean([v.mean() for v in values]))
    swap = [np.asarray(t.info.swap_probability).mean(axis=(0, 1, 2)) for t in traces]
    out["swap_rate_min"] = float(np.min(swap))
    out["round_trips"] = float(np.mean([np.asarray(t.info.round_trips)[..., -1] for t in traces]))
    return out


def _tempered_records(spec, model, sampling, params, x, targets, ladder, rng_key):
    """Records at every rung from one tempered run per phase of the estimator, and the
    ladder's swap rates and communication barrier (:func:`thermoeqprop._barrier.ladder_barrier`)."""
    estimator = spec.build(model, float(ladder[0]), sampling)
    tic = time.perf_counter()
    traces = [
        _ladder_trace(
            model, sampling, params, x, targets, beta, ladder, jax.random.fold_in(rng_key, k)
        )
        for k, beta in enumerate(estimator.phases())
    ]
    jax.block_until_ready([t.samples for t in traces])
    records = []
    for rung, temperature in enumerate(ladder):
        # The rung's own T and each phase's β: Rao–Blackwellised statistics depend on both.
        rung_estimator = dataclasses.replace(estimator, temperature=float(temperature))
        stats = [
            rung_estimator.statistics(params, t.samples[:, :, :, rung, :], x, targets, beta)
            for t, beta in zip(traces, estimator.phases(), strict=True)
        ]
        combined = rung_estimator.combine(stats)
        records.append(
            dict(
                gradient=np.asarray(combined.grad),
                stderr=np.asarray(combined.stderr),
                loss=float(combined.loss),
                loss_stderr=float(combined.loss_stderr),
                ess=np.asarray(combined.ess),
                rhat=np.asarray(combined.rhat),
                series=np.asarray(combined.series),
                cost_series=np.mean([np.asarray(s.cost) for s in stats], axis=0),
                num_steps=len(traces)
                * sampling.num_chains
                * (sampling.num_warmup + sampling.num_samples),
                **_rung_statistics(traces, rung),
            )
        )
    # One run serves every rung: its time is shared equally among them.
    wall = (time.perf_counter() - tic) / len(ladder)
    for record in records:
        record["wall_time"] = wall
    return records, ladder_barrier(ladder, traces)


@dataclasses.dataclass
class _Plan:
    model: EnergyModel
    params: Any
    x: jax.Array
    targets: jax.Array
    temperatures: np.ndarray
    specs: list[EstimatorSpec]
    seeds: list[int]
    sampling: dict[str, Sampling]
    tempering: bool
    names: list[str]
    series_indices: np.ndarray

    def units(self) -> list[tuple[str, list[int], list[int]]]:
        """(name, temperature indices, seed indices) of every unit of work."""
        all_t = list(range(len(self.temperatures)))
        all_s = list(range(len(self.seeds)))
        if self.tempering:
            return [(f"seed{j:03d}", all_t, [j]) for j in all_s]
        return [(f"T{i:03d}", [i], all_s) for i in all_t]


def _run_unit(plan: _Plan, t_idx, s_idx, advance) -> tuple[xr.Dataset, dict[str, Any]]:
    """Estimates for one unit: a Dataset part and the gradient series per estimator."""
    num_e, num_t, num_s, num_p = len(plan.specs), len(t_idx), len(s_idx), len(plan.names)
    temps = plan.temperatures[t_idx]
    scalar_names = ("loss", "loss_stderr", "wall_time", "num_steps", *SAMPLER_STATISTICS)
    vectors = {n: np.full((num_e, num_t, num_s, num_p), np.nan) for n in ("gradient", "stderr")}
    vectors |= {n: np.full((num_e, num_t, num_s, num_p), np.nan) for n in ("ess", "rhat")}
    scalars = {n: np.full((num_e, num_t, num_s), np.nan) for n in scalar_names}
    series: dict[str, Any] = {}
    barrier = BarrierTable(num_e, num_s, temps) if plan.tempering else None
    for e, spec in enumerate(plan.specs):
        sampling = plan.sampling[spec.label]
        # Long runs keep window means of consecutive draws (thermal.series_window).
        entries = sampling.num_samples // series_window(
            sampling.num_samples, sampling.num_chains, num_p
        )
        grads = np.full(
            (sampling.num_chains, entries, num_t, num_s, len(plan.series_indices)), np.nan
        )
        costs = np.full((sampling.num_chains, entries, num_t, num_s), np.nan)
        for js, s in enumerate(s_idx):
            seed = plan.seeds[s]
            if plan.tempering:
                records, pairs = _tempered_records(
                    spec, plan.model, sampling, plan.params, plan.x, plan.targets, temps,
                    _unit_key(seed, spec.label, 0),
                )  # fmt: skip
                barrier.put(e, js, pairs)
                advance(len(records))
            else:
                records = []
                for t in t_idx:
                    estimator = spec.build(plan.model, float(plan.temperatures[t]), sampling)
                    tic = time.perf_counter()
                    estimate, drawn = estimator.estimate_with_series(
                        plan.params, plan.x, plan.targets, _unit_key(seed, spec.label, t)
                    )
                    wall = time.perf_counter() - tic
                    steps = (
                        len(estimator.phases())
                        * sampling.num_chains
                        * (sampling.num_warmup + sampling.num_samples)
                    )
                    records.append(_record_from_estimate(estimate, drawn, wall, steps))
                    advance(1)
            for jt, record in enumerate(records):
                for name in vectors:
                    vectors[name][e, jt, js] = record[name]
                for name in scalars:
                    scalars[name][e, jt, js] = record.get(name, np.nan)
                grads[:, :, jt, js] = record["series"][:, :, plan.series_indices]
                costs[:, :, jt, js] = record["cost_series"]
        series[spec.label] = (grads, costs)
    dims4 = ("estimator", "temperature", "seed", "parameter")
    dims3 = dims4[:3]
    part = xr.Dataset(
        {name: (dims4, value) for name, value in vectors.items()}
        | {name: (dims3, value) for name, value in scalars.items()},
        coords={
            "estimator": [spec.label for spec in plan.specs],
            "temperature": temps,
            "seed": [plan.seeds[s] for s in s_idx],
            "parameter": plan.names,
        },
    )
    if barrier is not None:
        part = barrier.add_to(part)
    return part, series


def _references(plan: _Plan) -> xr.Dataset:
    """Exact thermal gradients and the T = 0 EP gradient, where they exist."""
    ref = xr.Dataset(
        coords={
            "estimator": [s.label for s in plan.specs],
            "temperature": plan.temperatures,
            "parameter": plan.names,
        }
    )
    num_p = len(plan.names)
    if has_exact_reference(plan.model):
        exact_grad = np.empty((len(plan.temperatures), num_p))
        exact_loss = np.empty(len(plan.temperatures))
        expected = np.empty((len(plan.specs), len(plan.temperatures), num_p))
        for i, t in enumerate(plan.temperatures):
            exact = ThermalExact(plan.model, float(t))
            result = exact(plan.params, plan.x, plan.targets)
            exact_grad[i] = ravel_pytree(result.grad)[0]
            exact_loss[i] = float(result.loss)
            for e, spec in enumerate(plan.specs):
                if spec.kind == "covariance":
                    expected[e, i] = exact_grad[i]
                    continue
                high = exact.nudged_energy_grad(plan.params, plan.x, plan.targets, spec.beta)
                low_beta = -spec.beta if spec.symmetric else 0.0
                low = exact.nudged_energy_grad(plan.params, plan.x, plan.targets, low_beta)
                scale = 2 * spec.beta if spec.symmetric else spec.beta
                expected[e, i] = (ravel_pytree(high)[0] - ravel_pytree(low)[0]) / scale
        ref["exact_gradient"] = (("temperature", "parameter"), exact_grad)
        ref["exact_loss"] = (("temperature",), exact_loss)
        ref["expected_gradient"] = (("estimator", "temperature", "parameter"), expected)
    if not plan.model.is_spin:
        zero = ImplicitDifferentiation(plan.model)(plan.params, plan.x, plan.targets)
        ref["zero_temperature_gradient"] = (("parameter",), np.asarray(ravel_pytree(zero.grad)[0]))
        ref["zero_temperature_loss"] = ((), float(zero.loss))
        ref["zero_temperature_min_hessian_eigenvalue"] = (
            (),
            float(zero.diagnostics["min_hessian_eigenvalue"]),
        )
    return ref


def _norm(a: xr.DataArray) -> xr.DataArray:
    return np.sqrt((a**2).sum("parameter", skipna=False))


def _cosine(a: xr.DataArray, b: xr.DataArray) -> xr.DataArray:
    return (a * b).sum("parameter") / (_norm(a) * _norm(b))


DESCRIPTIONS = {
    "gradient": "sampled estimate of dL_T/dθ, L_T = <C>_0 (batch mean)",
    "stderr": "Monte Carlo standard error of gradient (from the ESS of its per-draw series)",
    "loss": "sampled <C> (covariance: free phase; symmetric nudged: mean of the ±β phases)",
    "loss_stderr": "Monte Carlo standard error of loss",
    "ess": "effective sample size of the mean of the per-draw gradient series (NaN: constant)",
    "rhat": "split R-hat of the per-draw gradient series (NaN: constant)",
    "ess_min": "smallest ess over parameters",
    "rhat_max": "largest rhat over parameters",
    "wall_time": "seconds for the estimate (a tempered run's time is shared by its rungs; "
    "the first estimate of a configuration includes compilation)",
    "num_steps": "sampler steps per example: phases × chains × (warm-up + draws)",
    "acceptance_rate": "mean acceptance probability (HMC/NUTS, Metropolis)",
    "flip_rate": "mean fraction of spins flipped per block-Gibbs sweep",
    "divergences": "number of divergent HMC/NUTS transitions",
    "mean_integration_steps": "mean leapfrog steps per HMC/NUTS draw",
    "swap_rate_min": "smallest mean swap probability over the tempering ladder's pairs",
    "round_trips": "mean completed replica round trips per chain (tempering)",
    "exact_gradient": "exact dL_T/dθ (enumeration or Gaussian closed form)",
    "exact_loss": "exact <C>_0",
    "expected_gradient": "exact expectation of the estimator: dL_T/dθ for covariance, the "
    "finite-β difference of exact <∂θE>_β for nudged",
    "bias": "expected_gradient − exact_gradient (the nudged estimator's finite-β bias)",
    "error": "gradient − exact_gradient",
    "error_norm": "‖gradient − exact_gradient‖ over parameters",
    "relative_error": "error_norm / ‖exact_gradient‖",
    "stderr_norm": "‖stderr‖ over parameters",
    "relative_stderr": "stderr_norm / ‖exact_gradient‖ (or / ‖gradient‖ without reference)",
    "z_score": "(gradient − expected_gradient) / stderr: Monte Carlo error in units of MCSE",
    "z_rms": "root mean square of z_score over parameters (≈ 1 for honest MCSEs)",
    "loss_error": "loss − exact_loss",
    "zero_temperature_gradient": "T = 0 EP gradient (implicit differentiation)",
    "zero_temperature_loss": "C(s*) at the free minimum",
    "zero_temperature_min_hessian_eigenvalue": "smallest Hessian eigenvalue at the free minimum",
    "cosine_zero_temperature": "cosine between gradient and the T = 0 EP gradient",
    "exact_cosine_zero_temperature": "cosine between exact_gradient and the T = 0 EP gradient",
}


def _finalise(parts: list[xr.Dataset], reference: xr.Dataset, plan: _Plan, attrs) -> xr.Dataset:
    """Join finished parts, add references and everything derived from them."""
    dim = "seed" if plan.tempering else "temperature"
    ds = xr.concat(
        joinable_parts(parts), dim=dim, data_vars="all", coords="different", compat="equals"
    )
    ds = ds.sortby(dim)
    reference = reference.sel(temperature=ds.temperature)
    ds = xr.merge([ds, reference], join="left", compat="no_conflicts")
    ds["ess_min"] = ds.ess.min("parameter")
    ds["rhat_max"] = ds.rhat.max("parameter")
    ds["stderr_norm"] = _norm(ds.stderr)
    if "exact_gradient" in ds:
        ds["error"] = ds.gradient - ds.exact_gradient
        ds["error_norm"] = _norm(ds.error)
        scale = _norm(ds.exact_gradient)
        ds["relative_error"] = ds.error_norm / scale
        ds["relative_stderr"] = ds.stderr_norm / scale
        ds["bias"] = ds.expected_gradient - ds.exact_gradient
        safe = ds.stderr.where(ds.stderr > 0)
        ds["z_score"] = (ds.gradient - ds.expected_gradient) / safe
        ds["z_rms"] = np.sqrt((ds.z_score**2).mean("parameter"))
        ds["loss_error"] = ds.loss - ds.exact_loss
    else:
        ds["relative_stderr"] = ds.stderr_norm / _norm(ds.gradient)
    if "zero_temperature_gradient" in ds:
        ds["cosine_zero_temperature"] = _cosine(ds.gradient, ds.zero_temperature_gradient)
        if "exact_gradient" in ds:
            ds["exact_cosine_zero_temperature"] = _cosine(
                ds.exact_gradient, ds.zero_temperature_gradient
            )
    ds = ds.assign_coords(
        beta=("estimator", [s.beta for s in plan.specs]),
        symmetric=("estimator", [int(s.symmetric) for s in plan.specs]),
    )
    for name, text in DESCRIPTIONS.items():
        if name in ds:
            ds[name].attrs["description"] = text
    describe_barrier(ds)
    ds.temperature.attrs["units"] = "energy units (k_B = 1)"
    ds.attrs.update(attrs)
    ds.attrs["complete"] = int(
        ds.sizes["temperature"] == len(plan.temperatures) and ds.sizes["seed"] == len(plan.seeds)
    )
    return ds


def save_sweep(dataset: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write a sweep Dataset as netCDF (h5netcdf engine), atomically."""
    path = Path(path)
    data = bytes(dataset.to_netcdf(engine=NETCDF_ENGINE))
    write_atomic(path, lambda handle: handle.write(data))
    return path


def load_sweep(path: str | os.PathLike) -> xr.Dataset:
    """Read a sweep Dataset written by :func:`save_sweep` (fully into memory)."""
    path = Path(path)
    if path.is_dir():
        path = path / "sweep.nc"
    if not path.is_file():
        raise ValueError(f"no sweep file at {str(path)!r}; run a sweep there first")
    try:
        return xr.load_dataset(path, engine=NETCDF_ENGINE)
    except Exception as exc:  # h5py/OSError/ValueError all mean an unreadable file
        raise ValueError(
            f"sweep file {str(path)!r} is truncated or corrupted ({type(exc).__name__}); "
            "delete it and re-run the sweep to recompute it"
        ) from None


def _prepare_folder(folder: Path, record: dict[str, Any], checked: set[str]) -> None:
    try:
        (folder / "parts").mkdir(parents=True, exist_ok=True)
        (folder / "series").mkdir(exist_ok=True)
        probe = folder / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ValueError(
            f"results folder {str(folder)!r} is not writable ({exc.strerror}); choose a folder "
            "you can write to"
        ) from None
    config_path = folder / "config.json"
    if config_path.exists():
        previous = json.loads(config_path.read_text())
        if previous.get("kind") != "temperature_sweep":
            raise ValueError(
                f"results folder {str(folder)!r} holds a run that is not a temperature sweep; "
                "choose another folder"
            )
        differ = sorted(k for k in checked if previous.get(k) != record.get(k))
        if differ:
            raise ValueError(
                f"results folder {str(folder)!r} holds a sweep with a different configuration "
                f"({', '.join(differ)} differ); resume with the same settings or choose another "
                "folder"
            )
    text = json.dumps(record, indent=2).encode()
    write_atomic(config_path, lambda handle: handle.write(text))


def _load_part(path: Path) -> xr.Dataset:
    try:
        return xr.load_dataset(path, engine=NETCDF_ENGINE)
    except Exception as exc:
        raise ValueError(
            f"saved sweep part {str(path)!r} is unreadable ({type(exc).__name__}); delete it "
            "to recompute that part"
        ) from None


def _save_series(folder: Path, unit: str, plan: _Plan, part: xr.Dataset, series) -> None:

    names = [plan.names[i] for i in plan.series_indices]
    for spec in plan.specs:
        grads, costs = series[spec.label]
        idata = samplers.gradient_inference_data(
            grads,
            costs,
            names,
            temperatures=part.temperature.values,
            seeds=part.seed.values,
            attrs={
                "estimator": spec.label,
                "beta": spec.beta,
                "unit": unit,
                "model": type(plan.model).__name__,
            },
        )
        samplers.save_inference_data(idata, folder / "series" / f"{unit}_{_slug(spec.label)}.nc")


def temperature_sweep(
    model: EnergyModel,
    params,
    x,
    targets,
    temperatures: Sequence[float],
    *,
    estimators: Sequence[str] | str = ("covariance", "nudged"),
    seeds: Sequence[int] | int = (0, 1),
    beta: float = 0.1,
    sampling: Sampling | Mapping[str, Sampling] = DEFAULT_SAMPLING,
    tempering: bool = False,
    series_parameters: int | Sequence[str | int] | None = None,
    results_dir: str | os.PathLike | None = None,
    progress: bool = False,
    callback: Callable[[str, xr.Dataset], None] | None = None,
    extra_config: dict[str, Any] | None = None,
) -> xr.Dataset:
    r"""Run thermal gradient estimators across temperatures and seeds.

    Args:
        model: A spin, quadratic or smooth layered network.
        params: Its parameters (a pytree).
        x: Inputs (batch, num_inputs).
        targets: Targets (batch, num_outputs).
        temperatures: The grid, T > 0 (sorted increasingly in the result).
        estimators: Names, see :func:`parse_estimator`: ``"covariance"``, ``"nudged"``,
            ``"nudged:0.05"``, ``"nudged-one-sided"``…
        seeds: Seeds; the key of each estimate derives from (seed, estimator, temperature).
        beta: β of nudged estimators named without one.
        sampling: Sampler settings, one for all estimators or a mapping from the names in
            ``estimators`` to settings (for example twice the draws for the covariance
            estimator, which samples one phase where the symmetric nudged one samples two).
            ``target_relative_stderr`` must be None: a sweep runs at a fixed budget.
        tempering: Run ONE parallel-tempering chain per seed (and nudge sign) whose ladder is
            the temperature grid, and read every temperature's estimate from its rung (needs
            at least two temperatures and ``sampling.tempering == 0``).
        series_parameters: Which gradient components' per-draw series are saved for ArviZ
            diagnostics: a count (evenly spaced over the raveled parameters; default 64, all
            for smaller models) or names/indices.
        results_dir: Folder to save into and resume from (see the module docstring).
        progress: Show a progress bar.
        callback: Called as ``callback(unit, part)`` after each unit is finished (and saved).
        extra_config: More JSON-friendly facts for ``config.json`` (not checked on resume).

    Returns:
        A Dataset with dims ``(estimator, temperature, seed, parameter)``; each variable's
        ``description`` attribute says what it is (``gradient``, ``stderr``, ``loss``,
        ``exact_gradient``, ``z_score``, ``cosine_zero_temperature``, ``rhat``, ``ess``…).
        With ``tempering``, also the ladder's swap rates and communication barrier:
        ``swap_probability``, ``swap_rate``, ``local_barrier`` (dims ``(estimator,
        pair_temperature, seed)``), ``cumulative_barrier`` ``(estimator, temperature, seed)``
        and ``global_barrier`` ``(estimator, seed)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from thermoeqprop.models import QuadraticNetwork
        >>> net = QuadraticNetwork((2, 2, 1))
        >>> ds = temperature_sweep(net, net.init_params(jax.random.key(0)), jnp.ones((2, 2)),
        ...     jnp.ones((2, 1)), [0.1, 1.0], seeds=[0],
        ...     sampling=Sampling(num_chains=2, num_samples=50, num_warmup=50))
        >>> ds.gradient.dims, ds.sizes["parameter"]
        (('estimator', 'temperature', 'seed', 'parameter'), 9)
    """
    if not isinstance(model, EnergyModel):
        raise ValueError(f"model must be an EnergyModel, got {type(model).__name__}")
    temps = _check_temperatures(temperatures)
    seed_list = _check_seeds(seeds)
    raw = [estimators] if isinstance(estimators, str) else list(estimators)
    if not raw:
        raise ValueError("estimators is empty; choose from " + str(list(ESTIMATOR_KINDS)))
    specs = [parse_estimator(name, beta) for name in raw]
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"estimators name the same estimator twice: {labels}")
    chosen = _check_sampling(sampling, specs, raw)
    if tempering:
        if len(temps) < 2:
            raise ValueError(
                f"tempering needs at least two temperatures (the ladder), got {temps.tolist()}"
            )
        for label, value in chosen.items():
            if value.tempering:
                raise ValueError(
                    f"with tempering=True the ladder is the temperature grid; sampling for "
                    f"{label!r} must have tempering=0, got {value.tempering}"
                )
    for spec in specs:  # validates model, sampler and β before any work
        spec.build(model, float(temps[0]), chosen[spec.label])
    x, targets = model.validate_inputs(x, targets)
    if isinstance(model, QuadraticNetwork):
        model.check_positive_definite(params)
    flat, _ = ravel_pytree(params)
    names = parameter_names(params)
    plan = _Plan(
        model, params, x, targets, temps, specs, seed_list, chosen, bool(tempering), names,
        _series_indices(names, series_parameters),
    )  # fmt: skip

    record = {
        "kind": "temperature_sweep",
        "model": describe(model),
        "temperatures": temps.tolist(),
        "estimators": labels,
        "seeds": seed_list,
        "sampling": {label: describe(value) for label, value in chosen.items()},
        "tempering": bool(tempering),
        "series_parameters": [names[i] for i in plan.series_indices],
        "data_sha256": _fingerprint(flat, x, targets),
    }
    checked = set(record)
    extra = dict(extra_config or {}) | {ENVIRONMENT_KEY: run_environment()}
    record = json.loads(json.dumps(record | extra))
    attrs = {
        "title": "thermoeqprop temperature sweep",
        "thermoeqprop_version": thermoeqprop.__version__,
        "model": type(model).__name__,
        "tempering": int(bool(tempering)),
        "config": json.dumps(record),
    }

    folder = Path(results_dir) if results_dir is not None else None
    if folder is not None:
        _prepare_folder(folder, record, checked)

    reference = _references(plan)
    units = plan.units()
    tasks_per_unit = [len(plan.specs) * len(t) * len(s) for _, t, s in units]
    parts: list[xr.Dataset] = []
    todo = []
    for unit, tasks in zip(units, tasks_per_unit, strict=True):
        saved = folder / "parts" / f"{unit[0]}.nc" if folder is not None else None
        if saved is not None and saved.exists():
            parts.append(_load_part(saved))
        else:
            todo.append((unit, tasks))

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(tasks_per_unit), initial=sum(tasks_per_unit) - sum(t for _, t in todo),
                   desc="sweep", unit="estimate")  # fmt: skip

    def advance(n: int) -> None:
        if bar is not None:
            bar.update(n)

    try:
        for (unit, t_idx, s_idx), _ in todo:
            part, series = _run_unit(plan, t_idx, s_idx, advance)
            parts.append(part)
            if folder is not None:
                _save_series(folder, unit, plan, part, series)
                save_sweep(part, folder / "parts" / f"{unit}.nc")
                save_sweep(_finalise(parts, reference, plan, attrs), folder / "sweep.nc")
            if callback is not None:
                callback(unit, part)
    finally:
        if bar is not None:
            bar.close()
    dataset = _finalise(parts, reference, plan, attrs)
    if folder is not None:
        save_sweep(dataset, folder / "sweep.nc")
    return dataset
