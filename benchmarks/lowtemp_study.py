"""The T → 0 study on a (4, 8, 3) layered network (sigmoid) with a batch of iris flowers.

Runs :func:`thermoeqprop.lowtemp.low_temperature_study` (thermal covariance and nudged
estimators over a grid of low temperatures, against the Laplace prediction g_0 + T g_1),
prints the summary table recorded in ``benchmarks/results/lowtemp.md``, writes the plot and,
optionally, the dataset as netCDF.

    PYTHONPATH=. python benchmarks/lowtemp_study.py --plot docs/images/low_temperature_study.png
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_iris

from thermoeqprop.estimators import Sampling
from thermoeqprop.lowtemp import (
    low_temperature_study,
    plot_low_temperature_study,
    weighted_line_fit,
)
from thermoeqprop.models import LayeredNetwork


def iris_batch(num_examples: int, rng_key):
    """``num_examples`` iris flowers (features scaled to [0, 1]) and one-hot species."""
    data = load_iris()
    features = (data.data - data.data.min(0)) / np.ptp(data.data, axis=0)
    index = np.asarray(jax.random.choice(rng_key, len(features), (num_examples,), replace=False))
    return jnp.asarray(features[index]), jax.nn.one_hot(data.target[index], 3, dtype=float)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="4,8,3")
    parser.add_argument("--num-examples", type=int, default=8)
    parser.add_argument(
        "--temperatures", default="0.0005,0.001,0.0015,0.002,0.003,0.005,0.0075,0.01,0.02,0.05"
    )
    parser.add_argument("--fit-max-temperature", type=float, default=0.01)
    parser.add_argument("--fit-degree", type=int, default=2)
    parser.add_argument(
        "--line-max-temperature",
        type=float,
        default=0.002,
        help="also fit a straight line (degree 1) over T ≤ this",
    )
    parser.add_argument("--estimators", default="covariance,nudged")
    parser.add_argument("--beta", type=float, default=0.02)
    parser.add_argument("--num-chains", type=int, default=4)
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--num-warmup", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default=None, help="PNG path for the figure")
    parser.add_argument("--netcdf", default=None, help="path to save the dataset")
    args = parser.parse_args(argv)

    layers = tuple(int(n) for n in args.layers.split(","))
    net = LayeredNetwork(layers)
    key_params, key_data, key_study = jax.random.split(jax.random.key(args.seed), 3)
    params = net.init_params(key_params)
    x, targets = iris_batch(args.num_examples, key_data)
    start = time.perf_counter()
    ds = low_temperature_study(
        net,
        params,
        x,
        targets,
        key_study,
        temperatures=tuple(float(t) for t in args.temperatures.split(",")),
        estimators=tuple(args.estimators.split(",")),
        sampling=Sampling(
            num_chains=args.num_chains, num_samples=args.num_samples, num_warmup=args.num_warmup
        ),
        beta=args.beta,
        fit_max_temperature=args.fit_max_temperature,
        fit_degree=args.fit_degree,
        progress=True,
    )
    seconds = time.perf_counter() - start
    a = ds.attrs
    print(
        f"\n{net.layer_sizes} network, {args.num_examples} iris examples, "
        f"{ds.sizes['parameter']} parameters, {a['num_chains']} chains × {a['num_samples']} "
        f"draws ({a['num_warmup']} warm-up), {a['sampling_method']}, β = {a['beta']}; "
        f"{seconds:.0f} s\n"
        f"L_0 = {a['loss_zero_temperature']:.6g}, c_1 = {a['loss_first_order']:.6g}, "
        f"‖g_0‖ = {a['g0_norm']:.4g}, ‖g_1‖ = {a['g1_norm']:.4g}, "
        f"min Hessian eigenvalue {a['min_hessian_eigenvalue']:.3g}, "
        f"‖∇E(s*)‖∞ = {a['free_residual']:.1e}\n"
    )
    print(
        "| estimator | T | ĝ₁·(G_T − g₀) ± SE | predicted T‖g₁‖ | z | cos(G_T, g₀) "
        "| ‖G_T − (g₀+Tg₁)‖/‖g₀+Tg₁‖ | mean z² | ESS min | R-hat max | basin distance |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in ds["estimator"].values:
        sel = ds.sel(estimator=name)
        for i, t in enumerate(ds["temperature"].values):
            p, se = float(sel["projection"][i]), float(sel["projection_stderr"][i])
            pred = t * a["g1_norm"]
            mark = "" if bool(ds["in_fit"][i]) else " (not fitted)"
            print(
                f"| {name} | {t:g}{mark} | {p:+.4f} ± {se:.4f} | {pred:+.4f} | "
                f"{(p - pred) / se:+.2f} | {float(sel['cosine_with_g0'][i]):.4f} | "
                f"{float(sel['relative_error_to_prediction'][i]):.3f} | "
                f"{float(sel['mean_squared_z'][i]):.2f} | {float(sel['ess_min'][i]):.0f} | "
                f"{float(sel['rhat_max'][i]):.3f} | {float(sel['basin_distance'][i]):.2f} |"
            )
    temps = ds["temperature"].values
    line = temps <= args.line_max_temperature
    print(
        "\n| estimator | fit | slope ± SE (predicted ‖g₁‖) | slope z | intercept ± SE | "
        "intercept z | T² coefficient ± SE | χ² of fit (dof) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in ds["estimator"].values:
        sel = ds.sel(estimator=name)
        fits = [
            (f"degree {a['fit_degree']}, T ≤ {temps[ds['in_fit'].values].max():g}",
             ds["in_fit"].values, a["fit_degree"]),
            (f"degree 1, T ≤ {args.line_max_temperature:g}", line, 1),
        ]  # fmt: skip
        for label, mask, degree in fits:
            if mask.sum() < degree + 1:
                continue
            fit = weighted_line_fit(
                temps[mask],
                sel["projection"].values[mask],
                sel["projection_stderr"].values[mask],
                degree,
            )
            curvature = (
                f"{float(fit['curvature']):+.1f} ± {float(fit['curvature_stderr']):.1f}"
                if degree == 2
                else "–"
            )
            print(
                f"| {name} | {label} | {float(fit['slope']):.3f} ± "
                f"{float(fit['slope_stderr']):.3f} ({a['g1_norm']:.3f}) | "
                f"{(float(fit['slope']) - a['g1_norm']) / float(fit['slope_stderr']):+.2f} | "
                f"{float(fit['intercept']):+.5f} ± {float(fit['intercept_stderr']):.5f} | "
                f"{float(fit['intercept']) / float(fit['intercept_stderr']):+.2f} | "
                f"{curvature} | {float(fit['chi2']):.1f} ({mask.sum() - degree - 1}) |"
            )
    if "nudged" in ds["estimator"].values:
        bias = ds["nudge_bias"].values
        print(
            f"\nnudge bias at T = 0 (EP at β = {a['beta']} minus g₀): ‖·‖ = "
            f"{np.linalg.norm(bias):.2e}, along ĝ₁: {bias @ ds['g1'].values / a['g1_norm']:+.2e}"
        )
    if args.plot:
        plot_low_temperature_study(
            ds,
            args.plot,
            title=f"T → 0 study: {net.layer_sizes} sigmoid network, {args.num_examples} iris "
            "examples",
        )
        print(f"plot: {args.plot}")
    if args.netcdf:
        ds.attrs["model"] = str(ds.attrs["model"])
        ds.to_netcdf(args.netcdf)
        print(f"dataset: {args.netcdf}")


if __name__ == "__main__":
    main()
