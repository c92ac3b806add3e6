"""The estimator registry: one vocabulary, one error for unknown names, deprecated aliases, and
commands that build through it the same estimators they built by hand before.

Deterministic: nothing is sampled (the estimators are only constructed and compared).
"""

import argparse
import dataclasses
import json
import warnings

import pytest

from thermoeqprop import _cli_quantum, _cli_train, cli, registry
from thermoeqprop.cli import main
from thermoeqprop.estimators import (
    FeedforwardBackprop,
    ImplicitDifferentiation,
    Relaxation,
    Sampling,
    ThermalCovariance,
    ThermalExact,
    ThermalNudged,
    ZeroTemperatureEP,
)
from thermoeqprop.lowtemp import LowTemperatureExpansion
from thermoeqprop.models import LayeredNetwork, QuadraticNetwork, SpinNetwork
from thermoeqprop.quantum import EigenstateEP, ExpectationLoss, ThermalEP, classifier_network
from thermoeqprop.registry import EstimatorOptions
from thermoeqprop.sweep import parse_estimator

CLASSICAL = ("covariance", "nudged", "nudged-one-sided", "exact", "ep", "ep-one-sided",
             "implicit", "backprop", "laplace")  # fmt: skip
QUANTUM = ("covariance", "nudged", "ep", "eigenstate")


def test_one_vocabulary_for_both_families():
    assert registry.names("classical") == CLASSICAL
    assert registry.names("quantum") == QUANTUM
    assert set(registry.names()) == set(CLASSICAL) | set(QUANTUM)


def test_an_unknown_name_gives_one_error_listing_the_valid_ones():
    net = LayeredNetwork((2, 3, 1))
    with pytest.raises(ValueError, match=r"unknown estimator 'magic'; valid: \['covariance', "):
        registry.build("magic", net)
    with pytest.raises(ValueError) as error:
        registry.build("backprop", classifier_network(2, 2))
    assert str(error.value) == (
        "estimator 'backprop' has no quantum implementation (it has ['classical']); valid for "
        "quantum models: ['covariance', 'nudged', 'ep', 'eigenstate']"
    )
    with pytest.raises(ValueError, match="model must be a thermoeqprop.Model, got str"):
        registry.build("ep", "a network")


@pytest.mark.parametrize(("alias", "canonical"), registry.DEPRECATED_ALIASES.items())
def test_the_former_quantum_names_are_deprecated_aliases(alias, canonical):
    net = classifier_network(2, 2)
    options = EstimatorOptions(temperature=0.3, beta=0.01, level=1)
    with pytest.warns(FutureWarning, match=f"'{alias}' is deprecated; use '{canonical}'"):
        assert registry.resolve(alias, "quantum") == canonical
    with pytest.warns(FutureWarning):
        old = registry.build(alias, net, options)
    assert old == registry.build(canonical, net, options)
    choices = registry.choices("quantum")
    assert alias in choices and canonical in choices and "magic" not in choices
    assert list(choices) == list(QUANTUM)  # help and errors show the canonical names only


def test_options_an_estimator_does_not_read_are_ignored_and_none_keeps_defaults():
    net = LayeredNetwork((2, 3, 1))
    assert registry.build("covariance", net) == ThermalCovariance(net)
    assert registry.build("covariance", net, EstimatorOptions(beta=0.3, level=2)) == (
        ThermalCovariance(net)
    )
    assert registry.entry("ep", "classical").options == ("beta", "relaxation")


def test_an_estimator_of_ones_own_can_be_registered(monkeypatch):
    monkeypatch.setattr(registry, "_ENTRIES", dict(registry._ENTRIES))

    def factory(model, options):
        return ZeroTemperatureEP(model, beta=2 * options.beta)

    registry.register("double-ep", "classical", factory, options=("beta",), summary="2β")
    net = LayeredNetwork((2, 3, 1))
    assert registry.build("double-ep", net, EstimatorOptions(beta=0.1)).beta == 0.2
    assert registry.names("classical")[-1] == "double-ep"
    with pytest.raises(ValueError, match="already registered"):
        registry.register("double-ep", "classical", factory)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['beta2'\]"):
        registry.register("other", "classical", factory, options=("beta2",))


