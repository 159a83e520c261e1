"""Sub-commands declared as data, turned into argparse parsers by one function.

A :class:`Command` names a sub-command, its help, its handler and its arguments
(:func:`arg`, or :func:`one_of` for a mutually exclusive group); its ``actions``
are sub-commands of its own. :func:`add_command` is the only place that calls
``add_parser``, ``add_argument`` and ``set_defaults``, so every command is built
the same way.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Arg:
    """One ``add_argument`` call: the name or flags, and its keyword arguments."""

    flags: tuple[str, ...]
    options: dict[str, Any]


@dataclass(frozen=True)
class OneOf:
    """Arguments of which at most one may be given."""

    args: tuple[Arg, ...]


@dataclass(frozen=True)
class Command:
    """A sub-command.

    Attributes
    ----------
    name, help, description
        As for ``add_parser``.
    handler
        Runs the command (stored as ``args.handler``); ``None`` when an action must be
        named instead.
    args
        Its arguments, in the order help lists them.
    actions
        Its own sub-commands, parsed into ``args.NAME_command`` (``ACTION`` in help);
        required when the command has no handler.
    """

    name: str
    help: str
    handler: Handler | None = None
    description: str | None = None
    args: Sequence[Arg | OneOf] = ()
    actions: Sequence[Command] = ()


def arg(*flags: str, **options: Any) -> Arg:
    """Declare an argument: the same parameters as ``ArgumentParser.add_argument``."""
    return Arg(flags, options)


def one_of(*args: Arg) -> OneOf:
    """Declare a mutually exclusive group of arguments."""
    return OneOf(args)


def add_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], command: Command
) -> argparse.ArgumentParser:
    """Add ``command`` and its actions to ``sub``; return its parser.

    Parameters
    ----------
    sub
        What ``add_subparsers`` returned for the parent command.
    command
        The command to add.

    Returns
    -------
    argparse.ArgumentParser
        The parser of ``command``.
    """
    parser = sub.add_parser(command.name, help=command.help, description=command.description)
    for item in command.args:
        if isinstance(item, OneOf):
            group = parser.add_mutually_exclusive_group()
            for one in item.args:
                group.add_argument(*one.flags, **one.options)
        else:
            parser.add_argument(*item.flags, **item.options)
    if command.handler is not None:
        parser.set_defaults(handler=command.handler)
    if command.actions:
        actions = parser.add_subparsers(
            dest=f"{command.name}_command", metavar="ACTION", required=command.handler is None
        )
        for action in command.actions:
            add_command(actions, action)
    return parser


# --- arguments and types several commands share -----------------------------------------


def paths() -> Arg:
    """Positional ``PATH...``: files or folders."""
    return arg("paths", nargs="+", type=Path, metavar="PATH", help="files or folders")


def json_flag(text: str) -> Arg:
    """``--json``: print ``text`` (what the JSON holds) instead of lines for people."""
    return arg("--json", action="store_true", help=text)


#: Suffixes of a duration argument and their seconds.
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> int:
    """An argument type: ``3600``, ``90m``, ``12h`` or ``7d`` as seconds (more than 0)."""
    unit = DURATION_UNITS.get(text[-1:].lower()) if text[-1:].isalpha() else 1
    number = text[:-1] if text[-1:].isalpha() else text
    if unit is None or not number.isdigit() or int(number) == 0:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r} (examples: 3600, 90m, 12h, 7d)"
        )
    return int(number) * unit


def count(text: str) -> int:
    """An argument type: a whole number more than 0."""
    if not (text.isascii() and text.isdigit()) or int(text) == 0:
        raise argparse.ArgumentTypeError(f"invalid count {text!r} (a whole number, at least 1)")
    return int(text)


def port(text: str) -> int:
    """An argument type: a TCP port, 1 to 65535 (:func:`usreview.hub.config.port_number`)."""
    from usreview.hub.config import port_number
    from usreview.hub.errors import HubConfigError

    try:
        return port_number(text)
    except HubConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def grace(text: str) -> int:
    """An argument type: a :func:`duration`, or ``0`` for none."""
    return 0 if text.strip() == "0" else duration(text)


def error(message: str) -> None:
    """Print ``message`` on stderr as the ``usreview`` command's one-line error."""
    sys.stderr.write(f"usreview: error: {message}\n")
