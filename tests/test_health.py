"""Gradient-health checks (thermoeqprop._health): the R-hat limit against its definition by
simulation, and the verdicts, levers and lines that train and diagnose print.

Reference: for independent normal draws, the split R-hat of the worst of K components exceeds
``rhat_limit(C, n, K)`` with probability at most 5 % (Bonferroni over K independent components
gives 1 − (1 − 0.05/K)^K ≈ 4.9 %). False-failure budget: 400 simulated runs per case; the
exceedance count is binomial, and the accepted band [2 %, 8.5 %] lies more than 2.8 standard
deviations from 4.9 % on each side (probability of a false failure below 0.6 % per case, two
cases); the power check (one chain shifted by two standard deviations) exceeds the limit in
every run by a margin of many standard deviations. The rank-normalised R-hat (bulk and tail,
two comparisons per component) has no closed form: its check uses ``rhat_limit(C, n, 2K)``,
measured to be exceeded in 4.5 % of 400 runs of (2 chains × 50 draws, 200 components); the
band [2 %, 8.5 %] lies 2.4 standard deviations below and 3.8 above that rate (a false failure
below 0.9 %). The median component's limit ``median_rhat_limit(C, n, B)`` over B batches
whose components move as one (the worst case) is exceeded with probability at most 5 % by
the same Bonferroni bound over the B batches (4.9 %); 400 simulated runs, the same band
[2 %, 8.5 %] (a false failure below 0.6 %).
"""

import math

import jax
import numpy as np
import pytest

import samplers
from thermoeqprop._health import (
    ESS_PER_DRAW_MEDIAN,
    RELATIVE_MCSE_MAX,
    WORST_ESS_PER_DRAW_MIN,
    epoch_line,
    format_checks,
    gradient_checks,
    health_limits,
    median_rhat_limit,
    rhat_limit,
)

#: The false-failure budget per run of this module, as stated above (0.6 % per case of the
#: split R-hat, two cases, 0.9 % for the rank-normalised one and 0.6 % for the median);
#: tests/false_failure_budget.py measures it on fresh seeds.
FALSE_FAILURE_BUDGET = 2.7e-2


@pytest.mark.parametrize("chains, draws, components", [(2, 50, 200), (4, 200, 10)])
def test_rhat_limit_is_the_5_percent_point_of_the_worst_of_independent_components(
    chains, draws, components
):
    rng = np.random.default_rng(chains)
    runs = 400
    x = rng.normal(size=(chains, draws, runs, components))
    worst = np.asarray(samplers.rhat_split_many(x)).max(axis=-1)
    limit = rhat_limit(chains, draws, components)
    exceeded = float(np.mean(worst > limit))
    assert 0.02 <= exceeded <= 0.085, (exceeded, limit)
    # Power: one chain two standard deviations away in one component is flagged every time.
    x[0, :, :, 0] += 2.0
    assert np.all(np.asarray(samplers.rhat_split_many(x)).max(axis=-1) > limit)


def test_median_rhat_limit_holds_where_the_components_move_as_one():
    """The worst of B = 44 batches' median R-hat, every component of a batch one series (the
    worst case of correlation): the limit is exceeded in about 5 % of runs, 1.01 in nearly
    all of them (it lies within one standard deviation of one R-hat of 2 × 50 draws); a chain
    shifted by two standard deviations in one batch is flagged every time."""
    chains, draws, batches, runs = 2, 50, 44, 400
    rng = np.random.default_rng(44)
    x = rng.normal(size=(chains, draws, runs * batches, 1))
    medians = np.asarray(samplers.rhat_split_many(x))[..., 0].reshape(runs, batches)
    limit = median_rhat_limit(chains, draws, batches)
    exceeded = float(np.mean(medians.max(axis=1) > limit))
    assert 0.02 <= exceeded <= 0.085, (exceeded, limit)
    assert np.mean(medians.max(axis=1) > 1.01) > 0.9
    # Power: in one batch a chain two standard deviations away in every component (of 51).
    y = rng.normal(size=(chains, draws, runs, 51))
    y[0] += 2.0
    assert np.all(np.median(np.asarray(samplers.rhat_split_many(y)), axis=-1) > limit)
    # Long chains keep the textbook limit.
    assert median_rhat_limit(4, 1000, 1) == 1.01