# ---------------------------------------------------------------------------------------------
# The commands build what they built before the registry (bit for bit: equal dataclasses).


def _settings(command, *argv):
    """The options object the command line gives for ``argv`` (thermoeqprop.options)."""
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return cli.parse_options(subparsers.choices[command], cli._commands()[command][0], list(argv))


def test_train_builds_the_same_estimators_as_before():
    net = LayeredNetwork((2, 128, 2))
    # train's default sampler where the estimator can use it (docs/cli/train.md)
    sampling = Sampling(method="importance", num_chains=2, num_samples=80, num_warmup=40,
                        hmc_steps=8, hmc_jitter=0.5, tempering=0, start="auto",
                        neyman_share=0.25, pareto_fallback=0.7, target_relative_stderr=0.2,
                        max_rounds=7)  # fmt: skip
    relaxation = Relaxation(tolerance=1e-4, max_iterations=500)
    expected = {
        "covariance": ThermalCovariance(net, 0.02, sampling),
        "nudged": ThermalNudged(net, 0.02, beta=0.5, sampling=sampling),
        "nudged-one-sided": ThermalNudged(
            net, 0.02, beta=0.5, symmetric=False, sampling=sampling
        ),  # fmt: skip
        "ep": ZeroTemperatureEP(net, beta=0.5, relaxation=relaxation),
        "ep-one-sided": ZeroTemperatureEP(net, beta=0.5, symmetric=False, relaxation=relaxation),
        "implicit": ImplicitDifferentiation(net, relaxation),
        "backprop": FeedforwardBackprop(net),
        "laplace": LowTemperatureExpansion(net, 0.02, relaxation),
    }
    for name, estimator in expected.items():
        settings = _settings("train", "--estimator", name)
        assert _cli_train.build_estimator(settings, 2, 2) == estimator, name
    settings = _settings("train", "--estimator", "exact", "--model",
                         "quadratic")  # fmt: skip
    assert _cli_train.build_estimator(settings, 2, 2) == ThermalExact(
        QuadraticNetwork((2, 128, 2)), 0.02
    )
    spin = _settings("train", "--model", "spin", "--hidden", "4")
    assert _cli_train.build_estimator(spin, 2, 2) == ThermalCovariance(
        SpinNetwork.layered((2, 4, 1)), 0.02, Sampling(num_chains=2, num_samples=80,
                                                       num_warmup=40, hmc_steps=8)
    )  # fmt: skip
    # --collapse reaches the estimator as the registry's sampling option (Sampling.collapse);
    # off leaves importance sampling out, and the default sampler is then HMC.
    # HMC draws one round unless --target-relative-stderr is given
    hmc = dataclasses.replace(sampling, method="hmc", neyman_share=0.0, pareto_fallback=None,
                              target_relative_stderr=None, max_rounds=8)  # fmt: skip
    for flag, expected in (("auto", dataclasses.replace(sampling, collapse=None)),
                           ("on", dataclasses.replace(sampling, collapse=True)),
                           ("off", dataclasses.replace(hmc, collapse=False))):  # fmt: skip
        chosen = _settings("train", "--collapse", flag)
        assert _cli_train.build_estimator(chosen, 2, 2) == ThermalCovariance(net, 0.02, expected), (
            flag
        )
    # A T = 0 estimator builds no sampler settings, so it never rejects them.
    bad_sampler = _settings("train", "--estimator", "ep", "--num-chains", "1")
    assert isinstance(_cli_train.build_estimator(bad_sampler, 2, 2), ZeroTemperatureEP)


