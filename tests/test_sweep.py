"""Temperature sweeps against exact answers; tempering over the grid; netCDF; resume; the CLI.

References (tests/README.md): the Gaussian closed form of the quadratic network, enumeration
of the 2^5 states of a 5-spin network, implicit differentiation at T = 0. Sampled gradients
must lie within K = 4 Monte Carlo standard errors of the exact expectation of their estimator
(the exact gradient for the covariance estimator, the exact finite-β difference for the nudged
one), per component, MCSE from the ESS of the per-draw series.

False-failure budget: about 250 components are checked at 4 MCSE over this module
(quadratic: 2 estimators × 2 T × 2 seeds × 13; spins with tempering: 2 × 3 × 17). With honest
MCSEs and Gaussian errors P(|z| > 4) = 6.3e-5 each, so about 1.6 % of code versions that change
sampling would see a false failure (seeds are fixed: a version passes or fails reproducibly).
The RMS z pooled over an estimator's runs is checked against the bounds of its law
(tests/pooled_z.py): the components of one run share their draws, so their errors are strongly
correlated (``error_dof`` about 1.3 of 13 quadratic components), and the pooled RMS fluctuates
like that of a handful of independent z-scores, not of 52. Each side's tail is 1e-4 nominal and
at most 6e-4 in the simulations of tests/samplers/test_batch_means.py: below 3e-3 for the four
pooled checks, so about 1.9 % in all. (Bounds argued as if the components were independent,
(0.6, 1.5), failed an honest MCSE in 2 of 11 seed sets.) Under tests/false_failure_budget.py the
problems built here keep their seeds (seed_offset.fixed) and the sweeps' sampler seeds move;
the command-line sweeps build their random problem inside the command, so theirs moves as well
(only |z| < K is checked there).

Compilation dominates the cost: every test here shares two model configurations and one
sampling setting each, so each sampler compiles once per session.
"""

import json
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pooled_z
import pytest
import seed_offset
import xarray as xr
from cli_testing import interrupt_cli, run_cli
from plot_testing import foreign_backend, overlapping_tick_labels, tick_labels

import samplers
from thermoeqprop._barrier import joinable_parts
from thermoeqprop._cli_sweep import barrier_lines, frozen_lines
from thermoeqprop.cli import main
from thermoeqprop.estimators import Sampling
from thermoeqprop.models import QuadraticNetwork, SpinNetwork
from thermoeqprop.plots import (
    plot_sweep,
    sweep_barrier_figure,
    sweep_cosine_figure,
    sweep_error_figure,
    sweep_loss_figure,
)
from thermoeqprop.sweep import (
    load_sweep,
    matched_budgets,
    parse_estimator,
    save_sweep,
    temperature_sweep,
)
from thermoeqprop.sweep._grid import _unit_key
from thermoeqprop.sweep._tempered import _ladder_trace

#: The false-failure budget per run of this module, as stated above (about 250 components at 4
#: MCSE, 1.6e-2, and four pooled RMS checks at 7e-4 each); tests/false_failure_budget.py
#: measures it on fresh seeds.
FALSE_FAILURE_BUDGET = 1.9e-2

K = 4.0
SPIN_SAMPLING = Sampling(num_chains=4, num_samples=1000, num_warmup=100)
QUADRATIC_SAMPLING = Sampling(num_chains=4, num_samples=400, num_warmup=200)
RESUME_SAMPLING = Sampling(num_chains=4, num_samples=200, num_warmup=100)


@pytest.fixture(scope="module")
@seed_offset.fixed
def spin_problem():
    net = SpinNetwork.layered((2, 3, 2))  # 5 spins, 17 parameters
    params = net.init_params(jax.random.key(0))
    params["fields"] = 0.2 * jax.random.normal(jax.random.key(5), (net.num_spins,))
    x = jax.random.uniform(jax.random.key(1), (3, 2))
    targets = net.encode_labels(jnp.array([0, 1, 1]))
    return net, params, x, targets


