"""``thermoeqprop sweep``: thermal gradient estimators across temperatures; a results folder.

Writes ``config.json``, ``sweep.nc`` (the xarray Dataset, h5netcdf), ``sweep_error.png``,
``sweep_cosine.png`` (continuous models), ``sweep_loss.png``, ``sweep_barrier.png`` (with
``--tempering``: the local communication barrier λ(T) of the ladder), ``summary.txt``, and the
per-draw gradient series as ArviZ InferenceData under ``series/`` for ``thermoeqprop diagnose``.
Re-running the same command resumes: finished temperatures are not recomputed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from thermoeqprop.results import RunFolder

MODELS = ("quadratic", "layered", "spin")
DATASETS = ("moons", "circles", "digits", "random")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--model", default="quadratic", choices=MODELS,
        help="quadratic: Gaussian Gibbs law, exact in closed form; layered: smooth sigmoid "
        "network (no exact reference; compared with T = 0 EP); spin: Ising network (exact by "
        "enumeration up to 20 spins)")  # fmt: skip
    add("--hidden", type=int, nargs="+", default=[4], help="hidden layer sizes")
    add("--activation", default="sigmoid", choices=("sigmoid", "tanh"),
        help="activation of the layered model")  # fmt: skip
    add("--init-scale", type=float, default=None,
        help="scale of the initial couplings (default: the model's own)")  # fmt: skip
    add(
        "--dataset",
        default="moons",
        choices=DATASETS,
        help="where the batch of examples comes from (random: uniform inputs, random labels)",
    )
    add("--num-examples", type=int, default=4, help="examples in the batch")
    add("--num-inputs", type=int, default=2, help="inputs of random data")
    add("--num-classes", type=int, default=2, help="classes of random data")
    add("--data-seed", type=int, default=0, help="seed of the data and of the batch choice")
    add("--param-seed", type=int, default=0, help="seed of the network's parameters")
    add("--temperatures", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3, 1.0])
    add("--estimators", nargs="+", default=["covariance", "nudged"],
        help="covariance, nudged, nudged-one-sided; nudged ones may carry their own β as "
        "nudged:0.05")  # fmt: skip
    add("--beta", type=float, default=0.1, help="β of nudged estimators named without one")
    add("--seeds", type=int, nargs="+", default=[0, 1])
    add("--sampler", default="auto", choices=("auto", "nuts", "hmc", "gibbs", "metropolis"))
    add("--num-chains", type=int, default=4)
    add("--num-samples", type=int, default=300, help="draws per chain and phase")
    add("--num-warmup", type=int, default=200)
    add("--equal-budget", action="store_true",
        help="give one-phase estimators (covariance) as many sampler steps as two-phase ones "
        "(nudged): twice the draws and warm-up")  # fmt: skip
    add(
        "--tempering",
        action="store_true",
        help="one parallel-tempering run over the temperature grid serves every temperature",
    )
    add("--series-parameters", type=int, default=64,
        help="gradient components whose per-draw series are saved for diagnose")  # fmt: skip
    add(
        "--results-dir",
        default="results/sweep",
        help="results folder; an unfinished sweep of the same settings there is resumed",
    )
    add("--no-progress", action="store_true", help="hide the progress bar")
    add("--cluster", default=None,
        help="run on Dask: local:N starts N single-threaded worker processes here; "
        "tcp://HOST:PORT uses a running scheduler (default: this process alone)")  # fmt: skip


def build_problem(settings: dict[str, Any]):
    """(model, params, x, targets, data description) from the command-line settings."""
    import jax
    import numpy as np

    from thermoeqprop.models import LayeredNetwork, QuadraticNetwork, SpinNetwork

    num = settings["num_examples"]
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"num_examples must be an integer ≥ 1, got {num!r}")
    name = settings["dataset"]
    if name == "random":
        for key in ("num_inputs", "num_classes"):
            if settings[key] < 1 or (key == "num_classes" and settings[key] < 2):
                low = 2 if key == "num_classes" else 1
                raise ValueError(f"{key} must be an integer ≥ {low}, got {settings[key]!r}")
        rng = np.random.default_rng(settings["data_seed"])
        x = rng.uniform(size=(num, settings["num_inputs"]))
        labels = rng.integers(0, settings["num_classes"], size=num)
        num_classes = settings["num_classes"]
        described = f"random ({num} examples)"
    else:
        from thermoeqprop.data import load_dataset

        data = load_dataset(name, seed=settings["data_seed"])
        if num > len(data.labels_train):
            raise ValueError(
                f"num_examples {num} exceeds the {len(data.labels_train)} training examples of "
                f"{name}"
            )
        x, labels = data.x_train[:num], data.labels_train[:num]
        num_classes = data.num_classes
        described = f"{name} (first {num} training examples)"
    sizes = (x.shape[1], *settings["hidden"], num_classes)
    kwargs = {}
    kind = settings["model"]
    if kind not in MODELS:
        raise ValueError(f"unknown model {kind!r}; valid: {list(MODELS)}")
    if settings["init_scale"] is not None:
        key = "init_scale" if kind == "spin" else "init_gain"
        kwargs[key] = settings["init_scale"]
    if kind == "quadratic":
        model = QuadraticNetwork(sizes, **kwargs)
    elif kind == "layered":
        model = LayeredNetwork(sizes, activation=settings["activation"], **kwargs)
    else:
        model = SpinNetwork.layered(sizes, **kwargs)
    params = model.init_params(jax.random.key(settings["param_seed"]))
    targets = model.encode_labels(labels)
    return model, params, x, targets, described


def summary_lines(dataset) -> list[str]:
    """A fixed-width table: one row per (estimator, temperature), means over seeds."""
    import numpy as np

    columns = [("T", "temperature")]
    if "relative_error" in dataset:
        columns += [("rel.error", "relative_error"), ("z_rms", "z_rms")]
    columns += [("rel.MCSE", "relative_stderr")]
    if "cosine_zero_temperature" in dataset:
        columns += [("cos(T=0)", "cosine_zero_temperature")]
    columns += [("loss", "loss"), ("R-hat max", "rhat_max"), ("ESS min", "ess_min")]
    for stat, label in (("acceptance_rate", "accept"), ("flip_rate", "flips"),
                        ("swap_rate_min", "swap min")):  # fmt: skip
        if stat in dataset and np.isfinite(dataset[stat].values).any():
            columns.append((label, stat))
    header = f"{'estimator':<22}" + "".join(f"{c[0]:>11}" for c in columns)
    lines = [header, "-" * len(header)]
    for estimator in dataset.estimator.values:
        for temperature in dataset.temperature.values:
            cells = []
            for _, name in columns:
                if name == "temperature":
                    cells.append(f"{temperature:>11.4g}")
                    continue
                value = dataset[name].sel(estimator=estimator, temperature=temperature)
                if "seed" in value.dims:
                    reduce = {"rhat_max": value.max, "ess_min": value.min}.get(name, value.mean)
                    value = reduce("seed")
                cells.append(f"{float(value):>11.4g}")
            lines.append(f"{estimator:<22}" + "".join(cells))
    return lines


def barrier_lines(dataset) -> list[str]:
    """The ladder's communication barrier per estimator (means over seeds); none untempered."""
    import numpy as np

    if "local_barrier" not in dataset:
        return []
    lines = ["communication barrier of the tempering ladder (means over seeds):"]
    for estimator in dataset.estimator.values:
        one = dataset.sel(estimator=estimator)
        local = one.local_barrier.mean("seed")
        peak = int(np.argmax(local.values))
        lines.append(
            f"  {estimator}: Λ = {float(one.global_barrier.mean()):.4g}, peak λ = "
            f"{float(local[peak]):.4g} on T = {float(one.pair_temperature_low[peak]):g}–"
            f"{float(one.pair_temperature_high[peak]):g}, smallest swap probability "
            f"{float(one.swap_probability.mean('seed').min()):.3g}"
        )
    return [*lines, ""]


