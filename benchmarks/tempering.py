"""Non-reversible parallel tempering with an optimised ladder against reversible PT, side by side.

Every section runs its routes in ONE process, on the same target, starts, number of replicas
R, chains, warm-up and draws, and appends to benchmarks/results/tempering.md (newest run last)
the command line, the date, the thread settings, the machine and its load.

1. Tilted double well E(x) = 5 (x² − 1)² + 0.1 x at T = 0.25 (barrier 20 T), geometric ladder
   to T = 5, HMC with 8 leapfrog steps (300 warm-up steps of step-size and mass adaptation):
   left-well weight at T = 0.25 against its exact value by quadrature.
2. 4 × 4 periodic Ising ferromagnet (J = 1) at T_c = 2/ln(1 + √2), geometric ladder to T = 5,
   block Gibbs over the two checkerboard colours (one sweep per step): ⟨|m|⟩ and ⟨m²⟩ at T_c
   against exact enumeration of the 2¹⁶ states.
3. The same on a 16 × 16 lattice, for speed (no exact value; routes compared with each
   other), with one more route: NRPT on the optimised ladder with ``--local-steps`` Gibbs
   sweeps per step, to show how much of the gap to 1/(2 + 2Λ̂) is local mixing.

Routes (every one a ``samplers.parallel_tempering`` kernel around the same local kernel):

- A: deterministic even/odd swaps (NRPT) on the ladder of ``samplers.optimise_schedule``
  (from the geometric ladder, ``--rounds`` rounds of doubling length);
- B: reversible (stochastic parity) with its own adaptive ladder (``adapt_ladder=True``, the
  package's even-swap-rate adaptation over the warm-up, from the geometric ladder);
- C: reversible on A's optimised ladder;
- D: NRPT on the geometric ladder (no schedule optimisation).

Protocol: each route's first call is ``samplers.sample`` (compilation, ``--warmup`` steps,
``--draws`` draws); then ``samplers.resume_tempering`` continues every route's chains for
``--draws`` steps per call: one call per route to compile, then ``--reps`` interleaved
repetitions A, B, C, D, A, … (each ending in ``block_until_ready``). Round trips (completed
lowest → highest → lowest trips of all walkers, the package's count) and swap statistics come
from the resumed calls (steady state); estimates and MCSE (``samplers.mcse_mean``, ArviZ bulk
ESS) from all draws. Round trips per second = round trips of all chains per steady call over
the median steady call time. Predictions: 1/(2 + 2Λ̂) (NRPT, R → ∞), 1/(2 + 2E) (NRPT) and
1/(2N + 2E) (reversible) for N = R − 1 pairs and E = Σ r_k/(1 − r_k) of the route's measured
rejections; the last two assume that one local step decorrelates the energy (Syed et al.,
JRSS B 2022).

    python benchmarks/tempering.py [--sections 1 2 3] [--replicas 16] [--chains 8]
        [--warmup 2000] [--draws 1000] [--reps 3] [--rounds 5] [--local-steps 4]
        [--threads N] [--quick] [--output benchmarks/results/tempering.md]

Threads: ``--threads N`` (default: every core the process may use) sets XLA_FLAGS
(``--xla_cpu_multi_thread_eigen``, ``intra_op_parallelism_threads``) and OMP/OpenBLAS/MKL
threads before JAX is imported, and pins the process to N cores; printed and written with the
results. float32 (x64 off). ``--quick``: 500 warm-up steps, 500 draws per call, 1 repetition,
4 rounds (marked as a quick run).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import statistics
import sys
import time
from typing import Any, NamedTuple


def thread_settings(argv: list[str]) -> dict[str, str]:
    """Environment for ``--threads N`` (default: every core this process may use)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--threads", type=int, default=None)
    available = sorted(os.sched_getaffinity(0))
    threads = parser.parse_known_args(argv)[0].threads or len(available)
    threads = max(1, min(threads, len(available)))
    if threads < len(available):
        os.sched_setaffinity(0, available[:threads])
    eigen = "true" if threads > 1 else "false"
    xla = os.environ.get("XLA_FLAGS", "")
    xla = f"{xla} --xla_cpu_multi_thread_eigen={eigen} intra_op_parallelism_threads={threads}"
    return {
        "XLA_FLAGS": xla.strip(),
        "OMP_NUM_THREADS": str(threads),
        "OPENBLAS_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "BENCH_THREADS": str(threads),
    }


