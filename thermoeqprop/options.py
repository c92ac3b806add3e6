"""The options of the ``thermoeqprop`` commands: one set of dataclasses, the single source of
the command-line flags, the config-file keys (type-checked) and the ``config.json`` a run
records (its ``"command_line"`` section).

Each option group is a frozen dataclass whose fields carry their help text; a command's
options (:class:`TrainOptions`, :class:`SweepOptions`, :class:`QuantumOptions`,
:class:`DiagnoseOptions`) inherit the groups they share, so ``--num-chains`` is defined once
for ``train`` and ``sweep``, with a per-command default where the commands' defaults differ.
A field ``num_chains`` is the flag ``--num-chains`` and the config-file key ``num_chains``.

How the command line is built from them (:mod:`thermoeqprop._options_cli`): jsonargparse
(chosen over tyro; docs/design.md, "Options") parses and type-checks the flags of each field
(its ``Literal`` choices, numbers, lists); a config file is checked strictly against the same
annotations by :func:`check_config` (no coercion: ``epochs = 1.7``, ``temperature = true``
or ``hidden = "8"`` are refused with the key, the value and what is valid).

Changed in 0.2, each old use with a deprecation message (:func:`deprecations`):
``--tempering`` is a switch (``train --tempering N`` is ``--tempering --replicas N``),
``--sampler auto`` is HMC or block Gibbs in every command (``sweep`` picked NUTS), and
``sweep --init-scale`` is ``--init-gain``, as the models name the initial couplings' scale.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

__all__ = [
    "DiagnoseOptions",
    "ModelOptions",
    "OutputOptions",
    "QuantumOptions",
    "RelaxationOptions",
    "SamplingOptions",
    "SweepOptions",
    "TrainOptions",
    "TrainingOptions",
    "check_config",
    "check_seeds",
    "deprecations",
    "option_fields",
    "recorded",
]

SAMPLER = Literal["auto", "hmc", "nuts", "gibbs", "metropolis", "importance"]

#: Options that change what is shown, not what is computed: left out of ``config.json``'s
#: ``"command_line"`` (a run's identity, compared on resume).
PRESENTATION = ("results_dir", "no_progress", "quiet", "cluster")


def option(default: Any, help: str = "", **metadata: Any) -> Any:  # noqa: A002
    """A dataclass field with its help text (lists get a fresh copy per instance)."""
    metadata = {"help": help, **metadata}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _like(group: type, name: str, default: Any, help: str | None = None) -> Any:  # noqa: A002
    """The field ``name`` of ``group`` with another default (and help): a command's own
    default for a shared option."""
    found = next(f for f in dataclasses.fields(group) if f.name == name)
    metadata = dict(found.metadata) | ({} if help is None else {"help": help})
    return option(default, **metadata)


@dataclasses.dataclass(frozen=True, kw_only=True)
class OutputOptions:
    results_dir: str = option(
        "results", "results folder; an unfinished run of the same configuration there is resumed"
    )
    no_progress: bool = option(False, "hide progress bars")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainingOptions:
    """The optimiser's settings (:class:`thermoeqprop.training.TrainConfig`)."""

    epochs: int = option(15)
    batch_size: int = option(32)
    learning_rate: float = option(2e-3)
    optimizer: Literal["adam", "sgd", "momentum"] = option("adam")
    lr_schedule: Literal["cosine", "constant"] = option("cosine")
    seed: int = option(0, seed=True)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelOptions:
    """The network (:func:`thermoeqprop._cli_common.build_model`)."""

    model: Literal["layered", "spin", "quadratic"] = option(
        "layered",
        "layered: continuous Scellier–Bengio network; spin: ±1 Ising network; quadratic: "
        "linear units (Gaussian Gibbs law, exact in closed form)",
    )
    hidden: list[int] = option([128], "hidden layer sizes")
    activation: Literal["sigmoid", "hard_sigmoid", "tanh", "linear"] = option(
        "sigmoid", "layered model only"
    )
    cost: Literal["squared_error", "cross_entropy"] = option("squared_error")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingOptions:
    """How thermal estimators draw states (:class:`thermoeqprop.estimators.Sampling`)."""

    sampler: SAMPLER = option(
        "auto",
        "auto: HMC for continuous states, block Gibbs for spins (every command); importance: "
        "independent weighted draws of the outputs' marginal from an adapted Student-t mixture "
        "(collapsed sampling of a layered network; --num-warmup: pilot draws per chain and "
        "adaptation round, kept in the estimate)",
    )
    num_chains: int = option(4, "chains per example")
    num_samples: int = option(200, "draws per chain and estimate")
    num_warmup: int = option(200, "discarded steps per chain")
    hmc_steps: int = option(16, "leapfrog steps per HMC trajectory")
    hmc_jitter: float = option(0.5, "relative step-size jitter of HMC after warm-up (0: off); "
                               "breaks the resonances of a fixed trajectory length")  # fmt: skip
    start: Literal["auto", "relaxed", "annealed", "dispersed"] = option(
        "auto", "where chains start (auto: relaxed minimum for continuous states)"
    )
    collapse: Literal["auto", "on", "off"] = option(
        "auto",
        "collapsed sampling of a layered network: HMC on the outputs' exact marginal, the other "
        "layers averaged (auto: wherever possible; off: sample every unit); for a spin network, "
        "on draws the smaller parity class of layers from its exact marginal (auto: block Gibbs)",
    )
    mode_jumps: Literal["on", "off"] = option("off", "with collapsed sampling, Metropolis jumps "
                                              "between the outputs' two T = 0 minima after every "
                                              "HMC transition (exact; helps inputs with two "
                                              "competing outputs)")  # fmt: skip
    tempering: bool = option(False, "parallel tempering", deprecated_int=True)
    # The options below default to None, not to the value they stand for (said in their help),
    # so that runs recorded before each option existed resume (an absent key reads as null).
    neyman_share: float | None = option(None, "importance sampling: extra rows of draws (a "
                                        "share of the batch) for the examples whose first "
                                        "draws vary most (Neyman allocation; default "
                                        "0.25, 0 for none)")  # fmt: skip
    pareto_fallback: float | None = option(None, "importance sampling: examples whose weights' "
                                           "Pareto k-hat exceeds this are drawn again by HMC "
                                           "(default 0.7; inf: never)")  # fmt: skip
    pareto_smoothing: Literal["on", "off"] | None = option(None, "importance sampling: weigh "
        "the draws by their Pareto-smoothed weights (PSIS; default on; off: raw)")  # fmt: skip
    sampler_dtype: Literal["float32"] | None = option(None, "the samplers' arithmetic (default: "
        "the run's float64): float32 runs the chains, their energies and gradients in float32 "
        "and returns the draws in float64, every statistic computed as before (about 1.3x "
        "faster collapsed HMC on a CPU)")  # fmt: skip
    control_variates: Literal["zv1", "zv2", "laplace", "heat_bath"] | None = option(None,
        "control variates of the covariance and nudged estimators (default: none): zv1, zv2, "
        "laplace (Stein, continuous states), heat_bath (the innovations of collapsed spin "
        "sampling, with --model spin --collapse on)")  # fmt: skip