@pytest.fixture(scope="module")
def quadratic_sweep():
    net = QuadraticNetwork((2, 3, 1))  # 4 units, 13 parameters
    with seed_offset.fixed():
        params = net.init_params(jax.random.key(0))
        x = jax.random.uniform(jax.random.key(1), (3, 2))
    targets = jnp.array([[0.8], [-0.3], [0.5]])
    return temperature_sweep(
        net, params, x, targets, [0.5, 0.05],
        estimators=["covariance", "nudged:0.05"], seeds=[0, 1], sampling=QUADRATIC_SAMPLING,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tempered_sweep(spin_problem):
    net, params, x, targets = spin_problem
    return temperature_sweep(
        net, params, x, targets, [0.4, 0.8, 1.6],
        estimators=["covariance", "nudged:0.1"], seeds=[3], sampling=SPIN_SAMPLING,
        tempering=True,
    )  # fmt: skip


def check_within_mcse(ds):
    z = ds.z_score.values
    assert np.all(np.isfinite(z)), "every component fluctuates, so every MCSE is positive"
    assert np.max(np.abs(z)) < K, ds.z_score
    # Honest MCSEs: the RMS z-score of each estimator pooled over temperatures and seeds lies
    # within the bounds of its law, which the runs' effective components set (pooled_z.py).
    for e, estimator in enumerate(ds.estimator.values):
        dofs = ds.error_dof.values[e].ravel()
        assert np.all((1 <= dofs) & (dofs <= z.shape[-1])), dofs
        low, high = pooled_z.rms_bounds([z.shape[-1]] * dofs.size, dofs, tail=1e-4)
        pooled = float(np.sqrt(np.mean(z[e] ** 2)))
        assert low < pooled < high, (estimator, low, pooled, high, dofs)
    # The error against the exact gradient is the Monte Carlo error plus the estimator's
    # deterministic bias, nothing else.
    bound = K * ds.stderr + np.abs(ds.bias)
    assert bool((np.abs(ds.error) <= bound).all())


def test_sweep_matches_exact_references_within_mcse(quadratic_sweep):
    ds = quadratic_sweep
    assert ds.gradient.dims == ("estimator", "temperature", "seed", "parameter")
    assert ds.temperature.values.tolist() == [0.05, 0.5]  # sorted
    assert ds.estimator.values.tolist() == ["covariance", "nudged:0.05"]
    check_within_mcse(ds)
    assert np.all(ds.bias.sel(estimator="covariance").values == 0)
    loss_z = (ds.loss - ds.exact_loss) / ds.loss_stderr
    assert float(np.abs(loss_z.sel(estimator="covariance")).max()) < K
    assert float(ds.rhat_max.max()) < 1.05
    assert float(ds.divergences.max()) == 0
    assert np.all(ds.num_steps.sel(estimator="nudged:0.05") == 2 * 4 * 600)


def test_quadratic_gradient_leaves_the_zero_temperature_gradient_linearly_in_t(quadratic_sweep):
    """For the quadratic network L_T = C(μ) + (T/2) tr(A⁻¹)_out exactly, so the exact thermal
    gradient is g_0 + T c: its distance from the implicit-differentiation gradient at T = 0
    scales exactly like T, and the sampled gradients align with g_0 at low T."""
    ds = quadratic_sweep
    distance = np.sqrt(((ds.exact_gradient - ds.zero_temperature_gradient) ** 2).sum("parameter"))
    np.testing.assert_allclose(float(distance[1] / distance[0]), 10.0, rtol=1e-6)
    assert float(ds.exact_cosine_zero_temperature.sel(temperature=0.05)) > 0.99
    np.testing.assert_allclose(
        float(ds.zero_temperature_loss),
        float(ds.exact_loss[0]) - 0.05 * float(ds.exact_loss[1] - ds.exact_loss[0]) / 0.45,
        rtol=1e-6,
    )
    low = ds.cosine_zero_temperature.sel(temperature=0.05, estimator="covariance")
    assert float(low.min()) > 0.95


def test_sweep_figures_keep_the_backend_and_have_readable_ticks(quadratic_sweep, tmp_path):
    with foreign_backend():
        paths = plot_sweep(quadratic_sweep, tmp_path)
    assert [p.name for p in paths] == ["sweep_error.png", "sweep_cosine.png", "sweep_loss.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
    # T = 0.05 and 0.5 hold one power of ten: matplotlib alone labels its minor ticks there,
    # 3×10⁻¹ over 4×10⁻¹. The grid temperatures are labelled instead.
    for make in (sweep_error_figure, sweep_cosine_figure, sweep_loss_figure):
        figure = make(quadratic_sweep)
        assert overlapping_tick_labels(figure) == [], make.__name__
        for ax in figure.axes:
            assert tick_labels(ax.xaxis) == ["0.05", "0.5"], make.__name__
            assert tick_labels(ax.xaxis, minor=True) == [], make.__name__


def test_tempering_sweep_matches_enumeration_at_every_temperature(tempered_sweep):
    ds = tempered_sweep
    assert ds.attrs["tempering"] == 1
    check_within_mcse(ds)
    assert float(ds.swap_rate_min.min()) > 0.1
    assert float(ds.rhat_max.max()) < 1.05
    assert "zero_temperature_gradient" not in ds  # spins have no T = 0 EP gradient
    # One run per nudge sign serves the grid: each rung costs what a plain run would.
    steps = ds.num_steps.sel(estimator="nudged:0.1").values
    assert np.all(steps == 2 * 4 * 1100)


def test_netcdf_round_trip(tempered_sweep, tmp_path):
    path = save_sweep(tempered_sweep, tmp_path / "sweep.nc")
    loaded = load_sweep(path)
    xr.testing.assert_identical(loaded, tempered_sweep)
    assert json.loads(loaded.attrs["config"])["tempering"] is True
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        load_sweep(path)


BARRIER_VARIABLES = (
    "swap_probability", "swap_rate", "local_barrier", "cumulative_barrier", "global_barrier"
)  # fmt: skip


def test_tempered_sweep_carries_the_communication_barrier_of_its_trace(
    tempered_sweep, spin_problem
):
    ds = tempered_sweep
    ladder = ds.temperature.values
    assert ds.local_barrier.dims == ("estimator", "pair_temperature", "seed")
    assert ds.cumulative_barrier.dims == ("estimator", "temperature", "seed")
    assert ds.global_barrier.dims == ("estimator", "seed")
    np.testing.assert_array_equal(ds.pair_temperature.values, (ladder[:-1] + ladder[1:]) / 2)
    np.testing.assert_array_equal(ds.pair_temperature_low.values, ladder[:-1])
    np.testing.assert_array_equal(ds.pair_temperature_high.values, ladder[1:])
    for name in BARRIER_VARIABLES:
        assert ds[name].attrs["description"], name
    assert "dΛ/dβ" in ds.local_barrier.attrs["description"] and ds.local_barrier.attrs["units"]
    # The same trace again (same key, same call as the sweep's covariance run; one phase).
    net, params, x, targets = spin_problem
    key = jax.random.fold_in(_unit_key(3, "covariance", 0), 0)
    trace = _ladder_trace(net, SPIN_SAMPLING, params, x, targets, 0.0, ladder, key)
    info = trace.info
    probability = np.asarray(info.swap_probability, dtype=float).mean(axis=(0, 1, 2))
    accepted = np.asarray(info.swap_accepted).sum(axis=(0, 1, 2))
    proposed = np.asarray(info.swap_proposed).sum(axis=(0, 1, 2))
    cumulative, total = samplers.communication_barrier(ladder, probability)
    one = ds.sel(estimator="covariance", seed=3)
    np.testing.assert_array_equal(one.swap_probability.values, probability)
    np.testing.assert_array_equal(one.swap_rate.values, accepted / proposed)
    np.testing.assert_array_equal(one.cumulative_barrier.values, cumulative)
    assert float(one.global_barrier) == total
    gap = 1 / ladder[:-1] - 1 / ladder[1:]
    np.testing.assert_array_equal(ds.pair_inverse_temperature_gap.values, gap)
    slope = (cumulative[:-1] - cumulative[1:]) / gap
    np.testing.assert_array_equal(one.local_barrier.values, slope)
    # λ integrates back to Λ, for every estimator and seed.
    integral = (ds.local_barrier * ds.pair_inverse_temperature_gap).sum("pair_temperature")
    np.testing.assert_allclose(integral.values, ds.global_barrier.values, rtol=1e-12)
    assert np.all(ds.local_barrier.values > 0) and np.all(ds.swap_probability.values < 1)


def test_sweep_without_tempering_has_no_barrier(quadratic_sweep):
    assert not any(name in quadratic_sweep for name in BARRIER_VARIABLES)
    assert "pair_temperature" not in quadratic_sweep.dims
    with pytest.raises(ValueError, match="without tempering"):
        sweep_barrier_figure(quadratic_sweep)


def test_barrier_figure_keeps_the_backend_and_marks_the_peak(tempered_sweep, tmp_path):
    with foreign_backend():
        paths = plot_sweep(tempered_sweep, tmp_path)
    assert [p.name for p in paths] == ["sweep_error.png", "sweep_loss.png", "sweep_barrier.png"]
    assert paths[-1].read_bytes()[:4] == b"\x89PNG"
    figure = sweep_barrier_figure(tempered_sweep)
    assert overlapping_tick_labels(figure) == []
    (ax,) = figure.axes
    assert tick_labels(ax.xaxis) == ["0.4", "0.8", "1.6"]
    assert ax.get_title() and "λ" in ax.get_ylabel() and "T" in ax.get_xlabel()
    local = tempered_sweep.local_barrier.mean("seed")
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    for estimator in tempered_sweep.estimator.values:
        peak = float(local.sel(estimator=estimator).max())
        assert any(label.startswith(f"peak λ = {peak:.3g}") for label in legend), legend
        total = float(tempered_sweep.global_barrier.sel(estimator=estimator).mean())
        assert f"{estimator}: Λ = {total:.3g}" in legend


def test_parts_saved_without_the_barrier_still_join(tempered_sweep):
    # A tempered sweep resumed from parts saved before the barrier existed joins without it.
    new = tempered_sweep
    old = new.drop_vars([*BARRIER_VARIABLES, "pair_temperature", "pair_temperature_low",
                         "pair_temperature_high", "pair_inverse_temperature_gap"])  # fmt: skip
    old = old.assign_coords(seed=[4])
    assert [sorted(p.data_vars) for p in joinable_parts([old, new])] == [sorted(old.data_vars)] * 2
    assert all(part is new for part in joinable_parts([new, new]))


def test_sweep_records_the_control_variate_gain():
    """With control variates each estimate's ``control_variate_gain`` is a variable of the
    dataset (its MCSE without the controls over that with them; the value itself is tested
    with the estimators: here 1.04–1.14 over seeds 0–5, so only a wide band is asked); without
    them it is NaN, and parts saved before it existed join without it."""
    net = QuadraticNetwork((2, 3, 1))
    with seed_offset.fixed():
        params = net.init_params(jax.random.key(0))
        x = jax.random.uniform(jax.random.key(1), (3, 2))
    targets = jnp.array([[0.8], [-0.3], [0.5]])
    ds = temperature_sweep(
        net, params, x, targets, [0.05], estimators=["covariance"], seeds=[0],
        sampling=QUADRATIC_SAMPLING, control_variates="zv1",
    )  # fmt: skip
    gain = float(ds.control_variate_gain.squeeze())
    assert 0.5 < gain < 3.0, gain
    assert ds.control_variate_gain.attrs["description"]
    old = ds.drop_vars("control_variate_gain").assign_coords(seed=[1])
    assert all("control_variate_gain" not in part for part in joinable_parts([old, ds]))


def test_sweep_without_control_variates_has_nan_gain(quadratic_sweep):
    assert np.all(np.isnan(quadratic_sweep.control_variate_gain.values))


def test_summary_reports_the_barrier_only_with_tempering(tempered_sweep, quadratic_sweep):
    assert barrier_lines(quadratic_sweep) == []
    lines = barrier_lines(tempered_sweep)
    total = float(tempered_sweep.global_barrier.sel(estimator="covariance").mean())
    assert any(line.startswith(f"  covariance: Λ = {total:.4g}, peak λ") for line in lines), lines
    assert len(lines) == 2 + tempered_sweep.sizes["estimator"]


def test_a_sampler_that_moved_nothing_is_named(tempered_sweep):
    assert frozen_lines(tempered_sweep) == []  # every sampler moved
    stat = "acceptance_rate" if "acceptance_rate" in tempered_sweep else "flip_rate"
    frozen = tempered_sweep.copy(deep=True)
    cell = dict(estimator="nudged:0.1", temperature=0.4, seed=3)
    frozen[stat].loc[cell] = 0.0
    assert frozen_lines(frozen) == [
        f"nudged:0.1 at T = 0.4, seed 3: the sampler moved nothing ({stat} 0), so the estimate "
        "describes the chains' starts, not the Gibbs law; a higher temperature, or --tempering"
    ]


class Interrupt(Exception):
    pass


def test_resume_after_interruption_equals_uninterrupted(spin_problem, tmp_path):
    net, params, x, targets = spin_problem
    kwargs = dict(estimators=["covariance", "nudged"], seeds=[0, 1], sampling=RESUME_SAMPLING)
    grid = [0.5, 1.0, 2.0]
    whole = temperature_sweep(net, params, x, targets, grid, **kwargs, results_dir=tmp_path / "a")

    def stop_after_first(unit, part):
        raise Interrupt(unit)

    folder = tmp_path / "b"
    with pytest.raises(Interrupt):
        temperature_sweep(net, params, x, targets, grid, **kwargs, results_dir=folder,
                          callback=stop_after_first)  # fmt: skip
    assert sorted(p.name for p in (folder / "parts").iterdir()) == ["T000.nc"]
    partial = load_sweep(folder)
    assert partial.temperature.values.tolist() == [0.5]
    assert partial.attrs["complete"] == 0

    computed = []
    resumed = temperature_sweep(net, params, x, targets, grid, **kwargs, results_dir=folder,
                                callback=lambda unit, part: computed.append(unit))  # fmt: skip
    assert computed == ["T001", "T002"]
    assert resumed.attrs["complete"] == 1
    for result in (resumed, load_sweep(folder)):
        xr.testing.assert_identical(result.drop_vars("wall_time"), whole.drop_vars("wall_time"))

    with pytest.raises(
        ValueError, match=r"different configuration \(seeds: \[0, 1\] there, \[0\] now\)"
    ):
        temperature_sweep(net, params, x, targets, grid, **(kwargs | {"seeds": [0]}),
                          results_dir=folder)  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"temperatures": [0.5, -1.0]}, "temperatures must be finite and > 0"),
        ({"temperatures": [0.5, 0.5]}, "temperatures must be distinct"),
        ({"temperatures": []}, "temperatures is empty"),
        ({"estimators": ["magic"]}, "unknown estimator 'magic'"),
        ({"estimators": ["nudged:strong"]}, "β 'strong' is not a number"),
        ({"estimators": ["nudged:-0.1"]}, "beta of estimator 'nudged:-0.1' must be finite"),
        ({"estimators": ["nudged", "nudged:0.1"]}, "name the same estimator twice"),
        ({"estimators": []}, "estimators is empty"),
        ({"seeds": [-1]}, "seeds must be integers ≥ 0"),
        ({"tempering": True, "temperatures": [0.5]}, "tempering needs at least two"),
        ({"tempering": True, "sampling": Sampling(tempering=3)}, "must have tempering=0"),
        ({"sampling": Sampling(target_relative_stderr=0.1)}, "fixed budget"),
        ({"sampling": {"covariance": Sampling()}}, "no entry for estimator 'nudged'"),
        (
            {"sampling": {"covariance": Sampling(), "nudged": Sampling(), "nudge": Sampling()}},
            "sampling names estimators \\['nudge'\\]",
        ),  # fmt: skip
        ({"sampling": Sampling(method="nuts")}, "needs continuous states"),
        ({"series_parameters": ["weights"]}, "'weights' is not a parameter name"),
        ({"targets": jnp.ones((2, 2))}, "x has 3 examples but targets has 2"),
    ],
)
def test_bad_sweep_input_is_named(spin_problem, change, message):
    net, params, x, targets = spin_problem
    args = {"temperatures": [0.5, 1.0], "targets": targets} | change
    temperatures, targets = args.pop("temperatures"), args.pop("targets")
    with pytest.raises(ValueError, match=message):
        temperature_sweep(net, params, x, targets, temperatures, **args)