def test_quantum_builds_the_same_estimators_as_before():
    net = classifier_network(num_qubits=6, num_inputs=2, couplings="ring", input_scale=2.0,
                             cost=ExpectationLoss.squared_error())  # fmt: skip
    exact = {"shots": None, "shot_model": "projective", "error_signal": "noisy"}
    expected = {
        "ep": EigenstateEP(net, level=0, beta=0.01, solver="dense", **exact),
        "eigenstate": EigenstateEP(net, level=1, beta=0.01, solver="dense", **exact),
        "covariance": ThermalEP(net, temperature=0.05, **exact),
        "nudged": ThermalEP(net, temperature=0.05, method="nudged", beta=0.01, **exact),
    }
    for name, estimator in expected.items():
        settings = _settings("quantum", "--estimator", name)
        assert _cli_quantum.build_estimator(settings) == estimator, name
    default = _settings("quantum")
    assert default.estimator == "ep"
    sparse = _settings("quantum", "--solver", "sparse", "--shots", "10")
    assert _cli_quantum.build_estimator(sparse) == EigenstateEP(
        net, beta=0.1, solver="sparse", shots=10
    )
    old = _settings("quantum", "--estimator", "excited")
    with pytest.warns(FutureWarning, match="'excited' is deprecated; use 'eigenstate'"):
        assert _cli_quantum.build_estimator(old) == expected["eigenstate"]


def test_sweep_builds_the_same_estimators_as_before():
    net = QuadraticNetwork((2, 3, 2))
    sampling = Sampling(num_chains=2)
    assert parse_estimator("covariance").build(net, 0.3, sampling) == ThermalCovariance(
        net, 0.3, sampling
    )
    assert parse_estimator("nudged-one-sided:0.05").build(net, 0.3, sampling) == ThermalNudged(
        net, 0.3, 0.05, False, sampling
    )


def test_the_quantum_command_records_the_canonical_name_of_an_alias(tmp_path, capsys):
    folder = tmp_path / "run"
    argv = ["quantum", "--qubits", "2", "--num-examples", "12", "--batch-size", "6", "--epochs",
            "1", "--estimator", "thermal", "--quiet", "--results-dir", str(folder)]  # fmt: skip
    with warnings.catch_warnings():  # the command line turns the warning into a note
        warnings.simplefilter("default")
        assert main(argv) == 0
    assert "note: estimator name 'thermal' is deprecated; use 'covariance'" in (
        capsys.readouterr().err
    )
    config = json.loads((folder / "config.json").read_text())
    assert config["command_line"]["estimator"] == "covariance"
    assert "estimator: covariance (ThermalEP" in (folder / "summary.txt").read_text()


def test_the_command_line_prints_a_deprecation_as_one_note(capsys):
    """Outside pytest's warnings-as-errors a deprecated name prints one ``note:`` line (no file
    name, no source line); the command then goes on (here to its error for --epochs 0)."""
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        assert main(["quantum", "--estimator", "ground", "--epochs", "0"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "thermoeqprop quantum: note: estimator name 'ground' is deprecated; use 'ep'",
        "thermoeqprop quantum: error: epochs must be an integer ≥ 1, got 0",
    ]


def test_the_command_line_prints_the_librarys_own_warnings_as_one_line(capsys):
    """A warning raised inside the package (a nudge too strong for the gap) is one
    ``warning:`` line; another package's keeps Python's form (file name and category)."""
    from thermoeqprop.cli import _note
    from thermoeqprop.quantum._following import NudgeStrengthWarning

    shown = []
    show = _note("quantum", lambda *args: shown.append(args))
    show(NudgeStrengthWarning("the nudge is not small against the gap"), NudgeStrengthWarning,
         "/site-packages/thermoeqprop/_steps.py", 322)  # fmt: skip
    show(UserWarning("elsewhere"), UserWarning, "/site-packages/numpy/core.py", 7)
    assert capsys.readouterr().err == (
        "thermoeqprop quantum: warning: the nudge is not small against the gap\n"
    )
    assert [args[0].args[0] for args in shown] == ["elsewhere"]
