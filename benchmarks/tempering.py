"""Non-reversible parallel tempering with an optimised ladder against reversible PT, side by side.

Every section runs its routes in ONE process (same target, starts, R, chains, warm-up, draws)
and appends to benchmarks/results/tempering.md (newest run last) the command line, the date,
the thread settings, the machine and its load average (at the start of each section too).

1. Tilted double well E(x) = 5 (x² − 1)² + 0.1 x at T = 0.25 (barrier 20 T), geometric ladder
   to T = 5, HMC with 8 leapfrog steps (300 warm-up steps of step-size and mass adaptation):
   left-well weight at T = 0.25 against its exact value by quadrature. R = ``--replicas``.
2. 4 × 4 periodic Ising ferromagnet (J = 1) at T_c = 2/ln(1 + √2), geometric ladder to T = 5,
   block Gibbs over the two checkerboard colours: ⟨|m|⟩, ⟨m²⟩, ⟨E⟩/N at T_c against exact
   enumeration of the 2¹⁶ states. R = ``--replicas``, one sweep per swap step.
3. The same on a 16 × 16 lattice, for speed: R = ``--large-replicas``, ``--local-steps``
   sweeps per swap step; ⟨E⟩/N against Kaufman's exact partition function of the finite
   torus (checked against the 4 × 4 enumeration); ⟨|m|⟩, ⟨m²⟩ compared between routes.

Routes (``samplers.parallel_tempering`` around the same local kernel, the same local steps
per swap step unless named): A: NRPT (deterministic even/odd swaps) on the ladder of
``samplers.optimise_schedule`` (from the geometric ladder, ``--rounds`` rounds of doubling
length); B: reversible (stochastic parity) on its own adaptive ladder (``adapt_ladder=True``
over the warm-up, from the geometric ladder); C: reversible on A's ladder; D: NRPT on the
geometric ladder. Section 3 with ``--local-steps`` > 1 adds, on A's ladder with ONE sweep per
swap step, E: NRPT (what the extra sweeps buy) and F: reversible (its cheapest setting: its
walkers diffuse over the ladder whatever the local mixing, so A is compared with it per
second too).

Protocol: each route's first call is ``samplers.sample`` (compilation, the section's warm-up,
its draws); then ``samplers.resume_tempering`` continues every route's chains by as many steps
per call: one call per route to compile, then ``--reps`` interleaved repetitions A, B, C, …,
A, B, … (each ending in ``block_until_ready``). Section 3 warms up longer: a reversible walker
needs thousands of steps to first reach an end of 64 rungs, and until every walker has, fewer
round trips complete than in the steady state. Round trips (lowest → highest → lowest trips
of all walkers, the package's count) and swap statistics come from the steady calls;
estimates and MCSE (``samplers.mcse_mean``, ArviZ bulk ESS) from all draws. Round trips per
second: all chains' round trips per steady call over each call's seconds (median and range).
"÷ X": per step, the ratio of round trips per step; per second, that ratio times t_X / t_route
of the same repetition (median and range; load that changes between repetitions cancels).
Predictions: 1/(2 + 2Λ̂) (NRPT, R → ∞), 1/(2 + 2E) (NRPT) and 1/(2N + 2E) (reversible),
N = R − 1 pairs, E = Σ r_k/(1 − r_k) of the route's rejections; the last two assume that the
local steps between swap sweeps decorrelate the energy (Syed et al., JRSS B 2022).
Gap = rate · (2 + 2Λ̂) − 1.

    python benchmarks/tempering.py [--sections 1 2 3] [--replicas 16] [--large-replicas 64]
        [--local-steps 2] [--chains 8] [--warmup 2000] [--large-warmup 10000] [--draws 1000]
        [--large-draws 500] [--reps 5] [--rounds 5] [--threads N] [--quick] [--output FILE]

Threads: ``--threads N`` (default: all cores this process may use) sets XLA_FLAGS and
OMP/OpenBLAS/MKL threads before JAX is imported and pins the process to N cores. float32.
``--quick``: 500 warm-up steps, 250 steps per call, 1 repetition, 3 rounds (marked as such).
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

import _threads
from _report import append_run

THREAD_ENV = _threads.apply(sys.argv[1:], x64=False)

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


def ising_mean_energy(size: int, temperature: float, h: float = 1e-5) -> float:
    """Exact ⟨E⟩ of the periodic size × size ferromagnet: −d ln Z/dK by central difference.

    ln Z from Kaufman's (Phys. Rev. 76, 1949) formula for the finite torus: Z = ½ (2 sinh 2K)^{N/2}
    (Z₁ + Z₂ + Z₃ + Z₄), Z₁,₂ = Π_r 2 cosh, sinh(L γ_{2r+1}/2), Z₃,₄ = the same over γ_{2r},
    cosh γ_l = cosh 2K coth 2K − cos(π l/L), γ₀ = 2K + ln tanh K (negative below T_c).
    Float64; the difference step's error is below 1e-7 relative.
    """

    def log_z(k):
        c = np.cosh(2 * k) / np.tanh(2 * k) - np.cos(np.pi * np.arange(1, 2 * size) / size)
        gamma = np.concatenate([[2 * k + np.log(np.tanh(k))], np.arccosh(c)])
        terms = [2 * f(size * g / 2) for g in (gamma[1::2], gamma[::2]) for f in (np.cosh, np.sinh)]
        logs = [np.sum(np.log(np.abs(t))) if np.all(t != 0) else -np.inf for t in terms]
        signs = [np.prod(np.sign(t)) for t in terms]
        top = max(logs)  # Z₄ vanishes at T_c (γ₀ = 0): its log is −∞
        total = sum(sign * np.exp(lg - top) for sign, lg in zip(signs, logs, strict=True))
        return np.log(0.5) + size**2 / 2 * np.log(2 * np.sinh(2 * k)) + top + np.log(total)

    return float(-(log_z(1 / temperature + h) - log_z(1 / temperature - h)) / (2 * h))


class Route(NamedTuple):
    kernel: Kernel
    ladder: Any
    local_steps: int


class Run(NamedTuple):
    first: float
    first_compile: float
    resume_compile: float
    steady: list[float]  # seconds per steady call, one per repetition
    chain_trips: np.ndarray  # (chain,) round trips over all steady calls
    swap_probability: np.ndarray  # (R−1,) mean over the steady calls
    estimates: np.ndarray  # (chain, draw, k) observables at the target temperature
    ladder: np.ndarray  # chain 0's ladder at the end


def run_routes(routes: dict[str, Route], start, context, observable, args) -> dict[str, Run]:
    """Time every route: ``sample`` first, a compiling resume, then interleaved resumes."""
    state, draws, trips, probability, timing = {}, {}, {}, {}, {}
    for i, (name, route) in enumerate(routes.items()):
        trace, seconds, compiled = timed(
            lambda r=route, s=i: samplers.sample(
                jax.random.key(s), r.kernel, start, context,
                jnp.asarray(r.ladder, dtype=start.dtype), num_warmup=args.warmup,
                num_samples=args.draws,
            )
        )  # fmt: skip
        print(f"  {name}: first call {seconds:.2f} s (compiling {compiled:.2f} s)", flush=True)
        state[name], draws[name] = trace.final_state, [observable(trace)]
        timing[name] = [seconds, compiled, 0.0, []]
        trips[name], probability[name] = 0, []
    for rep in range(args.reps + 1):  # repetition 0 compiles the resumed run
        for i, (name, route) in enumerate(routes.items()):
            before = np.asarray(state[name].round_trips)
            trace, seconds, compiled = timed(
                lambda k=route.kernel, st=state[name], s=100 * rep + i: samplers.resume_tempering(
                    jax.random.key(10_000 + s), k, st, context, num_samples=args.draws
                )
            )
            state[name] = trace.final_state
            draws[name].append(observable(trace))
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
            *timing[name],
            chain_trips=np.asarray(trips[name]),
            swap_probability=np.mean(probability[name], axis=0),
            estimates=np.concatenate(draws[name], axis=1),
            ladder=1.0 / np.asarray(state[name].inverse_temperatures[0], dtype=float),
        )
        for name in routes
    }


def rate_of(run: Run, args) -> float:
    """Round trips per step per chain over the steady calls."""
    return float(run.chain_trips.mean() / (args.draws * len(run.steady)))


def ratio(runs: dict[str, Run], name: str, other: str, args) -> tuple[float, list[float]]:
    """Round trips of ``name`` ÷ those of ``other``: per step, and per second per repetition."""
    per_step = rate_of(runs[name], args) / rate_of(runs[other], args)
    per_rep = [per_step * b / a for a, b in zip(runs[name].steady, runs[other].steady, strict=True)]
    return per_step, per_rep


def spread(values) -> str:
    return f"{statistics.median(values):.3g} ({min(values):.3g}–{max(values):.3g})"


def report(title, intro, routes, runs, optimisation, observables, exact, args) -> list[str]:
    """Markdown for one section: the schedule rounds, the routes, and the predictions."""
    result, opt_seconds, opt_compile = optimisation
    pairs = len(result.temperatures) - 1
    lines = [f"### {title}", "", *intro, ""]
    lines += [
        f"Schedule optimisation (route A's ladder, A's kernel): {len(result.rounds)} rounds of "
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
    adaptive = runs[_named(runs, "B")].ladder
    lines += [f"B's adapted ladder: {np.array2string(adaptive, precision=3)}.", ""]
    header = (
        f"| route | local steps per swap | first (s) | of which compiling (s) | resume compile "
        f"(s) | steady median (min–max) (s) per {args.draws} steps | Λ̂ = Σ r | round trips / "
        "step / chain (± s.e.) | predicted (ELE) | 1/(2+2Λ̂) | gap | round trips / s, median "
        "(min–max) | ÷ B per step | ÷ B per s | ÷ C per step | ÷ C per s | "
        + " | ".join(f"{o} ± MCSE (error/MCSE)" for o in observables)
        + " |"
    )
    lines += [header, "|" + " --- |" * (16 + len(observables))]
    for name, run in runs.items():
        per_chain = run.chain_trips / (args.draws * len(run.steady))
        rate, se = per_chain.mean(), per_chain.std(ddof=1) / np.sqrt(per_chain.size)
        rejection = 1.0 - run.swap_probability
        barrier = rejection.sum()
        excess = np.sum(rejection / np.maximum(1.0 - rejection, 1e-12))
        nrpt = "deterministic" in routes[name].kernel.name
        predicted = 1.0 / (2.0 + 2.0 * excess) if nrpt else 1.0 / (2.0 * pairs + 2.0 * excess)
        per_second = [run.chain_trips.sum() / len(run.steady) / t for t in run.steady]
        cells = []
        for k, _ in enumerate(observables):
            x = run.estimates[..., k]
            mcse = float(samplers.mcse_mean(x))
            error = "" if exact[k] is None else f" ({(x.mean() - exact[k]) / mcse:+.1f})"
            cells.append(f"{x.mean():.4f} ± {mcse:.4f}{error}")
        ratios = []
        for other in ("B", "C"):
            step, second = ratio(runs, name, _named(runs, other), args)
            ratios += [f"{step:.2f}", spread(second)]
        lines.append(
            f"| {name} | {routes[name].local_steps} | {run.first:.2f} | {run.first_compile:.2f} "
            f"| {run.resume_compile:.2f} | {spread(run.steady)} | {barrier:.3f} | {rate:.4f} ± "
            f"{se:.4f} | {predicted:.4f} | {1.0 / (2.0 + 2.0 * barrier):.4f} | "
            f"{rate * (2.0 + 2.0 * barrier) - 1.0:+.1%} | {spread(per_second)} | "
            + " | ".join(ratios + cells)
            + " |"
        )
    known = [(o, v) for o, v in zip(observables, exact, strict=True) if v is not None]
    lines += ["", "Exact: " + ", ".join(f"{o} = {v:.4f}" for o, v in known) + "."]
    lines += verdict(runs, args)
    return [*lines, ""]


def _named(runs, letter: str) -> str:
    return next(n for n in runs if n.startswith(f"{letter}:"))


def verdict(runs: dict[str, Run], args) -> list[str]:
    """Item 3 of issue 12 for route A: its gap, and its ratios to the reversible routes."""
    a = _named(runs, "A")
    gap = rate_of(runs[a], args) * (2.0 + 2.0 * (1.0 - runs[a].swap_probability).sum()) - 1.0
    best = max((_named(runs, x) for x in "BC"), key=lambda n: rate_of(runs[n], args))
    text = f"Route A: round trips per step {gap:+.1%} from 1/(2 + 2Λ̂)"
    others = [
        (best, "the better reversible route with the same local work, by round trips per step")
    ]
    if any(n.startswith("F:") for n in runs):
        others.append((_named(runs, "F"), "the reversible sampler with one sweep per swap step"))
    for other, what in others:
        step, second = ratio(runs, a, other, args)
        text += f"; ÷ {other.split(':')[0]} ({what}): {step:.2f} per step, {spread(second)} per s"
    return ["", text + "."]


def section(args, title, intro, local, context, start, geometric, observable, observables, exact):
    print(f"\n{title}", flush=True)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    intro = [f"{intro[0]} Load average at the start of the section: {load}.", *intro[1:]]
    k = args.section_local_steps
    result, seconds, compiled = timed(
        lambda: samplers.optimise_schedule(
            jax.random.key(1), local, start, context, geometric, num_rounds=args.rounds,
            steps_per_chunk=args.draws, local_steps=k,
        )
    )  # fmt: skip
    print(
        f"  optimise_schedule: {seconds:.1f} s (compiling {compiled:.1f} s), Λ̂ {result.barrier:.3f}"
    )

    def pt(ladder, swaps="deterministic", local_steps=k, **adapt) -> Route:
        kernel = samplers.parallel_tempering(local, swaps=swaps, local_steps=local_steps, **adapt)
        return Route(kernel, ladder, local_steps)

    adaptive = dict(adapt_ladder=True, num_warmup=args.warmup)
    routes = {
        "A: NRPT, optimised ladder": pt(result.temperatures),
        "B: reversible, adaptive ladder": pt(geometric, "stochastic", **adaptive),
        "C: reversible, optimised ladder": pt(result.temperatures, "stochastic"),
        "D: NRPT, geometric ladder": pt(geometric),
    }
    optimised = result.temperatures
    if k > 1:
        routes["E: NRPT, optimised ladder, 1 sweep"] = pt(optimised, local_steps=1)
        routes["F: reversible, optimised ladder, 1 sweep"] = pt(optimised, "stochastic", 1)
    runs = run_routes(routes, start, context, observable, args)
    return report(title, intro, routes, runs, (result, seconds, compiled), observables, exact, args)


def section_double_well(args) -> list[str]:
    args.warmup_local = 300
    local = samplers.hmc(double_well, num_warmup=300, num_steps=8)
    ladder = np.asarray(samplers.geometric_ladder(0.25, 5.0, args.replicas))
    top, exact = double_well_reference(0.25)
    start = jnp.ones((args.chains, args.replicas, 1), jnp.float32)  # all in the minority well
    title = f"1. Tilted double well at T = 0.25, HMC (8 leapfrog steps), R = {args.replicas}"
    intro = [
        f"{args.chains} chains; E(x) = 5 (x² − 1)² + 0.1 x; geometric ladder 0.25 → 5; every "
        "chain starts at x = 1 "
        f"(the minority well) at every rung; {args.warmup} warm-up steps (HMC adapts over the "
        f"first 300), {args.draws} steps per call, {args.reps} interleaved repetition(s)."
    ]
    return section(
        args, title, intro, local, 0.1, start, ladder,
        lambda trace: np.asarray(trace.samples[:, :, 0, :1] < top, dtype=float),
        ["left-well weight"], [exact],
    )  # fmt: skip


def section_ising(args, size: int) -> list[str]:
    args.warmup_local = 0
    energy, blocks = ising(size)
    n = size * size
    samplers.check_spin_energy(energy, n, (), blocks)  # once: multilinear, blocks independent
    local = samplers.block_gibbs(energy, blocks, check_energy=False)
    ladder = np.asarray(samplers.geometric_ladder(float(T_CRITICAL), 5.0, args.replicas))
    start = jax.random.rademacher(jax.random.key(3), (args.chains, args.replicas, n), jnp.float32)

    def observable(trace):
        m = np.asarray(jnp.mean(trace.samples[:, :, 0], axis=-1), dtype=float)
        energy_per_spin = np.asarray(trace.info.local.energy[:, :, 0], dtype=float) / n
        return np.stack([np.abs(m), m**2, energy_per_spin], axis=-1)

    kaufman = ising_mean_energy(size, float(T_CRITICAL)) / n
    exact = [None, None, kaufman]
    if size <= 4:
        ref = samplers.enumerate_spins(
            energy, n, (), float(T_CRITICAL),
            observable=lambda s: jnp.stack([jnp.abs(jnp.mean(s)), jnp.mean(s) ** 2]),
        )  # fmt: skip
        enumerated = float(ref.mean_energy) / n
        if abs(enumerated - kaufman) > 1e-5:  # float32 enumeration; Kaufman in float64
            raise SystemExit(f"Kaufman's ⟨E⟩/N {kaufman!r} ≠ enumeration {enumerated!r}")
        exact = [*(float(v) for v in ref.expectation), enumerated]
    k = args.section_local_steps
    title = (
        f"{2 if size <= 4 else 3}. {size} × {size} periodic Ising at T_c = {T_CRITICAL:.4f}, "
        f"checkerboard block Gibbs, R = {args.replicas}, {args.chains} chains, {k} sweep(s) per "
        "swap step"
    )
    intro = [
        f"J = 1; geometric ladder T_c → 5; random ±1 starts; one step = {k} sweep(s) (both "
        f"colours) then one swap sweep; {args.warmup} warm-up steps, {args.draws} steps per "
        f"call, {args.reps} interleaved repetition(s). The energy's block structure was checked "
        "once (samplers.check_spin_energy), then check_energy=False. Exact ⟨E⟩/N: "
        + ("enumeration (Kaufman's formula agrees to 1e-5)." if size <= 4 else "Kaufman's formula.")
    ]
    return section(
        args, title, intro, local, (), start, ladder, observable, ["⟨|m|⟩", "⟨m²⟩", "⟨E⟩/N"],
        exact,
    )  # fmt: skip


def part(a, replicas: int, warmup: int, draws: int, local_steps: int) -> argparse.Namespace:
    """The arguments with one section's R, warm-up, steps per call and local steps per swap."""
    changed = dict(replicas=replicas, warmup=warmup, draws=draws, section_local_steps=local_steps)
    return argparse.Namespace(**{**vars(a), **changed})


