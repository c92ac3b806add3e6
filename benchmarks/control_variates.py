"""Stein control variates for continuous states at equal wall time (issue 11, item 2).

The relative MCSE ``‖MCSE‖/‖g‖`` of the thermal gradient, with and without each control
variate (docs/mathematics.md#control-variates), on:

- ``quadratic``: ``QuadraticNetwork((3, 4, 2))``, 3 examples, T = 1; g exact (closed form);
- ``sigmoid``: ``LayeredNetwork((3, 4, 2), init_gain=1.5)`` with random biases (the network of
  tests/test_lowtemp.py), 3 examples, T = 0.001, 0.005, 0.02;
- ``main``: the main job's network (64, 128, 10), sigmoid, T = 0.02, HMC with 2 chains × 50
  draws per example, 50 warm-up steps, 8 leapfrog steps, the first batch of 32 digits, the
  initial parameters (``thermoeqprop train``'s defaults); covariance estimator only.

Small problems: HMC, 4 chains × 500 draws, 200 warm-up steps, 8 leapfrog steps (zv2's 81
coefficients per parameter need 820 entries per half of the chains); covariance and nudged
(β = 0.05) estimators. Where g is not known, ‖g‖ is the norm of the mean of every
estimate of the section (all routes are unbiased), the same denominator for every route.

Routes: the plain series (``rao_blackwell=False``) and the conditional expectations
(``rao_blackwell=None``, the default), each with ``control_variates`` None, zv1, zv2 and
laplace. Routes the draws cannot support are refused by the estimator and listed as such.
Then, for every control variate, its base route again with ``num_samples`` scaled so that its
wall time matches the control variate's (calibrated from the first timings): the comparison at
EQUAL WALL TIME, the controls' cost included.

Columns: ``s/call`` median steady wall time of a call (new key each; interleaved repetitions,
every route once per repetition, so load changes hit every route alike; first calls, with
compilation, apart); ``rel. MCSE`` mean over calls of ‖MCSE‖/‖g‖; ``gain (same draws)`` the
base route's MCSE over this route's; ``gain (equal time)`` the MCSE of the base route with its
draws scaled to this route's time over this route's MCSE, with the time ratio achieved.
float64 (the package's default, as ``thermoeqprop train`` runs).

    python benchmarks/control_variates.py [--sections quadratic sigmoid main] [--reps 5]
        [--threads N] [--output benchmarks/results/control_variates.md]

Threads: ``--threads N`` (default: every core the process may use) sets XLA_FLAGS,
OMP/OPENBLAS/MKL_NUM_THREADS before JAX is imported (OpenBLAS threads would otherwise fight
XLA's over the same cores: an ``eigh`` ran 20× slower) and pins the process to N cores.
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


def _threads(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--threads", type=int, default=None)
    cores = sorted(os.sched_getaffinity(0))
    threads = max(1, min(parser.parse_known_args(argv)[0].threads or len(cores), len(cores)))
    if threads < len(cores):
        os.sched_setaffinity(0, cores[:threads])
    multi = "true" if threads > 1 else "false"
    os.environ["XLA_FLAGS"] = (
        f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_multi_thread_eigen={multi} "
        f"intra_op_parallelism_threads={threads}"
    ).strip()
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    return threads


THREADS = _threads(sys.argv[1:])

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

from thermoeqprop.estimators import (  # noqa: E402
    Sampling,
    ThermalCovariance,
    ThermalExact,
    ThermalNudged,
)
from thermoeqprop.models import LayeredNetwork, QuadraticNetwork  # noqa: E402

SMALL = Sampling(method="hmc", num_chains=4, num_samples=500, num_warmup=200, hmc_steps=8)
MAIN = Sampling(method="hmc", num_chains=2, num_samples=50, num_warmup=50, hmc_steps=8)
BETA = 0.05
COMPILES: list[float] = []
jax.monitoring.register_event_duration_secs_listener(
    lambda name, seconds, **_: COMPILES.append(seconds) if "backend_compile" in name else None
)


def load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def flat(tree) -> np.ndarray:
    return np.asarray(ravel_pytree(tree)[0])


@dataclasses.dataclass
class Problem:
    name: str
    model: object
    params: dict
    x: jax.Array
    targets: jax.Array
    sampling: Sampling
    exact: dict | None = None  # estimator kind -> exact gradient


def quadratic() -> Problem:
    net = QuadraticNetwork((3, 4, 2))
    params = net.init_params(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (3, 3))
    targets = net.encode_labels(jnp.array([0, 1, 1]))
    exact = ThermalExact(net, 1.0)
    high = flat(exact.nudged_energy_grad(params, x, targets, BETA))
    low = flat(exact.nudged_energy_grad(params, x, targets, -BETA))
    grads = {"covariance": flat(exact(params, x, targets).grad), "nudged": (high - low) / BETA / 2}
    return Problem("quadratic", net, params, x, targets, SMALL, grads)


def sigmoid() -> Problem:
    net = LayeredNetwork((3, 4, 2), init_gain=1.5)
    params = net.init_params(jax.random.key(3))
    params["biases"] = tuple(
        0.3 * jax.random.normal(jax.random.key(10 + i), b.shape)
        for i, b in enumerate(params["biases"])
    )
    x = jax.random.uniform(jax.random.key(4), (3, 3))
    targets = net.encode_labels(jnp.array([0, 1, 1]))
    return Problem("sigmoid", net, params, x, targets, SMALL)


def main_job() -> Problem:
    from thermoeqprop.data import load_dataset

    data = load_dataset("digits")
    net = LayeredNetwork((data.num_features, 128, data.num_classes))
    params = net.init_params(jax.random.key(0))
    x = jnp.asarray(data.x_train[:32])
    return Problem("main", net, params, x, net.encode_labels(data.labels_train[:32]), MAIN)


def estimator(problem, kind, temperature, rao_blackwell, control_variates, sampling):
    options = dict(
        sampling=sampling, rao_blackwell=rao_blackwell, control_variates=control_variates
    )
    if kind == "nudged":
        return ThermalNudged(problem.model, temperature, BETA, **options)
    return ThermalCovariance(problem.model, temperature, **options)


def measure(problem, routes, reps, seed0):
    """First call of every route, then ``reps`` interleaved repetitions: per route the steady
    times and the estimates (grad, stderr) of every call."""
    out = {name: {"seconds": [], "grads": [], "stderrs": []} for name in routes}
    for name, est in list(routes.items()):
        COMPILES.clear()
        start = time.perf_counter()
        try:
            jax.block_until_ready(
                est(problem.params, problem.x, problem.targets, jax.random.key(seed0))
            )
        except ValueError as error:  # too few draws for this batch: the estimator says so
            out[name] = str(error).split(": draw more")[0]
            del routes[name]
            continue
        out[name]["first"] = (time.perf_counter() - start, sum(COMPILES))
    seed = seed0 + 1
    for _ in range(reps):
        for name, est in routes.items():
            start = time.perf_counter()
            estimate = jax.block_until_ready(
                est(problem.params, problem.x, problem.targets, jax.random.key(seed))
            )
            out[name]["seconds"].append(time.perf_counter() - start)
            out[name]["grads"].append(flat(estimate.grad))
            out[name]["stderrs"].append(flat(estimate.stderr))
            seed += 1
        print("   ", ", ".join(f"{n} {out[n]['seconds'][-1]:.3g}s" for n in routes), flush=True)
    return out


def case(problem, kind, temperature, reps, seed0) -> list[str]:
    """One table: every route of one problem, estimator and temperature."""
    print(f"== {problem.name} {kind} T={temperature} ({load()})", flush=True)
    sampling = problem.sampling
    names = {}
    for rb in (False, None):
        for cv in (None, "zv1", "zv2", "laplace"):
            label = f"{'plain' if rb is False else 'conditional'} + {cv or 'none'}"
            try:
                names[label] = estimator(problem, kind, temperature, rb, cv, sampling)
            except ValueError as error:
                names[label] = str(error).split(";")[0]
    routes = {n: e for n, e in names.items() if not isinstance(e, str)}
    first = measure(problem, routes, reps, seed0)
    for label, result in list(first.items()):
        if isinstance(result, str):
            names[label] = result
            del first[label]
    # Equal wall time: each control variate's base route with its draws scaled to its time.
    scaled = {}
    for label, est in routes.items():
        base, cv = label.split(" + ")
        if cv == "none":
            continue
        ratio = statistics.median(first[label]["seconds"]) / statistics.median(
            first[f"{base} + none"]["seconds"]
        )
        # Sampler steps (warm-up included) take most of a call: scale them all by the ratio.
        steps = sampling.num_samples + sampling.num_warmup
        draws = max(4, round(steps * ratio) - sampling.num_warmup)
        more = dataclasses.replace(sampling, num_samples=draws)
        scaled[f"{base} + none, {draws} draws"] = (
            label,
            dataclasses.replace(est, sampling=more, control_variates=None),
        )
    second = measure(problem, {n: e for n, (_, e) in scaled.items()}, reps, seed0 + 1000)
    results = {**first, **second}
    grads = np.concatenate([np.array(r["grads"]) for r in results.values()])
    exact = problem.exact[kind] if problem.exact else np.mean(grads, axis=0)
    norm = np.linalg.norm(exact)

    def rel(name):
        return float(np.mean([np.linalg.norm(s) for s in results[name]["stderrs"]]) / norm)

    def seconds(name):
        return statistics.median(results[name]["seconds"])

    lines = [
        f"### {problem.name}, {kind}, T = {temperature}",
        "",
        f"{sampling.num_chains} chains × {sampling.num_samples} draws per example "
        f"({sampling.num_warmup} warm-up, {sampling.hmc_steps} leapfrog steps); "
        f"‖g‖ = {norm:.4g} ({'exact' if problem.exact else 'mean of all estimates'}); "
        f"{reps} interleaved repetitions; {load()} at the end.",
        "",
        "| route | s/call | first call (compile) s | rel. MCSE | gain (same draws) | "
        "gain (equal time) | time ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for label in names:
        if label not in results:
            lines.append(f"| {label} | refused: {names[label]} | | | | | |")
            continue
        base = label.split(" + ")[0] + " + none"
        row = f"| {label} | {seconds(label):.3g} | {results[label]['first'][0]:.3g} "
        row += f"({results[label]['first'][1]:.3g}) | {rel(label):.4f} |"
        if label == base:
            lines.append(row + " 1 | | |")
            continue
        match = next(n for n, (cv_label, _) in scaled.items() if cv_label == label)
        if rel(label) == 0:  # the controls span the series: exact, MCSE 0
            row += " ∞ (exact) | ∞ (exact) "
        else:
            row += f" {rel(base) / rel(label):.3g} | {rel(match) / rel(label):.3g} "
        row += f"| {seconds(match) / seconds(label):.2f} |"
        lines.append(row)
    for name, (cv_label, _) in scaled.items():
        lines.append(
            f"| {name} (for {cv_label}) | {seconds(name):.3g} | "
            f"{results[name]['first'][0]:.3g} ({results[name]['first'][1]:.3g}) | "
            f"{rel(name):.4f} | | | |"
        )
    print("\n".join(lines), flush=True)
    return lines + [""]


def section(name, reps) -> list[str]:
    if name == "quadratic":
        problem = quadratic()
        return [
            line for kind in ("covariance", "nudged") for line in case(problem, kind, 1.0, reps, 0)
        ]
    if name == "sigmoid":
        problem = sigmoid()
        return [
            line
            for t in (0.001, 0.005, 0.02)
            for kind in ("covariance", "nudged")
            for line in case(problem, kind, t, reps, 0)
        ]
    return case(main_job(), "covariance", 0.02, reps, 0)


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sections",
        nargs="+",
        default=["quadratic", "sigmoid", "main"],
        choices=("quadratic", "sigmoid", "main"),
    )
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", default="benchmarks/results/control_variates.md")
    args = parser.parse_args()
    header = [
        f"## Run of {datetime.datetime.now().isoformat(timespec='seconds')}",
        "",
        f"`python {shlex.join(sys.argv)}`; {platform.node()}, {platform.processor() or ''} "
        f"{os.cpu_count()} cores, {THREADS} threads, JAX {jax.__version__}, devices "
        f"{len(jax.devices())}; {load()} at the start.",
        "",
    ]
    body = [line for name in args.sections for line in section(name, args.reps)]
    with open(args.output, "a") as handle:
        handle.write("\n".join(header + body) + "\n")


if __name__ == "__main__":
    run()
