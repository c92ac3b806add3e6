"""ArviZ diagnostics of gradient estimates, and ``thermoeqprop diagnose``.

The per-draw gradient series saved by a sweep are exactly the series whose means are its
estimates, so ArviZ's posterior means must equal the sweep's gradients to rounding, and ArviZ's
MCSE of the mean must equal the covariance estimator's reported standard error (the same
algorithm). No statistical tolerance is involved except a sanity bound R-hat < 1.1 on 5-spin
Gibbs chains of 4 × 200 draws (observed at most 1.06, on the slowest component: a nudged
output spin).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from jax.flatten_util import ravel_pytree
from plot_testing import foreign_backend

from thermoeqprop._health import rhat_limit
from thermoeqprop.cli import main
from thermoeqprop.data import load_dataset
from thermoeqprop.diagnostics import (
    diagnose,
    gradient_inference_data,
    gradient_summary,
    load_gradient_series,
)
from thermoeqprop.estimators import GradientSeries, Sampling, ThermalCovariance
from thermoeqprop.models import SpinNetwork
from thermoeqprop.sweep import load_sweep, temperature_sweep
from thermoeqprop.training import StepConfig, TrainConfig, dataset_source, train, train_steps

SAMPLING = Sampling(num_chains=4, num_samples=200, num_warmup=100)


@pytest.fixture(scope="module")
def problem():
    net = SpinNetwork.layered((2, 3, 2))
    params = net.init_params(jax.random.key(1))
    x = jax.random.uniform(jax.random.key(2), (3, 2))
    targets = net.encode_labels(jnp.array([1, 0, 1]))
    return net, params, x, targets


@pytest.fixture(scope="module")
def sweep_folder(problem, tmp_path_factory):
    net, params, x, targets = problem
    folder = tmp_path_factory.mktemp("sweep")
    temperature_sweep(net, params, x, targets, [0.5, 1.0], seeds=[0, 1], sampling=SAMPLING,
                      results_dir=folder)  # fmt: skip
    return folder


def test_diagnose_command_on_a_sweep_folder(sweep_folder, capsys):
    with foreign_backend():  # ArviZ's plots go on figures of our own, not pyplot's
        assert main(["diagnose", str(sweep_folder), "--max-parameters", "3"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"thermoeqprop diagnose: sweep folder {sweep_folder}"
    assert "r_hat_max" in lines[1] and "ess_tail_min" in lines[1]
    rows = [line for line in lines[2:] if line.split()[:1] in (["covariance"], ["nudged:0.1"])]
    assert len(rows) == 2 * 2 * 2  # estimators × temperatures × seeds
    written = sorted(p.name for p in (sweep_folder / "diagnose").iterdir())
    plots = [name for name in written if name.endswith(".png")]
    assert len(plots) == 2 * 2 * 2  # (trace, rank) × estimators × temperatures, first seed
    assert "trace_nudged_0.1_T0.5_seed0.png" in plots
    assert {"overview.csv", "gradient_summary.csv"} <= set(written)
    for name in plots:
        assert (sweep_folder / "diagnose" / name).read_bytes()[:4] == b"\x89PNG"


def test_arviz_summary_agrees_with_the_sweep(sweep_folder):
    diagnosis = diagnose(sweep_folder, plots=False)
    table = diagnosis.components.set_index(["estimator", "temperature", "seed", "parameter"])
    ds = load_sweep(sweep_folder)
    for estimator in ds.estimator.values:
        for temperature in ds.temperature.values:
            for seed in ds.seed.values:
                rows = table.loc[(estimator, temperature, seed)].loc[ds.parameter.values]
                point = ds.sel(estimator=estimator, temperature=temperature, seed=seed)
                np.testing.assert_allclose(rows["mean"], point.gradient, rtol=1e-10, atol=1e-14)
                if estimator == "covariance":
                    np.testing.assert_allclose(rows.mcse_mean, point.stderr, rtol=1e-8)
    assert float(table.r_hat.max()) < 1.1  # the chains agree: Gibbs on 5 spins mixes
    overview = diagnosis.overview
    sizes = load_gradient_series(sweep_folder)[0][1].posterior.sizes
    chains, draws = sizes["chain"], sizes["draw"]
    for _, row in overview.iterrows():
        # Limits for the run's size: R-hat above what independent draws exceed with
        # probability 5 % (at least 1.01), ESS below 0.1 per draw.
        limit = max(1.01, rhat_limit(chains, draws, row.components))
        assert ("chains disagree" in row["flags"]) == (row.r_hat_max >= limit)
        few = min(row.ess_bulk_min, row.ess_tail_min) < 0.1 * chains * draws
        assert ("few effective draws" in row["flags"]) == few
    # The nudged phase pins the output spins at T = 0.5: their series mix slowest, and the
    # diagnostics say so.
    worst = overview.loc[overview.ess_bulk_min.idxmin()]
    assert worst.estimator == "nudged:0.1" and worst.temperature == 0.5


def test_inference_data_from_one_estimate(problem):
    net, params, x, targets = problem
    estimator = ThermalCovariance(net, 0.7, SAMPLING)
    estimate, series = estimator.estimate_with_series(params, x, targets, jax.random.key(4))
    idata = gradient_inference_data(series, temperature=0.7, estimator="covariance")
    assert idata.posterior["gradient"].dims == ("chain", "draw", "temperature", "seed", "parameter")
    table = gradient_summary(idata)
    np.testing.assert_allclose(table["mean"], ravel_pytree(estimate.grad)[0], rtol=1e-10)
    np.testing.assert_allclose(table.mcse_mean, ravel_pytree(estimate.stderr)[0], rtol=1e-8)
    subset = gradient_inference_data(series, parameters=["fields[0]", "couplings[0][1,0]"])
    assert subset.posterior.parameter.values.tolist() == ["couplings[0][1,0]", "fields[0]"]


def test_rhat_flags_chains_that_disagree():
    rng = np.random.default_rng(0)
    gradient = rng.normal(size=(4, 300, 2))
    gradient[0, :, 1] += 3.0  # one chain stuck elsewhere in the second component
    series = GradientSeries(gradient, rng.normal(size=(4, 300)), ["a", "b"], [])
    table = gradient_summary(gradient_inference_data(series))
    r_hat = table.r_hat.to_numpy()
    # Classic R-hat would be about sqrt(1 + 2.6) ≈ 1.9 here; rank normalisation compresses
    # the stuck chain's values, and ArviZ reports about 1.5: far above any threshold in use.
    assert r_hat[0] < 1.02 and r_hat[1] > 1.3, r_hat


def test_diagnose_a_training_folder(problem, tmp_path, capsys):
    net = problem[0]
    data = load_dataset("moons", num_examples=15)  # 12 train, 3 test: the sweep's batch shape
    folder = tmp_path / "train"
    config = TrainConfig(epochs=2, batch_size=3)
    result = train(ThermalCovariance(net, 1.0, SAMPLING), data, config, folder)
    # Saving each epoch's last-batch series takes the same estimate (same key), so the run is
    # the run without series, bit for bit.
    plain = train(ThermalCovariance(net, 1.0, SAMPLING), data, config, tmp_path / "plain",
                  series_parameters=0)  # fmt: skip
    np.testing.assert_array_equal(ravel_pytree(result.params)[0], ravel_pytree(plain.params)[0])
    assert sorted(p.name for p in (folder / "series").iterdir()) == [
        "epoch_0001.nc", "epoch_0002.nc"
    ]  # fmt: skip
    assert not (tmp_path / "plain" / "series").exists()

    with foreign_backend():
        assert main(["diagnose", str(folder), "--max-parameters", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"thermoeqprop diagnose: train folder {folder}")
    assert "split R-hat max (worst batch)" in out and "rank R-hat max (last batch)" in out
    assert "gradient health, epoch 2" in out and "relative MCSE of the gradient" in out
    assert "per-draw gradient series of each epoch's last batch: 2 epochs, 17 components" in out
    report = folder / "diagnose"
    for name in ("training_diagnostics.png", "trace_epoch_0002.png", "rank_epoch_0002.png"):
        assert (report / name).read_bytes()[:4] == b"\x89PNG", name
    recorded = (report / "training_diagnostics.csv").read_text().splitlines()
    assert len(recorded) == 3  # header and two epochs
    table = pd.read_csv(report / "gradient_summary.csv")
    assert sorted(set(table.epoch)) == [1, 2] and len(table) == 2 * 17
    assert np.all(table.r_hat < 1.1)  # 5 spins, 4 × 200 Gibbs draws (see the module docstring)

    # Without series: the per-epoch summaries only, and the note says why.
    assert main(["diagnose", str(tmp_path / "plain")]) == 0
    assert "no trace or rank plots" in capsys.readouterr().out


def test_diagnose_reads_the_kind_the_folder_records(problem, tmp_path, capsys):
    """A step-counted run (what `thermoeqprop quantum` writes) is a training folder too; a
    folder of another kind, or of none, is named."""
    net = problem[0]
    data = load_dataset("moons", num_examples=15)
    source = dataset_source(data.x_train, net.encode_labels(data.labels_train), 3, name="moons")
    folder = tmp_path / "steps"
    train_steps(ThermalCovariance(net, 1.0, SAMPLING), source, StepConfig(steps=4, eval_every=2),
                folder)  # fmt: skip
    assert json.loads((folder / "config.json").read_text())["kind"] == "train_steps"
    assert main(["diagnose", str(folder), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"thermoeqprop diagnose: train_steps folder {folder}")
    assert "gradient health, step 4" in out
    assert len((folder / "diagnose" / "training_diagnostics.csv").read_text().splitlines()) == 3

    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "config.json").write_text('{"kind": "low_temperature_study"}')
    with pytest.raises(ValueError, match="holds a low_temperature_study run, which records no"):
        diagnose(tmp_path / "study")
    (tmp_path / "guess" / "series").mkdir(parents=True)  # a series folder alone: no guessing
    with pytest.raises(ValueError, match="neither a sweep nor a training results folder"):
        diagnose(tmp_path / "guess")