THREAD_ENV = thread_settings(sys.argv[1:])
os.environ.update(THREAD_ENV)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from scipy import integrate, optimize  # noqa: E402

import samplers  # noqa: E402
from samplers import Kernel  # noqa: E402

COMPILE_EVENTS: list[float] = []
jax.monitoring.register_event_duration_secs_listener(
    lambda name, seconds, **_: COMPILE_EVENTS.append(seconds) if "backend_compile" in name else None
)
T_CRITICAL = 2.0 / np.log(1.0 + np.sqrt(2.0))


def timed(fn) -> tuple[Any, float, float]:
    """``fn()`` run to completion: its output, wall-clock seconds, seconds spent compiling."""
    COMPILE_EVENTS.clear()
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - start, sum(COMPILE_EVENTS)


# ------------------------------------------------------------------------------------------
# Targets and their exact references.


def double_well(x, tilt):
    return 5.0 * (x[0] ** 2 - 1.0) ** 2 + tilt * x[0]


def double_well_reference(temperature: float, tilt: float = 0.1) -> tuple[float, float]:
    """``(barrier top, exact left-well weight)`` by adaptive quadrature of ``exp(−E/T)``."""
    top = optimize.brentq(lambda x: 20.0 * x * (x**2 - 1) + tilt, -0.5, 0.5)

    def density(x):
        return np.exp(-(5.0 * (x**2 - 1) ** 2 + tilt * x) / temperature)

    left = integrate.quad(density, -4.0, top, epsabs=0, epsrel=1e-12)[0]
    right = integrate.quad(density, top, 4.0, epsabs=0, epsrel=1e-12)[0]
    return top, left / (left + right)


def ising(size: int):
    """Energy of the periodic size × size ferromagnet (J = 1) and its checkerboard blocks."""

    def energy(s, context):
        g = s.reshape(size, size)
        return -jnp.sum(g * (jnp.roll(g, 1, 0) + jnp.roll(g, 1, 1)))

    index = np.arange(size * size).reshape(size, size)
    colour = np.add.outer(np.arange(size), np.arange(size)) % 2
    blocks = tuple(tuple(int(i) for i in index[colour == c]) for c in (0, 1))
    return energy, blocks


def repeated(kernel: Kernel, num_steps: int) -> Kernel:
    """``num_steps`` steps of ``kernel`` as one step (the info of the last)."""

    def step(rng_key, state, context):
        def body(state, key):
            return kernel.step(key, state, context)

        state, infos = jax.lax.scan(body, state, jax.random.split(rng_key, num_steps))
        return state, jax.tree_util.tree_map(lambda x: x[-1], infos)

    return kernel._replace(step=step, name=f"{num_steps} × {kernel.name}")


# ------------------------------------------------------------------------------------------
# One section: the routes, interleaved.


class Run(NamedTuple):
    first: float
    first_compile: float
    resume_compile: float
    steady: list[float]
    chain_trips: np.ndarray  # (chain,) round trips over all steady calls
    swap_probability: np.ndarray  # (R−1,) mean over the steady calls
    estimates: np.ndarray  # (chain, draw, k) observables at the target temperature
    ladder: np.ndarray


