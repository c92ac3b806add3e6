"""ArviZ plots and summary of any posterior variable (deterministic: no statistical checks).

The plots draw on figures of matplotlib's object-oriented API: they must leave the user's
backend selected and no pyplot figure open (checked under a backend that is not Agg, as a
notebook's inline backend is not).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from plot_testing import foreign_backend
from samplers_testing import ising_energy, layered_network

import samplers

COUPLINGS, FIELDS, BLOCKS = layered_network()
UNITS = [f"s{i}" for i in range(10)]


@pytest.fixture(scope="module")
def gibbs_trace():
    kernel = samplers.block_gibbs(ising_energy, BLOCKS)
    start = jax.random.rademacher(jax.random.key(0), (3, 10), dtype=float)
    context = (jnp.asarray(COUPLINGS), jnp.asarray(FIELDS))
    return samplers.sample(jax.random.key(1), kernel, start, context, 1.0, num_samples=60)


def series_idata(gradient, cost, names, temperatures, seeds):
    """A gradient-like series: a (temperature, seed, parameter) event and a cost beside it."""
    return samplers.series_inference_data(
        {"gradient": gradient, "cost": cost},
        coords={"temperature": temperatures, "seed": seeds, "parameter": names},
        dims={"gradient": ["temperature", "seed", "parameter"], "cost": ["temperature", "seed"]},
    )


@pytest.fixture(scope="module")
def gradient_idata():
    rng = np.random.default_rng(0)
    return series_idata(
        rng.normal(size=(4, 50, 2, 1, 3)), rng.normal(size=(4, 50, 2, 1)), ["a", "b", "c"],
        [0.5, 1.0], [0],
    )  # fmt: skip


def test_the_old_gradient_builder_is_a_deprecated_alias(gradient_idata):
    posterior = gradient_idata.posterior
    with pytest.warns(FutureWarning, match="deprecated.*; use samplers.series_inference_data"):
        old = samplers.gradient_inference_data(
            posterior["gradient"].values, posterior["cost"].values, ["a", "b", "c"],
            temperatures=[0.5, 1.0], seeds=[0],
        )  # fmt: skip
    assert old.posterior.equals(posterior)


def png_size(path):
    """(width, height) in pixels, from the PNG header."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def rows_of(path, row_inches, extra_inches, dpi=90):
    """Rows of panels in a saved plot, from its height in pixels."""
    return (png_size(path)[1] / dpi - extra_inches) / row_inches


def test_trace_and_rank_plots_of_sampler_positions(gibbs_trace, tmp_path):
    idata = samplers.to_inference_data(gibbs_trace, unit_names=UNITS)
    coords = {"unit": ["s0", "s4"]}
    with foreign_backend():
        trace = samplers.save_trace_plot(
            idata, tmp_path / "trace.png", coords, "positions", var_names="position"
        )
        rank = samplers.save_rank_plot(idata, tmp_path / "rank.png", coords, var_names=["position"])
    assert rows_of(trace, 2.0, 0.6) == pytest.approx(2, abs=0.02)  # one row per unit
    assert png_size(rank) == (2 * 4.5 * 90, 3.2 * 90)  # two panels side by side


def test_plots_of_chosen_or_all_variables(gradient_idata, tmp_path):
    coords = {"temperature": [0.5], "seed": [0], "parameter": ["a", "c"]}
    with foreign_backend():
        path = samplers.save_trace_plot(
            gradient_idata, tmp_path / "trace.png", coords, "title", var_names="gradient"
        )
        samplers.save_rank_plot(gradient_idata, tmp_path / "rank.png", coords, var_names="gradient")
        # Every variable by default: two gradient components and the cost.
        both = samplers.save_trace_plot(gradient_idata, tmp_path / "both.png", coords)
    assert rows_of(path, 2.0, 0.6) == pytest.approx(2, abs=0.02)
    assert rows_of(both, 2.0, 0.6) == pytest.approx(3, abs=0.02)
    # A selection of parameters leaves the cost, which has no such dimension, whole.
    cost = samplers.save_rank_plot(gradient_idata, tmp_path / "cost.png", coords, var_names="cost")
    assert png_size(cost) == (4.5 * 90, 3.2 * 90)


@pytest.mark.parametrize(
    "var_names, coords, message",
    [
        ("velocity", None, "var_names must name variables of idata.posterior"),
        ([], None, "var_names must name variables"),
        ("gradient", {"layer": [0]}, "coords has dimensions ['layer']"),
        ("gradient", {"parameter": ["z"]}, "coords select values idata.posterior lacks"),
        ("gradient", {"parameter": []}, "select 0 panels"),
    ],
)
def test_bad_plot_selection_is_named(gradient_idata, tmp_path, var_names, coords, message):
    for save in (samplers.save_trace_plot, samplers.save_rank_plot):
        with pytest.raises(ValueError) as error:
            save(gradient_idata, tmp_path / "x.png", coords, var_names=var_names)
        assert message in str(error.value)
        assert not (tmp_path / "x.png").exists()


