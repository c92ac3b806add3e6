"""HMC with a fixed number of leapfrog steps, with and without step-size jitter, against NUTS.

A fixed step size ε times a fixed number of steps L makes a fixed integration time τ = L ε. On
a near-Gaussian target a direction whose half-period is close to a multiple of τ is carried
(almost) back to where it started, or to its mirror image, at every transition: its draws
barely decorrelate and its bulk ESS collapses while the acceptance rate looks excellent.
``samplers.hmc(..., jitter=a)`` multiplies the adapted step size by a uniform factor in
``[1 − a, 1 + a]`` at every post-warm-up transition; this script measures what that does.

Comparisons, each ``jitter=0`` (the kernel as it was) against the default ``jitter=0.5``
and NUTS:

1. Gaussian targets at T = 0.5 (the 3-D correlated Gaussian of tests/samplers, a diagonal
   10-D one with precisions 1…30, a rotated 10-D one with precisions 1…100), 4 chains × 1000
   draws after 300 warm-up steps, 5, 8 and 16 leapfrog steps, 3 seeds: min and median bulk
   ESS per draw over the means and second moments, max R-hat.
2. ``ThermalCovariance`` on ``QuadraticNetwork((3, 4, 2))`` (tests/test_thermal.py's problem),
   4 chains × 1000 draws, 300 warm-up, 8 leapfrog steps, T ∈ {0.05, 0.2, 1}: the estimator's
   ``ess_min``/``ess_median`` (per draw) and ``rhat_max`` of the gradient series, and the
   largest |error| / MCSE against ``ThermalExact``.
3. A 2-unit network ``LayeredNetwork((2, 1, 1))`` at low temperature (T ∈ {0.002, 0.01}),
   same sampling as 2.
4. The main job's gradient (``thermoeqprop train`` defaults): ``ThermalCovariance`` on
   ``LayeredNetwork((64, 128, 10))`` at T = 0.02, digits batches of 32, 2 chains × 50 draws
   after 50 warm-up, 8 leapfrog steps, chains started at the relaxed minimum; parameters at
   initialisation and after 3 epochs of thermal training; several batches and seeds:
   ``ess_min``, ``ess_median``, ``rhat_max``, ``relative_stderr``, acceptance, and seconds per
   estimate (compiled, median of the calls); NUTS with the same draws as a reference.
5. The jitter amplitude: 0, 0.1, 0.2, 0.3, 0.5, 0.8 on the targets of 1.

Run from the repository root (about 10 minutes on 2 busy CPU cores):

    PYTHONPATH=. python benchmarks/hmc_jitter.py [--output benchmarks/results/samplers.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import samplers  # noqa: E402
from thermoeqprop.data import load_dataset  # noqa: E402
from thermoeqprop.estimators import Sampling, ThermalCovariance, ThermalExact  # noqa: E402
from thermoeqprop.models import LayeredNetwork, QuadraticNetwork  # noqa: E402
from thermoeqprop.training import TrainConfig, train  # noqa: E402

JITTERS = (0.0, 0.5)
LINES: list[str] = []


def emit(line: str = "") -> None:
    print(line, flush=True)
    LINES.append(line)


def table(header: list[str], rows: list[list[str]]) -> None:
    emit("| " + " | ".join(header) + " |")
    emit("| " + " | ".join("---" for _ in header) + " |")
    for row in rows:
        emit("| " + " | ".join(row) + " |")
    emit()


# ------------------------------------------------------------------------------------------
# 1. Gaussian targets.

GAUSSIAN_TEMPERATURE = 0.5


def gaussian_energy(position, context):
    matrix, vector = context
    return 0.5 * position @ matrix @ position - vector @ position


def gaussian_targets():
    rotation, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(10, 10)))
    return {
        "3-D correlated (tests)": (
            np.array([[2.0, 0.6, 0.0], [0.6, 1.0, -0.3], [0.0, -0.3, 0.5]]),
            np.array([1.0, -0.5, 0.25]),
        ),
        "10-D diagonal, precisions 1…30": (np.diag(np.linspace(1.0, 30.0, 10)), np.zeros(10)),
        "10-D rotated, precisions 1…100": (
            rotation @ np.diag(np.geomspace(1.0, 100.0, 10)) @ rotation.T,
            np.zeros(10),
        ),
    }


def gaussian_run(kernel, matrix, vector, seed, num_chains=4, num_samples=1000):
    """(min ESS/draw, median ESS/draw, max R-hat, acceptance) over means and 2nd moments."""
    start = jnp.zeros((num_chains, matrix.shape[0])) + jnp.linspace(-2, 2, num_chains)[:, None]
    trace = samplers.sample(
        jax.random.key(seed),
        kernel,
        start,
        (matrix, vector),
        GAUSSIAN_TEMPERATURE,
        num_samples=num_samples,
    )
    mean = np.linalg.solve(matrix, vector)
    centred = np.asarray(trace.samples) - mean
    i, j = np.triu_indices(mean.shape[0])
    stats = np.concatenate([np.asarray(trace.samples), centred[..., i] * centred[..., j]], -1)
    ess = samplers.ess_bulk(stats) / (num_chains * num_samples)
    return (
        float(np.min(ess)),
        float(np.median(ess)),
        float(np.max(samplers.rhat(stats))),
        float(np.mean(trace.info.acceptance_rate)),
    )


def section_gaussian(seeds):
    emit("### 1. Gaussian targets at T = 0.5, 4 chains × 1000 draws, 300 warm-up")
    emit()
    emit(
        f"Over {len(seeds)} seeds: the smallest min-ESS/draw (and the median of the seeds' "
        "min-ESS/draw), the median of the median-ESS/draw, the largest R-hat, the mean "
        "acceptance; statistics are the means and the distinct second moments."
    )
    emit()
    rows = []
    for name, (matrix, vector) in gaussian_targets().items():
        kernels = [("NUTS", samplers.nuts(gaussian_energy, num_warmup=300))]
        for num_steps in (5, 8, 16):
            for jitter in JITTERS:
                kernels.append(
                    (
                        f"HMC {num_steps} steps, jitter {jitter}",
                        samplers.hmc(
                            gaussian_energy, num_warmup=300, num_steps=num_steps, jitter=jitter
                        ),
                    )
                )
        for label, kernel in kernels:
            r = np.array([gaussian_run(kernel, matrix, vector, seed) for seed in seeds])
            rows.append([name, label, *gaussian_cells(r, median_of_min=True)])
            print(rows[-1], flush=True)
    table(["target", "kernel", "min ESS/draw", "median ESS/draw", "max R-hat", "acceptance"], rows)


def gaussian_cells(r, median_of_min=False):
    """Table cells of :func:`gaussian_run` results over runs (rows of r): the smallest min-ESS/
    draw (and its median), the median of the median-ESS/draw, the largest R-hat, the mean
    acceptance."""
    smallest = f"{r[:, 0].min():.3f}"
    if median_of_min:
        smallest += f" ({np.median(r[:, 0]):.3f})"
    return [smallest, f"{np.median(r[:, 1]):.3f}", f"{r[:, 2].max():.3f}", f"{r[:, 3].mean():.3f}"]


def section_jitter_sweep(seeds):
    emit("### 5. Jitter amplitude: the Gaussian targets of section 1, 5, 8 and 16 steps")
    emit()
    emit(
        f"For each amplitude, over the 3 targets × {len(seeds)} seeds: the smallest min-ESS/"
        "draw, the median of the median-ESS/draw, the largest R-hat, the mean acceptance."
    )
    emit()
    rows = []
    for num_steps in (5, 8, 16):
        for jitter in (0.0, 0.1, 0.2, 0.3, 0.5, 0.8):
            kernel = samplers.hmc(
                gaussian_energy, num_warmup=300, num_steps=num_steps, jitter=jitter
            )
            r = np.array(
                [
                    gaussian_run(kernel, matrix, vector, seed)
                    for matrix, vector in gaussian_targets().values()
                    for seed in seeds
                ]
            )
            rows.append([str(num_steps), f"{jitter}", *gaussian_cells(r)])
            print(rows[-1], flush=True)
    table(["steps", "jitter", "min ESS/draw", "median ESS/draw", "max R-hat", "acceptance"], rows)


# ------------------------------------------------------------------------------------------
# 2–3. Small networks against their exact gradient.


def flat(tree):
    return np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(tree)])


def network_rows(net, params, x, targets, temperatures, sampling, seeds, exact_available):
    rows = []
    draws = sampling.num_chains * sampling.num_samples
    for temperature in temperatures:
        exact = ThermalExact(net, temperature)(params, x, targets) if exact_available else None
        variants = [("NUTS", dataclasses.replace(sampling, method="nuts"))]
        variants += [
            (f"HMC 8 steps, jitter {j}", dataclasses.replace(sampling, hmc_jitter=j))
            for j in JITTERS
        ]
        for label, variant in variants:
            results = []
            for seed in seeds:
                estimate = ThermalCovariance(net, temperature, variant)(
                    params, x, targets, jax.random.key(seed)
                )
                d = {k: float(v) for k, v in estimate.diagnostics.items()}
                z = np.nan
                if exact is not None:
                    z = float(
                        np.max(
                            np.abs(flat(estimate.grad) - flat(exact.grad)) / flat(estimate.stderr)
                        )
                    )
                results.append((d["ess_min"], d["ess_median"], d["rhat_max"], z))
            r = np.array(results)
            rows.append(
                [
                    f"{temperature:g}",
                    label,
                    f"{r[:, 0].min() / draws:.3f} ({np.median(r[:, 0]) / draws:.3f})",
                    f"{np.median(r[:, 1]) / draws:.3f}",
                    f"{r[:, 2].max():.3f}",
                    f"{r[:, 3].max():.2f}" if exact_available else "—",
                ]
            )
            print(rows[-1], flush=True)
    return rows


NETWORK_HEADER = [
    "T",
    "kernel",
    "ess_min / draw: worst (median)",
    "ess_median / draw",
    "max rhat_max",
    "max abs(error)/MCSE",
]


def section_quadratic(seeds):
    net = QuadraticNetwork((3, 4, 2))
    params = net.init_params(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (3, 3))
    targets = net.encode_labels(jnp.array([0, 1, 1]))
    sampling = Sampling(method="hmc", num_chains=4, num_samples=1000, num_warmup=300, hmc_steps=8)
    emit(
        "### 2. ThermalCovariance, QuadraticNetwork((3, 4, 2)), 3 examples, "
        "4 chains × 1000 draws, 300 warm-up"
    )
    emit()
    emit(
        f"{len(seeds)} seeds; the gradient series' diagnostics as the estimator reports them "
        "(26 components), and the worst component's |error|/MCSE against ThermalExact."
    )
    emit()
    rows = network_rows(net, params, x, targets, (0.05, 0.2, 1.0), sampling, seeds, True)
    table(NETWORK_HEADER, rows)


def section_two_units(seeds):
    net = LayeredNetwork((2, 1, 1))
    params = net.init_params(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (3, 2))
    targets = net.encode_labels(jnp.array([0, 0, 0]))
    sampling = Sampling(method="hmc", num_chains=4, num_samples=1000, num_warmup=300, hmc_steps=8)
    emit(
        "### 3. ThermalCovariance, LayeredNetwork((2, 1, 1)) (2 state units), 3 examples, "
        "low T, 4 chains × 1000 draws, 300 warm-up"
    )
    emit()
    emit(f"{len(seeds)} seeds; no exact reference (sigmoid units), so no error column.")
    emit()
    rows = network_rows(net, params, x, targets, (0.002, 0.01), sampling, seeds, False)
    table(NETWORK_HEADER, rows)


# ------------------------------------------------------------------------------------------
# 4. The main job's gradient.


def section_main_job(seeds, num_batches):
    digits = load_dataset("digits")
    net = LayeredNetwork((64, 128, 10))
    sampling = Sampling(method="hmc", num_chains=2, num_samples=50, num_warmup=50, hmc_steps=8)
    config = TrainConfig(epochs=3, batch_size=32, learning_rate=2e-3, seed=0)
    initial = net.init_params(jax.random.key(0))
    tic = time.perf_counter()
    trained = train(
        ThermalCovariance(net, 0.02, dataclasses.replace(sampling, hmc_jitter=0.0)),
        digits,
        config,
    ).params
    train_seconds = time.perf_counter() - tic
    emit(
        "### 4. The main job's gradient: ThermalCovariance, LayeredNetwork((64, 128, 10)), "
        "T = 0.02, digits batch of 32, HMC 8 steps, 2 chains × 50 draws, 50 warm-up"
    )
    emit()
    emit(
        f"Batches 0…{num_batches - 1} of 32 training examples × seeds {list(seeds)}, "
        "parameters at initialisation and after 3 epochs of the main job's training "
        f"(with jitter 0; {train_seconds:.0f} s). Values are medians over the "
        f"{num_batches * len(seeds)} estimates, with [min, max]; ESS per draw (of 100). "
        "Time: seconds per compiled estimate (the first call of each kernel is left out)."
    )
    emit()
    rows = []
    for params_label, params in (("initial", initial), ("after 3 epochs", trained)):
        variants = [
            (f"HMC, jitter {j}", dataclasses.replace(sampling, hmc_jitter=j)) for j in JITTERS
        ]
        variants.append(("NUTS", dataclasses.replace(sampling, method="nuts")))
        for label, variant in variants:
            estimator = ThermalCovariance(net, 0.02, variant)
            first = digits.x_train[:32], net.encode_labels(digits.labels_train[:32])
            jax.block_until_ready(estimator(params, *first, jax.random.key(999)).grad)
            values: dict[str, list[float]] = {}
            for batch in range(num_batches):
                x = digits.x_train[32 * batch : 32 * (batch + 1)]
                targets = net.encode_labels(digits.labels_train[32 * batch : 32 * (batch + 1)])
                for seed in seeds:
                    start = time.perf_counter()
                    estimate = estimator(params, x, targets, jax.random.key(seed))
                    jax.block_until_ready(estimate.grad)
                    values.setdefault("seconds", []).append(time.perf_counter() - start)
                    for key in (
                        "ess_min",
                        "ess_median",
                        "rhat_max",
                        "rhat_median",
                        "relative_stderr",
                        "acceptance_rate",
                    ):
                        values.setdefault(key, []).append(float(estimate.diagnostics[key]))

            def cell(key, scale=1.0, fmt=".3f", values=values):
                v = np.asarray(values[key]) / scale
                return f"{np.median(v):{fmt}} [{v.min():{fmt}}, {v.max():{fmt}}]"

            rows.append(
                [
                    params_label,
                    label,
                    cell("ess_min", 100),
                    cell("ess_median", 100),
                    cell("rhat_max"),
                    cell("rhat_median"),
                    cell("relative_stderr"),
                    cell("acceptance_rate"),
                    cell("seconds", fmt=".2f"),
                ]
            )
            print(rows[-1], flush=True)
    table(
        [
            "parameters",
            "kernel",
            "ess_min / draw",
            "ess_median / draw",
            "rhat_max",
            "rhat_median",
            "relative_stderr",
            "acceptance",
            "s / estimate",
        ],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=None, help="append the tables to this file")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--sections", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    args = parser.parse_args()
    seeds = tuple(range(args.seeds))
    now = datetime.datetime.now().strftime("%Y-%m-%dT%H:%M")
    emit(f"## HMC step-size jitter: run of {now}")
    emit()
    command = "PYTHONPATH=. python benchmarks/hmc_jitter.py"
    if args.seeds != 3 or args.batches != 4 or args.sections != [1, 2, 3, 4, 5]:
        command += f" --seeds {args.seeds} --batches {args.batches}"
        command += " --sections " + " ".join(map(str, args.sections))
    if args.output:
        command += f" --output {args.output}"
    emit(f"Command: `{command}`")
    emit()
    sections = {
        1: lambda: section_gaussian(seeds),
        2: lambda: section_quadratic(seeds),
        3: lambda: section_two_units(seeds),
        4: lambda: section_main_job(seeds, args.batches),
        5: lambda: section_jitter_sweep(seeds),
    }
    for number in args.sections:
        sections[number]()
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    emit(
        f"Machine: {os.cpu_count()} CPU cores ({platform.machine()}), shared with other jobs "
        f"(load average {load} at the end); JAX {jax.__version__}, float64. Timings are noisy."
    )
    emit()
    if args.output:
        with open(args.output, "a", encoding="utf-8") as handle:
            handle.write("\n" + "\n".join(LINES) + "\n")


if __name__ == "__main__":
    main()
