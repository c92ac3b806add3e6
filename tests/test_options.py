"""One set of options: the dataclasses of thermoeqprop.options are the flags, the config-file
keys and the recorded configuration of every command, and shared options mean the same in
every command (``--tempering``, ``--sampler auto``)."""

import argparse
import dataclasses

import pytest

from thermoeqprop import cli
from thermoeqprop._cli_common import build_sampling
from thermoeqprop.models import LayeredNetwork, SpinNetwork
from thermoeqprop.options import (
    PRESENTATION,
    SweepOptions,
    TrainOptions,
    check_config,
    deprecations,
    option_fields,
    recorded,
)


def _subparsers():
    parser = cli.build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _parse(command, argv, config=None, tmp_path=None):
    options = cli._commands()[command][0]
    if config is not None:
        path = tmp_path / "settings.toml"
        path.write_text(config)
        argv = [*argv, "--config", str(path)]
    return cli.parse_options(_subparsers()[command], options, argv)


@pytest.mark.parametrize("command", ["train", "sweep", "quantum", "diagnose"])
def test_every_option_is_a_flag_with_its_default_and_a_config_key(command):
    options, _, _ = cli._commands()[command]
    parser = _subparsers()[command]
    actions = {a.dest: a for a in parser._actions}
    defaults = options() if command != "diagnose" else options(run_folder="x")
    for field, _ in option_fields(options):
        assert field.name in actions, field.name
        if field.metadata.get("positional"):
            continue
        flag = "--" + field.name.replace("_", "-")
        assert flag in actions[field.name].option_strings
        assert actions[field.name].default == getattr(defaults, field.name), field.name
        check_config(options, {field.name: getattr(defaults, field.name)}, "defaults")
    assert set(actions) - {f.name for f, _ in option_fields(options)} == {"help", "config"}


def test_recorded_configuration_is_the_options_without_presentation():
    options = TrainOptions(no_progress=True, results_dir="elsewhere")
    record = recorded(options)
    assert set(record) == {f.name for f in dataclasses.fields(TrainOptions)} - set(PRESENTATION)
    assert record["hidden"] == [128] and record["tempering"] is False


def test_flags_win_over_the_config_file_and_types_are_kept(tmp_path):
    options = _parse("train", ["--seed", "5"], "seed = 4\nbeta = 1\nhidden = [8, 9]\n", tmp_path)
    assert (options.seed, options.beta, options.hidden) == (5, 1, [8, 9])
    assert _parse("train", ["--beta", "nan"]).beta != _parse("train", ["--beta", "nan"]).beta


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_tempering_is_a_switch_in_every_command(command, tmp_path):
    assert _parse(command, []).tempering is False
    assert _parse(command, ["--tempering"]).tempering is True
    assert _parse(command, [], "tempering = true\n", tmp_path).tempering is True


def test_tempering_as_a_replica_count_is_deprecated(tmp_path, capsys):
    options, messages = deprecations(_parse("train", ["--tempering", "8"]), "train")
    assert (options.tempering, options.replicas) == (True, 8)
    assert "deprecated" in messages[0] and "--tempering --replicas N" in messages[0]
    options, messages = deprecations(_parse("train", [], "tempering = 0\n", tmp_path), "train")
    assert options.tempering is False and messages
    options, messages = deprecations(_parse("sweep", ["--tempering", "3"]), "sweep")
    assert options.tempering is True and "is now written --tempering" in messages[0]


def test_init_scale_of_sweep_is_a_deprecated_alias_of_init_gain(tmp_path):
    from thermoeqprop._cli_sweep import build_problem

    for options in (
        _parse("sweep", ["--init-scale", "0.7", "--model", "spin"]),
        _parse("sweep", ["--model", "spin"], "init_scale = 0.7\n", tmp_path),
    ):
        options, messages = deprecations(options, "sweep")
        assert (options.init_gain, options.init_scale) == (0.7, None)
        assert "--init-scale (config key init_scale) is now --init-gain" in messages[0]
        assert "init_scale" not in recorded(options) and recorded(options)["init_gain"] == 0.7
        assert build_problem(options)[0].init_gain == 0.7
    options = _parse("sweep", ["--init-gain", "0.7"])
    assert deprecations(options, "sweep") == (options, [])


def test_sampler_auto_means_hmc_for_continuous_states_in_every_command(capsys):
    continuous, spins = LayeredNetwork((2, 3, 2)), SpinNetwork.layered((2, 3, 1))
    for options in (TrainOptions(sampler="auto"), SweepOptions()):
        assert build_sampling(options, continuous).method == "hmc"
        assert build_sampling(options, spins).method == "auto"  # block Gibbs, by Sampling
    assert capsys.readouterr().err == ""
    build_sampling(SweepOptions(), continuous, command="sweep")
    assert "--sampler nuts for the old choice" in capsys.readouterr().err
    assert build_sampling(SweepOptions(sampler="nuts"), continuous).method == "nuts"