SECTIONS = {
    1: lambda a: section_double_well(part(a, a.replicas, a.warmup, a.draws, 1)),
    2: lambda a: section_ising(part(a, a.replicas, a.warmup, a.draws, 1), 4),
    3: lambda a: section_ising(
        part(a, a.large_replicas, a.large_warmup, a.large_draws, a.local_steps), 16
    ),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", type=int, nargs="+", default=[1, 2, 3], choices=[1, 2, 3])
    for name, default, meaning in [
        ("replicas", 16, "R of sections 1 and 2"), ("large-replicas", 64, "R of section 3"),
        ("local-steps", 2, "sweeps per swap step in section 3"), ("chains", 8, ""),
        ("warmup", 2000, "sections 1 and 2"), ("large-warmup", 10000, "section 3"),
        ("draws", 1000, "steps per call, sections 1 and 2"),
        ("large-draws", 500, "steps per call, section 3"), ("reps", 5, ""), ("rounds", 5, ""),
        ("threads", None, "CPU threads (default all)"),
    ]:  # fmt: skip
        parser.add_argument(f"--{name}", type=int, default=default, help=meaning or None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", default="benchmarks/results/tempering.md")
    args = parser.parse_args()
    if args.quick:
        args.warmup, args.large_warmup, args.reps, args.rounds = 500, 500, 1, 3
        args.draws = args.large_draws = 250
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
            f"## Run of {started.isoformat(timespec='minutes')}{quick}\n",
            f"Command: `{command}`\n",
            f"Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
            f"{len(os.sched_getaffinity(0))} used, shared with other jobs (load average "
            f"{load_start[0]:.2f}, {load_start[1]:.2f}, {load_start[2]:.2f} at the start; "
            f"{load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} at the end); "
            f"{jax.devices()[0].platform.upper()}, JAX {jax.__version__}, float32 (x64 off). "
            f"Threads: {settings}. Wall time of the run: "
            f"{(datetime.datetime.now() - started).total_seconds():.0f} s.\n",
            *body,
        ]
    )
    print(text)
    header = (
        "# Parallel tempering benchmarks\n\n"
        "Produced by `benchmarks/tempering.py`; newest run last. How to read the tables: "
        "see the script's docstring.\n\n"
    )
    append_run(args.output, header, text + "\n")


if __name__ == "__main__":
    main()
