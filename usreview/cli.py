"""The ``usreview`` command line.

Each subcommand is a small function that parses nothing itself: argparse does the
parsing, the package does the work, and :func:`main` turns every
:class:`~usreview.errors.UsreviewError` into one line on stderr and a non-zero
exit status (2 for bad input or usage, 1 for anything else), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from usreview import __version__
from usreview.errors import InputError, UsreviewError

Handler = Callable[[argparse.Namespace], int]


# --- inspect -----------------------------------------------------------------------


def _cmd_inspect(args: argparse.Namespace) -> int:
    from usreview.dicom.inspect import format_summary, summarize
    from usreview.dicom.reader import iter_dicom_paths

    status = 0
    summaries = []
    for path in iter_dicom_paths(args.paths):
        try:
            summaries.append(summarize(path))
        except InputError as exc:
            _error(f"{path}: {exc}")
            status = 2
    if args.json:
        json.dump(summaries, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for summary in summaries:
            sys.stdout.write(format_summary(summary))
    return status


def _add_inspect(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "inspect",
        help="describe ultrasound DICOM files: SOP class, syntax, frames, kinds, regions",
        description="Print what usreview reads from each ultrasound instance. Folders are "
        "searched recursively. Unreadable files are reported on stderr, one line each, and "
        "make the exit status 2.",
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files or folders")
    p.add_argument("--json", action="store_true", help="one JSON array (keys: see README)")
    p.set_defaults(handler=_cmd_inspect)


# --- simulate ----------------------------------------------------------------------
# (owned by usreview.simulate; see _add_simulate)


# --- demo --------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    from usreview.simulate import KINDS, simulate

    out: Path = args.out
    written: list[Path] = []
    for index, kind in enumerate(KINDS):
        print(f"simulating {kind} ...", file=sys.stderr, flush=True)
        written.extend(simulate(kind, out / kind, seed=index))
    print(f"wrote {len(written)} instances under {out}\n", file=sys.stderr)
    ns = argparse.Namespace(paths=[out], json=False)
    return _cmd_inspect(ns)


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run the main job on embedded defaults (now: simulate studies and inspect them)",
    )
    p.add_argument("--out", type=Path, default=Path("demo"), help="output folder (default: demo)")
    p.set_defaults(handler=_cmd_demo)


# --- keys, seal, unseal ------------------------------------------------------------
# (owned by usreview.envelope)


# --- main --------------------------------------------------------------------------


def _error(message: str) -> None:
    sys.stderr.write(f"usreview: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``usreview`` command."""
    parser = argparse.ArgumentParser(
        prog="usreview",
        description="Remote assistance in diagnostic ultrasound.",
    )
    parser.add_argument("--version", action="version", version=f"usreview {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_inspect, _add_demo):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except InputError as exc:
        _error(str(exc))
        return 2
    except UsreviewError as exc:
        _error(str(exc))
        return 1
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except OSError as exc:
        _error(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
