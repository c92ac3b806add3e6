"""Variance reduction of thermal gradients at equal wall time, side by side (issue 11, item 3).

Sections (``--sections spin main``; each appends its tables to one report):

- ``spin``: ``SpinNetwork.layered((3, 4, 3, 2))``, 9 spins, 39 parameters, at T = 0.5, the
  problem and sampling of ``benchmarks/thermal_estimators.py`` (4 examples; block Gibbs, 4
  chains × (200 warm-up + 4000 draws) per example). The plain estimators
  (``rao_blackwell=False``) against the Rao–Blackwellised ones
  (docs/mathematics.md#rao-blackwellised-spin-estimators), covariance and nudged (β = 0.1):

  1. the same sampling for both; then the Rao–Blackwellised estimator with its sweeps scaled
     so that its wall time matches the plain one's (calibrated from interleaved calls, then
     measured again with the others);
  2. a lever that keeps the estimate exact: 16 chains per example instead of 4, the sweeps
     scaled so that each route's wall time matches the plain default's, for both estimators
     (the lever is not specific to Rao–Blackwellisation, so both get it);
  3. why: the exact asymptotic variances of the per-draw series from the block-Gibbs sweep's
     512 × 512 transition matrix (per example, summed over parameters and examples), for the
     plain series and the conditional expectations given each class alone and averaged, per
     independent draw and along the chain;
  4. collapsed sampling (docs/mathematics.md, "Collapsed spin sampling": the 3-spin class
     drawn from its exact marginal, the 6 others averaged): the same sampling, its sweeps
     scaled to the plain call's time, and 16 chains at that time;
  5. collapsed sampling with heat-bath control variates (docs/mathematics.md, "Heat-bath
     control variates": the series regressed on the sweeps' innovations, cross-fitted): the
     same sampling, and its sweeps scaled to the plain call's time.

- ``wide`` (not run by default): ``benchmarks/thermal_scale.py``'s 2,010-spin network
  (64, 2000, 10) on its first batch, plain against Rao–Blackwellised covariance gradients and
  collapsed sampling (the 10 outputs drawn, the 2,000 hidden spins averaged).
- ``coupled`` (``benchmarks/_vr_coupled.py``, not run by default): coupled nudged phases
  (docs/mathematics.md, "Coupled phases") against the plain covariance estimator, on the main
  job at EP-trained parameters and on the 9-spin network, with the β bias against the MCSE.
- ``examples`` (``benchmarks/_vr_examples.py``, not run by default): the main job's gradient
  noise digit by digit at EP-trained parameters, and what allocating draws by it, or a Stein
  control that keeps the cost exact, would gain.
- ``collapsed-spins`` (``benchmarks/_vr_collapsed_spins.py``, not run by default): what
  sampling one parity class of a layered spin network from its exact marginal would gain, by
  exact asymptotic variances, and the cost of its sweep against block Gibbs (minimal loops).
- ``pieces`` (``benchmarks/_vr_pieces.py``, not run by default): the draw, statistics and
  diagnostics of a batch of the main job at 2 × (100 + 450), timed apart for a call's series
  of 2²² and of 2²⁰ numbers and for the float32 sampler.
- ``rhat`` (``benchmarks/_vr_rhat.py``, not run by default): how the entries of a series (every
  draw, or windows of draws) set the largest R-hat over many components, for independent draws
  and on the main job with 2 × (100 + 450) draws.
- ``importance`` (``benchmarks/_vr_importance.py``, not run by default): importance sampling
  (docs/mathematics.md, "Importance sampling") on the main job's per-batch gradient against
  plain and collapsed HMC, at equal wall time, with the weights' Kish ESS and Pareto k̂.
- ``main`` (``benchmarks/_vr_main.py``): the main job's per-batch covariance gradient, plain
  against conditional expectations (docs/mathematics.md, "Conditional expectations"), at equal
  draws and at equal wall time, at the initial and at EP-trained parameters.
- ``trajectory`` (``benchmarks/_vr_trajectory.py``, not run by default): the default
  ``thermoeqprop train``'s estimator against plain HMC at equal wall time (measured against
  plain with as many draws as fill the default's time, and by ``1/√time`` from plain's
  default), at the initial and EP-trained parameters and at those of a default training run
  (run by the section) after the epochs of ``--trajectory-epochs``.

Columns: ``s/call`` = median steady wall time of a call (new key each; first calls, with
compilation, reported apart); ``rel. MCSE`` = mean over calls of the estimator's
``relative_stderr`` diagnostic (‖MCSE‖/‖ĝ‖, over the noisy estimate's norm: biased low for a
noisy estimator); ``‖MCSE‖/‖g‖`` = the same over the exact gradient's norm (the same
denominator for every route, so ratios of it are ratios of MCSEs); ``rel. error`` = RMS over
calls (independent seeds) of ‖ĝ − g‖/‖g‖ against the exact gradient by enumeration;
``efficiency`` = ‖MCSE‖/‖g‖ × √(s/call) (lower is better; at equal time the ratio of two
routes' MCSEs); ``gain`` = the plain default's ‖MCSE‖ over the route's, and its efficiency
over the route's (the MCSE gain the route would have at exactly the plain default's time).
Repetitions are interleaved (every route once per repetition, in turn), so load changes of
this shared machine hit every route alike. float64 (the package's default).

    python benchmarks/variance_reduction.py [--sections spin] [--reps 8] [--threads N]
        [--output benchmarks/results/variance_reduction.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import shlex
import statistics
import sys
import time

import _threads
from _report import append_run

THREAD_ENV = _threads.apply(sys.argv[1:], x64=True)

import _vr_collapsed_spins  # noqa: E402
import _vr_coupled  # noqa: E402
import _vr_examples  # noqa: E402
import _vr_importance  # noqa: E402
import _vr_main  # noqa: E402
import _vr_pieces  # noqa: E402
import _vr_rhat  # noqa: E402
import _vr_trajectory  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _vr_exact import (  # noqa: E402
    block_kernels,
    chain_variance,
    conditional,
    example_terms,
    groups,
)

import samplers  # noqa: E402
from thermoeqprop.estimators import (  # noqa: E402
    Sampling,
    ThermalCovariance,
    ThermalExact,
    ThermalNudged,
)
from thermoeqprop.estimators._rao_blackwell import (  # noqa: E402
    independent_classes,
    parameter_shares,
)
from thermoeqprop.models import SpinNetwork  # noqa: E402

TEMPERATURE = 0.5
BETA = 0.1
BASE = Sampling(num_chains=4, num_samples=4000, num_warmup=200)
MORE_CHAINS = 16
ESTIMATOR = "per-parameter shares (the estimator)"
COMPILE_EVENTS: list[float] = []
jax.monitoring.register_event_duration_secs_listener(
    lambda name, seconds, **_: COMPILE_EVENTS.append(seconds) if "backend_compile" in name else None
)


def spin_problem():
    """The spin problem of benchmarks/thermal_estimators.py."""
    net = SpinNetwork.layered((3, 4, 3, 2))
    params = net.init_params(jax.random.key(0))
    params["fields"] = 0.2 * jax.random.normal(jax.random.key(5), (net.num_spins,))
    x = jax.random.uniform(jax.random.key(1), (4, 3))
    targets = net.encode_labels(jnp.array([0, 1, 1, 0]))
    return net, params, x, targets


# ------------------------------------------------------------------------------------------
# Timing: first call apart, then interleaved repetitions.


def call(estimator, problem, seed):
    """One estimate to completion: (estimate, seconds, compile seconds)."""
    _, params, x, targets = problem
    COMPILE_EVENTS.clear()
    start = time.perf_counter()
    estimate = jax.block_until_ready(estimator(params, x, targets, jax.random.key(seed)))
    return estimate, time.perf_counter() - start, sum(COMPILE_EVENTS)


FIRST_CALLS: dict = {}  # estimator -> (seconds, compile seconds) of its first call


def run_routes(routes, problem, reps, first_seed):
    """First call of every route (compilation; remembered for an estimator met before), then
    ``reps`` interleaved repetitions."""
    for estimator in routes.values():
        if estimator not in FIRST_CALLS:
            FIRST_CALLS[estimator] = call(estimator, problem, first_seed)[1:]
    first = {name: FIRST_CALLS[est] for name, est in routes.items()}
    out = {name: {"seconds": [], "estimates": []} for name in routes}
    seed = first_seed + 1
    for rep in range(reps):
        for name, estimator in routes.items():
            estimate, seconds, _ = call(estimator, problem, seed)
            seed += 1
            out[name]["seconds"].append(seconds)
            out[name]["estimates"].append(estimate)
        print(f"  repetition {rep + 1}/{reps} done", flush=True)
    for name in routes:
        out[name]["first"], out[name]["compile"] = first[name]
    return out


def scaled(sampling: Sampling, factor: float, num_chains: int | None = None) -> Sampling:
    """``sampling`` with its sweeps per chain (warm-up + draws) times ``factor``, warm-up kept."""
    sweeps = (sampling.num_warmup + sampling.num_samples) * factor
    draws = max(64, int(round(sweeps - sampling.num_warmup)))
    return Sampling(
        num_chains=num_chains or sampling.num_chains,
        num_samples=draws,
        num_warmup=sampling.num_warmup,
        collapse=sampling.collapse,
    )


def flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(a)) for a in jax.tree_util.tree_leaves(tree)])


def summary(result, exact) -> dict[str, float]:
    seconds = statistics.median(result["seconds"])
    relative = float(
        np.mean([float(e.diagnostics["relative_stderr"]) for e in result["estimates"]])
    )
    errors = [np.linalg.norm(flat(e.grad) - exact) / np.linalg.norm(exact)
              for e in result["estimates"]]  # fmt: skip
    stderr = [np.linalg.norm(flat(e.stderr)) / np.linalg.norm(exact) for e in result["estimates"]]
    return {
        "seconds": seconds,
        "relative": relative,
        "stderr": float(np.mean(stderr)),
        "error": float(np.sqrt(np.mean(np.square(errors)))),
        "efficiency": float(np.mean(stderr)) * np.sqrt(seconds),
        "first": result["first"],
        "compile": result["compile"],
    }


def table(rows: dict[str, dict[str, float]], settings: dict[str, Sampling], baseline: str):
    base = rows[baseline]
    lines = [
        "| route | chains × draws | s/call | first call (compile) | rel. MCSE | ‖MCSE‖/‖g‖ | "
        "rel. error | efficiency | gain: MCSE | gain: efficiency |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        s = settings[name]
        lines.append(
            f"| {name} | {s.num_chains} × {s.num_samples} | {row['seconds']:.3f} | "
            f"{row['first']:.1f} ({row['compile']:.1f}) | {row['relative']:.4f} | "
            f"{row['stderr']:.4f} | {row['error']:.4f} | {row['efficiency']:.4f} | "
            f"{base['stderr'] / row['stderr']:.2f} | "
            f"{base['efficiency'] / row['efficiency']:.2f} |"
        )
    return lines


# ------------------------------------------------------------------------------------------
# Exact asymptotic variances of the per-draw series along the block-Gibbs chain.


def exact_asymptotic_variances(net, params, x, targets, temperature):
    """Σ over parameters and examples of the asymptotic variance of each series' mean (× N),
    per independent draw (``iid``) and along the chain of layered block-Gibbs sweeps."""
    n = net.num_spins
    states = np.asarray(samplers.spin_states(jnp.arange(2**n), n, dtype=float))
    classes = independent_classes(net)
    shares = parameter_shares(net)  # (K, P): the estimator's mixture of the conditionings
    layers = len(net.blocks)
    out: dict[tuple[str, str, str], float] = {}
    for x_b, y_b in zip(np.asarray(x), np.asarray(targets), strict=True):
        pi, cost, grads = example_terms(net, params, states, x_b, y_b, temperature)
        kernels = block_kernels(states, pi, net.blocks)  # one sweep redraws the layers in order
        series = {
            "covariance": (cost - pi @ cost)[:, None] * (grads - pi @ grads),
            "energy_grad": grads,
        }
        for kind, f in series.items():
            given = [conditional(f, pi, groups(states, c)) for c in classes]
            # shares[k] weighs the conditioning that averages class k (given all the others).
            averaging = [conditional(f, pi, groups(states, np.setdiff1d(np.arange(n), c)))
                         for c in classes]  # fmt: skip
            mixed = sum(w * g for w, g in zip(shares, averaging, strict=True))
            variants = {"plain": f, **{f"given class {k} only": g for k, g in enumerate(given)},
                        "both classes, equal shares": sum(given) / len(given),
                        ESTIMATOR: mixed}  # fmt: skip
            for name, g in variants.items():
                g = g - pi @ g
                iid = pi @ (g * g)
                chain = chain_variance({layers: g}, kernels, pi)
                for label, value in (("iid", iid), ("chain", chain)):
                    out[kind, name, label] = out.get((kind, name, label), 0.0) + value.sum()
            # Every half-sweep: after layer a is redrawn, its class is new; condition on it.
            half = {a + 1: given[a % 2] / layers for a in range(layers)}
            value = chain_variance(half, kernels, pi).sum()
            key = (kind, "each layer update, given its class", "chain")
            out[key] = out.get(key, 0.0) + value
    return out


def exact_table(variances, classes) -> list[str]:
    lines = [
        "| series | conditioning | variance ratio, independent draws | variance ratio, chain | "
        "MCSE ratio at equal draws, chain |",
        "|---|---|---|---|---|",
    ]
    for kind in ("covariance", "energy_grad"):
        for name in ("plain", *(f"given class {k} only" for k in range(len(classes))),
                     "both classes, equal shares", ESTIMATOR):  # fmt: skip
            iid = variances[kind, "plain", "iid"] / variances[kind, name, "iid"]
            chain = variances[kind, "plain", "chain"] / variances[kind, name, "chain"]
            lines.append(f"| {kind} | {name} | {iid:.2f} | {chain:.2f} | {np.sqrt(chain):.2f} |")
        name = "each layer update, given its class"
        chain = variances[kind, "plain", "chain"] / variances[kind, name, "chain"]
        lines.append(f"| {kind} | {name} (half-sweeps) | – | {chain:.2f} | {np.sqrt(chain):.2f} |")
    return lines


# ------------------------------------------------------------------------------------------
# Sections.


def section_spin(args) -> list[str]:
    problem = spin_problem()
    net, params, x, targets = problem
    exact = flat(ThermalExact(net, TEMPERATURE)(params, x, targets).grad)
    kinds = {
        "covariance": lambda s, rb, cv=None: ThermalCovariance(
            net, TEMPERATURE, s, rao_blackwell=rb, control_variates=cv
        ),
        "nudged": lambda s, rb, cv=None: ThermalNudged(
            net, TEMPERATURE, BETA, sampling=s, rao_blackwell=rb, control_variates=cv
        ),
    }

    def route(build, name, s):
        cv = "heat_bath" if "heat-bath" in name else None
        return build(s, not name.startswith("plain"), cv)

    body = [
        "### spin: SpinNetwork.layered((3, 4, 3, 2)), T = 0.5, 4 examples",
        "",
    ]
    for kind, build in kinds.items():
        print(f"spin, {kind}: calibration", flush=True)
        trial = Sampling(num_chains=MORE_CHAINS, num_samples=1000, num_warmup=BASE.num_warmup)
        collapsed, trial_collapsed = (dataclasses.replace(s, collapse=True) for s in (BASE, trial))
        calibration_settings = {
            "plain": BASE, "rb": BASE, "plain 16": trial, "rb 16": trial,
            "collapsed": collapsed, "collapsed 16": trial_collapsed,
            "collapsed + heat-bath": collapsed,
        }  # fmt: skip
        calibration = run_routes(
            {n: route(build, n, s) for n, s in calibration_settings.items()}, problem, 4, 1000
        )
        # The fastest of interleaved calls: the route's own cost, least disturbed by others.
        t = {name: min(r["seconds"]) for name, r in calibration.items()}
        settings = {
            "plain": BASE,
            "Rao-Blackwellised": BASE,
            "Rao-Blackwellised, sweeps scaled to plain's time": scaled(BASE, t["plain"] / t["rb"]),
            f"plain, {MORE_CHAINS} chains, same time": scaled(trial, t["plain"] / t["plain 16"]),
            f"Rao-Blackwellised, {MORE_CHAINS} chains, same time": scaled(
                trial, t["plain"] / t["rb 16"]
            ),
            "collapsed": collapsed,
            "collapsed, sweeps scaled to plain's time": scaled(
                collapsed, t["plain"] / t["collapsed"]
            ),
            f"collapsed, {MORE_CHAINS} chains, same time": scaled(
                trial_collapsed, t["plain"] / t["collapsed 16"]
            ),
            "collapsed + heat-bath controls": collapsed,
            "collapsed + heat-bath controls, sweeps scaled to plain's time": scaled(
                collapsed, t["plain"] / t["collapsed + heat-bath"]
            ),
        }
        print(f"spin, {kind}: measurement", flush=True)
        routes = {name: route(build, name, s) for name, s in settings.items()}
        results = run_routes(routes, problem, args.reps, 2000)
        rows = {name: summary(result, exact) for name, result in results.items()}
        label = "covariance" if kind == "covariance" else f"nudged, β = {BETA:g} (symmetric)"
        body += [f"#### {label}", "", *table(rows, settings, "plain"), ""]
        print("\n".join(body[-len(rows) - 3 :]), flush=True)
    print("spin: exact asymptotic variances", flush=True)
    variances = exact_asymptotic_variances(net, params, x, targets, TEMPERATURE)
    classes = independent_classes(net)
    described = "; ".join(f"class {k}: spins {list(c)}" for k, c in enumerate(classes))
    body += [
        "#### Exact asymptotic variances of the per-draw series (transition matrix of one sweep)",
        "",
        f"Classes: {described} (the outputs are spins {list(net.output_units)}). Ratios are "
        "plain over each variant, summed over the 39 parameters and 4 examples; 'given class "
        "k only' averages the other class; 'per-parameter shares' mixes the two per parameter "
        "by the classes of the spins it holds (`parameter_shares`).",
        "",
        *exact_table(variances, classes),
        "",
        *other_shapes(),
        "",
    ]
    return body


# At most 10 spins: the 2¹¹ states of an 11-spin network take minutes here.
OTHER_SHAPES = (((3, 4, 3, 2), 0.25), ((3, 4, 3, 2), 1.0), ((3, 6, 3), 0.5), ((3, 8, 2), 0.5),
                ((3, 4, 2, 2, 2), 0.5))  # fmt: skip


def other_shapes() -> list[str]:
    """Which conditioning wins is not the same on every network: the exact chain-variance
    ratios of the covariance series on a few more layered shapes and temperatures (the
    benchmark's parameter recipe, 3 examples)."""
    print("spin: exact asymptotic variances of other shapes", flush=True)
    lines = [
        "Other shapes (exact, covariance series along the chain; ratio plain / variant):",
        "",
        "| layers | T | spins | given class 0 only | given class 1 only | both, equal shares "
        "| per-parameter shares (the estimator) |",
        "|---|---|---|---|---|---|---|",
    ]
    for sizes, temperature in OTHER_SHAPES:
        net = SpinNetwork.layered(sizes)
        params = net.init_params(jax.random.key(0))
        params["fields"] = 0.2 * jax.random.normal(jax.random.key(5), (net.num_spins,))
        x = jax.random.uniform(jax.random.key(1), (3, sizes[0]))
        targets = net.encode_labels(jnp.arange(3) % net.num_classes)
        v = exact_asymptotic_variances(net, params, x, targets, temperature)
        ratio = [v["covariance", "plain", "chain"] / v["covariance", name, "chain"]
                 for name in ("given class 0 only", "given class 1 only",
                              "both classes, equal shares", ESTIMATOR)]  # fmt: skip
        lines.append(
            f"| {sizes} | {temperature:g} | {net.num_spins} | {ratio[0]:.2f} | {ratio[1]:.2f} | "
            f"{ratio[2]:.2f} | {ratio[3]:.2f} |"
        )
    return lines


def section_wide(args) -> list[str]:
    """The wide network of benchmarks/thermal_scale.py on its first batch: plain against
    Rao–Blackwellised covariance gradients (no exact gradient at 2,010 spins)."""
    import thermal_scale  # its network class; the thread settings above are kept

    hidden = 2000
    net = thermal_scale.CentredTargetSpinNetwork((64, hidden, 10))
    params = net.init_params(jax.random.key(0))
    k_in, k_j = jax.random.split(jax.random.key(1))
    params["input_weights"] = 0.5 * jax.random.normal(k_in, params["input_weights"].shape)
    params["couplings"] = (0.01 * jax.random.normal(k_j, (hidden, 10)),)
    data = thermal_scale.load_dataset("digits")
    batch = thermal_scale.BATCH
    x, targets = data.x_train[:batch], net.encode_labels(data.labels_train[:batch])
    problem = (net, params, x, targets)
    sampling = Sampling(method="gibbs", num_chains=4, num_samples=50, num_warmup=20)
    routes = {
        "plain": ThermalCovariance(net, 1.0, sampling, rao_blackwell=False),
        "Rao-Blackwellised": ThermalCovariance(net, 1.0, sampling, rao_blackwell=True),
        "collapsed (the 10 outputs drawn)": ThermalCovariance(
            net, 1.0, dataclasses.replace(sampling, collapse=True)
        ),
    }
    print("wide: measurement", flush=True)
    results = run_routes(routes, problem, max(2, args.reps // 2), 3000)
    lines = [
        f"### wide: thermal_scale.py's CentredTargetSpinNetwork((64, {hidden}, 10)), T = 1, "
        f"first batch of {batch} digits",
        "",
        f"Covariance estimator, {sampling.num_chains} chains × ({sampling.num_warmup} warm-up "
        f"+ {sampling.num_samples} draws) per example, {net.num_spins} spins, "
        f"{flat(params).size} parameters, initial input weights N(0, 0.5²), couplings "
        "N(0, 0.01²) (the scale run's start). No exact gradient: `rel. MCSE` is the "
        "estimator's ‖MCSE‖/‖ĝ‖ and `‖MCSE‖ ratio` the plain one's ‖MCSE‖ over the route's.",
        "",
        "| route | s/call | first call (compile) | rel. MCSE | ‖MCSE‖ ratio | efficiency ratio | "
        "ESS min / median |",
        "|---|---|---|---|---|---|---|",
    ]
    norms = {}
    for name, result in results.items():
        norms[name] = (np.mean([np.linalg.norm(flat(e.stderr)) for e in result["estimates"]]),
                       statistics.median(result["seconds"]))  # fmt: skip
    for name, result in results.items():
        last = result["estimates"][-1].diagnostics
        relative = np.mean([float(e.diagnostics["relative_stderr"]) for e in result["estimates"]])
        ratio = norms["plain"][0] / norms[name][0]
        efficiency = ratio * np.sqrt(norms["plain"][1] / norms[name][1])
        lines.append(
            f"| {name} | {norms[name][1]:.2f} | {result['first']:.1f} ({result['compile']:.1f}) "
            f"| {relative:.3f} | {ratio:.2f} | {efficiency:.2f} | "
            f"{float(last['ess_min']):.0f} / {float(last['ess_median']):.0f} |"
        )
    print("\n".join(lines[-2:]), flush=True)
    return [*lines, ""]


SECTIONS = {
    "spin": section_spin,
    "wide": section_wide,
    "main": _vr_main.section_main,
    "coupled": lambda args: _vr_coupled.section_coupled(args, sys.modules[__name__]),
    "examples": _vr_examples.section_examples,
    "collapsed-spins": _vr_collapsed_spins.section_collapsed_spins,
    "rhat": _vr_rhat.section_rhat,
    "pieces": _vr_pieces.section_pieces,
    "importance": _vr_importance.section_importance,
    "trajectory": _vr_trajectory.section_trajectory,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", default=["spin"], choices=sorted(SECTIONS))
    parser.add_argument("--reps", type=int, default=8, help="interleaved repetitions (seeds)")
    parser.add_argument("--batches", type=int, default=6, help="main: batches of 32 digits")
    parser.add_argument(
        "--coupled-betas",
        type=float,
        nargs="+",
        default=[0.05, 0.2],
        help="coupled: nudges β of the coupled routes",
    )
    parser.add_argument(
        "--trajectory-epochs",
        type=int,
        nargs="+",
        default=[1, 2, 3, 5, 10, 15],
        help="trajectory: epochs of the default train after which the routes are compared",
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default all)")
    parser.add_argument("--output", default="benchmarks/results/variance_reduction.md")
    args = parser.parse_args()
    settings = ", ".join(f"{k}={v!r}" for k, v in THREAD_ENV.items())
    print(f"thread settings (set before importing JAX): {settings}", flush=True)
    started = datetime.datetime.now()
    load_start = os.getloadavg()
    body = []
    for name in args.sections:
        body += SECTIONS[name](args)
    load = os.getloadavg()
    pythonpath = os.environ.get("PYTHONPATH")
    command = (f"PYTHONPATH={shlex.quote(pythonpath)} " if pythonpath else "") + shlex.join(
        ["python", sys.argv[0], *sys.argv[1:]]
    )
    report = [
        f"## Run of {started.isoformat(timespec='minutes')}",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"{len(os.sched_getaffinity(0))} used, shared with other jobs (load average "
        f"{load_start[0]:.2f}, {load_start[1]:.2f}, {load_start[2]:.2f} at the start; "
        f"{load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} at the end); "
        f"{jax.devices()[0].platform.upper()}, JAX {jax.__version__}, "
        f"{'float64' if jax.config.jax_enable_x64 else 'float32'}. Threads: {settings}. Wall "
        f"time of the run: {(datetime.datetime.now() - started).total_seconds():.0f} s.",
        "",
        *body,
    ]
    text = "\n".join(report)
    print(text)
    header = (
        "# Variance reduction of thermal gradients at equal wall time\n\n"
        "Produced by `benchmarks/variance_reduction.py`; newest run last.\n\n"
    )
    append_run(args.output, header, text + "\n")


if __name__ == "__main__":
    main()