def run_routes(routes, start, context, observable, args) -> dict[str, Run]:
    """Time every route: ``sample`` first, a compiling resume, then interleaved resumes."""
    state, draws, trips, probability, timing = {}, {}, {}, {}, {}
    for i, (name, (kernel, ladder)) in enumerate(routes.items()):
        trace, seconds, compiled = timed(
            lambda k=kernel, lad=ladder, s=i: samplers.sample(
                jax.random.key(s),
                k,
                start,
                context,
                jnp.asarray(lad, dtype=start.dtype),
                num_warmup=args.warmup,
                num_samples=args.draws,
            )
        )
        print(f"  {name}: first call {seconds:.2f} s (compiling {compiled:.2f} s)", flush=True)
        state[name], draws[name] = trace.final_state, [observable(trace.samples[:, :, 0])]
        timing[name] = [seconds, compiled, 0.0, []]
        trips[name], probability[name] = 0, []
    for rep in range(args.reps + 1):  # repetition 0 compiles the resumed run
        for i, (name, (kernel, _)) in enumerate(routes.items()):
            before = np.asarray(state[name].round_trips)
            trace, seconds, compiled = timed(
                lambda k=kernel, st=state[name], s=100 * rep + i: samplers.resume_tempering(
                    jax.random.key(10_000 + s), k, st, context, num_samples=args.draws
                )
            )
            state[name] = trace.final_state
            draws[name].append(observable(trace.samples[:, :, 0]))
            if rep == 0:
                timing[name][2] = compiled
                continue
            timing[name][3].append(seconds)
            trips[name] = trips[name] + np.asarray(state[name].round_trips) - before
            probability[name].append(np.asarray(trace.info.swap_probability).mean(axis=(0, 1)))
        if rep:
            summary = ", ".join(f"{n.split(':')[0]} {timing[n][3][-1]:.3g} s" for n in routes)
            print(f"  repetition {rep}/{args.reps}: {summary}", flush=True)
    return {
        name: Run(
            first=timing[name][0],
            first_compile=timing[name][1],
            resume_compile=timing[name][2],
            steady=timing[name][3],
            chain_trips=np.asarray(trips[name]),
            swap_probability=np.mean(probability[name], axis=0),
            estimates=np.concatenate(draws[name], axis=1),
            ladder=1.0 / np.asarray(state[name].inverse_temperatures[0], dtype=float),
        )
        for name in routes
    }