def test_rhat_limit_fits_the_run_size_and_rejects_a_too_short_run():
    assert rhat_limit(2, 50, 9610) > 1.1 > 1.01 > rhat_limit(4, 1000, 10) > 1.0
    assert rhat_limit(2, 50, 9610 * 44) > rhat_limit(2, 50, 9610)
    with pytest.raises(ValueError, match="at least 1 chain of 4 draws"):
        rhat_limit(2, 3, 10)


RECORD = {
    "epoch": 15, "train_loss": 0.0508, "test_accuracy": 0.9556, "relative_stderr": 0.69,
    "epoch_seconds": 3.4, "temperature": 0.02, "diag_num_chains": 2.0,
    "diag_num_draws_per_chain": 50.0, "diag_ess_min": 3.9, "diag_ess_median": 92.0,
    "diag_rhat_max": 1.58, "diag_rhat_median": 1.12, "diag_divergences": 6.0,
    "diag_mean_step_size": 0.69, "parameters": 9610, "batches": 44,
}  # fmt: skip


def test_checks_of_the_default_train_record_name_what_is_wrong_and_the_levers():
    checks = {c.name.split(" (")[0]: c for c in gradient_checks(RECORD)}
    mcse = checks["relative MCSE of the gradient"]
    assert (mcse.ok, mcse.lever) == (False, "mcse")
    worst = checks["split R-hat, worst component"]
    assert not worst.ok and worst.limit == f"≤ {rhat_limit(2, 50, 9610 * 44):.3f}"
    median = checks["split R-hat, median component"]
    assert median.ok is False and median.limit == f"≤ {median_rhat_limit(2, 50, 44):.3f}"
    # The worst of 44 batches' median of 2 × 50 draws: 1.014 is within its noise.
    assert [c.ok for c in gradient_checks(RECORD | {"diag_rhat_median": 1.014})
            if c.name.startswith("split R-hat, median")] == [True]  # fmt: skip
    assert checks["bulk ESS per draw, worst component"].value == pytest.approx(0.039)
    assert checks["bulk ESS per draw, median component"].ok  # 0.92 per draw
    assert checks["divergent transitions"].lever == "divergences"
    table = format_checks(gradient_checks(RECORD), "heading")
    assert table.splitlines()[0] == "heading"
    assert "to improve:" in table and "--num-samples" in table and "--tempering" in table
    assert "--hmc-steps" in table  # an HMC run: longer trajectories decorrelate its draws
    assert "all checks pass" not in table
    # A spin run (block Gibbs: a flip rate, no step size, no divergences) is not told to
    # change HMC settings.
    spins = {k: v for k, v in RECORD.items() if k not in ("diag_mean_step_size",
                                                          "diag_divergences")}  # fmt: skip
    table = format_checks(gradient_checks(spins | {"diag_flip_rate": 0.2}), "heading")
    assert "--hmc" not in table and "--sampler nuts" not in table
    assert "--num-chains" in table and "--tempering" in table


def test_a_healthy_record_passes_and_a_bare_one_is_not_measured():
    healthy = RECORD | {
        "relative_stderr": 0.1, "diag_ess_min": 40.0, "diag_rhat_max": 1.1,
        "diag_rhat_median": 1.002, "diag_divergences": 0.0,
    }  # fmt: skip
    assert all(c.ok for c in gradient_checks(healthy))
    assert format_checks(gradient_checks(healthy), "h").endswith("all checks pass.")
    bare = gradient_checks({"epoch": 1})
    assert all(c.ok is None and c.verdict == "not recorded" for c in bare)
    assert "to improve" not in format_checks(bare, "h")


def test_control_variates_that_add_noise_are_flagged_with_what_to_do():
    def check(gain):
        checks = gradient_checks(RECORD | {"diag_control_variate_gain": gain})
        return next(c for c in checks if c.name.startswith("MCSE without ÷ with control"))

    noisy = check(0.6)
    assert (noisy.ok, noisy.lever, noisy.verdict) == (
        False,
        "controls",
        "the control variates add noise",
    )
    table = format_checks(gradient_checks(RECORD | {"diag_control_variate_gain": 0.6}), "h")
    assert "leave out --control-variates" in table
    assert check(2.5).ok and check(math.inf).ok
    assert check(math.inf).verdict == "ok: the controls leave no noise"
    assert not any(c.name.startswith("MCSE without") for c in gradient_checks(RECORD))


