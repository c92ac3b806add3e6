"""Section ``main`` of ``benchmarks/variance_reduction.py``: the main job's per-batch gradient.

``thermoeqprop train``'s defaults: ``LayeredNetwork((64, 128, 10))`` sigmoid, T = 0.02, HMC
with 8 leapfrog steps and jitter 0.5, 2 chains × (50 warm-up + 50 draws) per example, batches
of 32 digits; at the initial parameters and at parameters trained by T = 0 EP (10 epochs, the
regime of a training run's later epochs). Routes on the same batches, interleaved (plain, RB,
RB′, collapsed, collapsed′, plain, …; a fresh key per call, every call synchronised):

- ``plain``: ``ThermalCovariance(rao_blackwell=False)``;
- ``RB``: conditional expectations given each parity class of layers (docs/mathematics.md,
  "Conditional expectations") on draws of every unit (``Sampling(collapse=False)``);
- ``RB′``: RB with fewer draws per chain, chosen by timed bisection so that its call takes no
  longer than plain's (equal wall time, taken literally);
- ``collapsed``: the default, collapsed sampling (docs/mathematics.md, "Collapsed sampling")
  without mode jumps: HMC on the outputs' marginal, the hidden layer averaged by its conditional
  expectations;
- ``collapsed′``: collapsed with the most draws per chain (up to 4× the default's) whose call
  takes no longer than plain's, by the same bisection;
- ``jumps``: collapsed with mode jumps (``Sampling(mode_jumps=True)``; docs/mathematics.md,
  "Mode jumps"): a Metropolis translation between the outputs' two T = 0 minima after every
  HMC transition;
- ``jumps′``: jumps with draws matched to plain's time by the same bisection;
- ``jumps 4×25``: jumps with 4 chains × (25 warm-up + 25 draws) per example, the same number
  of HMC transitions as 2 × (50 + 50): more chains, fewer draws per chain.

Per route: median seconds per call (first calls, which compile, apart), median and range of
the relative MCSE ``‖MCSE‖ / ‖grad‖`` over the calls, median largest split R-hat; under the
table the MCSE ratio at equal wall time, literally (plain against RB′) and by the scaling
``MCSE ∝ 1/√time``. Imported by ``variance_reduction.py`` after its thread settings.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from thermoeqprop.data import load_dataset
from thermoeqprop.estimators import Sampling, ThermalCovariance, ZeroTemperatureEP
from thermoeqprop.models import LayeredNetwork

MAIN_SAMPLING = Sampling(method="hmc", num_chains=2, num_samples=50, num_warmup=50,
                         hmc_steps=8, hmc_jitter=0.5)  # fmt: skip
TEMPERATURE = 0.02
BATCH = 32


def trained_by_ep(model, dataset, epochs=10, seed=0):
    """Parameters after ``epochs`` of T = 0 EP (symmetric β = 0.5, Adam 2e-3, batches of 32)
    and their test accuracy: a stand-in for the later epochs of a thermal training run."""
    estimator = ZeroTemperatureEP(model, beta=0.5)
    params = model.init_params(jax.random.key(seed))
    optimiser = optax.adam(2e-3)
    state = optimiser.init(params)
    x, labels = dataset.x_train, dataset.labels_train
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(labels))
        for start in range(0, len(order) - BATCH + 1, BATCH):
            idx = order[start : start + BATCH]
            grad = estimator(params, x[idx], model.encode_labels(labels[idx]), None).grad
            updates, state = optimiser.update(grad, state, params)
            params = optax.apply_updates(params, updates)
    outputs = estimator.predict(params, dataset.x_test, None)
    accuracy = float(np.mean(np.asarray(model.decode_outputs(outputs)) == dataset.labels_test))
    return params, accuracy


def run_route(estimator, params, batch, key):
    x, y = batch
    start = time.perf_counter()
    estimate = estimator(params, x, y, key)
    jax.block_until_ready(estimate.grad)
    seconds = time.perf_counter() - start
    return (
        seconds,
        float(estimate.diagnostics["relative_stderr"]),
        float(estimate.diagnostics["rhat_max"]),
        float(estimate.diagnostics.get("jump_rate", float("nan"))),
    )


def equal_time_draws(model, params, batch, plain_seconds, reps=3, collapse=False, jumps=False):
    """The most draws per chain (≥ 10; up to the default's, or 4× it when collapsed) at which
    a call of RB (or collapsed) takes no longer than a plain one, by bisection on timed
    calls."""
    low = 10
    high = MAIN_SAMPLING.num_samples * (4 if collapse else 1)
    while high - low > 2:
        mid = (low + high) // 2
        est = ThermalCovariance(model, TEMPERATURE, _with_draws(mid, collapse, jumps))
        run_route(est, params, batch, jax.random.key(0))  # compile
        seconds = statistics.median(
            run_route(est, params, batch, jax.random.key(i + 1))[0] for i in range(reps)
        )
        low, high = (mid, high) if seconds <= plain_seconds else (low, mid)
    return low


def _with_draws(num_samples, collapse=False, jumps=False, **changes):
    return dataclasses.replace(MAIN_SAMPLING, num_samples=num_samples, collapse=collapse,
                               mode_jumps=jumps, **changes)  # fmt: skip


def main_batches(num_batches):
    """The main job's dataset, network and ``num_batches`` batches of 32 training digits (the
    same in every section that calls this)."""
    dataset = load_dataset("digits", seed=0)
    model = LayeredNetwork((64, 128, 10))
    rng = np.random.default_rng(1)
    batches = []
    for _ in range(num_batches):
        idx = rng.choice(len(dataset.labels_train), BATCH, replace=False)
        batches.append((jnp.asarray(dataset.x_train[idx]),
                        model.encode_labels(dataset.labels_train[idx])))  # fmt: skip
    return dataset, model, batches


def main_job(num_batches):
    """The main job's network, ``num_batches`` batches of 32 training digits (as
    :func:`main_batches`), its initial and EP-trained parameters by name, and the trained
    parameters' test accuracy."""
    dataset, model, batches = main_batches(num_batches)
    trained, accuracy = trained_by_ep(model, dataset)
    settings = {"initial": model.init_params(jax.random.key(0)), "trained": trained}
    return model, batches, settings, accuracy


