r"""ArviZ diagnostics of the gradient estimates themselves (not only of the sampler's states).

A sampled gradient is the mean over draws of a per-draw series (chain, draw, P)
(:class:`~thermoeqprop.estimators.GradientSeries`). Its trustworthiness is that of the series:
chains that disagree (R-hat above what independent draws of the run's size would give), too
few effective draws (bulk or tail ESS below 0.1 per draw) or a Monte Carlo standard error large
against the mean; the limits fit the run's size (:mod:`thermoeqprop._health`). These functions
put the
series into ArviZ ``InferenceData`` (``posterior["gradient"]`` with dims
``(chain, draw, temperature, seed, parameter)``) and read ArviZ's rank-normalised R-hat, bulk
and tail ESS and MCSE per gradient component.

- :func:`gradient_inference_data`: from one :meth:`estimate_with_series` call;
- :func:`load_gradient_series`: the series a sweep saved in its results folder;
- :func:`diagnose`: a summary table, per-component CSV, and ArviZ trace and rank plots for a
  sweep folder; for a training folder, the per-epoch diagnostics its metrics recorded and the
  ArviZ summary of the per-draw series it saved of each epoch's last batch, with trace and
  rank plots of the latest.

Every ArviZ call lives in ``samplers/_arviz.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

import samplers
from thermoeqprop._health import (
    ESS_PER_DRAW_MIN,
    format_checks,
    gradient_checks,
    health_limits,
    rhat_limit,
)
from thermoeqprop._series import gradient_inference_data
from thermoeqprop.results import RunFolder

__all__ = [
    "RHAT_LIMIT",
    "Diagnosis",
    "diagnose",
    "gradient_inference_data",
    "gradient_summary",
    "load_gradient_series",
]

RHAT_LIMIT = 1.01
STATISTICS = ("mean", "sd", "mcse_mean", "mcse_sd", "ess_bulk", "ess_tail", "r_hat")


def gradient_summary(idata):
    """Per-component ArviZ diagnostics of ``posterior["gradient"]`` as a long table.

    Returns:
        ``pandas.DataFrame`` indexed by (temperature, seed, parameter) with columns ``mean``,
        ``sd``, ``mcse_mean``, ``mcse_sd``, ``ess_bulk``, ``ess_tail``, ``r_hat`` (NaN for
        components that never change).
    """
    table = samplers.summary_table(idata, var_names="gradient")["gradient"]
    frame = table.sel(metric=list(STATISTICS)).to_dataset("metric").to_dataframe()
    return frame[list(STATISTICS)]


def load_gradient_series(folder) -> list[tuple[Path, Any]]:
    """The (path, InferenceData) pairs of the gradient series saved in a results folder
    (:meth:`thermoeqprop.results.RunFolder.read_series`)."""
    return RunFolder(folder).read_series()


class Diagnosis(NamedTuple):
    """What :func:`diagnose` found.

    Attributes:
        kind: ``"sweep"``, or the training folder's kind: ``"train"`` (epochs) or
            ``"train_steps"`` (steps, as ``thermoeqprop quantum`` writes).
        overview: ``pandas.DataFrame``, one row per (estimator, temperature, seed) of a sweep
            (worst R-hat, smallest bulk and tail ESS, flags) or per epoch of a training run.
        components: Per-component ArviZ summary (None for a training run without series).
        files: Everything written (CSV tables, PNG plots).
        notes: Lines worth printing (what was found and what could not be done).
    """

    kind: str
    overview: Any
    components: Any
    files: list[Path]
    notes: list[str]


def _flags(r_hat_max, ess_bulk_min, ess_tail_min, num_chains, num_draws, components) -> str:
    """Flags in words, with limits for the run's size (``thermoeqprop._health``): the worst
    rank-normalised R-hat against what independent draws of that many chains, draws and
    components would exceed with probability 5 % (at least :data:`RHAT_LIMIT`), the smallest
    bulk and tail ESS against 0.1 per draw."""
    flags = []
    limit = max(RHAT_LIMIT, rhat_limit(num_chains, num_draws, components))
    if not np.isfinite(r_hat_max):
        flags.append("R-hat n/a")
    elif not r_hat_max < limit:
        flags.append(f"chains disagree (R-hat {r_hat_max:.3g} ≥ {limit:.3g})")
    per_draw = min(ess_bulk_min, ess_tail_min) / (num_chains * num_draws)
    if per_draw < ESS_PER_DRAW_MIN:
        flags.append(f"few effective draws (ESS {per_draw:.2g} per draw < {ESS_PER_DRAW_MIN})")
    return "; ".join(flags) or "ok"


def _trace_plot(idata, path: Path, coords, title: str) -> Path:
    return samplers.save_trace_plot(idata, path, coords, title, var_names="gradient")


def _rank_plot(idata, path: Path, coords, title: str) -> Path:
    return samplers.save_rank_plot(idata, path, coords, title, var_names="gradient")


def _plot_parameters(frame, count: int) -> list[str]:
    """The ``count`` components with the worst R-hat (then smallest bulk ESS)."""
    ranked = frame.assign(rank_r=frame.r_hat.fillna(-np.inf), rank_e=-frame.ess_bulk.fillna(np.inf))
    ranked = ranked.sort_values(["rank_r", "rank_e"], ascending=False)
    return list(dict.fromkeys(ranked.index.get_level_values("parameter")))[:count]


def _diagnose_sweep(folder: Path, out: Path, max_parameters: int, plots: bool) -> Diagnosis:
    import pandas as pd

    loaded = load_gradient_series(folder)
    without = _rows_without_series(folder, {str(i.posterior.attrs.get("estimator", p.stem))
                                            for p, i in loaded})  # fmt: skip
    if not loaded and not without:
        raise ValueError(
            f"sweep folder {str(folder)!r} has no gradient series (series/*.nc); run the sweep "
            "there until at least one temperature is finished"
        )
    out.mkdir(parents=True, exist_ok=True)
    rows, components, files = list(without), [], []
    for path, idata in loaded:
        estimator = str(idata.posterior.attrs.get("estimator", path.stem))
        num_chains, num_draws = idata.posterior.sizes["chain"], idata.posterior.sizes["draw"]
        frame = gradient_summary(idata).reset_index()
        frame.insert(0, "estimator", estimator)
        components.append(frame)
        for (temperature, seed), group in frame.groupby(["temperature", "seed"], sort=True):
            r_hat = group.r_hat.max() if group.r_hat.notna().any() else np.nan
            worst = group.loc[group.r_hat.fillna(-np.inf).idxmax(), "parameter"]
            ess_bulk, ess_tail = group.ess_bulk.min(), group.ess_tail.min()
            scale = group["mean"].abs().where(group["mean"] != 0)
            rows.append(
                {
                    "estimator": estimator,
                    "temperature": float(temperature),
                    "seed": int(seed),
                    "components": len(group),
                    "r_hat_max": r_hat,
                    "ess_bulk_min": ess_bulk,
                    "ess_tail_min": ess_tail,
                    "mcse_over_mean_median": float((group.mcse_mean / scale).median()),
                    "worst_component": worst,
                    "flags": _flags(r_hat, ess_bulk, ess_tail, num_chains, num_draws, len(group)),
                }
            )
        if not plots:
            continue
        first_seed = idata.posterior.seed.values[0]
        for temperature in idata.posterior.temperature.values:
            group = frame[(frame.temperature == temperature) & (frame.seed == first_seed)]
            chosen = _plot_parameters(group.set_index("parameter", append=False), max_parameters)
            coords = {"temperature": [temperature], "seed": [first_seed], "parameter": chosen}
            stem = f"{path.stem.split('_', 1)[-1]}_T{temperature:g}_seed{first_seed}"
            title = f"{estimator} at T = {temperature:g}, seed {first_seed}"
            files.append(_trace_plot(idata, out / f"trace_{stem}.png", coords, title))
            files.append(_rank_plot(idata, out / f"rank_{stem}.png", coords, title))
    overview = pd.DataFrame(rows).sort_values(["estimator", "temperature", "seed"])
    overview = overview.reset_index(drop=True)
    overview_path, table_path = out / "overview.csv", out / "gradient_summary.csv"
    overview.to_csv(overview_path, index=False)
    table = None
    if components:
        table = pd.concat(components, ignore_index=True)
        table = table.sort_values(["estimator", "temperature", "seed", "parameter"])
        table.to_csv(table_path, index=False)
    files = [overview_path, *([table_path] if components else []), *files]
    notes = [
        f"{0 if table is None else len(table)} gradient components in {len(loaded)} series "
        "files; R-hat is ArviZ's "
        "rank-normalised split R-hat (Vehtari et al. 2021); flags: the worst R-hat above what "
        "independent draws of the run's size exceed with probability 5 % (at least "
        f"{RHAT_LIMIT}), or bulk/tail ESS below {ESS_PER_DRAW_MIN} per draw",
    ]
    if without:
        notes.append(
            f"{len({r['estimator'] for r in without})} estimator(s) without per-draw series "
            "(exact expectations, or shots): their rows come from sweep.nc, with the MCSE the "
            "estimator reported and no R-hat or ESS"
        )
    judged = overview[~overview["flags"].str.startswith("n/a:")]
    flagged = int((judged["flags"] != "ok").sum())
    notes.append(f"{flagged} of {len(judged)} (estimator, temperature, seed) rows flagged")
    return Diagnosis("sweep", overview, table, files, notes)


def _rows_without_series(folder: Path, with_series: set[str]) -> list[dict[str, Any]]:
    """Overview rows, from the folder's ``sweep.nc``, of the estimators that saved no per-draw
    series (a quantum estimator of exact expectations or of shots): what the estimate itself
    says, its relative MCSE, and no R-hat or ESS."""
    if not (folder / "sweep.nc").is_file():
        return []
    from thermoeqprop.sweep import load_sweep

    ds = load_sweep(folder)
    rows = []
    for estimator in map(str, ds.estimator.values):
        if estimator in with_series:
            continue
        for temperature in ds.temperature.values:
            for seed in ds.seed.values:
                at = ds.sel(estimator=estimator, temperature=temperature, seed=seed)
                gradient, stderr = at.gradient.values, at.stderr.values
                if not np.isfinite(gradient).any():  # not yet computed
                    continue
                scale = np.where(gradient != 0, np.abs(gradient), np.nan)
                exact = bool(np.all(stderr == 0))
                rows.append({
                    "estimator": estimator,
                    "temperature": float(temperature),
                    "seed": int(seed),
                    "components": int(gradient.size),
                    "r_hat_max": np.nan,
                    "ess_bulk_min": np.nan,
                    "ess_tail_min": np.nan,
                    "mcse_over_mean_median": float(np.nanmedian(stderr / scale)),
                    "worst_component": "",
                    "flags": "n/a: exact, no draws" if exact else "n/a: no per-draw series",
                })  # fmt: skip
    return rows


def _series_overview(frame) -> dict[str, Any]:
    """Worst R-hat, smallest ESS and median relative MCSE over one estimate's components."""
    r_hat = frame.r_hat.max() if frame.r_hat.notna().any() else np.nan
    scale = frame["mean"].abs().where(frame["mean"] != 0)
    return {
        "components": len(frame),
        "r_hat_max": r_hat,
        "ess_bulk_min": frame.ess_bulk.min(),
        "ess_tail_min": frame.ess_tail.min(),
        "mcse_over_mean_median": float((frame.mcse_mean / scale).median()),
        "worst_component": frame.loc[frame.r_hat.fillna(-np.inf).idxmax(), "parameter"],
    }


