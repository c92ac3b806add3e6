"""Covariance against nudged thermal gradients at equal sampling budgets, against exact answers.

The table the seed paper (Massar & Mognetti 2024) does not give: for a fixed network and batch,
the error of each sampled gradient against the exact dL_T/dθ, across temperatures and, for the
nudged estimator, nudging strengths β. Two exact references:

- spin: SpinNetwork.layered((3, 4, 3, 2)), 9 spins, 39 parameters, block Gibbs; exact by
  enumeration of the 2^9 states;
- quadratic: QuadraticNetwork((3, 4, 2)), 6 units, 26 parameters, NUTS; exact by the Gaussian
  closed form.

Equal budgets: the symmetric nudged estimator samples two phases (±β), the covariance estimator
one, so the covariance estimator gets twice the draws and warm-up steps per chain
(``thermoeqprop.sweep.matched_budgets``): every estimator makes the same number of sampler
steps per example (spins: Gibbs sweeps, the same energy work each; NUTS: the leapfrog steps per
draw are reported too, since they vary with the adapted step size).

Columns: ``rel. error`` = RMS over seeds of ‖ĝ − g‖/‖g‖; ``rel. MCSE`` = mean of ‖MCSE‖/‖g‖;
``rel. bias`` = ‖E[ĝ] − g‖/‖g‖ computed exactly (the nudged estimator's finite-β bias);
``z_rms`` = mean over seeds of the RMS of (ĝ − E[ĝ])/MCSE over parameters (≈ 1 when the
reported MCSE is honest).

    python benchmarks/thermal_estimators.py [--seeds 0 1 2 3 4] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import thermoeqprop
from thermoeqprop.estimators import Sampling
from thermoeqprop.models import QuadraticNetwork, SpinNetwork
from thermoeqprop.sweep import matched_budgets, temperature_sweep

BETAS = (0.02, 0.1, 0.5)


def problems(quick: bool):
    spin = SpinNetwork.layered((3, 4, 3, 2))
    spin_params = spin.init_params(jax.random.key(0))
    spin_params["fields"] = 0.2 * jax.random.normal(jax.random.key(5), (spin.num_spins,))
    spin_x = jax.random.uniform(jax.random.key(1), (4, 3))
    spin_targets = spin.encode_labels(jnp.array([0, 1, 1, 0]))
    quadratic = QuadraticNetwork((3, 4, 2))
    quadratic_params = quadratic.init_params(jax.random.key(0))
    quadratic_x = jax.random.uniform(jax.random.key(1), (4, 3))
    quadratic_targets = quadratic.encode_labels(jnp.array([0, 1, 1, 0]))
    scale = 4 if quick else 1
    return {
        "spin (9 spins, Gibbs)": (
            spin, spin_params, spin_x, spin_targets, [0.25, 0.5, 1.0, 2.0],
            Sampling(num_chains=4, num_samples=4000 // scale, num_warmup=200),
        ),
        "quadratic (6 units, NUTS)": (
            quadratic, quadratic_params, quadratic_x, quadratic_targets, [0.01, 0.1, 1.0],
            Sampling(num_chains=4, num_samples=1000 // scale, num_warmup=300),
        ),
    }  # fmt: skip


def table_rows(name, ds) -> list[str]:
    rows = []
    rms = np.sqrt((ds.relative_error**2).mean("seed"))
    gradient_norm = np.sqrt((ds.exact_gradient**2).sum("parameter"))
    bias = np.sqrt((ds.bias**2).sum("parameter")) / gradient_norm
    for temperature in ds.temperature.values:
        best = str(rms.sel(temperature=temperature).idxmin("estimator").values)
        for estimator in ds.estimator.values:
            point = ds.sel(estimator=estimator, temperature=temperature)
            steps = int(point.num_steps.values[0])
            leapfrog = ""
            if "mean_integration_steps" in ds and np.isfinite(point.mean_integration_steps).all():
                leapfrog = f"{float(point.mean_integration_steps.mean()):.1f}"
            error = float(rms.sel(estimator=estimator, temperature=temperature))
            mark = " **(best)**" if estimator == best else ""
            rows.append(
                f"| {name} | {temperature:g} | {estimator} | {steps} | {leapfrog} | "
                f"{error:.3g}{mark} | {float(point.relative_stderr.mean()):.3g} | "
                f"{float(bias.sel(estimator=estimator, temperature=temperature)):.2g} | "
                f"{float(point.z_rms.mean()):.2f} | {1000 * float(point.wall_time.median()):.0f} |"
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--quick", action="store_true", help="a quarter of the draws")
    parser.add_argument("--out", default="benchmarks/results/thermal_estimators.md")
    args = parser.parse_args()

    estimators = ["covariance", *[f"nudged:{beta:g}" for beta in BETAS]]
    lines = []
    tic = time.perf_counter()
    for name, (model, params, x, targets, temperatures, base) in problems(args.quick).items():
        ds = temperature_sweep(
            model,
            params,
            x,
            targets,
            temperatures,
            estimators=estimators,
            seeds=args.seeds,
            sampling=matched_budgets(estimators, base),
            progress=True,
        )
        lines += table_rows(name, ds)
        print("\n".join(lines[-len(estimators) * len(temperatures) :]), flush=True)
    minutes = (time.perf_counter() - tic) / 60

    command = "python benchmarks/thermal_estimators.py --seeds " + " ".join(map(str, args.seeds))
    if args.quick:
        command += " --quick"
    header = [
        "# Thermal gradients: covariance against nudged at equal sampling budgets",
        "",
        f"Command: `PYTHONPATH=. {command}`  ",
        f"Date: {datetime.date.today()}; machine: {platform.machine()}, "
        f"{os.cpu_count()} CPU cores (shared with other jobs), JAX {jax.__version__} on CPU, "
        f"float64; thermoeqprop {thermoeqprop.__version__}; total {minutes:.1f} min.",
        "",
        "Every row is one estimator at one temperature over "
        f"{len(args.seeds)} seeds (independent chains). Budget: `sampler steps` per example = "
        "phases × chains × (warm-up + draws), equal within a temperature. `rel. error` = RMS "
        "over seeds of ‖ĝ − g‖/‖g‖ against the exact gradient g; `rel. MCSE` = mean "
        "‖MCSE‖/‖g‖; `rel. bias` = ‖E[ĝ] − g‖/‖g‖, exact (the finite-β bias of the nudged "
        "estimator, 0 for covariance); `z_rms` = RMS of (ĝ − E[ĝ])/MCSE over parameters, mean "
        "over seeds (≈ 1: honest MCSE); `leapfrog/draw` = NUTS's mean integration steps; "
        "`ms` = median wall time per estimate (first estimate of each configuration includes "
        "compilation). **(best)** marks the smallest error at that temperature.",
        "",
        "| model | T | estimator | sampler steps | leapfrog/draw | rel. error | rel. MCSE | "
        "rel. bias | z_rms | ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as handle:
        handle.write("\n".join(header + lines) + "\n")
    print(f"wrote {args.out} ({minutes:.1f} min)")


if __name__ == "__main__":
    main()