@dataclasses.dataclass(frozen=True, kw_only=True)
class RelaxationOptions:
    """The T = 0 relaxation (:class:`thermoeqprop.estimators.Relaxation`)."""

    tolerance: float = option(1e-4, "T = 0 relaxation tolerance on |∇F|")
    max_iterations: int = option(500, "T = 0 relaxation iteration budget")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainOptions(
    OutputOptions, TrainingOptions, RelaxationOptions, SamplingOptions, ModelOptions
):
    """``thermoeqprop train``."""

    dataset: Literal["digits", "moons", "circles"] = option("digits")
    estimator: Literal[
        "covariance",
        "nudged",
        "nudged-one-sided",
        "exact",
        "ep",
        "ep-one-sided",
        "implicit",
        "backprop",
        "laplace",
    ] = option(
        "covariance",
        "the estimator by its name in thermoeqprop.registry: covariance: thermal, unclamped "
        "−Cov(C, ∂θE)/T; nudged, nudged-one-sided: thermal, ±β (or +β) phases; exact: thermal "
        "by enumeration (spins) or closed form (quadratic); ep, ep-one-sided: zero-temperature "
        "EP; implicit: exact T = 0 gradient; backprop: feedforward baseline; laplace: the "
        "low-temperature expansion",
    )
    temperature: float = option(0.02, "T for the thermal estimators")
    anneal_from: float | None = option(
        None,
        "anneal the temperature geometrically from this value (epoch 1) down to "
        "--temperature (last epoch)",
    )
    beta: float = option(0.5, "nudging strength (nudged, ep)")
    # None: chosen by _cli_train.build_estimator (and a run recorded before resumes).
    sampler: SAMPLER | None = _like(SamplingOptions, "sampler", None, "default: importance "
                                    "(independent weighted draws of the outputs' marginal) "
                                    "where the estimator can use it, auto elsewhere; auto: HMC "
                                    "for continuous states, block Gibbs for spins")  # fmt: skip
    num_chains: int = _like(SamplingOptions, "num_chains", 2)
    num_samples: int = _like(SamplingOptions, "num_samples", 80)
    num_warmup: int = _like(SamplingOptions, "num_warmup", 40)
    hmc_steps: int = _like(SamplingOptions, "hmc_steps", 8)
    tempering: bool = _like(SamplingOptions, "tempering", False, "parallel tempering with "
                            "--replicas replicas, the ladder geometric from T to 10 T")  # fmt: skip
    # None rather than 4: runs recorded before the option resume (absent key = null).
    replicas: int | None = option(None, "parallel-tempering replicas with --tempering (default 4)")
    target_relative_stderr: float | None = option(None, "while a batch gradient's relative "
        "MCSE exceeds this, up to 6 rounds of extra rows (importance sampling with Neyman "
        "allocation; default 0.2) or 3 of the draws (default: none); inf: none")  # fmt: skip
    results_dir: str = _like(OutputOptions, "results_dir", "results/train")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SweepOptions(OutputOptions, SamplingOptions, ModelOptions):
    """``thermoeqprop sweep``."""

    model: Literal["layered", "spin", "quadratic"] = _like(ModelOptions, "model", "quadratic")
    hidden: list[int] = _like(ModelOptions, "hidden", [4])
    init_gain: float | None = option(
        None, "scale of the initial couplings (default: the model's own)"
    )
    init_scale: float | None = option(
        None, "deprecated alias of --init-gain", renamed_to="init_gain"
    )
    dataset: Literal["moons", "circles", "digits", "random"] = option(
        "moons", "where the batch of examples comes from (random: uniform inputs, random labels)"
    )
    num_examples: int = option(4, "examples in the batch")
    num_inputs: int = option(2, "inputs of random data")
    num_classes: int = option(2, "classes of random data")
    data_seed: int = option(0, "seed of the data and of the batch choice", seed=True)
    param_seed: int = option(0, "seed of the network's parameters", seed=True)
    temperatures: list[float] = option([0.01, 0.03, 0.1, 0.3, 1.0])
    estimators: list[str] = option(
        ["covariance", "nudged"],
        "covariance, nudged, nudged-one-sided; nudged ones may carry their own β as nudged:0.05",
    )
    beta: float = option(0.1, "β of nudged estimators named without one")
    seeds: list[int] = option([0, 1], "seeds of the sampler (one estimate per seed)", seed=True)
    num_samples: int = _like(SamplingOptions, "num_samples", 300, "draws per chain and phase")
    equal_budget: bool = option(
        False,
        "give one-phase estimators (covariance) as many sampler steps as two-phase ones "
        "(nudged): twice the draws and warm-up",
    )
    tempering: bool = _like(
        SamplingOptions,
        "tempering",
        False,
        "one parallel-tempering run over the temperature grid serves every temperature",
    )
    series_parameters: int = option(
        64, "gradient components whose per-draw series are saved for diagnose"
    )
    cluster: str | None = option(
        None,
        "run on Dask: local:N starts N single-threaded worker processes here; tcp://HOST:PORT "
        "uses a running scheduler (default: this process alone)",
    )
    results_dir: str = _like(OutputOptions, "results_dir", "results/sweep")


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantumOptions(OutputOptions, TrainingOptions):
    """``thermoeqprop quantum``."""

    estimator: Literal[
        "ep", "eigenstate", "covariance", "nudged", "ground", "excited", "thermal", "thermal-nudged"
    ] = option(
        "ep",
        "ep: ground-state EP; eigenstate: EP in level --level; covariance: Kubo–Mori covariance "
        "(no nudge) at --temperature; nudged: nudged thermal EP (thermoeqprop.registry; the "
        "former names ground, excited, thermal and thermal-nudged are deprecated aliases)",
    )
    dataset: Literal["moons", "circles"] = option("moons")
    qubits: int = option(6, "number of qubits")
    couplings: Literal["ring", "all"] = option("ring")
    temperature: float = option(0.05, "T for the thermal estimators")
    level: int = option(1, "eigenstate index for --estimator eigenstate")
    beta: float | None = option(None, "nudging strength (default 0.01 exact, 0.1 with --shots)")
    shots: int | None = option(
        None, "shots per basis setting (ep, eigenstate, nudged); default exact"
    )
    shot_model: Literal["projective", "gaussian"] = option(
        "projective",
        "with --shots: projective (N bit strings per qubit-wise commuting basis setting) or "
        "gaussian (each Pauli string N(<P>, (1 - <P>^2)/N), independently)",
    )
    error_signal: Literal["noisy", "exact"] = option(
        "noisy", "with --shots: the loss and the nudge from measured (noisy) or exact free outputs"
    )
    solver: Literal["dense", "sparse"] = option(
        "dense",
        "ep and eigenstate: dense eigh, or sparse Lanczos warm-started from the previous "
        "step's states",
    )
    cost: Literal["expectation-mse", "operator"] = option(
        "expectation-mse", "½(⟨Z⟩ − y)² nudged by (⟨Z⟩ − y)Z, or the operator cost ½(Z − y)²"
    )
    epochs: int = _like(TrainingOptions, "epochs", 20)
    batch_size: int = _like(TrainingOptions, "batch_size", 20)
    eval_every: int | None = option(
        None,
        "evaluate, write a metrics line and a checkpoint every N steps (default: once per epoch)",
    )
    learning_rate: float = _like(TrainingOptions, "learning_rate", 0.05)
    num_examples: int = option(400, "examples generated (train + test)")
    test_fraction: float = option(0.5, "fraction held out for testing")
    seed: int = _like(
        TrainingOptions,
        "seed",
        0,
        "seed of the initial parameters, the batch order and the shot noise (the data split is "
        "fixed)",
    )
    results_dir: str = _like(OutputOptions, "results_dir", "results/quantum")
    quiet: bool = option(False, "no progress bars and no lines per evaluation")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DiagnoseOptions:
    """``thermoeqprop diagnose RUN_FOLDER``."""

    run_folder: str = option(
        "", "a results folder written by `thermoeqprop sweep` (or `train`)", positional=True
    )
    max_parameters: int = option(
        4, "gradient components per trace and rank plot (the worst R-hat first)"
    )
    out: str | None = option(None, "folder for tables and plots (default RUN_FOLDER/diagnose)")
    no_plots: bool = option(False, "tables only")


