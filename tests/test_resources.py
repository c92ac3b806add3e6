"""Limits a run is checked against before it starts: the memory it needs
(thermoeqprop._resources) and the temperatures and nudges that mean something for a network in
its floating-point type (thermoeqprop._validation). No test allocates what it estimates.

References: the bounds are the closed forms of ``temperature_range`` (ε·scale and scale/√ε,
ε from ``numpy.finfo``); the memory parts are products of array shapes, checked against the
arithmetic written out in each test.
"""

import doctest

import jax
import numpy as np
import pytest

import thermoeqprop._resources as resources
import thermoeqprop._validation as validation
from thermoeqprop._resources import (
    ResourceError,
    available_memory_bytes,
    check_memory,
    classical_run_bytes,
    estimator_run_bytes,
)
from thermoeqprop._validation import check_nudge, check_temperature, temperature_range
from thermoeqprop.sweep._run import check_scales_and_memory

GiB = 1024**3


@pytest.mark.parametrize("module", [resources, validation])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0


def test_available_memory_is_this_machines():
    have = available_memory_bytes()
    physical = resources.os.sysconf("SC_PAGE_SIZE") * resources.os.sysconf("SC_PHYS_PAGES")
    assert 0 < have <= physical


def test_refusal_names_the_total_the_largest_part_and_what_to_reduce(monkeypatch):
    monkeypatch.setattr(resources, "_host_available", lambda: 2 * GiB)
    monkeypatch.setattr(resources, "_device_available", lambda: None)
    parts = {"states kept": 3 * GiB, "parameters": 1024**2}
    with pytest.raises(ResourceError) as error:
        check_memory(parts, "--num-chains or --batch-size")
    assert str(error.value) == (
        "this run needs about 3.0 GiB of memory (states kept 3.0 GiB), this machine has 2.0 GiB "
        "available; reduce --num-chains or --batch-size"
    )
    check_memory({"states kept": GiB}, "--num-chains")  # fits: nothing raised
    monkeypatch.setattr(resources, "_device_available", lambda: GiB // 2)  # a smaller GPU
    with pytest.raises(ResourceError, match="this machine has 512.0 MiB available"):
        check_memory({"states kept": GiB}, "--num-chains")


def test_parts_are_the_array_sizes():
    sizes = {"state_size": 26, "num_params": 1210, "batch_size": 32}
    parts = classical_run_bytes(**sizes, num_chains=2, num_samples=50, replicas=4, phases=2,
                                data_elements=100)  # fmt: skip
    assert parts["states kept"] == 32 * 2 * 4 * 51 * 26 * 8 * 2 * resources.STATE_COPIES
    assert parts["parameters"] == 1210 * 8 * resources.PARAMETER_COPIES
    assert parts["data"] == 100 * 8 * resources.DATA_COPIES
    assert parts["gradient series"] == 2 * 2 * 51 * 1210 * 8
    relaxed = classical_run_bytes(state_size=26, num_params=1210, batch_size=32, phases=3)
    assert relaxed["states kept"] == 32 * 4 * 26 * 8 * 3 * resources.STATE_COPIES
    assert "gradient series" not in relaxed
    quantum = resources.quantum_run_bytes(num_qubits=6, num_params=20, batch_size=20,
                                          num_examples=400, num_inputs=2)  # fmt: skip
    assert quantum["dense matrices"] == 400 * resources.QUANTUM_COPIES * 64**2 * 16


def test_the_commands_defaults_fit_in_well_under_a_gibibyte():
    from thermoeqprop import _cli_quantum, _cli_sweep, _cli_train
    from thermoeqprop.options import QuantumOptions, SweepOptions, TrainOptions

    train = _cli_train.build_estimator(TrainOptions(), 64, 10)
    params = jax.eval_shape(train.model.init_params, jax.random.key(0))
    num_params = sum(leaf.size for leaf in jax.tree.leaves(params))
    parts, kind = estimator_run_bytes(train, 32, num_params, 1797, 64)
    assert kind == "sampled" and sum(parts.values()) < GiB / 8, parts
    options = QuantumOptions()
    quantum = _cli_quantum.build_estimator(options)
    parts, kind = estimator_run_bytes(quantum, options.batch_size,
                                      quantum.model.hamiltonian.num_params,
                                      options.num_examples, 2)  # fmt: skip
    assert kind == "quantum" and sum(parts.values()) < GiB / 8, parts
    _cli_quantum.check_scales_and_memory(options, quantum)  # nothing raised
    sweep = SweepOptions()
    model, params, x, *_ = _cli_sweep.build_problem(sweep)
    sampling = _cli_sweep.build_sampling(sweep, model)
    _cli_sweep.check_nudge_of(sweep, model, params)  # nothing raised
    check_scales_and_memory(model, params, sweep.temperatures, [sampling], len(x), True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_temperature_range_follows_the_dtype(dtype):
    eps = np.finfo(dtype).eps
    low, high = temperature_range(50.0, dtype)
    assert low == pytest.approx(50 * eps) and high == pytest.approx(50 / np.sqrt(eps))
    check_temperature("temperature", low * 1.01, 50.0, dtype)
    check_temperature("temperature", high * 0.99, 50.0, dtype)
    name = np.dtype(dtype).name
    with pytest.raises(ValueError) as error:
        check_temperature("temperature", high * 1.1, 50.0, dtype)
    assert f"above {high:.3g} the energy changes" in str(error.value)
    assert f"√ε of {name}" in str(error.value)
    with pytest.raises(ValueError) as error:
        check_temperature("temperature", low / 1.1, 50.0, dtype)
    assert f"below {low:.3g} rounding in E/T exceeds 1 in {name}" in str(error.value)


def test_the_nudge_must_stay_below_the_networks_energy():
    check_nudge(5.0, 50.0, 10)
    with pytest.raises(ValueError, match=r"beta 6 .* valid: 0 < beta ≤ 5$"):
        check_nudge(6.0, 50.0, 10)
