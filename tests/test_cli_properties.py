"""Generated config files and flags for every command (hypothesis): exit status 0 or 2 (or 3,
a run stopped midway with its reason), no traceback, and a results folder its own reader still
loads and a rerun resumes.

The settings are derived from the options dataclasses (thermoeqprop/options.py), never listed
by hand: for each command the example picks some of its fields and gives each a value that is
valid for the field's annotation, a special number (0, −1, huge, NaN, ±inf, −0.0, 1e±300), or
anything at all (None, booleans, integers, floats, strings, lists and nested tables), plus the
odd unknown key or a config file that is not a table. Part goes to a config file (JSON, TOML or
a ``.yaml`` file, which the command reads as JSON) and part to flags, rendered as text or as
arbitrary tokens.

Cost: the settings that decide what a run computes or compiles (``PINNED``: the estimator, the
sizes, the epochs, the data) are given again as flags after the generated ones: flags win and
the last flag wins, so a generated value for them is still parsed and type-checked (flag) or
checked against its annotation (config file), while a ``train`` run that passes every check
trains one epoch of a tiny network at T = 0. A ``sweep`` or ``quantum`` example finds a
finished ``train`` run in its results folder, so one that passes every check of its settings
is refused there (exit 2) instead of compiling for a minute; ``diagnose`` reads that ``train``
run. Warnings are shown as on the command line (pytest's "error" filter is lifted inside the
command). Each example runs in a temporary working folder, so a relative ``--out`` lands there.

Reproducible: the examples come from the derandomized ``thermoeqprop`` hypothesis profile
(tests/conftest.py); ``HYPOTHESIS_PROFILE=explore`` draws many more, at random.
"""

import contextlib
import io
import json
import math
import os
import shutil
import tempfile
import traceback
import typing
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thermoeqprop import _cli_diagnose, _cli_quantum, _cli_sweep, _cli_train
from thermoeqprop.cli import main
from thermoeqprop.options import option_fields
from thermoeqprop.results import KINDS, RunFolder, read_arrays, read_dataset

OPTIONS = {
    "train": _cli_train.OPTIONS,
    "sweep": _cli_sweep.OPTIONS,
    "quantum": _cli_quantum.OPTIONS,
    "diagnose": _cli_diagnose.OPTIONS,
}

#: What a run computes, given again after the generated flags (the last flag wins): a T = 0
#: estimator on a tiny network for one epoch, a one-temperature sweep of a 2-unit quadratic
#: network, a 2-qubit network. Settings those runs do not read are left to the examples.
PINNED = {
    "train": {"estimator": "ep", "model": "layered", "dataset": "moons", "hidden": [3],
              "activation": "sigmoid", "cost": "squared_error", "optimizer": "adam",
              "lr_schedule": "constant", "epochs": 1, "batch_size": 160, "max_iterations": 500},
    "sweep": {"model": "quadratic", "hidden": [2], "dataset": "random", "num_examples": 2,
              "num_inputs": 2, "num_classes": 2, "temperatures": [0.5], "seeds": [0],
              "estimators": ["covariance"], "sampler": "hmc", "num_chains": 2,
              "num_samples": 10, "num_warmup": 10, "hmc_steps": 2, "start": "auto",
              "collapse": "off", "mode_jumps": "off", "series_parameters": 2},
    "quantum": {"estimator": "ep", "qubits": 2, "dataset": "moons", "couplings": "ring",
                "solver": "dense", "cost": "expectation-mse", "num_examples": 10,
                "test_fraction": 0.5, "batch_size": 5, "epochs": 1, "shot_model": "projective",
                "optimizer": "adam", "lr_schedule": "constant"},
    "diagnose": {},
}  # fmt: skip
#: Switches given last (a switch cannot be turned off by a later flag): quiet runs, no plots.
SWITCHES = {"train": ["--no-progress"], "sweep": ["--no-progress"], "quantum": ["--quiet"],
            "diagnose": ["--no-plots"]}  # fmt: skip
#: Commands whose examples find a finished ``train`` run in their results folder, so that one
#: that passes every check of its settings is refused there (exit 2) instead of computing: a
#: sweep or a qubit network compiles for a minute on a loaded machine. Their runs are tested in
#: tests/test_sweep.py and tests/quantum/.
REFUSED_AT_THE_FOLDER = ("sweep", "quantum")
#: Settings generated with a wrong type only: a valid ``--cluster`` starts Dask workers.
INVALID_ONLY = {"cluster"}

SPECIAL = st.sampled_from(
    [0, -1, 1, 2**31, 2**63, 10**30, 0.0, -0.0, 1.7, 1e-300, 1e300, math.nan, math.inf, -math.inf]
)
ANYTHING = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=2)
    ),  # fmt: skip
    max_leaves=5,
)
TOKENS = st.sampled_from(["nan", "inf", "-inf", "1e400", "-0", "0", "1.5", "true", "null", "",
                          "[1, 2]", "{}", "-1", "--", "x"]) | st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=5
)  # fmt: skip