def option_fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    """``(field, resolved type)`` of each option of ``cls``, in the order of the help: the
    command's own options first, then the groups it shares."""
    hints = typing.get_type_hints(cls)
    inherited = {f.name for base in cls.__mro__[1:] if dataclasses.is_dataclass(base)
                 for f in dataclasses.fields(base)}  # fmt: skip
    fields = dataclasses.fields(cls)
    ordered = [f for f in fields if f.name not in inherited]
    ordered += [f for f in fields if f.name in inherited]
    return [(f, hints[f.name]) for f in ordered]


def recorded(options: Any) -> dict[str, Any]:
    """The ``"command_line"`` section of ``config.json``: every option but the presentation
    ones (:data:`PRESENTATION`)."""
    renamed = {f.name for f in dataclasses.fields(options) if f.metadata.get("renamed_to")}
    return {
        k: v
        for k, v in dataclasses.asdict(options).items()
        if k not in PRESENTATION and k not in renamed
    }


# ------------------------------------------------------------------------- type checking


def describe_type(annotation: Any) -> str:
    """What a value of ``annotation`` may be, in words (for error messages)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return str(list(args))
    if origin in (typing.Union, types.UnionType):
        inner = [describe_type(a) for a in args if a is not type(None)]
        return " or ".join(inner) + " (or null: the default)"
    if origin is list:
        return f"a list of {describe_type(args[0]).removeprefix('a ').removeprefix('an ')}s"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        annotation, str(annotation)
    )


def type_matches(value: Any, annotation: Any) -> bool:
    """Whether ``value`` (read from JSON or TOML) has the type ``annotation``, exactly: no
    bool for a number, no float for an integer, no string for a list."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return any(type_matches(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(type_matches(v, args[0]) for v in value)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, annotation)


