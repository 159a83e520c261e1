"""The ``usreview`` command line.

Each subcommand is a small function that parses nothing itself: argparse does the
parsing (each command is declared beside its function as a
:class:`~usreview.cli.spec.Command`), the package does the work, and :func:`main` turns every
:class:`~usreview.errors.UsreviewError` into one line on stderr and a non-zero
exit status (2 for bad input or usage, 1 for anything else), never a traceback.

    spec    commands declared as data; the arguments and the error line they share
    files   inspect, simulate, demo, processors, analyze (local files)
    keys    keys, seal, unseal
    hub     hub and its actions
    site    site and its actions
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from usreview import __version__
from usreview.cli import files, hub, keys, site
from usreview.cli.spec import Handler, add_command, error
from usreview.errors import InputError, UsreviewError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``usreview`` command."""
    parser = argparse.ArgumentParser(
        prog="usreview", description="Remote assistance in diagnostic ultrasound."
    )
    parser.add_argument("--version", action="version", version=f"usreview {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in (*files.COMMANDS, *keys.COMMANDS, *hub.COMMANDS, *site.COMMANDS):
        add_command(sub, command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except InputError as exc:
        error(str(exc))
        return 2
    except UsreviewError as exc:
        error(str(exc))
        return 1
    except KeyboardInterrupt:
        error("interrupted")
        return 130
    except BrokenPipeError:  # the reader left (``| head``): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 141
    except OSError as exc:
        error(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))
        return 1
