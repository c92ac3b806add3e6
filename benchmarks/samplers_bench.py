"""Side-by-side benchmarks of the samplers package (not run by the test suite).

Three comparisons in one run, results appended to benchmarks/results/samplers.md:

1. ESS per second of ``samplers.sample(nuts(...))`` against NumPyro's
   ``MCMC(NUTS(potential_fn=...), chain_method="vectorized")`` on the same target with the same
   number of chains, warm-up and draws;
2. parallel tempering against plain NUTS on the tilted double well at T = 0.25: R-hat and ESS
   per second of the left-well weight, with its exact value by quadrature;
3. block-Gibbs sweeps per second on a layered spin network of a few thousand spins.

Run from the repository root:

    PYTHONPATH=. python benchmarks/samplers_bench.py [--output benchmarks/results/samplers.md]

Timings are wall-clock seconds of a compiled call (``block_until_ready``); the first call of
each configuration, which includes compilation, is reported separately.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

import jax
from _report import append_run

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from numpyro.infer import MCMC, NUTS  # noqa: E402
from scipy import integrate, optimize  # noqa: E402

import samplers  # noqa: E402

COMPILE_EVENTS: list[float] = []
jax.monitoring.register_event_duration_secs_listener(
    lambda name, seconds, **_: COMPILE_EVENTS.append(seconds) if "backend_compile" in name else None
)


def timed(fn):
    """Wall-clock seconds of ``fn()`` and the part of them spent in XLA compilation."""
    COMPILE_EVENTS.clear()
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - start, sum(COMPILE_EVENTS)


# ------------------------------------------------------------------------------------------
# 1. NUTS: this package against NumPyro's MCMC driver.

DIM = 10
NUM_CHAINS = 8
NUM_WARMUP = 500
NUM_SAMPLES = 1000


def correlated_gaussian(dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    scales = np.geomspace(0.1, 3.0, dim)
    precision = q @ np.diag(1.0 / scales**2) @ q.T
    return precision, rng.normal(size=dim)


def gaussian_energy(position, context):
    precision, mean = context
    d = position - mean
    return 0.5 * d @ precision @ d


def bench_nuts(rows):
    precision, mean = correlated_gaussian(DIM)
    context = (jnp.asarray(precision), jnp.asarray(mean))
    start = jnp.zeros((NUM_CHAINS, DIM))
    kernel = samplers.nuts(gaussian_energy, num_warmup=NUM_WARMUP)

    def ours(seed):
        return samplers.sample(
            jax.random.key(seed), kernel, start, context, 1.0, num_samples=NUM_SAMPLES
        ).samples

    def potential_fn(z):
        return gaussian_energy(z, context)

    # One MCMC object for both calls, so that its second run can reuse what it compiled.
    mcmc = MCMC(
        NUTS(potential_fn=potential_fn),
        num_warmup=NUM_WARMUP,
        num_samples=NUM_SAMPLES,
        num_chains=NUM_CHAINS,
        chain_method="vectorized",
        progress_bar=False,
    )

    def numpyro(seed):
        mcmc.run(jax.random.key(seed), init_params=start)
        return mcmc.get_samples(group_by_chain=True)

    for name, fn in (("samplers.sample(nuts)", ours), ("numpyro MCMC(NUTS, vectorized)", numpyro)):
        _, first, _ = timed(lambda fn=fn: fn(0))
        draws, warm, compile_s = timed(lambda fn=fn: fn(1))
        draws = np.asarray(draws)
        ess = samplers.ess_bulk(draws)
        error = np.abs(draws.mean(axis=(0, 1)) - mean) / samplers.mcse_mean(draws)
        rows.append(
            f"| {name} | {first:.2f} | {warm:.2f} | {compile_s:.2f} | {ess.min():.0f} | "
            f"{ess.min() / warm:.0f} | {ess.min() / (warm - compile_s):.0f} | "
            f"{np.max(samplers.rhat(draws)):.3f} | {error.max():.2f} |"
        )


# ------------------------------------------------------------------------------------------
# 2. Parallel tempering against NUTS on the tilted double well.

HEIGHT, TILT, LOW_T = 5.0, 0.1, 0.25


def double_well(position, tilt):
    return HEIGHT * (position[0] ** 2 - 1.0) ** 2 + tilt * position[0]


def left_weight(temperature):
    barrier = optimize.brentq(lambda x: 4 * HEIGHT * x * (x**2 - 1) + TILT, -0.5, 0.5)

    def density(x):
        return np.exp(-(HEIGHT * (x**2 - 1) ** 2 + TILT * x) / temperature)

    left = integrate.quad(density, -4, barrier, epsabs=0, epsrel=1e-12)[0]
    right = integrate.quad(density, barrier, 4, epsabs=0, epsrel=1e-12)[0]
    return barrier, left / (left + right)


def bench_tempering(rows):
    barrier, exact = left_weight(LOW_T)
    chains = 8
    half = jnp.array([[-1.0]] * (chains // 2) + [[1.0]] * (chains // 2))
    ladder = samplers.geometric_ladder(LOW_T, 5.0, 8)
    configs = {
        "NUTS at T=0.25": (samplers.nuts(double_well, num_warmup=500), half, LOW_T),
        "PT(NUTS), 8 rungs 0.25-5": (
            samplers.parallel_tempering(samplers.nuts(double_well, num_warmup=500)),
            jnp.broadcast_to(half[:, None], (chains, 8, 1)),
            ladder,
        ),
        "PT(HMC, 8 leapfrog), 8 rungs 0.25-5": (
            samplers.parallel_tempering(samplers.hmc(double_well, num_warmup=500, num_steps=8)),
            jnp.broadcast_to(half[:, None], (chains, 8, 1)),
            ladder,
        ),
    }
    for name, (kernel, start, temperature) in configs.items():

        def run(seed, kernel=kernel, start=start, temperature=temperature):
            return samplers.sample(
                jax.random.key(seed), kernel, start, TILT, temperature, num_samples=2000
            )

        _, first, _ = timed(lambda run=run: run(0).samples)
        trace, warm, _ = timed(lambda run=run: run(1))
        x = np.asarray(trace.samples)[..., 0]
        x = x[..., 0] if x.ndim == 3 else x  # slot 0 = T = 0.25 for parallel tempering
        left = (x < barrier).astype(float)
        ess = float(samplers.ess_bulk(left))
        rows.append(
            f"| {name} | {first:.2f} | {warm:.2f} | {left.mean():.3f} ± "
            f"{float(samplers.mcse_mean(left)):.3f} | {exact:.4f} | "
            f"{float(samplers.rhat(left)):.3g} | {ess:.0f} | {ess / warm:.0f} |"
        )


# ------------------------------------------------------------------------------------------
# 3. Block-Gibbs sweeps per second on a layered network.

LAYERS = (1000, 1000, 1000, 1000)
GIBBS_CHAINS = 8
GIBBS_SWEEPS = 200


def bench_gibbs(rows):
    rng = np.random.default_rng(0)
    weights = tuple(
        jnp.asarray(rng.normal(0, 1 / np.sqrt(a), (a, b)), dtype=jnp.float32)
        for a, b in zip(LAYERS[:-1], LAYERS[1:], strict=True)
    )
    fields = jnp.asarray(rng.normal(0, 0.1, sum(LAYERS)), dtype=jnp.float32)
    bounds = np.cumsum((0, *LAYERS))

    def energy(s, context):
        weights, fields = context
        layers = [s[bounds[k] : bounds[k + 1]] for k in range(len(LAYERS))]
        coupling = sum(layers[k] @ weights[k] @ layers[k + 1] for k in range(len(weights)))
        return -coupling - fields @ s

    blocks = tuple(tuple(range(bounds[k], bounds[k + 1])) for k in range(len(LAYERS)))
    kernel = samplers.block_gibbs(energy, blocks)
    start = jnp.asarray(rng.choice([-1.0, 1.0], (GIBBS_CHAINS, sum(LAYERS))), dtype=jnp.float32)

    def run(seed):
        return samplers.sample(
            jax.random.key(seed),
            kernel,
            start,
            (weights, fields),
            1.0,
            num_samples=GIBBS_SWEEPS,
            num_warmup=0,
        ).samples

    _, first, _ = timed(lambda: run(0))
    _, warm, _ = timed(lambda: run(1))
    sweeps = GIBBS_CHAINS * GIBBS_SWEEPS
    rows.append(
        f"| {'-'.join(map(str, LAYERS))} ({sum(LAYERS)} spins), float32 | {GIBBS_CHAINS} | "
        f"{GIBBS_SWEEPS} | {first:.2f} | {warm:.2f} | {sweeps / warm:.0f} | "
        f"{sweeps * sum(LAYERS) / warm / 1e6:.1f} |"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="benchmarks/results/samplers.md")
    args = parser.parse_args()

    nuts_rows, pt_rows, gibbs_rows = [], [], []
    bench_nuts(nuts_rows)
    bench_tempering(pt_rows)
    bench_gibbs(gibbs_rows)
    load = os.getloadavg()
    report = [
        f"## Run of {datetime.datetime.now().isoformat(timespec='minutes')}",
        "",
        "Command: `PYTHONPATH=. python benchmarks/samplers_bench.py`",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"shared with other jobs (load average {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} at "
        f"the end); {jax.devices()[0].platform.upper()}, JAX {jax.__version__}, float64 "
        "unless stated. Times: wall-clock seconds; 'first' includes compilation, 'warm' is a "
        "second call with a new key; compile seconds are summed from JAX's "
        "backend_compile monitoring events.",
        "",
        f"### 1. NUTS, {DIM}-D correlated Gaussian (scales 0.1 to 3), {NUM_CHAINS} chains, "
        f"{NUM_WARMUP} warm-up, {NUM_SAMPLES} draws",
        "",
        "| route | first (s) | warm (s) | of which compiling (s) | min bulk ESS | "
        "min ESS / s (warm) | min ESS / s (warm, compile excluded) | max R-hat | "
        "max abs(mean error)/MCSE |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *nuts_rows,
        "",
        f"### 2. Double well E = 5(x²−1)² + 0.1x at T = {LOW_T}: left-well weight, 8 chains "
        "(4 started in each well), 2000 draws",
        "",
        "| sampler | first (s) | warm (s) | estimate ± MCSE | exact | R-hat | bulk ESS | "
        "ESS / s (warm) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *pt_rows,
        "",
        "### 3. Block Gibbs on a layered network (dense couplings between adjacent layers)",
        "",
        "| network | chains | sweeps per chain | first (s) | warm (s) | sweeps / s (all chains) "
        "| spin updates / s (millions) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *gibbs_rows,
        "",
    ]
    text = "\n".join(report)
    print(text)
    header = (
        "# samplers benchmarks\n\nProduced by `benchmarks/samplers_bench.py`; newest run last.\n\n"
    )
    append_run(args.output, header, text + "\n")


if __name__ == "__main__":
    main()