def test_estimator_names_and_budgets():
    assert parse_estimator("nudged", 0.2).label == "nudged:0.2"
    assert parse_estimator("nudged-one-sided:0.05").symmetric is False
    budgets = matched_budgets(["covariance", "nudged:0.05"], RESUME_SAMPLING)
    assert budgets["covariance"].num_samples == 2 * budgets["nudged:0.05"].num_samples
    assert budgets["covariance"].num_warmup == 2 * budgets["nudged:0.05"].num_warmup


CLI_SPIN = [
    "sweep", "--model", "spin", "--hidden", "3", "--dataset", "random", "--num-inputs", "2",
    "--num-classes", "2", "--num-examples", "3", "--seeds", "0", "--num-chains", "4",
    "--num-samples", "200", "--num-warmup", "100", "--no-progress",
]  # fmt: skip


def test_sweep_command_writes_a_results_folder_and_resumes(tmp_path, capsys):
    folder = tmp_path / "run"
    args = [*CLI_SPIN, "--temperatures", "0.5", "1.0", "--results-dir", str(folder)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "nudged:0.1" in out and "z_rms" in out
    for name in ("config.json", "sweep.nc", "summary.txt", "sweep_error.png", "sweep_loss.png"):
        assert (folder / name).is_file(), name
    assert not (folder / "sweep_cosine.png").exists()  # spins: no T = 0 EP gradient
    assert (folder / "sweep_error.png").read_bytes()[:4] == b"\x89PNG"
    series = sorted(p.name for p in (folder / "series").iterdir())
    assert series == [
        "T000_covariance.nc", "T000_nudged_0.1.nc", "T001_covariance.nc", "T001_nudged_0.1.nc"
    ]  # fmt: skip
    ds = load_sweep(folder)
    assert ds.sizes == {"estimator": 2, "temperature": 2, "seed": 1, "parameter": 17}
    assert np.max(np.abs(ds.z_score.values)) < K
    config = json.loads((folder / "config.json").read_text())
    assert config["command_line"]["temperatures"] == [0.5, 1.0]
    assert config["environment"]["device_count"] == jax.device_count()
    stamps = {p.name: p.stat().st_mtime_ns for p in (folder / "parts").iterdir()}
    assert main(args) == 0  # finished: nothing recomputed
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (folder / "parts").iterdir()}