def report(title, intro, routes, runs, optimisation, observables, exact, args) -> list[str]:
    """Markdown for one section: the schedule rounds, the routes, and the predictions."""
    result, opt_seconds, opt_compile = optimisation
    num_chains = args.chains
    pairs = args.replicas - 1
    lines = [f"### {title}", "", *intro, ""]
    lines += [
        f"Schedule optimisation (route A's ladder): {len(result.rounds)} rounds of "
        f"{result.rounds[0].num_steps}·2ⁿ steps, {args.warmup_local} local warm-up steps "
        f"first, {sum(r.seconds for r in result.rounds):.1f} s over the rounds "
        f"(whole call {opt_seconds:.1f} s, of which compiling {opt_compile:.1f} s). "
        f"Suggested R for Λ̂ = {result.barrier:.2f}: {result.suggested_num_replicas} "
        "(rejection ≤ 0.5 per pair).",
        "",
        "| round | steps | Λ̂ | rejection min–max | round trips / step / chain | seconds |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for n, r in enumerate(result.rounds):
        lines.append(
            f"| {n} | {r.num_steps} | {r.barrier:.3f} | {r.rejection.min():.3f}–"
            f"{r.rejection.max():.3f} | {r.round_trip_rate:.4f} | {r.seconds:.2f} |"
        )
    lines += ["", f"Optimised ladder: {np.array2string(result.temperatures, precision=3)}."]
    adaptive = next((run.ladder for name, run in runs.items() if name.startswith("B")), None)
    if adaptive is not None:
        lines.append(f"B's adapted ladder: {np.array2string(adaptive, precision=3)}.")
    lines.append("")
    rt_per_s = {}
    for name, run in runs.items():
        steps = args.draws * len(run.steady)
        rt_per_s[name] = run.chain_trips.sum() / steps * args.draws / statistics.median(run.steady)
    reference_b = next(n for n in runs if n.startswith("B"))
    reference_c = next(n for n in runs if n.startswith("C"))
    header = (
        "| route | first (s) | of which compiling (s) | resume compile (s) | steady median "
        f"(min–max) (s) per {args.draws} steps | Λ̂ = Σ r | round trips / step / chain "
        "(± s.e.) | predicted (ELE) | 1/(2+2Λ̂) | round trips / s | ÷ B | ÷ C | "
        + " | ".join(f"{o} ± MCSE (error/MCSE)" for o in observables)
        + " |"
    )
    lines += [header, "|" + " --- |" * (12 + len(observables))]
    for name, run in runs.items():
        steps = args.draws * len(run.steady)
        per_chain = run.chain_trips / steps
        rate, se = per_chain.mean(), per_chain.std(ddof=1) / np.sqrt(num_chains)
        rejection = 1.0 - run.swap_probability
        barrier = rejection.sum()
        excess = np.sum(rejection / np.maximum(1.0 - rejection, 1e-12))
        nrpt = "deterministic" in routes[name][0].name
        predicted = 1.0 / (2.0 + 2.0 * excess) if nrpt else 1.0 / (2.0 * pairs + 2.0 * excess)
        cells = []
        for k, _ in enumerate(observables):
            x = run.estimates[..., k]
            mcse = float(samplers.mcse_mean(x))
            estimate = x.mean()
            error = "" if exact is None else f" ({(estimate - exact[k]) / mcse:+.1f})"
            cells.append(f"{estimate:.4f} ± {mcse:.4f}{error}")
        spread = (
            f"{statistics.median(run.steady):.3g} ({min(run.steady):.3g}–{max(run.steady):.3g})"
        )
        lines.append(
            f"| {name} | {run.first:.2f} | {run.first_compile:.2f} | {run.resume_compile:.2f} | "
            f"{spread} | {barrier:.3f} | {rate:.4f} ± {se:.4f} | {predicted:.4f} | "
            f"{1.0 / (2.0 + 2.0 * barrier):.4f} | {rt_per_s[name]:.1f} | "
            f"{rt_per_s[name] / rt_per_s[reference_b]:.2f} | "
            f"{rt_per_s[name] / rt_per_s[reference_c]:.2f} | " + " | ".join(cells) + " |"
        )
    if exact is not None:
        lines += [
            "",
            "Exact: "
            + ", ".join(f"{o} = {v:.4f}" for o, v in zip(observables, exact, strict=True))
            + ".",
        ]
    lines.append("")
    return lines


def section(
    args, title, intro, local, context, start, geometric, observable, observables, exact, extra=None
):
    print(f"\n{title}", flush=True)
    result, seconds, compiled = timed(
        lambda: samplers.optimise_schedule(
            jax.random.key(1),
            local,
            start,
            context,
            geometric,
            num_rounds=args.rounds,
            steps_per_chunk=args.draws,
        )
    )
    print(
        f"  optimise_schedule: {seconds:.1f} s (compiling {compiled:.1f} s), Λ̂ {result.barrier:.3f}"
    )
    deterministic = samplers.parallel_tempering(local)
    routes = {
        "A: NRPT, optimised ladder": (deterministic, result.temperatures),
        "B: reversible, adaptive ladder": (
            samplers.parallel_tempering(
                local, swaps="stochastic", adapt_ladder=True, num_warmup=args.warmup
            ),
            geometric,
        ),
        "C: reversible, optimised ladder": (
            samplers.parallel_tempering(local, swaps="stochastic"),
            result.temperatures,
        ),
        "D: NRPT, geometric ladder": (deterministic, geometric),
    }
    if extra is not None:
        routes[f"E: NRPT, optimised ladder, {args.local_steps} local steps per step"] = (
            samplers.parallel_tempering(extra),
            result.temperatures,
        )
    runs = run_routes(routes, start, context, observable, args)
    return report(title, intro, routes, runs, (result, seconds, compiled), observables, exact, args)


def section_double_well(args) -> list[str]:
    args.warmup_local = 300
    local = samplers.hmc(double_well, num_warmup=300, num_steps=8)
    ladder = np.asarray(samplers.geometric_ladder(0.25, 5.0, args.replicas))
    top, exact = double_well_reference(0.25)
    start = jnp.ones((args.chains, args.replicas, 1), jnp.float32)  # all in the minority well
    title = (
        f"1. Tilted double well at T = 0.25, HMC (8 leapfrog steps), R = {args.replicas}, "
        f"{args.chains} chains"
    )
    intro = [
        f"E(x) = 5 (x² − 1)² + 0.1 x; geometric ladder 0.25 → 5; every chain starts at x = 1 "
        f"(the minority well) at every rung; {args.warmup} warm-up steps (HMC adapts over the "
        f"first 300), {args.draws} steps per call, {args.reps} interleaved repetition(s)."
    ]
    return section(
        args, title, intro, local, 0.1, start, ladder,
        lambda x: np.asarray(x[..., :1] < top, dtype=float), ["left-well weight"], [exact],
    )  # fmt: skip


def section_ising(args, size: int) -> list[str]:
    args.warmup_local = 0
    energy, blocks = ising(size)
    n = size * size
    samplers.check_spin_energy(energy, n, (), blocks)  # once: multilinear, blocks independent
    local = samplers.block_gibbs(energy, blocks, check_energy=False)
    ladder = np.asarray(samplers.geometric_ladder(float(T_CRITICAL), 5.0, args.replicas))
    start = jax.random.rademacher(jax.random.key(3), (args.chains, args.replicas, n), jnp.float32)

    def observable(s):
        m = np.asarray(jnp.mean(s, axis=-1))
        return np.stack([np.abs(m), m**2], axis=-1)

    exact = None
    if size <= 4:
        ref = samplers.enumerate_spins(
            energy, n, (), float(T_CRITICAL),
            observable=lambda s: jnp.stack([jnp.abs(jnp.mean(s)), jnp.mean(s) ** 2]),
        )  # fmt: skip
        exact = [float(v) for v in ref.expectation]
    number = 2 if size <= 4 else 3
    title = (
        f"{number}. {size} × {size} periodic Ising at T_c = {T_CRITICAL:.4f}, checkerboard block "
        f"Gibbs, R = {args.replicas}, {args.chains} chains"
    )
    intro = [
        f"J = 1; geometric ladder T_c → 5; random ±1 starts; one step = one sweep (both "
        f"colours) then one swap sweep; {args.warmup} warm-up steps, {args.draws} steps per "
        f"call, {args.reps} interleaved repetition(s). The energy's block structure was checked "
        "once (samplers.check_spin_energy), then check_energy=False."
    ]
    extra = repeated(local, args.local_steps) if size > 4 and args.local_steps > 1 else None
    return section(
        args, title, intro, local, (), start, ladder, observable, ["⟨|m|⟩", "⟨m²⟩"], exact,
        extra,
    )  # fmt: skip


SECTIONS = {
    1: section_double_well,
    2: lambda args: section_ising(args, 4),
    3: lambda args: section_ising(args, 16),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", type=int, nargs="+", default=[1, 2, 3], choices=[1, 2, 3])
    parser.add_argument("--replicas", type=int, default=16)
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--draws", type=int, default=1000, help="steps per call")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default all)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", default="benchmarks/results/tempering.md")
    args = parser.parse_args()
    if args.quick:
        args.warmup, args.draws, args.reps, args.rounds = 500, 500, 1, 4
    if jax.config.jax_enable_x64:
        raise SystemExit("run with x64 off: these sections are float32")
    settings = ", ".join(f"{k}={v!r}" for k, v in THREAD_ENV.items())
    print(f"thread settings (set before importing JAX): {settings}", flush=True)
    started = datetime.datetime.now()
    load_start = os.getloadavg()
    body = []
    for number in args.sections:
        body += SECTIONS[number](args)
    load = os.getloadavg()
    command = shlex.join(["python", sys.argv[0], *sys.argv[1:]])
    quick = " (quick run)" if args.quick else ""
    text = "\n".join(
        [
            f"## Run of {started.isoformat(timespec='minutes')}{quick}",
            "",
            f"Command: `{command}`",
            "",
            f"Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
            f"{len(os.sched_getaffinity(0))} used, shared with other jobs (load average "
            f"{load_start[0]:.2f}, {load_start[1]:.2f}, {load_start[2]:.2f} at the start; "
            f"{load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} at the end); "
            f"{jax.devices()[0].platform.upper()}, JAX {jax.__version__}, float32 (x64 off). "
            f"Threads: {settings}. Wall time of the run: "
            f"{(datetime.datetime.now() - started).total_seconds():.0f} s.",
            "",
            *body,
        ]
    )
    print(text)
    exists = os.path.exists(args.output)
    with open(args.output, "a", encoding="utf-8") as handle:
        if not exists:
            handle.write(
                "# Parallel tempering benchmarks\n\n"
                "Produced by `benchmarks/tempering.py`; newest run last. How to read the tables: "
                "see the script's docstring.\n\n"
            )
        handle.write(text + "\n")


if __name__ == "__main__":
    main()