def _diagnose_training(
    folder: Path, out: Path, max_parameters: int, plots: bool, kind: str
) -> Diagnosis:
    """A training folder counted in epochs (``train``) or steps (``train_steps``)."""
    import pandas as pd

    unit, width = ("epoch", 4) if kind == "train" else ("step", 8)
    records = RunFolder(folder).read_metrics()
    if not records:
        raise ValueError(f"training folder {str(folder)!r} has no finished {unit} in metrics.jsonl")
    keys = [unit] + [
        k for k in records[0] if k.startswith("diag_") or k in ("relative_stderr", "temperature")
    ]
    overview = pd.DataFrame([{k: r.get(k, np.nan) for k in keys} for r in records])
    finished = set(overview[unit])
    loaded = [
        (int(path.stem.removeprefix(f"{unit}_")), path, idata)
        for path, idata in RunFolder(folder).read_series(f"{unit}_")
        if int(path.stem.removeprefix(f"{unit}_")) in finished
    ]  # a series past the last finished unit belongs to one that will be redone
    notes: list[str] = []
    files: list[Path] = []
    components = None
    out.mkdir(parents=True, exist_ok=True)
    if loaded:
        frames = []
        for epoch, _, idata in loaded:
            frame = gradient_summary(idata).reset_index()
            frame.insert(0, unit, epoch)
            frames.append(frame)
        components = pd.concat(frames, ignore_index=True)
        per_epoch = pd.DataFrame(
            [{unit: f[unit].iloc[0]} | _series_overview(f) for f in frames]
        ).rename(columns=lambda c: c if c == unit else f"series_{c}")
        overview = overview.merge(per_epoch, on=unit, how="left")
        path = out / "gradient_summary.csv"
        components.to_csv(path, index=False)
        files.append(path)
        sizes = loaded[-1][2].posterior.sizes
        flags = [
            _flags(r, b, t, sizes["chain"], sizes["draw"], n)
            for r, b, t, n in per_epoch[
                ["series_r_hat_max", "series_ess_bulk_min", "series_ess_tail_min",
                 "series_components"]
            ].itertuples(index=False)
        ]  # fmt: skip
        overview = overview.merge(
            pd.DataFrame({unit: per_epoch[unit], "series_flags": flags}), on=unit,
            how="left",
        )  # fmt: skip
        notes.append(
            f"per-draw gradient series of each {unit}'s last batch: {len(loaded)} {unit}s, "
            f"{per_epoch.series_components.iloc[-1]} components each; "
            f"{sum(f != 'ok' for f in flags)} flagged (rank-normalised R-hat above what "
            "independent draws of this size exceed with probability 5 %, or bulk/tail ESS "
            f"below {ESS_PER_DRAW_MIN} per draw)"
        )
    if "diag_num_chains" in records[-1]:
        last = records[-1]
        notes.append(
            format_checks(
                gradient_checks(last),
                f"gradient health, {unit} {last[unit]} (worst of its batches; split R-hat: "
                "Gelman et al., not rank-normalised, recorded by train on every batch):",
            )
        )
    sampled = [k for k in ("diag_rhat_max", "diag_ess_min", "relative_stderr") if k in overview]
    if not sampled:
        notes.append("its estimator is deterministic (no Monte Carlo diagnostics to show)")
    elif not loaded:
        notes.append(
            f"no per-draw gradient series saved (series/{unit}_*.nc): per-{unit} summaries only, "
            "no trace or rank plots"
        )
    path = out / "training_diagnostics.csv"
    overview.to_csv(path, index=False)
    files.append(path)
    if plots and sampled:
        from matplotlib.figure import Figure  # no pyplot: the user's backend stays
        from matplotlib.ticker import MaxNLocator

        limits = health_limits(records[-1])
        fig = Figure(figsize=(3.8 * len(sampled), 3.4), layout="constrained")
        axes = fig.subplots(1, len(sampled), squeeze=False)
        for ax, key in zip(axes[0], sampled, strict=True):
            title, limit = limits[key]
            ax.plot(overview[unit], overview[key], "o-", ms=3, label="worst batch"
                    if key.startswith("diag_") else "mean over batches")  # fmt: skip
            if limit is not None:
                ax.axhline(limit, color="tab:red", ls="--", lw=1, label=f"limit {limit:.3g}")
            ax.set(xlabel=unit, title=title)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
        fig.suptitle(f"gradient diagnostics per {unit}: {folder.name}")
        picture = out / "training_diagnostics.png"
        fig.savefig(picture, dpi=100)
        files.append(picture)
    if plots and loaded:
        epoch, _, idata = loaded[-1]
        frame = components[components[unit] == epoch].set_index("parameter")
        chosen = _plot_parameters(frame, max_parameters)
        title = f"{unit} {epoch}, last batch"
        coords = {"parameter": chosen}
        stem = f"{unit}_{epoch:0{width}d}"
        files.append(_trace_plot(idata, out / f"trace_{stem}.png", coords, title))
        files.append(_rank_plot(idata, out / f"rank_{stem}.png", coords, title))
    return Diagnosis(kind, overview, components, files, notes)


