"""``thermoeqprop sweep``: thermal gradient estimators across temperatures; a results folder.

Writes ``config.json``, ``sweep.nc`` (the xarray Dataset, h5netcdf), ``sweep_error.png``,
``sweep_cosine.png`` (continuous models), ``sweep_loss.png``, ``sweep_barrier.png`` (with
``--tempering``: the local communication barrier λ(T) of the ladder), ``summary.txt``, and the
per-draw gradient series as ArviZ InferenceData under ``series/`` for ``thermoeqprop diagnose``.
Re-running the same command resumes: finished temperatures are not recomputed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from thermoeqprop._cli_common import build_model, build_sampling, write_summary
from thermoeqprop.options import SweepOptions, recorded

#: The options of ``thermoeqprop sweep`` (flags, config-file keys, ``config.json``).
OPTIONS = SweepOptions


def build_problem(options: SweepOptions):
    """(model, params, x, targets, data description) from the sweep's options."""
    import jax
    import numpy as np

    num = options.num_examples
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"num_examples must be an integer ≥ 1, got {num!r}")
    name = options.dataset
    if name == "random":
        for key, low in (("num_inputs", 1), ("num_classes", 2)):
            if getattr(options, key) < low:
                raise ValueError(f"{key} must be an integer ≥ {low}, got {getattr(options, key)!r}")
        rng = np.random.default_rng(options.data_seed)
        x = rng.uniform(size=(num, options.num_inputs))
        labels = rng.integers(0, options.num_classes, size=num)
        num_classes = options.num_classes
        described = f"random ({num} examples)"
    else:
        from thermoeqprop.data import load_dataset

        data = load_dataset(name, seed=options.data_seed)
        if num > len(data.labels_train):
            raise ValueError(
                f"num_examples {num} exceeds the {len(data.labels_train)} training examples of "
                f"{name}"
            )
        x, labels = data.x_train[:num], data.labels_train[:num]
        num_classes = data.num_classes
        described = f"{name} (first {num} training examples)"
    model = build_model(options, (x.shape[1], *options.hidden, num_classes), options.init_gain)
    params = model.init_params(jax.random.key(options.param_seed))
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


def frozen_lines(dataset) -> list[str]:
    """One line per estimate whose sampler moved nothing (acceptance or flip rate exactly 0):
    its draws are its chains' starting states, so its gradient and MCSE describe the starts,
    not the Gibbs law. Empty when every sampler moved."""
    import numpy as np

    lines = []
    for stat in ("acceptance_rate", "flip_rate"):
        if stat not in dataset:
            continue
        rates = dataset[stat].transpose("estimator", "temperature", "seed")
        for e, t, s in zip(*np.nonzero(rates.values == 0), strict=True):
            lines.append(
                f"{dataset.estimator.values[e]} at T = {dataset.temperature.values[t]:.4g}, seed "
                f"{dataset.seed.values[s]}: the sampler moved nothing ({stat} 0), so the estimate "
                "describes the chains' starts, not the Gibbs law; a higher temperature, or "
                "--tempering"
            )
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


def run(options: SweepOptions) -> int:
    from thermoeqprop.plots import plot_sweep
    from thermoeqprop.sweep import matched_budgets, temperature_sweep

    model, params, x, targets, described = build_problem(options)
    sampling = build_sampling(options, model, command="sweep")
    estimators = list(options.estimators)
    if options.equal_budget:
        sampling = matched_budgets(estimators, sampling, options.beta)
    check_nudge_of(options, model, params)
    results_dir = Path(options.results_dir)
    exact = "exact reference" if _has_exact(model) else "no exact reference"
    print(
        f"thermoeqprop sweep: {type(model).__name__} {model.architecture} ({exact}) on "
        f"{described}; T = {options.temperatures}; estimators {estimators}; seeds "
        f"{options.seeds}; results in {results_dir}"
    )
    dataset = temperature_sweep(
        model,
        params,
        x,
        targets,
        options.temperatures,
        estimators=estimators,
        seeds=options.seeds,
        beta=options.beta,
        sampling=sampling,
        control_variates=options.control_variates,
        tempering=options.tempering,
        series_parameters=options.series_parameters,
        results_dir=results_dir,
        progress=not options.no_progress,
        client=options.cluster,
        extra_config={"command_line": recorded(options), "data": described},
    )
    frozen = frozen_lines(dataset)
    for line in frozen:
        print(f"thermoeqprop sweep: warning: {line}", file=sys.stderr, flush=True)
    pictures = plot_sweep(dataset, results_dir)
    lines = [
        f"model: {type(model).__name__}, {dataset.sizes['parameter']} parameters ({exact})",
        f"data: {described}",
        f"temperatures: {dataset.temperature.values.tolist()}",
        f"seeds: {dataset.seed.values.tolist()}",
        f"tempering: {options.tempering}",
        "",
        *summary_lines(dataset),
        "",
        *barrier_lines(dataset),
        *(["warnings:", *(f"  {line}" for line in frozen), ""] if frozen else []),
        "rel.error = ‖ĝ − g_exact‖/‖g_exact‖; z_rms = RMS of (ĝ − E[ĝ])/MCSE (≈ 1 if the MCSE "
        "is honest); rel.MCSE = ‖MCSE‖/‖g‖; cos(T=0) = cosine with the T = 0 EP gradient; "
        "means over seeds (R-hat: max, ESS: min)",
        "files: sweep.nc, " + ", ".join(p.name for p in pictures) + ", series/*.nc",
    ]
    write_summary(results_dir, lines)
    return 0


def check_nudge_of(options: SweepOptions, model, params) -> None:
    """Refuse a default β larger than the network's energy (``_validation.check_nudge``);
    temperatures and memory are checked by ``temperature_sweep`` itself."""
    import math

    from thermoeqprop._validation import _units, check_nudge, energy_scale

    if math.isfinite(options.beta) and options.beta > 0:  # others: the estimators' own check
        check_nudge(options.beta, energy_scale(params, _units(model)), model.num_outputs)


def _has_exact(model) -> bool:
    from thermoeqprop.sweep import has_exact_reference

    return has_exact_reference(model)
