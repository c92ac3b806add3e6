"""The ``thermoeqprop`` command line: ``train``, ``sweep``, ``quantum``, ``diagnose``.

Documented in docs/cli/index.md, one page per command; ``thermoeqprop --version`` prints the
package version.

Every sub-command takes its settings from flags or from a config file (``--config FILE``,
JSON or TOML, keys named like the flags with underscores; flags given on the command line
win). Both come from one place: the options dataclasses of :mod:`thermoeqprop.options`, whose
fields become the flags (parsed and type-checked by jsonargparse; docs/design.md, "Options")
and the config-file keys (checked strictly by :func:`thermoeqprop.options.check_config`).
Errors in the input end the program with one line naming the bad value, never a traceback,
and exit status 2 (a run that would not fit in memory is refused the same way, before
anything is allocated). A run that goes bad midway (a non-finite loss, a sampler that rejects
every move, a relaxation that never converges, couplings that blow up) stops with one line
naming the epoch and the reason, before that epoch is saved, and exit status 3.
SIGINT and SIGTERM stop a run after its last finished unit of work was saved; running the
same command again resumes it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
import types
import typing
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonargparse

from thermoeqprop import _cli_diagnose, _cli_quantum, _cli_sweep, _cli_train
from thermoeqprop._health import RunStopped
from thermoeqprop._provenance import package_version
from thermoeqprop._xla_cache import use_compilation_cache
from thermoeqprop.options import (
    check_config,
    check_seeds,
    deprecations,
    describe_type,
    option_fields,
)
from thermoeqprop.training import CheckpointError
from thermoeqprop_console import INTERRUPTED, MESSAGE, interrupts

__all__ = ["main"]


class CommandError(Exception):
    """A user error detected by the command line itself."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in the one-line form of every other error here."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Help(jsonargparse.DefaultHelpFormatter):
    """jsonargparse's help without its ``type: Literal[...]`` notes (the metavar shows them)."""

    def _get_type_str(self, action):
        return None


class CommandParser(jsonargparse.ArgumentParser):
    """A sub-command's parser: jsonargparse, its errors in one line naming the flag, the
    value and what is valid (the annotation of the option, :func:`describe_type`)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("exit_on_error", True)
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)
        self.annotations: dict[str, Any] = {}

    def error(self, message: str, ex: Exception | None = None):
        found = re.match(r'Parser key "(\w+)"(?: element \d+)?:\s*.*Got value: (.*)$', message,
                         re.S)  # fmt: skip
        if found and found[1] in self.annotations:
            key, value = found[1], found[2].strip()
            message = (
                f"--{key.replace('_', '-')} has value {value!r}; valid: "
                f"{describe_type(self.annotations[key])}"
            )
        message = " ".join(message.split())
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


class _Parse:
    """A flag's type: ``convert`` applied to text; values already parsed (defaults, a config
    file) pass unchanged. Named for argparse's messages ("invalid number value") and shown
    by its annotation's name in the help."""

    def __init__(self, name: str, shown: str, convert: Callable, passes: tuple[type, ...]):
        self.__name__, self.shown, self.convert, self.passes = name, shown, convert, passes

    def __call__(self, value):
        if value is None or isinstance(value, self.passes):
            return value
        return self.convert(value)

    def __repr__(self) -> str:
        return self.shown


#: A float flag: any float Python reads (``nan`` and ``inf`` too, for the range checks of
#: the library to name; jsonargparse's own ``float`` refuses them).
_number = _Parse("number", "float", float, (int, float))
#: A switch that also takes the deprecated integer (``--tempering 8``, a replica count).
_switch = _Parse("replica count", "bool", int, (bool, int))


def add_options(parser: CommandParser, options: type) -> None:
    """One flag per field of ``options`` (a dataclass of :mod:`thermoeqprop.options`)."""
    for field, annotation in option_fields(options):
        kwargs: dict[str, Any] = {"help": field.metadata.get("help") or None}
        default = field.default_factory() if callable(field.default_factory) else field.default
        args = typing.get_args(annotation)
        union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
        inner = next(a for a in args if a is not type(None)) if union else annotation
        if field.metadata.get("deprecated_int"):
            kwargs |= {"type": _switch, "nargs": "?", "const": True, "default": default,
                       "metavar": "N"}  # fmt: skip
            kwargs["help"] += f" (--{field.name} N, a replica count, is deprecated)"
        elif annotation is bool:
            kwargs |= {"action": "store_true"}
        elif typing.get_origin(annotation) is list:
            element = _number if args[0] is float else args[0]
            kwargs |= {"type": element, "nargs": "+", "default": default}
        else:
            kwargs |= {"type": _number if inner is float else inner, "default": default}
            parser.annotations[field.name] = annotation
        if field.metadata.get("positional"):
            kwargs.pop("default")
            parser.add_argument(field.name, **kwargs)
        else:
            parser.add_argument("--" + field.name.replace("_", "-"), **kwargs)
        if typing.get_origin(annotation) is list:
            parser.annotations[field.name] = annotation