def _make_output_folder(out: Path) -> None:
    """Make ``out`` (and its parents); ``ValueError`` naming it if it is a file or cannot be
    made. Files already inside it are overwritten."""
    if out.exists() and not out.is_dir():
        raise ValueError(
            f"output folder {str(out)!r} is a file; give a folder for the tables and plots "
            "(made if missing, its files overwritten)"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(
            f"output folder {str(out)!r} cannot be made ({exc.strerror}); give a folder you can "
            "write to"
        ) from None


def diagnose(folder, out_dir=None, *, max_parameters: int = 4, plots: bool = True) -> Diagnosis:
    """Diagnose the gradient estimates of a results folder.

    Args:
        folder: A sweep results folder (``thermoeqprop sweep`` or ``temperature_sweep`` with
            ``results_dir``) or a training results folder.
        out_dir: Where tables and plots go (default ``folder/diagnose``).
        max_parameters: Components per trace and rank plot (those with the worst R-hat).
        plots: Write ArviZ trace and rank plots.

    Returns:
        A :class:`Diagnosis`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"results folder {str(folder)!r} does not exist or is not a folder")
    if (
        isinstance(max_parameters, bool)
        or not isinstance(max_parameters, int)
        or max_parameters < 1
    ):
        raise ValueError(f"max_parameters must be an integer ≥ 1, got {max_parameters!r}")
    out = Path(out_dir) if out_dir is not None else folder / "diagnose"
    _make_output_folder(out)
    kind = RunFolder(folder).kind
    if kind == "temperature_sweep":
        return _diagnose_sweep(folder, out, max_parameters, plots)
    if kind in ("train", "train_steps"):
        return _diagnose_training(folder, out, max_parameters, plots, kind)
    if kind is not None:
        raise ValueError(
            f"{str(folder)!r} holds a {kind} run, which records no gradient diagnostics; give "
            "a folder that `thermoeqprop sweep`, `train` or `quantum` wrote"
        )
    raise ValueError(
        f"{str(folder)!r} is neither a sweep nor a training results folder (no config.json "
        "naming one); give the folder that `thermoeqprop sweep`, `train` or `quantum` wrote"
    )
