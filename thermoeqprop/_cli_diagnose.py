"""``thermoeqprop diagnose RUN_FOLDER``: ArviZ diagnostics of a folder's gradient estimates.

For a sweep folder: a summary table (worst R-hat, smallest bulk and tail ESS per estimator,
temperature and seed), the per-component ArviZ summary as CSV, and ArviZ trace and rank plots
of the least converged components. For a training folder (by epochs, or by steps as
``thermoeqprop quantum`` writes): the gradient diagnostics its metrics recorded, the ArviZ
summary of the per-draw gradient series saved for each epoch's last batch (sampled
estimators), and trace and rank plots of the latest. The folder's kind is what its
``config.json`` records (:class:`thermoeqprop.results.RunFolder`).
"""

from __future__ import annotations

from thermoeqprop.options import DiagnoseOptions

# The printed columns of a training folder's per-epoch table, and their headings.
TRAIN_COLUMNS = {
    "epoch": "epoch",
    "step": "step",
    "temperature": "T",
    "relative_stderr": "rel. MCSE (mean of batches)",
    "relative_stderr_median": "rel. MCSE (median batch)",
    "diag_relative_stderr": "rel. MCSE (worst batch)",
    "diag_rhat_max": "split R-hat max (worst batch)",
    "rank_rhat_max_last_batch": "rank R-hat max (last batch, all components)",
    "series_r_hat_max": "rank R-hat max (last batch)",
    "diag_ess_min": "ESS min (worst batch)",
    "series_ess_bulk_min": "bulk ESS min (last batch)",
    "diag_control_variate_gain": "controls' MCSE gain (worst batch)",
    "series_flags": "last batch",
}


#: The options of ``thermoeqprop diagnose`` (flags and config-file keys).
OPTIONS = DiagnoseOptions


def run(options: DiagnoseOptions) -> int:
    import pandas as pd

    from thermoeqprop.diagnostics import diagnose

    diagnosis = diagnose(
        options.run_folder,
        options.out,
        max_parameters=options.max_parameters,
        plots=not options.no_plots,
    )
    display = {
        "display.width": 160,
        "display.max_columns": 20,
        "display.max_rows": 500,
        "display.float_format": "{:.4g}".format,
    }
    overview = diagnosis.overview
    if diagnosis.kind != "sweep":  # training: a short table, every R-hat named (all: the CSV)
        overview = overview[[c for c in TRAIN_COLUMNS if c in overview]].rename(
            columns=TRAIN_COLUMNS
        )
    with pd.option_context(*[item for pair in display.items() for item in pair]):
        print(f"thermoeqprop diagnose: {diagnosis.kind} folder {options.run_folder}")
        print(overview.to_string(index=False))
    for note in diagnosis.notes:
        print(note)
    print("wrote: " + ", ".join(str(path) for path in diagnosis.files))
    return 0