def test_the_worst_batch_mcse_is_checked_and_says_when_its_rounds_ran_out():
    """Beside the mean over batches, the worst batch's relative MCSE (diag_relative_stderr)
    has the same limit; its verdict says when the rounds of --target-relative-stderr ran out
    (diag_precision_reached 0: the worst over the epoch's batches, _runs.summarise_diagnostics)
    and its lever names the rounds."""

    def check(record):
        return next(c for c in gradient_checks(record) if c.name.endswith(", worst batch"))

    quiet = RECORD | {"relative_stderr": 0.11, "diag_relative_stderr": 0.199}
    assert check(quiet).ok and check(quiet).limit == f"≤ {RELATIVE_MCSE_MAX:.3f}"
    noisy = check(quiet | {"diag_relative_stderr": 0.278, "diag_precision_reached": 0.0})
    assert (noisy.ok, noisy.lever) == (False, "rounds")
    assert noisy.verdict.endswith("(its rounds of draws ran out)")
    assert not check(quiet | {"diag_relative_stderr": 0.3}).verdict.endswith("ran out)")
    table = format_checks(gradient_checks(quiet | {"diag_relative_stderr": 0.3}), "h")
    assert "--target-relative-stderr 0.2" in table and "--neyman-share" in table
    assert "(worst batch 0.199)" in epoch_line(quiet, 15)
    assert not any(c.name.endswith(", worst batch") for c in gradient_checks(RECORD))


def test_an_epoch_reached_its_precision_only_if_every_batch_did():
    from thermoeqprop._result import GradientEstimate
    from thermoeqprop._runs import summarise_diagnostics

    def estimate(reached, relative):
        diagnostics = {"precision_reached": reached, "rounds": 7.0 - 6 * reached,
                       "relative_stderr": relative}  # fmt: skip
        return GradientEstimate(np.ones(2), 0.0, np.full(2, relative), diagnostics=diagnostics)

    summary = summarise_diagnostics([estimate(1.0, 0.1), estimate(0.0, 0.3), estimate(1.0, 0.2)])
    assert (summary["diag_precision_reached"], summary["diag_rounds"]) == (0.0, 7.0)
    assert summary["diag_relative_stderr"] == pytest.approx(0.3)  # the worst batch's
    assert summary["relative_stderr"] == pytest.approx(0.2)  # the mean over batches'
    assert summarise_diagnostics([estimate(1.0, 0.1)])["diag_precision_reached"] == 1.0


def test_heavy_importance_weights_are_flagged_with_what_to_do():
    importance = {k: v for k, v in RECORD.items() if k not in ("diag_mean_step_size",
                                                               "diag_divergences")}  # fmt: skip

    def check(k_hat):
        checks = gradient_checks(importance | {"diag_pareto_k_max": k_hat})
        return next(c for c in checks if c.name.startswith("Pareto k-hat"))

    heavy = check(0.9)
    assert (heavy.ok, heavy.lever, heavy.limit) == (False, "importance", "≤ 0.70")
    assert check(0.4).ok
    table = format_checks(gradient_checks(importance | {"diag_pareto_k_max": 0.9}), "h")
    assert "--num-warmup" in table and "--sampler hmc" in table
    # Few effective draws of an importance run point to its own levers, not to HMC's.
    assert "--hmc-steps" not in table
    assert not any(c.name.startswith("Pareto") for c in gradient_checks(RECORD))
    # With the share of examples above the limit recorded, the verdict says how many.
    shared = gradient_checks(importance | {"diag_pareto_k_max": 0.9, "diag_pareto_k_share": 0.004})
    verdict = next(c for c in shared if c.name.startswith("Pareto k-hat")).verdict
    assert "for 0.4 % of the examples drawn" in verdict
    assert "--pareto-fallback 0.7" in table
    # With --pareto-fallback, the rows drawn again by HMC are named beside an ok k-hat.
    redrawn = gradient_checks(importance | {"diag_pareto_k_max": 0.6, "diag_redrawn_share": 0.02})
    fallback = next(c for c in redrawn if c.name.startswith("Pareto k-hat"))
    assert fallback.ok and fallback.verdict == (
        "ok: 2 % of the examples drawn again by HMC (mean over batches)"
    )
    assert check(0.6).verdict == "ok"  # none redrawn: the plain verdict


