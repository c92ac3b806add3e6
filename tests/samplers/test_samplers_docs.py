"""The docstring examples run, and every public name is documented (deterministic)."""

import doctest
import importlib

import pytest

import samplers

MODULES = [
    "samplers._annealing",
    "samplers._arviz",
    "samplers._driver",
    "samplers._batch_means",
    "samplers._exact",
    "samplers._fast_diagnostics",
    "samplers._hmc",
    "samplers._idata_layout",
    "samplers._layered",
    "samplers._resume",
    "samplers._schedule",
    "samplers._spins",
    "samplers._tempering",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0, f"{result.failed} example(s) failed in {name}"


def test_public_surface_is_curated_and_documented():
    assert sorted(samplers.__all__) == samplers.__all__
    for name in samplers.__all__:
        obj = getattr(samplers, name)
        assert obj.__doc__ and obj.__doc__.strip(), f"samplers.{name} has no docstring"
        assert not obj.__module__.startswith("numpyro"), name