def interleaved(routes, params, batches, reps, label, call):
    """``{route: [call(estimator, params, batch, key), …]}``: every route once per batch, in
    turn, repetition after repetition (load changes hit every route alike), a fresh key per
    call."""
    results = {name: [] for name in routes}
    seed = 0
    for rep in range(reps):
        for batch in batches:
            for name, est in routes.items():
                results[name].append(call(est, params, batch, jax.random.key(seed)))
                seed += 1
        print(f"  {label}: repetition {rep + 1}/{reps} done", flush=True)
    return results


def section_main(args) -> list[str]:
    lines: list[str] = []
    model, batches, settings, accuracy = main_job(args.batches)
    lines += [
        "### Section main: the main job's per-batch covariance gradient",
        "",
        f"{args.batches} batches of {BATCH} digits, {args.reps} interleaved repetitions per "
        f"batch; trained parameters: 10 epochs of T = 0 EP, test accuracy {100 * accuracy:.2f} %.",
        "",
        "| parameters | route | draws per chain | first call (s) | steady s / call (median) "
        "| relative MCSE (median, min–max) | largest R-hat (median) | jumps accepted |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    summary = []
    for label, params in settings.items():
        plain = ThermalCovariance(model, TEMPERATURE, MAIN_SAMPLING, rao_blackwell=False)
        rb = ThermalCovariance(model, TEMPERATURE, _with_draws(MAIN_SAMPLING.num_samples))
        collapsed = ThermalCovariance(model, TEMPERATURE, _with_draws(MAIN_SAMPLING.num_samples,
                                                                      collapse=None))  # fmt: skip
        jumps = ThermalCovariance(
            model, TEMPERATURE, _with_draws(MAIN_SAMPLING.num_samples, collapse=None, jumps=True)
        )
        chains4 = ThermalCovariance(model, TEMPERATURE, _with_draws(
            25, collapse=None, jumps=True, num_chains=4, num_warmup=25))  # fmt: skip
        first = {}
        for name, est in (("plain", plain), ("RB", rb), ("collapsed", collapsed),
                          ("jumps", jumps), ("jumps 4×25", chains4)):  # fmt: skip
            start = time.perf_counter()
            run_route(est, params, batches[0], jax.random.key(10**6))
            first[name] = time.perf_counter() - start
        plain_seconds = statistics.median(
            run_route(plain, params, batches[0], jax.random.key(i))[0] for i in range(3)
        )
        draws = {
            "RB′": equal_time_draws(model, params, batches[0], plain_seconds),
            "collapsed′": equal_time_draws(model, params, batches[0], plain_seconds,
                                           collapse=None),
            "jumps′": equal_time_draws(model, params, batches[0], plain_seconds,
                                       collapse=None, jumps=True),
        }  # fmt: skip
        matched = {
            "RB′": ThermalCovariance(model, TEMPERATURE, _with_draws(draws["RB′"])),
            "collapsed′": ThermalCovariance(
                model, TEMPERATURE, _with_draws(draws["collapsed′"], collapse=None)
            ),
            "jumps′": ThermalCovariance(
                model, TEMPERATURE, _with_draws(draws["jumps′"], collapse=None, jumps=True)
            ),
        }
        for name, est in matched.items():
            start = time.perf_counter()
            run_route(est, params, batches[0], jax.random.key(10**6 + 1))
            first[name] = time.perf_counter() - start
        routes = {"plain": plain, "RB": rb, "RB′": matched["RB′"], "collapsed": collapsed,
                  "collapsed′": matched["collapsed′"], "jumps": jumps,
                  "jumps′": matched["jumps′"], "jumps 4×25": chains4}  # fmt: skip
        results = interleaved(routes, params, batches, args.reps, label, run_route)
        med = {}
        for name, rows in results.items():
            a = np.array(rows)
            med[name] = (np.median(a[:, 0]), np.median(a[:, 1]), np.median(a[:, 2]))
            n_draws = draws.get(name, 25 if name == "jumps 4×25" else MAIN_SAMPLING.num_samples)
            lines.append(
                f"| {label} | {name} | {n_draws} | {first[name]:.2f} | {med[name][0]:.4f} | "
                f"{med[name][1]:.3f} ({a[:, 1].min():.3f}–{a[:, 1].max():.3f}) | "
                f"{med[name][2]:.3f} | {np.mean(a[:, 3]):.4f} |"
            )
        for name in ("RB", "collapsed", "jumps"):
            primed = f"{name}′"
            scaled = med["plain"][1] / (med[name][1] * np.sqrt(med[name][0] / med["plain"][0]))
            literal = med["plain"][1] / med[primed][1]
            summary.append(
                f"- {label} parameters, {name}: relative MCSE plain {med['plain'][1]:.3f}, "
                f"{name} {med[name][1]:.3f} at {med[name][0] / med['plain'][0]:.2f}× plain's "
                f"time; at equal wall time {primed} ({draws[primed]} draws) "
                f"{med[primed][1]:.3f} at {med[primed][0] / med['plain'][0]:.2f}× plain's time: "
                f"**{literal:.2f}×** lower (by the 1/√time scaling: {scaled:.2f}×)."
            )
    lines += ["", *summary, ""]
    return lines