def test_epoch_line_and_plot_limits():
    line = epoch_line(RECORD, 15)
    for part in ("epoch 15/15", "loss 0.0508", "test accuracy 95.56 %", "rel. MCSE 0.690",
                 "split R-hat max 1.580", "3.40 s"):  # fmt: skip
        assert part in line, (part, line)
    assert "MCSE" not in epoch_line({"epoch": 1, "train_loss": 1.0, "test_accuracy": 0.5,
                                     "epoch_seconds": 0.1}, 2)  # fmt: skip
    limits = health_limits(RECORD)
    assert limits["relative_stderr"][1] == RELATIVE_MCSE_MAX
    assert limits["diag_ess_min"][1] == pytest.approx(5.0)  # 0.05 × 2 chains × 50 draws
    assert health_limits({})["diag_rhat_max"][1] is None
    ranked = RECORD | {"rank_rhat_max_last_batch": 1.031}
    assert "rank R-hat max 1.031 (last batch)" in epoch_line(ranked, 15)


def test_rank_rhat_check_uses_the_limit_of_bulk_and_tail_values():
    # 400 runs of independent draws: the worst rank-normalised R-hat of a batch's components
    # exceeds rhat_limit(chains, draws, 2 × components) in about 5 % of them (bulk and tail
    # are two comparisons per component; measured 4.5 % for these sizes).
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 50, 400, 200))
    limit = rhat_limit(2, 50, 2 * 200)
    exceeded = float(np.mean(np.asarray(samplers.rhat_rank_many(x)).max(axis=-1) > limit))
    assert 0.02 <= exceeded <= 0.085, (exceeded, limit)
    record = RECORD | {"rank_rhat_max_last_batch": limit * 1.01, "parameters": 200}
    check = {c.name: c for c in gradient_checks(record)}["rank R-hat, worst component (last batch)"]
    assert check.ok is False and check.limit == f"≤ {limit:.3f}"


def test_worst_ess_limit_lies_under_what_independent_draws_reach():
    """The worst component's ESS per draw of independent draws, 2 chains × 50 entries (the
    default train's series) over 200,000 components, stays above WORST_ESS_PER_DRAW_MIN (the
    worst of 4 × 10⁶ was 0.081), while the worst of the default's 44 × 9,610 lies near the 0.1
    used before (1 in 10⁵ below 0.101 in 4 × 10⁶); the median stays near 1."""
    key = jax.random.key(7)
    per_draw = np.concatenate([
        np.asarray(samplers.mean_diagnostics_many(
            jax.random.normal(jax.random.fold_in(key, i), (2, 50, 50_000))).ess) / 100
        for i in range(4)
    ])  # fmt: skip
    assert per_draw.min() > WORST_ESS_PER_DRAW_MIN, per_draw.min()
    # 1 in 10⁴ below 0.15 (0.131 in 4 × 10⁶): some 40 of 422,840 components, the worst near 0.1
    assert np.quantile(per_draw, 1e-4) < 0.15, np.quantile(per_draw, 1e-4)
    assert np.median(per_draw) > ESS_PER_DRAW_MEDIAN + 0.4


def test_rhat_limits_count_the_entries_of_windowed_series():
    """A batch whose series averaged windows of 3 draws compared 150 entries per chain, not
    450: its split R-hat's limit is that of 150 draws (the limit of 450 would flag
    independent draws); the last batch's rank R-hat, of every draw, keeps the limit of 450."""
    record = RECORD | {
        "diag_num_draws_per_chain": 450.0,
        "diag_draws_per_entry": 3.0,
        "rank_rhat_max_last_batch": 1.0,
        "rank_rhat_entries_last_batch": 450,
    }
    checks = {c.name.split(" (")[0]: c for c in gradient_checks(record)}
    windowed = rhat_limit(2, 150, 9610 * 44)
    assert windowed > rhat_limit(2, 450, 9610 * 44) + 0.005
    assert checks["split R-hat, worst component"].limit == f"≤ {windowed:.3f}"
    assert checks["rank R-hat, worst component"].limit == f"≤ {rhat_limit(2, 450, 2 * 9610):.3f}"
    assert health_limits(record)["diag_rhat_max"][1] == windowed


# ---------------------------------------------------------------- runs that go bad midway

