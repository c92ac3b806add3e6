"""The chain driver's loop: one ``lax.scan`` over warm-up and sampling (``samplers._driver``)
against the two it replaced (a warm-up loop, then a sampling loop), side by side in one process.

Both compile the kernel's step inside ``vmap`` over chains (and over targets where batched);
the two-loop driver compiles it twice. For each workload, in one process: the first call of
each route (tracing + compilation + run; 'compile' is the part that JAX's ``backend_compile``
events account for), then steady calls with new keys, interleaved (A, B, A, B, …), medians.
The routes draw the same chains from the same keys; the largest difference of their draws is
printed beside the times.

Workloads: NumPyro's HMC (8 leapfrog steps) on a 100-D correlated Gaussian, 8 chains; the same
batched over 16 targets; parallel tempering over 6 temperatures of that HMC; block Gibbs on a
64-200-10 layered spin network (two colour blocks), 32 chains. Float64, as the tests and the
command line run.

    python benchmarks/driver_loops.py [--reps N] [--threads N]
        [--output benchmarks/results/samplers.md]
"""

from __future__ import annotations

import argparse
import datetime
import functools
import platform
import statistics
import sys
import time

import _threads
from _report import append_run

THREAD_ENV = _threads.apply(sys.argv[1:], x64=True)

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import samplers  # noqa: E402
from samplers import _driver  # noqa: E402

COMPILE_EVENTS: list[float] = []
jax.monitoring.register_event_duration_secs_listener(
    lambda name, seconds, **_: COMPILE_EVENTS.append(seconds) if "backend_compile" in name else None
)


def two_loops(kernel, num_warmup, num_samples, rng_key, position, context, temperature):
    """The driver's chain before 2026-12-06: a warm-up ``lax.scan``, then a sampling one."""
    state = kernel.init(position, context, temperature)
    first_bad = jnp.where(_driver._all_finite(state.energy), -1, 0)
    keys = jax.random.split(rng_key, num_warmup + num_samples)
    steps = jnp.arange(1, num_warmup + num_samples + 1)

    def track(bad, state, t):
        return jnp.where((bad < 0) & ~_driver._all_finite(state.energy), t, bad)

    def warmup_step(carry, xs):
        state, bad = carry
        state, _ = kernel.step(xs[0], state, context)
        return (state, track(bad, state, xs[1])), None

    def sample_step(carry, xs):
        state, bad = carry
        state, info = kernel.step(xs[0], state, context)
        return (state, track(bad, state, xs[1])), (state.position, info)

    carry, _ = jax.lax.scan(
        warmup_step, (state, first_bad), (keys[:num_warmup], steps[:num_warmup])
    )
    (state, bad), (samples, info) = jax.lax.scan(
        sample_step, carry, (keys[num_warmup:], steps[num_warmup:])
    )
    return samples, info, state, bad


ROUTES = {"one loop (now)": _driver._run_chain, "two loops (before)": two_loops}
# One cache of compiled drivers per route, so that each route compiles once and its steady calls
# only run; on a miss the driver's body reads the module's ``_run_chain``, which use() sets.
CACHES = {route: functools.lru_cache(maxsize=64)(_driver._compiled.__wrapped__) for route in ROUTES}


def use(route):
    _driver._run_chain = ROUTES[route]
    _driver._compiled = CACHES[route]


