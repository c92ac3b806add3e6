"""Every estimator, classical and quantum, against the interfaces the drivers use.

Modelled on BlackJAX's ``tests/test_api_protocols.py``: one table of cases, one parametrised
test per promise. The estimators are enumerated from the package (every concrete
:class:`~thermoeqprop.Estimator` subclass in ``thermoeqprop``) and from the registry (every
name of every model family), and each must have a case here, so a new estimator cannot skip
the contract. A case is the registry's factory on a tiny model; the promises
(docs/design.md#the-two-interfaces):

- the protocol: an :class:`~thermoeqprop.Estimator` of a :class:`~thermoeqprop.Model` of a
  registered family, a frozen dataclass that hashes like an equal copy, with the declared
  members (``temperature``, ``initial_state``, ``call_with_state``, ``estimate_with_series``,
  ``predict``) and their signatures;
- the result (``thermoeqprop/_result.py``): a :class:`~thermoeqprop.GradientEstimate` whose
  ``grad`` has the parameters' tree structure, shapes and dtypes and is finite; a finite scalar
  ``loss``; ``stderr`` either ``None`` or shaped like ``grad``, finite and ≥ 0, and
  ``loss_stderr`` with it; flat ``diagnostics`` of scalars or per-example arrays;
- the calls agree: ``call_with_state`` from ``initial_state`` and ``estimate_with_series``
  give the estimate ``__call__`` gives with the same key, bit for bit; ``predict`` gives
  finite outputs (batch, num_outputs);
- no recompilation: new parameters, inputs, key and new numbers (temperature, β, tolerances,
  replaced with ``dataclasses.replace``) compile nothing (XLA compilations and persistent-
  cache requests are counted, as in ``tests/samplers/test_samplers_nrpt.py``).

All checks are deterministic (no statistical tolerance, so no false-failure budget). The
sampled thermal estimators run on a spin network with block Gibbs (their cheapest compile)
with a few draws; every case is computed once per worker and shared by the tests.
"""

import dataclasses
import functools
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compile_counting import COMPILES

import thermoeqprop
import thermoeqprop.estimators  # noqa: F401  (every estimator class defined, for the census)
import thermoeqprop.lowtemp  # noqa: F401
import thermoeqprop.quantum  # noqa: F401
from thermoeqprop import Estimator, GradientEstimate, Model, registry
from thermoeqprop.estimators import GradientSeries, Relaxation, Sampling
from thermoeqprop.models import EnergyModel, LayeredNetwork, QuadraticNetwork, SpinNetwork
from thermoeqprop.models.costs import SquaredError
from thermoeqprop.quantum import classifier_network
from thermoeqprop.registry import EstimatorOptions

BATCH = 3
SAMPLING = Sampling(num_chains=2, num_samples=8, num_warmup=8)
RELAXATION = Relaxation(tolerance=1e-8, max_iterations=400)
NEW_RELAXATION = Relaxation(tolerance=1e-9, max_iterations=400, step_size=0.4)

MODELS = {
    "layered": lambda: LayeredNetwork((2, 3, 2)),
    "spin": lambda: SpinNetwork.layered((2, 3, 1)),
    "quadratic": lambda: QuadraticNetwork((2, 3, 2)),
    "2 qubits": lambda: classifier_network(2, 2),
    "3 qubits": lambda: classifier_network(3, 2),
}

# id: (registry name, model, options, the numbers a second call replaces)
CASES = {
    "covariance": ("covariance", "spin", EstimatorOptions(temperature=0.5, sampling=SAMPLING),
                   {"temperature": 0.7}),
    "nudged": ("nudged", "spin", EstimatorOptions(temperature=0.5, beta=0.2, sampling=SAMPLING),
               {"temperature": 0.7, "beta": 0.1}),
    "nudged-one-sided": ("nudged-one-sided", "spin",
                         EstimatorOptions(temperature=0.5, beta=0.2, sampling=SAMPLING),
                         {"temperature": 0.7, "beta": 0.1}),
    "exact": ("exact", "quadratic", EstimatorOptions(temperature=0.5), {"temperature": 0.7}),
    "ep": ("ep", "layered", EstimatorOptions(beta=0.1, relaxation=RELAXATION),
           {"beta": 0.05, "relaxation": NEW_RELAXATION}),
    "ep-one-sided": ("ep-one-sided", "layered", EstimatorOptions(beta=0.1, relaxation=RELAXATION),
                     {"beta": 0.05, "relaxation": NEW_RELAXATION}),
    "implicit": ("implicit", "layered", EstimatorOptions(relaxation=RELAXATION),
                 {"relaxation": NEW_RELAXATION}),
    "backprop": ("backprop", "layered", EstimatorOptions(), {}),
    "laplace": ("laplace", "layered", EstimatorOptions(temperature=0.01, relaxation=RELAXATION),
                {"temperature": 0.02}),
    "quantum covariance (Kubo–Mori)": ("covariance", "2 qubits",
                                       EstimatorOptions(temperature=0.5), {"temperature": 0.7}),
    "quantum nudged": ("nudged", "2 qubits", EstimatorOptions(temperature=0.5, beta=0.01),
                       {"temperature": 0.7, "beta": 0.02}),
    "quantum nudged, shots": ("nudged", "2 qubits",
                              EstimatorOptions(temperature=0.5, beta=0.1, shots=64),
                              {"temperature": 0.7, "beta": 0.2}),
    "quantum ep (dense)": ("ep", "2 qubits", EstimatorOptions(beta=0.01), {"beta": 0.02}),
    "quantum ep (sparse)": ("ep", "3 qubits", EstimatorOptions(beta=0.01, solver="sparse"),
                            {"beta": 0.02}),

    "quantum eigenstate": ("eigenstate", "2 qubits", EstimatorOptions(beta=0.01, level=1),
                           {"beta": 0.02}),
}  # fmt: skip

