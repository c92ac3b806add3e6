"""The ``thermoeqprop`` command line: ``train``, ``sweep``, ``quantum``, ``diagnose``.

Documented in docs/cli/index.md, one page per command; ``thermoeqprop --version`` prints the
package version.

Every sub-command takes its settings from flags or from a config file (``--config FILE``,
JSON or TOML, keys named like the flags with underscores; flags given on the command line
win). Errors in the input end the program with one line naming the bad value, never a
traceback. SIGINT and SIGTERM stop a run after its last finished unit of work was saved;
running the same command again resumes it.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from thermoeqprop import _cli_diagnose, _cli_quantum, _cli_sweep, _cli_train
from thermoeqprop._provenance import package_version
from thermoeqprop.training import CheckpointError

__all__ = ["main"]


class CommandError(Exception):
    """A user error detected by the command line itself."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in the one-line form of every other error here."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def load_config_file(path: str) -> dict[str, Any]:
    """Read a JSON or TOML config file into a flat dict."""
    file = Path(path)
    if not file.is_file():
        raise CommandError(f"config file {path!r} does not exist")
    text = file.read_text()
    try:
        if file.suffix == ".toml":
            return tomllib.loads(text)
        return json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        kind = "TOML" if file.suffix == ".toml" else "JSON"
        raise CommandError(f"config file {path!r} is not valid {kind}: {exc}") from None


def resolve_settings(
    parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]
) -> dict[str, Any]:
    """Defaults, overridden by the config file, overridden by flags given explicitly."""
    defaults = {
        action.dest: action.default
        for action in parser._actions
        if action.dest not in ("help", "config", "command")
    }
    settings = dict(defaults)
    if getattr(args, "config", None):
        from_file = load_config_file(args.config)
        unknown = sorted(set(from_file) - set(defaults))
        if unknown:
            raise CommandError(
                f"unknown config key(s) {unknown} in {args.config}; valid keys are "
                f"{sorted(defaults)}"
            )
        for key, value in from_file.items():
            action = next(a for a in parser._actions if a.dest == key)
            if action.type is not None and value is not None and not isinstance(value, list):
                try:
                    value = action.type(value)
                except (TypeError, ValueError):
                    raise CommandError(
                        f"config key {key!r} has value {value!r}, which is not a valid "
                        f"{getattr(action.type, '__name__', 'value')}"
                    ) from None
            if action.choices is not None and value not in action.choices:
                raise CommandError(
                    f"config key {key!r} has value {value!r}; valid: {list(action.choices)}"
                )
            settings[key] = value
    for action in parser._actions:
        given = any(
            token == option or token.startswith(option + "=")
            for token in argv
            for option in action.option_strings
        )
        if given or (not action.option_strings and action.dest in defaults):
            settings[action.dest] = getattr(args, action.dest)
    return settings


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _commands() -> dict[str, tuple[Callable, Callable, str]]:
    """Each sub-command: how it configures its parser, how it runs (on the settings dict)."""
    return {
        "train": (
            _cli_train.configure_parser,
            _cli_train.run,
            "train a network by equilibrium propagation (the main job)",
        ),
        "sweep": (
            _cli_sweep.configure_parser,
            _cli_sweep.run,
            "run estimators across temperatures and seeds",
        ),
        "quantum": (
            _cli_quantum.configure_parser,
            _cli_quantum.run,
            "train a qubit network by quantum EP",
        ),
        "diagnose": (
            _cli_diagnose.configure_parser,
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
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (configure, run, help_text) in _commands().items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.add_argument(
            "--config", metavar="FILE", help="JSON or TOML file of settings (flags win)"
        )
        configure(sub_parser)
        sub_parser.set_defaults(_run=run, _parser=sub_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``thermoeqprop`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    previous_handler = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        settings = resolve_settings(args._parser, args, argv)
        return int(args._run(settings) or 0)
    except KeyboardInterrupt:
        print(
            "\nthermoeqprop: interrupted; finished work is saved in the results folder. "
            "Run the same command again to resume.",
            file=sys.stderr,
        )
        return 130
    except (
        CommandError,
        CheckpointError,
        ValueError,
        FileNotFoundError,
        FloatingPointError,
    ) as exc:
        print(f"thermoeqprop {args.command}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if previous_handler is not None:  # None: installed outside Python, cannot restore
            signal.signal(signal.SIGTERM, previous_handler)


if __name__ == "__main__":
    sys.exit(main())