def check_config(cls: type, settings: Any, source: str) -> dict[str, Any]:
    """The settings of a config file, checked against the options ``cls``: a table, known
    keys, values of the declared types (integers for a number option become floats).
    ``ValueError`` names the first bad key, its value and what is valid. Deprecated forms (an
    integer ``tempering``) are let through for :func:`deprecations`."""
    if not isinstance(settings, dict):
        kind = {bool: "true/false", int: "a number", float: "a number", str: "a string",
                list: "a list", type(None): "null"}  # fmt: skip
        kind = kind.get(type(settings), type(settings).__name__)
        raise ValueError(
            f"config file {source!r} must hold a table of settings (key = value), got "
            f"{kind} ({settings!r})"
        )
    fields = {f.name: (f, t) for f, t in option_fields(cls) if not f.metadata.get("positional")}
    unknown = sorted(set(settings) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown config key(s) {unknown} in {source}; valid keys are {sorted(fields)}"
        )
    for key, value in settings.items():
        found, annotation = fields[key]
        if found.metadata.get("deprecated_int") and type_matches(value, int):
            continue
        if not type_matches(value, annotation):
            raise ValueError(
                f"config key {key!r} has value {value!r}; valid: {describe_type(annotation)}"
            )
        try:
            settings[key] = _as_floats(value, annotation)
        except OverflowError:
            raise ValueError(
                f"config key {key!r} has an integer of {len(str(abs(value)))} digits, beyond "
                f"the range of a number (about ±1.8e308); valid: {describe_type(annotation)}"
            ) from None
    return settings


