"""Sub-commands declared as data, turned into argparse parsers by one function.

A :class:`Command` names a sub-command, its help, its handler and its arguments
(:func:`arg`, or :func:`one_of` for a mutually exclusive group); its ``actions``
are sub-commands of its own. :func:`add_command` is the only place that calls
``add_parser``, ``add_argument`` and ``set_defaults``, so every command is built
the same way.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
