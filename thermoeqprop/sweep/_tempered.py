"""A tempered sweep: one parallel-tempering run whose ladder is the temperature grid serves
every temperature, each rung's draws giving that temperature's estimate."""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from thermoeqprop._barrier import ladder_barrier
from thermoeqprop.estimators.thermal import draw_states

__all__ = ["tempered_records"]


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


def tempered_records(spec, model, sampling, params, x, targets, ladder, rng_key):
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