# Compilations and cache requests during a counted call: tests/compile_counting.py.


def build(case: str) -> Estimator:
    name, model, options, _ = CASES[case]
    return registry.build(name, MODELS[model](), options)


def problem(model: Model, seed: int = 0):
    params = model.init_params(jax.random.key(seed))
    x = jax.random.uniform(jax.random.key(seed + 1), (BATCH, model.num_inputs), minval=-1.0)
    targets = model.encode_labels(jnp.arange(BATCH) % model.num_classes)
    return params, x, targets


@dataclasses.dataclass
class Outcome:
    estimator: Estimator
    params: object
    estimate: GradientEstimate
    prediction: jax.Array
    stateful: tuple
    with_series: tuple
    compiled_again: list


@functools.cache
def outcome(case: str) -> Outcome:
    """Run the case once: a call, a prediction, the stateful and series calls, and a second
    call with new parameters, inputs, key and numbers, counting what it compiles."""
    est = build(case)
    params, x, targets = problem(est.model)
    key = jax.random.key(7)
    estimate = est(params, x, targets, key)
    prediction = est.predict(params, x, jax.random.key(8))
    stateful = est.call_with_state(params, x, targets, key, est.initial_state(BATCH))
    with_series = est.estimate_with_series(params, x, targets, key)

    changed = dataclasses.replace(est, **CASES[case][3])
    new_params = jax.block_until_ready(jax.tree.map(lambda a: 0.9 * a + 0.01, params))
    new_x = jax.block_until_ready(x[::-1] * 0.8)
    COMPILES["events"].clear()
    COMPILES["active"] = True
    try:
        again = changed(new_params, new_x, targets, jax.random.key(9))
        jax.block_until_ready((again, changed.predict(new_params, new_x, jax.random.key(10))))
    finally:
        COMPILES["active"] = False
    return Outcome(est, params, estimate, prediction, stateful, with_series,
                   list(COMPILES["events"]))  # fmt: skip


def leaves(tree):
    return jax.tree_util.tree_leaves(tree)