def load_config_file(path: str) -> Any:
    """Read a JSON or TOML config file (its settings unchecked: :func:`check_config`)."""
    file = Path(path)
    if not file.is_file():
        raise CommandError(f"config file {path!r} does not exist")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CommandError(f"config file {path!r} is not UTF-8 text ({exc.reason} at byte "
                           f"{exc.start})") from None  # fmt: skip
    try:
        if file.suffix == ".toml":
            return tomllib.loads(text)
        return json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        kind = "TOML" if file.suffix == ".toml" else "JSON"
        raise CommandError(f"config file {path!r} is not valid {kind}: {exc}") from None


def parse_options(parser: CommandParser, options: type, argv: list[str]):
    """The options of one command: defaults, overridden by the config file, overridden by
    the flags given."""
    config = _config_path(argv)
    if config is not None:
        settings = check_config(options, load_config_file(config), config)
        parser.set_defaults(**settings)
    parsed = parser.parse_args(argv)
    names = [field.name for field, _ in option_fields(options)]
    return options(**{name: parsed[name] for name in names})


def _config_path(argv: list[str]) -> str | None:
    """The ``--config`` file of ``argv`` (None without one); ``CommandError`` if it is given
    more than once (its settings are not merged)."""
    paths = []
    for i, token in enumerate(argv):
        if token == "--config" and i + 1 < len(argv):
            paths.append(argv[i + 1])
        if token.startswith("--config="):
            paths.append(token.partition("=")[2])
    if len(paths) > 1:
        raise CommandError(f"--config is given {len(paths)} times ({paths}); give one file")
    return paths[0] if paths else None


#: The options naming a folder: an empty name would mean the current directory.
FOLDER_OPTIONS = ("results_dir", "out", "run_folder")


def _check_folder_names(options) -> None:
    for name in FOLDER_OPTIONS:
        value = getattr(options, name, None)
        if isinstance(value, str) and not value.strip():
            shown = "RUN_FOLDER" if name == "run_folder" else "--" + name.replace("_", "-")
            raise CommandError(
                f"{shown} is empty ({value!r}); give a folder name (write . for the current "
                "directory)"
            )


def _commands() -> dict[str, tuple[type, Callable, str]]:
    """Each sub-command: its options, how it runs (on them), its one-line help."""
    return {
        "train": (
            _cli_train.OPTIONS,
            _cli_train.run,
            "train a network by equilibrium propagation (the main job)",
        ),
        "sweep": (
            _cli_sweep.OPTIONS,
            _cli_sweep.run,
            "run estimators across temperatures and seeds",
        ),
        "quantum": (_cli_quantum.OPTIONS, _cli_quantum.run, "train a qubit network by quantum EP"),
        "diagnose": (
            _cli_diagnose.OPTIONS,
            _cli_diagnose.run,
            "summarise a results folder with ArviZ diagnostics",
        ),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="thermoeqprop",
        description="Equilibrium propagation at zero and finite temperature, classical and "
        "quantum.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=CommandParser
    )
    for name, (options, run, help_text) in _commands().items():
        description = getattr(run, "description", None) or help_text
        sub_parser = sub.add_parser(name, help=help_text, description=description)
        sub_parser.add_argument(
            "--config", metavar="FILE", help="JSON or TOML file of settings (flags win)"
        )
        add_options(sub_parser, options)
    return parser


def _note(command: str, fallback):
    """``warnings.showwarning`` for the command line: the library's own warnings as one line
    instead of a file name and a source line, deprecations as ``thermoeqprop train: note: …``
    and the rest (a nudge too strong for the gap, say) as ``thermoeqprop quantum: warning: …``;
    other packages' warnings as Python shows them."""

    def show(message, category, filename, lineno, file=None, line=None):
        if "thermoeqprop" in (filename or ""):
            deprecated = issubclass(category, (FutureWarning, DeprecationWarning))
            kind = "note" if deprecated else "warning"
            print(f"thermoeqprop {command}: {kind}: {message}", file=file or sys.stderr)
            return
        fallback(message, category, filename, lineno, file, line)

    return show


def main(argv: list[str] | None = None) -> int:
    """Entry point of the command line (the console script is :func:`thermoeqprop_console.main`,
    which handles signals from before this module is imported)."""
    with interrupts():
        try:
            return _main(argv)
        except KeyboardInterrupt:
            print("\n" + MESSAGE, file=sys.stderr)
            return INTERRUPTED


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    commands = _commands()
    if not argv or argv[0] not in commands:
        parser.parse_args(argv)  # --help, --version, or an error naming the commands
        return 2
    command, rest = argv[0], argv[1:]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    options_type, run, _ = commands[command]
    previous_showwarning = warnings.showwarning
    warnings.showwarning = _note(command, previous_showwarning)
    try:
        options = parse_options(sub.choices[command], options_type, rest)
        check_seeds(options)
        _check_folder_names(options)
        options, messages = deprecations(options, command)
        for message in messages:
            print(message, file=sys.stderr)
        use_compilation_cache()  # before the first compilation
        return int(run(options) or 0)
    except RunStopped as exc:  # went bad midway: the folder keeps the last good unit
        print(f"thermoeqprop {command}: error: {exc}", file=sys.stderr)
        return 3
    except (
        CommandError,
        CheckpointError,
        ValueError,
        FileNotFoundError,
        FloatingPointError,
    ) as exc:
        print(f"thermoeqprop {command}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = previous_showwarning


if __name__ == "__main__":  # python -m thermoeqprop.cli: as the console script does
    import thermoeqprop_console

    sys.exit(thermoeqprop_console.main())