def test_too_many_panels_is_refused(gradient_idata, tmp_path):
    rng = np.random.default_rng(1)
    idata = series_idata(
        rng.normal(size=(2, 10, 1, 1, 50)), rng.normal(size=(2, 10, 1, 1)),
        [f"p{i}" for i in range(50)], [1.0], [0],
    )  # fmt: skip
    with pytest.raises(ValueError, match="select 50 panels; select between 1 and 20"):
        samplers.save_trace_plot(idata, tmp_path / "x.png", var_names="gradient")
    # Without var_names: every posterior variable (50 gradient panels and the cost's one).
    with pytest.raises(ValueError, match="select 51 panels"):
        samplers.save_trace_plot(idata, tmp_path / "x.png")


def test_summary_names_the_units(gibbs_trace):
    table = samplers.summary(gibbs_trace, unit_names=UNITS)
    assert list(table.index) == [f"position[{name}]" for name in UNITS]
    assert list(samplers.summary(gibbs_trace).index)[:2] == ["position[0]", "position[1]"]
    # Other arguments still reach arviz.summary.
    picked = samplers.summary(gibbs_trace, unit_names=UNITS, coords={"unit": ["s3"]})
    assert list(picked.index) == ["position[s3]"]


@pytest.mark.parametrize(
    "names, message",
    [
        (UNITS[:3], "name each of the 10 units"),
        ("s0", "a sequence of names, got the string"),
        (["a"] * 10, "must be distinct"),
    ],
)
def test_bad_unit_names_are_named(gibbs_trace, names, message):
    with pytest.raises(ValueError, match=message):
        samplers.to_inference_data(gibbs_trace, unit_names=names)
    with pytest.raises(ValueError, match=message):
        samplers.summary(gibbs_trace, unit_names=names)


LADDER = jnp.array([0.5, 1.0, 2.0, 4.0])
TEMPERING_SUMMARY_DIMS = {
    "swap_acceptance_probability": ("pair",),
    "swap_accepted_count": ("pair",),
    "swap_proposed_count": ("pair",),
    "swap_acceptance_rate": ("pair",),
    "round_trips_completed": (),
}


@pytest.mark.parametrize("batched", [False, True])
def test_tempering_inference_data_carries_swap_rates_and_round_trips(batched):
    kernel = samplers.parallel_tempering(samplers.metropolis(ising_energy))
    context = (jnp.asarray(COUPLINGS), jnp.asarray(FIELDS))
    shape = (2, 3, 4, 10) if batched else (3, 4, 10)  # ([target,] chain, R, n)
    start = jax.random.rademacher(jax.random.key(2), shape, dtype=float)
    trace = samplers.sample(jax.random.key(3), kernel, start, context, LADDER, num_samples=40,
                            batched=batched, context_axes=None if batched else 0)  # fmt: skip
    idata = samplers.to_inference_data(trace)
    stats = idata.sample_stats
    lead = ("target",) if batched else ()
    for name, dims in TEMPERING_SUMMARY_DIMS.items():
        assert stats[name].dims == ("chain", *lead, *dims), name
        assert stats[name].attrs["description"], name
    rate, probability = samplers.swap_acceptance(trace.info)  # (..., chain, pair)
    info = trace.info
    accepted = np.asarray(info.swap_accepted).sum(axis=-2)
    proposed = np.asarray(info.swap_proposed).sum(axis=-2)
    last = np.asarray(info.round_trips)[..., -1]
    if batched:  # the trace is (target, chain, ...); InferenceData puts chain first
        rate, probability, accepted, proposed = (
            np.swapaxes(a, 0, 1) for a in (rate, probability, accepted, proposed)
        )
        last = last.T
    assert stats["swap_acceptance_probability"].shape == (3, *((2,) if batched else ()), 3)
    np.testing.assert_array_equal(stats["swap_acceptance_probability"].values, probability)
    np.testing.assert_array_equal(stats["swap_acceptance_rate"].values, rate)
    np.testing.assert_array_equal(stats["swap_accepted_count"].values, accepted)
    np.testing.assert_array_equal(stats["swap_proposed_count"].values, proposed)
    np.testing.assert_array_equal(stats["round_trips_completed"].values, last)
    # Deterministic swaps propose each pair every other step: 20 of 40 draws.
    assert np.all(stats["swap_proposed_count"].values == 20)
    assert np.all(stats["swap_accepted_count"] <= stats["swap_proposed_count"])
    # The per-draw records stay as they were.
    assert stats["swap_probability"].dims == ("chain", "draw", *lead, "pair")
    assert stats["round_trips"].dims == ("chain", "draw", *lead)


def test_tempering_inference_data_saves_and_loads(tmp_path):
    kernel = samplers.parallel_tempering(samplers.metropolis(ising_energy))
    context = (jnp.asarray(COUPLINGS), jnp.asarray(FIELDS))
    start = jax.random.rademacher(jax.random.key(2), (3, 4, 10), dtype=float)
    trace = samplers.sample(jax.random.key(3), kernel, start, context, LADDER, num_samples=40)
    idata = samplers.to_inference_data(trace)
    loaded = samplers.load_inference_data(samplers.save_inference_data(idata, tmp_path / "pt.nc"))
    for name in TEMPERING_SUMMARY_DIMS:
        np.testing.assert_array_equal(loaded.sample_stats[name].values, idata.sample_stats[name])