def gaussian(dim=100, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    precision = q @ np.diag(np.geomspace(0.1, 3.0, dim) ** -2) @ q.T
    return jnp.asarray(precision), jnp.asarray(rng.normal(size=dim))


def gaussian_energy(position, context):
    precision, mean = context
    d = position - mean
    return 0.5 * d @ precision @ d


def workloads():
    precision, mean = gaussian()
    hmc = samplers.hmc(gaussian_energy, num_warmup=300, num_steps=8)
    start = jnp.zeros((8, 100))
    batch = 16
    means = mean + jnp.arange(batch)[:, None] * 0.01
    tempering = samplers.parallel_tempering(hmc)
    ladder = samplers.geometric_ladder(1.0, 4.0, 6)
    layers = (64, 200, 10)
    rng = np.random.default_rng(1)
    weights = tuple(
        jnp.asarray(rng.normal(0, 1 / np.sqrt(a), (a, b)))
        for a, b in zip(layers[:-1], layers[1:], strict=True)
    )
    bounds = np.cumsum((0, *layers))

    def ising(s, weights):
        parts = [s[bounds[k] : bounds[k + 1]] for k in range(len(layers))]
        return -sum(parts[k] @ weights[k] @ parts[k + 1] for k in range(len(weights)))

    gibbs = samplers.block_gibbs(
        ising, ((*range(bounds[0], bounds[1]), *range(bounds[2], bounds[3])),
                tuple(range(bounds[1], bounds[2])))
    )  # fmt: skip
    spins = jnp.asarray(rng.choice([-1.0, 1.0], (32, sum(layers))))
    return {
        "HMC, 100-D Gaussian, 8 chains, 300 + 1000 steps": lambda key: samplers.sample(
            key, hmc, start, (precision, mean), 1.0, num_samples=1000
        ),
        "HMC batched over 16 targets, 8 chains, 300 + 200 steps": lambda key: samplers.sample(
            key,
            hmc,
            jnp.zeros((batch, 8, 100)),
            (precision, means),
            1.0,
            num_samples=200,
            batched=True,
            context_axes=(None, 0),
        ),
        "tempering, HMC at 6 temperatures, 8 chains, 300 + 500 steps": lambda key: samplers.sample(
            key,
            tempering,
            jnp.zeros((8, 6, 100)),
            (precision, mean),
            ladder,
            num_samples=500,
        ),
        "block Gibbs, 64-200-10 spins, 32 chains, 100 + 1000 sweeps": lambda key: samplers.sample(
            key, gibbs, spins, weights, 1.0, num_samples=1000, num_warmup=100
        ),
    }


def timed(fn):
    COMPILE_EVENTS.clear()
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - start, sum(COMPILE_EVENTS)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", default="benchmarks/results/samplers.md")
    args = parser.parse_args()
    rows = []
    for name, run in workloads().items():
        first = {route: [] for route in ROUTES}
        steady = {route: [] for route in ROUTES}
        draws = {}
        # First calls twice per route, A, B, B, A, each from an empty cache: the first program
        # of a kind that a process compiles pays for more than its own compilation.
        for route in [*ROUTES, *reversed(list(ROUTES))]:
            use(route)
            CACHES[route].cache_clear()
            trace, seconds, compile_s = timed(functools.partial(run, jax.random.key(0)))
            draws[route] = np.asarray(trace.samples)
            first[route].append((seconds, compile_s))
        for rep in range(args.reps):
            for route in ROUTES if rep % 2 == 0 else reversed(list(ROUTES)):
                use(route)
                _, seconds, compile_s = timed(functools.partial(run, jax.random.key(rep + 1)))
                steady[route].append(seconds - compile_s)
        difference = float(np.max(np.abs(draws["one loop (now)"] - draws["two loops (before)"])))
        for route in ROUTES:
            rows.append(
                f"| {name} | {route} | {min(f[0] for f in first[route]):.2f} | "
                f"{min(f[1] for f in first[route]):.2f} | "
                f"{statistics.median(steady[route]):.3f} | {difference:.1e} |"
            )
            print(rows[-1], flush=True)
    header = "# Samplers benchmarks\n\n"
    text = (
        f"\n## Driver loops, {datetime.datetime.now():%Y-%m-%d %H:%M}\n\n"
        f"`python benchmarks/driver_loops.py --reps {args.reps}"
        f"{f' --threads {args.threads}' if args.threads else ''}` on {platform.machine()}, "
        f"{THREAD_ENV['BENCH_THREADS']} thread(s), JAX {jax.__version__}, float64. "
        "'first': the first call (s), 'compile': its backend compilation (s), each the smaller "
        f"of two (A, B, B, A); 'steady': median of {args.reps} interleaved calls (s) less any "
        "compilation; 'max abs draw difference': the largest difference between the two "
        "routes' draws from the same key.\n\n"
        "| workload | route | first | compile | steady | max abs draw difference |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    append_run(args.output, header, text)


if __name__ == "__main__":
    main()