def assert_same(a: GradientEstimate, b: GradientEstimate):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(leaves(a), leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


# ---------------------------------------------------------------------------------------------
# Every estimator is covered.


def package_estimator_classes() -> set[type]:
    """Every concrete, public-named Estimator subclass defined in the package."""
    found, stack = set(), [Estimator]
    while stack:
        for sub in stack.pop().__subclasses__():
            stack.append(sub)
            if (
                sub.__module__.startswith("thermoeqprop.")
                and not sub.__name__.startswith("_")
                and not inspect.isabstract(sub)
            ):
                found.add(sub)
    return found


def test_every_estimator_class_and_registered_name_has_a_case():
    classes = package_estimator_classes()
    assert len(classes) >= 9
    covered = {type(build(case)) for case in CASES}
    missing = sorted(c.__name__ for c in classes - covered)
    assert not missing, f"estimators without a case in CASES: {missing}"
    registered = {(n, f) for f in registry.FAMILIES for n in registry.names(f)}
    cased = {(name, MODELS[model]().family) for name, model, _, _ in CASES.values()}
    assert registered <= cased, f"registered without a case: {sorted(registered - cased)}"


SIGNATURES = {
    "__call__": ["params", "x", "targets", "rng_key"],
    "predict": ["params", "x", "rng_key"],
    "initial_state": ["batch_size"],
    "call_with_state": ["params", "x", "targets", "rng_key", "state"],
    "estimate_with_series": ["params", "x", "targets", "rng_key"],
}


@pytest.mark.parametrize("cls", sorted(package_estimator_classes(), key=lambda c: c.__name__),
                         ids=lambda c: c.__name__)  # fmt: skip
def test_signatures(cls):
    for method, expected in SIGNATURES.items():
        parameters = list(inspect.signature(getattr(cls, method)).parameters)[1:]  # no self
        assert parameters == expected, f"{cls.__name__}.{method}{tuple(parameters)}"
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
    assert "model" in {f.name for f in dataclasses.fields(cls)}


# ---------------------------------------------------------------------------------------------
# The protocol and the GradientEstimate contract, case by case.


@pytest.mark.parametrize("case", CASES)
def test_protocol_members(case):
    est = build(case)
    assert isinstance(est, Estimator)
    assert isinstance(est.model, Model)
    assert est.model.family in registry.FAMILIES
    assert hash(est) == hash(build(case)) and est == build(case)
    assert est.temperature is None or (
        isinstance(est.temperature, float | int) and math.isfinite(est.temperature)
    )
    assert isinstance(est.model.architecture, str) and est.model.architecture
    assert est.model.num_classes >= 2


@pytest.mark.parametrize("case", CASES)
def test_gradient_estimate_contract(case):
    out = outcome(case)
    estimate = out.estimate
    assert isinstance(estimate, GradientEstimate)
    assert jax.tree.structure(estimate.grad) == jax.tree.structure(out.params)
    for g, p in zip(leaves(estimate.grad), leaves(out.params), strict=True):
        assert jnp.shape(g) == jnp.shape(p) and jnp.result_type(g) == jnp.result_type(p)
        assert np.all(np.isfinite(g))
    assert jnp.shape(estimate.loss) == () and np.isfinite(estimate.loss)
    if estimate.stderr is None:
        assert estimate.loss_stderr is None and not estimate.is_stochastic
    else:
        assert jax.tree.structure(estimate.stderr) == jax.tree.structure(out.params)
        for s, p in zip(leaves(estimate.stderr), leaves(out.params), strict=True):
            assert jnp.shape(s) == jnp.shape(p)
            assert np.all(np.isfinite(s)) and np.all(np.asarray(s) >= 0)
        loss_stderr = estimate.loss_stderr
        assert loss_stderr is None or (jnp.shape(loss_stderr) == () and loss_stderr >= 0)
    assert isinstance(estimate.diagnostics, dict) and isinstance(estimate.observables, dict)
    for name, value in estimate.diagnostics.items():
        assert isinstance(name, str)
        assert jnp.ndim(value) == 0 or jnp.shape(value)[0] == BATCH, (name, jnp.shape(value))


@pytest.mark.parametrize("case", CASES)
def test_stateful_and_series_calls_give_the_same_estimate(case):
    out = outcome(case)
    estimate, state = out.stateful
    assert_same(estimate, out.estimate)
    state_like = out.estimator.initial_state(BATCH)
    assert jax.tree.structure(state) == jax.tree.structure(state_like)
    estimate, series = out.with_series
    assert_same(estimate, out.estimate)
    if series is not None:
        assert isinstance(series, GradientSeries)
        num_params = sum(np.size(p) for p in leaves(out.params))
        assert series.gradient.ndim == 3 and series.gradient.shape[2] == num_params


@pytest.mark.parametrize("case", CASES)
def test_predict_gives_finite_outputs(case):
    out = outcome(case)
    assert jnp.shape(out.prediction) == (BATCH, out.estimator.model.num_outputs)
    assert np.all(np.isfinite(out.prediction))


@pytest.mark.parametrize("case", CASES)
def test_new_values_and_numbers_do_not_recompile(case):
    assert outcome(case).compiled_again == []


# ---------------------------------------------------------------------------------------------
# The drivers ask a model only through declared members.


@dataclasses.dataclass(frozen=True)
class _PlainModel(EnergyModel):
    """The least an energy model defines: the abstract members, nothing else (continuous
    units, ``E = ½|s|² − s·(W x)``)."""

    num_inputs: int = 2
    num_outputs: int = 1
    state_size: int = 1
    cost: object = dataclasses.field(default_factory=SquaredError)

    def init_params(self, rng_key):
        return {"w": 0.1 * jax.random.normal(rng_key, (self.num_inputs, self.state_size))}

    def energy(self, params, state, x):
        return 0.5 * jnp.sum(state**2) - state @ (x @ params["w"])

    def output(self, state):
        return state

    def encode_labels(self, labels):
        return 2.0 * jnp.asarray(labels, float)[:, None] - 1.0

    def decode_outputs(self, outputs):
        return (outputs[:, 0] > 0).astype(jnp.int32)


def test_a_model_with_only_the_abstract_members_gets_every_default():
    model = _PlainModel()
    assert (model.state_bounds, model.is_spin, model.blocks) == (None, False, None)
    assert not model.multilinear and model.ising_layer_sizes is None
    with pytest.raises(NotImplementedError, match="_PlainModel has no layered Ising form"):
        model.ising_form(None, None, None, 0.0)
    assert Sampling().resolve_method(model) == "nuts"
    with pytest.raises(ValueError, match="needs spins"):
        Sampling(method="gibbs").resolve_method(model)
    est = registry.build("covariance", model, EstimatorOptions(temperature=0.5,
                                                               sampling=SAMPLING))  # fmt: skip
    params, x, targets = problem(model)
    assert np.all(np.isfinite(leaves(est(params, x, targets, jax.random.key(0)).grad)[0]))


def test_no_driver_or_estimator_probes_a_model_for_members():
    import pathlib
    import re

    root = pathlib.Path(thermoeqprop.__file__).parent
    probes = re.compile(r"(getattr|hasattr)\((self\.|estimator\.)?model\b")
    found = [
        f"{path.relative_to(root)}:{number}"
        for path in sorted(root.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if probes.search(line)
    ]
    assert not found, f"getattr/hasattr on a model (declare the member instead): {found}"
