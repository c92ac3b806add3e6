"""The examples in the quantum package's docstrings run and print what they say."""

import doctest
import importlib

import pytest

MODULES = [
    "thermoeqprop.quantum._pauli",
    "thermoeqprop.quantum._kernels",
    "thermoeqprop.quantum._terms",
    "thermoeqprop.quantum._network",
    "thermoeqprop.quantum._builders",
    "thermoeqprop.quantum._estimators",
    "thermoeqprop.quantum._thermal",
    "thermoeqprop.quantum._references",
    "thermoeqprop.quantum._shots",
]


@pytest.mark.parametrize("name", MODULES)
def test_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0
