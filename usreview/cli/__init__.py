"""The ``usreview`` command line.

Each subcommand is a small function that parses nothing itself: argparse does the
parsing (each command is declared beside its function as a
:class:`~usreview.cli.spec.Command`), the package does the work, and :func:`main` turns every
:class:`~usreview.errors.UsreviewError` into one line on stderr and a non-zero
exit status (2 for bad input or usage, 1 for anything else), never a traceback.
SIGTERM is raised as an interrupt like Ctrl-C, so that a command removes its partial
files either way (exit status 143, 130 for Ctrl-C); commands that run servers install
their own handlers.

    spec    commands declared as data; the arguments and the error line they share
    files   inspect, simulate, demo, processors, analyze (local files)
    keys    keys, seal, unseal
    hub     hub and its actions
    site    site and its actions
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from types import FrameType

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


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised as Ctrl-C is so that the same cleanup (``finally``, ``except``) runs."""


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Raise :class:`_Terminated` on SIGTERM while the block runs.

    Only where SIGTERM has its default action and on the main thread (the only one that
    can set handlers). A handler a command installs replaces this one until it restores
    it; a forked child without a handler of its own still dies of SIGTERM.
    """
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL or threading.current_thread() is not threading.main_thread():
        yield
        return
    pid = os.getpid()

    def terminate(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise _Terminated

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        with _sigterm_as_interrupt():
            return handler(args)
    except InputError as exc:
        error(str(exc))
        return 2
    except UsreviewError as exc:
        error(str(exc))
        return 1
    except _Terminated:
        error("terminated")
        return 143
    except KeyboardInterrupt:
        error("interrupted")
        return 130
    except BrokenPipeError:  # the reader left (``| head``): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 141
    except OSError as exc:
        error(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))
        return 1