def _as_floats(value: Any, annotation: Any) -> Any:
    """``value`` with the integers a ``float`` option holds written as floats, as a flag
    would give them (``OverflowError`` beyond the range of a float)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is list and isinstance(value, list):
        return [_as_floats(v, args[0]) for v in value]
    floats = annotation is float or (float in args and not any(a is int for a in args))
    if floats and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


#: The largest seed: NumPy and JAX take seeds as 64-bit signed integers.
MAX_SEED = 2**63 - 1


def check_seeds(options: Any) -> None:
    """``ValueError`` naming the option and the value unless every seed (a field whose
    metadata has ``seed``) is an integer in 0 … :data:`MAX_SEED`."""
    for field in dataclasses.fields(options):
        value = getattr(options, field.name)
        if not field.metadata.get("seed"):
            continue
        for seed in value if isinstance(value, list) else [value]:
            if not 0 <= seed <= MAX_SEED:
                raise ValueError(
                    f"--{field.name.replace('_', '-')} (config key {field.name}) must be an "
                    f"integer in 0 … {MAX_SEED} (2**63 − 1), got {seed}"
                )


def deprecations(options: Any, command: str) -> tuple[Any, list[str]]:
    """``options`` with deprecated meanings translated, and a message for each.

    - ``tempering`` as an integer (``train --tempering N``, a replica count before 0.2):
      ``tempering`` on with ``replicas = N`` (0: off).
    - A renamed option (``sweep --init-scale``, now ``--init-gain``; a field whose metadata
      has ``renamed_to``): its value moves to the new name (and wins over it).
    """
    messages = []
    for field in dataclasses.fields(options):
        new_name = field.metadata.get("renamed_to")
        value = getattr(options, field.name)
        if new_name is None or value is None:
            continue
        old_flag, new_flag = (f"--{n.replace('_', '-')}" for n in (field.name, new_name))
        messages.append(
            f"thermoeqprop {command}: deprecated: {old_flag} (config key {field.name}) is now "
            f"{new_flag} ({new_name}); the old name goes in the next release"
        )
        options = dataclasses.replace(options, **{new_name: value, field.name: None})
    tempering = options.tempering if hasattr(options, "tempering") else False
    if not isinstance(tempering, bool):
        change = {"tempering": tempering != 0}
        if hasattr(options, "replicas") and tempering != 0:
            change["replicas"] = tempering
        new = "--tempering --replicas N" if hasattr(options, "replicas") else "--tempering"
        messages.append(
            f"thermoeqprop {command}: deprecated: tempering as a replica count ({tempering}) "
            f"is now written {new} (tempering is a switch in every command)"
        )
        options = dataclasses.replace(options, **change)
    return options, messages