def test_killed_sweep_resumes_to_the_same_result(tmp_path):
    # SIGKILL: nothing of the process's own handling runs. (SIGINT and SIGTERM go through the
    # command line's one handler, which test_cli.py and the quantum tests deliver them to.)
    # About a second per temperature, so the signal lands while later ones are still to do.
    args = [*CLI_SPIN, "--num-samples", "3000", "--temperatures", "0.5", "1.0", "2.0"]
    straight, folder = tmp_path / "straight", tmp_path / "killed"
    assert main([*args, "--results-dir", str(straight)]) == 0
    parts = folder / "parts"
    status, stderr = interrupt_cli(
        *args,
        "--results-dir",
        str(folder),
        when=lambda _: (parts / "T000.nc").exists(),
        sig=signal.SIGKILL,
    )
    finished = sorted(p.name for p in parts.glob("T*.nc"))
    assert status == -signal.SIGKILL, stderr
    assert 1 <= len(finished) < 3, "the kill must land mid-sweep"
    stamps = {name: (parts / name).stat().st_mtime_ns for name in finished}
    resumed = run_cli(*args, "--results-dir", str(folder))
    assert resumed.returncode == 0, resumed.stderr
    assert stamps == {name: (parts / name).stat().st_mtime_ns for name in finished}
    a, b = load_sweep(straight), load_sweep(folder)
    assert b.attrs["complete"] == 1
    # Values, coordinates and variable attributes alike; the config attribute names the folder.
    xr.testing.assert_equal(a.drop_vars("wall_time"), b.drop_vars("wall_time"))


def test_sweep_command_has_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--temperatures", "--estimators", "--tempering", "--results-dir", "--beta"):
        assert flag in out