def test_train_without_a_sampler_draws_by_importance_where_the_estimator_can():
    """train's default sampler: importance sampling with Neyman allocation for the layered
    continuous network; auto where the estimator refuses importance sampling (spins,
    tempering) or its kept class is large, with ``--neyman-share`` at 0 and no
    ``--pareto-fallback`` there; Pareto-smoothed weights unless ``--pareto-smoothing off``;
    ``--target-relative-stderr`` adds rounds (up to 6 of extra rows with importance sampling,
    where it is 0.2 unless given; up to 3 of the batch's draws with another sampler)."""
    from thermoeqprop._cli_train import build_estimator

    default = build_estimator(TrainOptions(hidden=[3]), 64, 10).sampling
    assert (default.method, default.neyman_share) == ("importance", 0.25)
    assert (default.num_samples, default.num_warmup) == (80, 40)
    assert default.pareto_fallback == 0.7  # heavy-tailed rows drawn again by HMC
    # up to six rounds of extra rows while a batch's relative MCSE is above 0.2
    assert (default.target_relative_stderr, default.max_rounds, default.tops_up) == (0.2, 7, True)
    never = build_estimator(TrainOptions(hidden=[3], pareto_fallback=float("inf"),
                                         target_relative_stderr=float("inf")), 64, 10)  # fmt: skip
    assert never.sampling.pareto_fallback is None
    assert never.sampling.target_relative_stderr is None
    assert default.smooths_weights  # Pareto-smoothed weights unless --pareto-smoothing off
    raw = build_estimator(TrainOptions(hidden=[3], pareto_smoothing="off"), 64, 10).sampling
    assert (raw.pareto_smoothing, raw.smooths_weights) == (False, False)
    rows = build_estimator(TrainOptions(hidden=[3], target_relative_stderr=0.1), 64, 10).sampling
    assert (rows.target_relative_stderr, rows.max_rounds, rows.tops_up) == (0.1, 7, True)
    alone = build_estimator(TrainOptions(hidden=[3], neyman_share=0.0), 64, 10).sampling
    assert (alone.target_relative_stderr, alone.tops_up) == (None, False)  # no rows: one round
    spins = build_estimator(TrainOptions(model="spin", hidden=[3]), 4, 2).sampling
    assert (spins.method, spins.neyman_share) == ("auto", 0.0)
    tempered = build_estimator(TrainOptions(hidden=[3], tempering=True), 64, 10).sampling
    assert (tempered.method, tempered.tempering) == ("hmc", 4)
    # A second hidden layer keeps 10 + 40 units: too many for the proposal (DEFAULT_MAX_KEPT).
    deep = build_estimator(TrainOptions(hidden=[40, 8]), 64, 10).sampling
    assert (deep.method, deep.neyman_share) == ("hmc", 0.0)
    hmc = build_estimator(TrainOptions(hidden=[3], sampler="hmc"), 64, 10).sampling
    assert (hmc.method, hmc.neyman_share, hmc.pareto_fallback) == ("hmc", 0.0, None)
    assert hmc.target_relative_stderr is None
    rounds = build_estimator(TrainOptions(hidden=[3], sampler="hmc", target_relative_stderr=0.3),
                             64, 10).sampling  # fmt: skip
    assert (rounds.target_relative_stderr, rounds.max_rounds, rounds.tops_up) == (0.3, 4, False)
    with pytest.raises(ValueError, match="pareto_fallback needs method='importance'"):
        build_estimator(TrainOptions(hidden=[3], sampler="hmc", pareto_fallback=0.7), 64, 10)
    with pytest.raises(ValueError, match="neyman_share needs method='importance'"):
        build_estimator(TrainOptions(hidden=[3], sampler="hmc", neyman_share=0.5), 64, 10)


def test_train_tempering_builds_the_replica_ladder():
    from thermoeqprop._cli_train import build_estimator

    options = TrainOptions(hidden=[3], tempering=True, replicas=3)
    assert build_estimator(options, 4, 2).sampling.tempering == 3
    assert build_estimator(TrainOptions(hidden=[3]), 4, 2).sampling.tempering == 0
    assert build_estimator(TrainOptions(hidden=[3], tempering=True), 4, 2).sampling.tempering == 4
    with pytest.raises(ValueError, match="--replicas must be an integer ≥ 2, got 0"):
        build_estimator(TrainOptions(hidden=[3], tempering=True, replicas=0), 4, 2)