def run(settings: dict[str, Any]) -> int:
    from thermoeqprop.estimators import Sampling
    from thermoeqprop.plots import plot_sweep
    from thermoeqprop.sweep import matched_budgets, temperature_sweep

    model, params, x, targets, described = build_problem(settings)
    sampling = Sampling(
        method=settings["sampler"],
        num_chains=settings["num_chains"],
        num_samples=settings["num_samples"],
        num_warmup=settings["num_warmup"],
    )
    estimators = list(settings["estimators"])
    if settings["equal_budget"]:
        sampling = matched_budgets(estimators, sampling, settings["beta"])
    results_dir = Path(settings["results_dir"])
    exact = "exact reference" if _has_exact(model) else "no exact reference"
    shape = getattr(model, "layer_sizes", None) or f"{model.state_size} spins"
    print(
        f"thermoeqprop sweep: {type(model).__name__} {shape} ({exact}) on {described}; "
        f"T = {settings['temperatures']}; "
        f"estimators {estimators}; seeds {settings['seeds']}; results in {results_dir}"
    )
    dataset = temperature_sweep(
        model,
        params,
        x,
        targets,
        settings["temperatures"],
        estimators=estimators,
        seeds=settings["seeds"],
        beta=settings["beta"],
        sampling=sampling,
        tempering=settings["tempering"],
        series_parameters=settings["series_parameters"],
        results_dir=results_dir,
        progress=not settings["no_progress"],
        client=settings.get("cluster"),
        extra_config={
            "command_line": {k: v for k, v in settings.items() if k != "no_progress"},
            "data": described,
        },
    )
    pictures = plot_sweep(dataset, results_dir)
    lines = [
        f"model: {type(model).__name__}, {dataset.sizes['parameter']} parameters ({exact})",
        f"data: {described}",
        f"temperatures: {dataset.temperature.values.tolist()}",
        f"seeds: {dataset.seed.values.tolist()}",
        f"tempering: {bool(settings['tempering'])}",
        "",
        *summary_lines(dataset),
        "",
        *barrier_lines(dataset),
        "rel.error = ‖ĝ − g_exact‖/‖g_exact‖; z_rms = RMS of (ĝ − E[ĝ])/MCSE (≈ 1 if the MCSE "
        "is honest); rel.MCSE = ‖MCSE‖/‖g‖; cos(T=0) = cosine with the T = 0 EP gradient; "
        "means over seeds (R-hat: max, ESS: min)",
        "files: sweep.nc, " + ", ".join(p.name for p in pictures) + ", series/*.nc",
    ]
    RunFolder(results_dir).write_text("summary.txt", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _has_exact(model) -> bool:
    from thermoeqprop.sweep import has_exact_reference

    return has_exact_reference(model)
