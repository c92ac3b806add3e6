"""The grid runner: every estimator at every temperature and seed of one unit of work."""

from __future__ import annotations

import dataclasses
import time
import zlib
from typing import Any

import jax
import numpy as np
import xarray as xr
from jax.flatten_util import ravel_pytree

from samplers import effective_components
from thermoeqprop._barrier import BarrierTable
from thermoeqprop._protocols import Model
from thermoeqprop.estimators.thermal import Sampling, _SampledEstimator
from thermoeqprop.sweep._spec import EstimatorSpec, GivenEstimator
from thermoeqprop.sweep._tempered import tempered_records

__all__ = ["SAMPLER_STATISTICS", "Plan", "assemble_unit", "run_unit", "task_records"]

SAMPLER_STATISTICS = (
    "acceptance_rate",
    "flip_rate",
    "divergences",
    "mean_integration_steps",
    "swap_rate_min",
    "round_trips",
    "control_variate_gain",
)


def _unit_key(seed: int, label: str, index: int) -> jax.Array:
    key = jax.random.fold_in(jax.random.key(seed), zlib.crc32(label.encode()) & 0x7FFFFFFF)
    return jax.random.fold_in(key, index)


def _record_from_estimate(estimate, series, wall_time, num_steps) -> dict[str, Any]:
    """One estimate's record; an estimate without a per-draw series (exact expectations, or
    shots) has NaN ``ess`` and ``rhat``, and an exact one a zero ``stderr``."""
    grad = np.asarray(ravel_pytree(estimate.grad)[0])
    if estimate.stderr is None:
        stderr, loss_stderr = np.zeros_like(grad), 0.0
    else:
        stderr = np.asarray(ravel_pytree(estimate.stderr)[0])
        loss_stderr = np.nan if estimate.loss_stderr is None else float(estimate.loss_stderr)
    stats = {
        name: float(estimate.diagnostics[name])
        for name in SAMPLER_STATISTICS
        if name in estimate.diagnostics
    }
    unknown = np.full_like(grad, np.nan)
    return dict(
        gradient=grad,
        stderr=stderr,
        loss=float(estimate.loss),
        loss_stderr=loss_stderr,
        ess=unknown if series is None else series.ess,
        rhat=unknown if series is None else series.rhat,
        series=None if series is None else np.asarray(series.gradient),
        cost_series=None if series is None else np.asarray(series.cost),
        wall_time=wall_time,
        num_steps=num_steps,
        **stats,
    )


def _num_steps(estimator) -> float:
    """Sampler steps per example of a sampled thermal estimator (NaN for any other)."""
    if not isinstance(estimator, _SampledEstimator):
        return np.nan
    sampling = estimator.sampling
    return (
        len(estimator.phases()) * sampling.num_chains * (sampling.num_warmup + sampling.num_samples)
    )


@dataclasses.dataclass
class Plan:
    model: Model
    params: Any
    x: jax.Array
    targets: jax.Array
    temperatures: np.ndarray
    specs: list[EstimatorSpec | GivenEstimator]
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


def task_records(plan: Plan, e: int, s: int, t_idx, advance=None):
    """The records of estimator ``e`` at seed index ``s`` and temperature indices ``t_idx``
    (one per temperature), and the tempering ladder's barrier (None without tempering).

    One call is one task of a distributed sweep (:mod:`thermoeqprop.sweep._dask`): a single
    temperature, or with tempering the run that serves the whole grid. Its keys derive from
    (seed, estimator, temperature index) alone, so where it runs changes nothing.
    """
    spec = plan.specs[e]
    sampling = plan.sampling.get(spec.label)  # None: an estimator given with its own
    seed = plan.seeds[s]
    if plan.tempering:
        records, pairs = tempered_records(
            spec, plan.model, sampling, plan.params, plan.x, plan.targets,
            plan.temperatures[list(t_idx)], _unit_key(seed, spec.label, 0),
        )  # fmt: skip
        if advance is not None:
            advance(len(records))
        return records, pairs
    records = []
    for t in t_idx:
        estimator = spec.build(plan.model, float(plan.temperatures[t]), sampling)
        tic = time.perf_counter()
        estimate, drawn = estimator.estimate_with_series(
            plan.params, plan.x, plan.targets, _unit_key(seed, spec.label, t)
        )
        jax.block_until_ready(estimate)
        wall = time.perf_counter() - tic
        steps = _num_steps(estimator)
        records.append(_record_from_estimate(estimate, drawn, wall, steps))
        if advance is not None:
            advance(1)
    return records, None


def run_unit(plan: Plan, t_idx, s_idx, advance) -> tuple[xr.Dataset, dict[str, Any]]:
    """Estimates for one unit: a Dataset part and the gradient series per estimator."""
    done = {
        (e, s): task_records(plan, e, s, t_idx, advance)
        for e in range(len(plan.specs))
        for s in s_idx
    }
    return assemble_unit(plan, t_idx, s_idx, done)


def assemble_unit(plan: Plan, t_idx, s_idx, done) -> tuple[xr.Dataset, dict[str, Any]]:
    """A unit's Dataset part and gradient series from the records of its tasks: ``done``
    maps (estimator index, seed index) to what :func:`task_records` returned for ``t_idx``
    (the records of each temperature in order, and the barrier)."""
    num_e, num_t, num_s, num_p = len(plan.specs), len(t_idx), len(s_idx), len(plan.names)
    temps = plan.temperatures[t_idx]
    scalar_names = ("loss", "loss_stderr", "wall_time", "num_steps", *SAMPLER_STATISTICS)
    vectors = {n: np.full((num_e, num_t, num_s, num_p), np.nan) for n in ("gradient", "stderr")}
    vectors |= {n: np.full((num_e, num_t, num_s, num_p), np.nan) for n in ("ess", "rhat")}
    scalars = {n: np.full((num_e, num_t, num_s), np.nan) for n in (*scalar_names, "error_dof")}
    series: dict[str, Any] = {}
    barrier = BarrierTable(num_e, num_s, temps) if plan.tempering else None
    for e, spec in enumerate(plan.specs):
        grads = costs = None  # the series arrays, shaped by the first record that has one
        for js, s in enumerate(s_idx):
            records, pairs = done[e, s]
            if barrier is not None:
                barrier.put(e, js, pairs)
            for jt, record in enumerate(records):
                for name in vectors:
                    vectors[name][e, jt, js] = record[name]
                for name in scalars:
                    scalars[name][e, jt, js] = record.get(name, np.nan)
                if record["series"] is None:
                    continue
                scalars["error_dof"][e, jt, js] = effective_components(record["series"])
                # (chain, entries): long runs keep window means of draws (series_window).
                if grads is None:
                    chains, entries = record["series"].shape[:2]
                    grads = np.full((chains, entries, num_t, num_s, len(plan.series_indices)),
                                    np.nan)  # fmt: skip
                    costs = np.full((chains, entries, num_t, num_s), np.nan)
                grads[:, :, jt, js] = record["series"][:, :, plan.series_indices]
                costs[:, :, jt, js] = record["cost_series"]
        if grads is not None:
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