def valid(annotation):
    """Values of ``annotation``'s own type (as a config file would hold them)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin is list:
        return st.lists(valid(args[0]), max_size=3)
    if args and type(None) in args:
        return st.none() | st.one_of([valid(a) for a in args if a is not type(None)])
    return {
        bool: st.booleans(),
        int: st.integers(),
        float: st.floats() | st.integers(-3, 3),
        str: st.text(max_size=6),
    }[annotation]


def value_for(field, annotation):
    if field.name in INVALID_ONLY:
        return st.integers() | st.lists(st.integers(), max_size=2)
    return st.one_of(valid(annotation), SPECIAL, ANYTHING)


def flag_tokens(name, annotation, value):
    """The tokens of ``--name`` with ``value`` (a switch alone when true)."""
    flag = "--" + name.replace("_", "-")
    if annotation is bool:
        return [flag] if value is True else [flag, str(value)]
    if isinstance(value, list):
        return [flag, *map(str, value)]
    return [flag, str(value)]


def toml(value, top=False):
    """``value`` written as TOML (None has no TOML form: such keys are left out)."""
    if isinstance(value, dict):
        items = [(json.dumps(k), toml(v)) for k, v in value.items() if v is not None]
        if top:
            return "".join(f"{k} = {v}\n" for k, v in items)
        return "{" + ", ".join(f"{k} = {v}" for k, v in items) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value if v is not None) + "]"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    return repr(value) if value is not None else '""'


@st.composite
def invocation(draw, command):
    """``(flags, config text or None, config suffix)`` for ``command``."""
    fields = [
        (f, t) for f, t in option_fields(OPTIONS[command]) if not f.metadata.get("positional")
    ]
    field_list = st.lists(st.sampled_from(fields), max_size=3, unique_by=lambda ft: ft[0].name)
    in_config = draw(field_list)
    settings_ = {f.name: draw(value_for(f, t)) for f, t in in_config}
    if draw(st.integers(0, 9)) == 9:
        settings_[draw(st.text(max_size=6))] = draw(ANYTHING)  # an unknown key
    top = draw(ANYTHING) if draw(st.integers(0, 9)) == 9 else settings_  # not a table
    flags = []
    for field, annotation in draw(field_list):
        if draw(st.integers(0, 3)) == 3:
            flags += ["--" + field.name.replace("_", "-"), *draw(st.lists(TOKENS, max_size=2))]
        else:
            flags += flag_tokens(field.name, annotation, draw(value_for(field, annotation)))
    if draw(st.integers(0, 9)) == 9:
        flags += draw(st.lists(TOKENS, min_size=1, max_size=2))  # stray tokens
    suffix = draw(st.sampled_from([".json", ".toml", ".yaml"]))
    if not settings_ and top is settings_ and draw(st.booleans()):
        return flags, None, suffix
    text = toml(top, top=True) if suffix == ".toml" and isinstance(top, dict) else None
    if text is None:
        text = toml(top) if suffix == ".toml" else json.dumps(top)
    return flags, text, suffix


def pinned_flags(command):
    tokens = []
    for name, value in PINNED[command].items():
        tokens += flag_tokens(name, None, value)
    return tokens + SWITCHES[command]


def run(argv, workdir):
    """``main(argv)`` in ``workdir``: (exit status, standard output and error)."""
    output, previous = io.StringIO(), os.getcwd()
    os.chdir(workdir)
    try:
        with (
            contextlib.redirect_stdout(output),
            contextlib.redirect_stderr(output),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("default")  # as on the command line, not pytest's "error"
            try:
                code = main(argv)
            except SystemExit as exit_info:
                code = exit_info.code
            except BaseException:  # anything escaping main would be a traceback
                code, _ = None, output.write(traceback.format_exc())
    finally:
        os.chdir(previous)
    return code, output.getvalue()


def check_folder(folder: Path) -> None:
    """The results folder loads with its own reader, every file passing its checksum, and
    nobody holds its lock."""
    results = RunFolder(folder)
    assert isinstance(results.read_config(), dict), folder
    assert results.kind in KINDS, results.read_config()
    results.read_metrics()
    for path in folder.rglob("*.npz"):
        read_arrays(path)
    for path in folder.rglob("*.nc"):
        if path.parent.name == "series":
            continue
        read_dataset(path)
    results.read_series()
    results.lock()
    results.release()


def check_invocation(command, flags, text, suffix, template):
    """Run one example: ``template`` is a finished ``train`` run, which ``diagnose`` reads
    and whose ``config.json`` a ``sweep`` finds in its results folder."""
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        (scratch / "work").mkdir()
        config = []
        if text is not None:
            (scratch / f"settings{suffix}").write_text(text)
            config = ["--config", str(scratch / f"settings{suffix}")]
        folder = scratch / "run"
        if command in REFUSED_AT_THE_FOLDER:
            folder.mkdir()
            shutil.copy(template / "config.json", folder)
        where = [str(template)] if command == "diagnose" else ["--results-dir", str(folder)]
        argv = [command, *flags, *config, *pinned_flags(command), *where]
        code, output = run(argv, scratch / "work")
        assert "Traceback" not in output, (argv, text, output)
        assert code in (0, 2, 3), (argv, text, code, output)  # 3: a run that went bad midway
        if command == "diagnose":
            check_folder(template)
        elif code == 0 and "usage:" not in output:
            check_folder(folder)
            again, output = run(argv, scratch / "work")  # resumes the finished run
            assert again == 0 and "Traceback" not in output, (argv, text, output)
            check_folder(folder)
        elif (folder / "config.json").exists():
            check_folder(folder)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A finished run of ``train``'s pinned settings."""
    folder = tmp_path_factory.mktemp("template") / "run"
    code, output = run(
        ["train", *pinned_flags("train"), "--results-dir", str(folder)], folder.parent
    )
    assert code == 0, output
    return folder


@pytest.mark.parametrize("command", list(OPTIONS))
def test_generated_settings_exit_0_or_2_and_leave_a_valid_folder(command, template):
    @settings(suppress_health_check=list(HealthCheck))
    @given(invocation(command))
    def check(example):
        check_invocation(command, *example, template)

    check()