GOOD = {"train_loss": 0.3, "grad_norm": 1.2, "diag_acceptance_rate": 0.7,
        "diag_free_converged_fraction": 1.0, "diag_free_residual": 1e-6}  # fmt: skip


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"train_loss": float("nan")}, "the loss became non-finite (nan)"),
        ({"grad_norm": float("inf")}, "the gradient became non-finite (inf)"),
        (
            {"diag_acceptance_rate": 0.0},
            "rejected every proposed move in every batch (acceptance rate 0)",
        ),  # fmt: skip
        ({"diag_flip_rate": 0.0}, "(flip rate 0): the chains never left their starts"),
        (
            {"diag_free_converged_fraction": 0.0, "diag_free_residual": 1.87},
            "no example's free relaxation reached the tolerance in some batch (largest residual "
            "1.87)",
        ),  # fmt: skip
    ],
)
def test_a_broken_epoch_gives_the_reason_to_stop_and_what_to_try(change, fragment):
    from thermoeqprop._health import epoch_faults

    assert epoch_faults(GOOD) == (None, [])
    reason, notes = epoch_faults(GOOD | change)
    assert fragment in reason and "; " in reason and "\n" not in reason, reason


def test_a_partly_broken_epoch_is_reported_not_stopped():
    from thermoeqprop._health import epoch_faults

    reason, notes = epoch_faults(GOOD | {"diag_nudged_plus_converged_fraction": 0.4,
                                         "diag_nudged_plus_residual": 0.02,
                                         "diag_rhat_max": float("inf")})  # fmt: skip
    assert reason is None and len(notes) == 2
    assert "the chains are stuck: the split R-hat is infinite" in notes[0]
    assert "only 40 % of the examples' nudged plus relaxations" in notes[1]


def test_parameters_broken_by_an_update_stop_the_run():
    import jax
    import jax.numpy as jnp

    from thermoeqprop._health import RunStopped, check_parameters_after
    from thermoeqprop.estimators import ThermalCovariance, ZeroTemperatureEP
    from thermoeqprop.models import LayeredNetwork

    net = LayeredNetwork((4, 5, 3))
    params = net.init_params(jax.random.key(0))
    ep, thermal = ZeroTemperatureEP(net), ThermalCovariance(net, temperature=1e-13)
    scale = 0.5 * 8 + sum(float(jnp.sum(jnp.abs(leaf))) for leaf in jax.tree.leaves(params))
    check_parameters_after(params, scale, ep)  # unchanged: nothing raised
    nan = params | {"biases": (params["biases"][0].at[1].set(jnp.nan), params["biases"][1])}
    with pytest.raises(RunStopped, match=r"the update made the parameters non-finite: "
                                         r"params\['biases'\]\[0\] holds 1"):  # fmt: skip
        check_parameters_after(nan, scale, ep)
    blown = jax.tree.map(lambda a: a * 1e9, params)
    with pytest.raises(RunStopped, match="the couplings blew up: the energy scale grew from"):
        check_parameters_after(blown, scale, ep)
    grown = jax.tree.map(lambda a: a * 100, params)  # by 100 only, but T = 1e-13 is now too cold
    with pytest.raises(RunStopped, match="the couplings grew until temperature 1e-13 is "
                                         "meaningless for this network"):  # fmt: skip
        check_parameters_after(grown, scale, thermal)


def test_a_run_stops_before_saving_the_bad_epoch_and_resumes_from_the_last_good(tmp_path):
    import dataclasses

    from thermoeqprop._health import RunStopped
    from thermoeqprop.data import load_dataset
    from thermoeqprop.estimators import Relaxation, ZeroTemperatureEP
    from thermoeqprop.models import LayeredNetwork
    from thermoeqprop.training import TrainConfig, train

    estimator = ZeroTemperatureEP(LayeredNetwork((2, 4, 2)))
    config = TrainConfig(epochs=2, batch_size=100)
    data, folder = load_dataset("moons", num_examples=200), tmp_path / "run"

    def breaks_at_epoch_2(current, epoch):  # a relaxation that cannot converge
        stuck = Relaxation(max_iterations=1)
        return dataclasses.replace(current, relaxation=stuck) if epoch == 2 else current

    with pytest.raises(RunStopped) as error:
        train(estimator, data, config, folder, schedule=breaks_at_epoch_2)
    assert str(error.value).startswith("epoch 2: no example's free relaxation reached the "
                                       "tolerance")  # fmt: skip
    assert str(error.value).endswith(f"(epochs 1–1 are saved in {folder})")
    assert len((folder / "metrics.jsonl").read_text().splitlines()) == 1
    assert [p.name for p in (folder / "checkpoints").iterdir()] == ["epoch_0001.npz"]
    result = train(estimator, data, config, folder)  # resumes after epoch 1
    assert [record["epoch"] for record in result.history] == [1, 2]
