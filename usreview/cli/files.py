"""``usreview inspect``, ``simulate``, ``demo``, ``processors`` and ``analyze``: commands on
local files, with no hub or site."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from usreview import _json as strict_json
from usreview.cli.spec import Command, arg, error, json_flag, paths, port
from usreview.errors import InputError, SimulationError


def _print_json(value: Any) -> None:
    """Print ``value`` as strict JSON: non-finite numbers become ``null``."""
    sys.stdout.write(strict_json.dumps(value, indent=2) + "\n")


def _cmd_inspect(args: argparse.Namespace) -> int:
    from usreview.dicom.inspect import format_summary, summarize
    from usreview.dicom.reader import iter_dicom_paths

    status = 0
    summaries = []
    for path in iter_dicom_paths(args.paths):
        try:
            summaries.append(summarize(path))
        except InputError as exc:
            error(f"{path}: {exc}")
            status = 2
            if args.json:  # in the array where it was found, with its error
                summaries.append({"path": str(path), "error": str(exc)})
    if args.json:
        _print_json(summaries)
    else:
        for summary in summaries:
            sys.stdout.write(format_summary(summary))
    return status


_INSPECT = Command(
    "inspect",
    help="describe ultrasound DICOM files: SOP class, syntax, frames, kinds, regions",
    handler=_cmd_inspect,
    description="Print what usreview reads from each ultrasound instance. Folders are "
    "searched recursively. Unreadable files (compressed pixel data missing frames "
    "included) are reported on stderr, one line each, and make the exit status 2; in the "
    "JSON each is an object with 'path' and 'error'.",
    args=(paths(), json_flag("one JSON array (keys: see README)")),
)


# --- simulate -------------------------------------------------------------------

_SIMULATE_KINDS = "bmode, cine, mmode, pw, cw, color, volume"


def _cmd_simulate(args: argparse.Namespace) -> int:
    from usreview.simulate import describe_kind, simulate

    params: dict[str, Any] = {}  # strings, converted by the kind's parameters
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise SimulationError(f"--param {item!r}: expected NAME=VALUE")
        params[name.strip()] = value
    if args.list_params:
        for name, default, text in describe_kind(args.kind):
            print(f"{name}={default}\t{text}")
        return 0
    if args.out is None:
        raise SimulationError("--out DIR is required")
    written = simulate(
        args.kind, args.out, seed=args.seed, snr_db=args.snr, overwrite=args.force, **params
    )
    for path in written:
        print(path)
    return 0


_SIMULATE = Command(
    "simulate",
    help="write a simulated study with known answers (DICOM + NAME.truth.json)",
    handler=_cmd_simulate,
    description="Write one simulated study of KIND into DIR: each instance NAME.dcm with "
    "NAME.truth.json (the true values) beside it; print the DICOM paths. The same "
    "kind, seed and parameters write the same bytes. Invalid kinds or parameters, or a "
    "file to write that exists (without --force), are one line on stderr and exit status 2, "
    "and nothing is written. Files are written atomically, mode 0600; a run that fails (a "
    "full disk) removes what it wrote.",
    args=(
        arg("kind", metavar="KIND", help=f"one of: {_SIMULATE_KINDS}"),
        arg("--out", type=Path, metavar="DIR", help="output folder (created)"),
        arg("--seed", type=int, default=0, metavar="N", help="random seed (default 0)"),
        arg(
            "--snr",
            type=float,
            default=None,
            metavar="DB",
            help="signal-to-noise ratio in dB (default: 20 for pw/cw, 40 otherwise)",
        ),
        arg(
            "--param",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="a kind-specific parameter; repeat for several (see --list-params)",
        ),
        arg(
            "--list-params",
            action="store_true",
            help="print KIND's parameters with defaults and exit",
        ),
        arg(
            "--force",
            action="store_true",
            help="replace NAME.dcm and NAME.truth.json if they exist (default: refuse)",
        ),
    ),
)


# --- demo -----------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    from usreview.demo import run_demo

    return run_demo(args.out, port=args.port, exit_after_summary=args.exit)


_DEMO = Command(
    "demo",
    help="run the whole system on embedded defaults: hub, 3 sites, scanners, results",
    handler=_cmd_demo,
    description="Start the hub (state in OUT/hub), add a reviewer, enroll three simulated "
    "sites (OUT/sites/NAME) and start their gateways, send their simulated studies by "
    "C-STORE, wait for the hub's receipts, process what arrived, publish the measurements "
    "to each site and wait for them in its outbox; print a summary and keep everything "
    "running until Ctrl-C. Running it again on the same OUT reuses its state.",
    args=(
        arg("--out", type=Path, default=Path("demo"), help="output folder (default: demo)"),
        arg(
            "--port",
            type=port,
            default=None,
            metavar="N",
            help="the hub's HTTPS port (default: the last run's, else 8000 if free, else any free)",
        ),
        arg(
            "--exit",
            action="store_true",
            help="stop the hub and the gateways after the summary instead of waiting for Ctrl-C",
        ),
    ),
)


# --- processors, analyze --------------------------------------------------------


def _cmd_processors(args: argparse.Namespace) -> int:
    from usreview.processing import default_registry

    listing = [p.describe() for p in default_registry()]
    if args.json:
        _print_json(listing)
        return 0
    for item in listing:
        state = "available" if item["available"] else f"unavailable: {item['reason']}"
        kinds = ", ".join(item["kinds"]) or "-"
        print(f"{item['name']}\t{item['version']}\t{kinds}\t{state}")
    return 0


_PROCESSORS = Command(
    "processors",
    help="list the registered processors: kinds, version, availability",
    handler=_cmd_processors,
    description="List built-in processors and those of the entry-point group "
    "'usreview.processors': name, version, image kinds and whether their dependencies "
    "are installed (tab-separated, or JSON).",
    args=(json_flag("one JSON array"),),
)


def _cmd_analyze(args: argparse.Namespace) -> int:
    if args.out is not None and os.path.lexists(args.out) and not args.out.is_dir():
        raise InputError(f"--out {args.out}: not a folder (name a folder for the images)")
    made = _missing_folders(args.out)
    status = 1  # unless the run ends with a status of its own
    try:
        status = _analyze(args)
    finally:
        if status != 0:  # a failed run leaves no empty --out folder it made
            _remove_empty_folders(made)
    return status


def _missing_folders(folder: Path | None) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    missing: list[Path] = []
    if folder is None:
        return missing
    folder = Path(os.path.abspath(folder))  # "a/../b" is b, made or not
    for path in (folder, *folder.parents):
        if os.path.lexists(path):
            break
        missing.append(path)
    return missing


def _remove_empty_folders(folders: list[Path]) -> None:
    """Remove ``folders`` in order, as long as each is empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # it holds something (or was never made): it and its parents stay
            return


def _analyze(args: argparse.Namespace) -> int:
    from usreview.processing import analyze_paths

    summaries = analyze_paths(args.paths, args.out)
    status = 0
    for summary in summaries:
        if "error" in summary:
            error(f"{summary['file']}: {summary['error']}")
            status = 2
    if args.json:
        _print_json(summaries)
        return status
    for summary in summaries:
        if "error" in summary:
            continue
        print(f"{summary['file']}  ({', '.join(summary['kinds'])})")
        for q in summary["quantities"]:
            cycles = f"  [{q['cycles']} cycles]" if "cycles" in q else ""
            code = f"{q['scheme']} {q['code']}"
            print(f"  {q['name']} = {q['value']:g} {q['unit']}  ({code}){cycles}")
        for f in summary["findings"]:
            print(f"  finding: {f['text']}")
        for r in summary["recommendations"]:
            print(f"  recommendation: {r['text']}")
        for step in summary["processors"]:
            if step["status"] != "done":
                print(f"  {step['processor']}: {step['status']} ({step['reason']})")
        for warning in summary["warnings"]:
            print(f"  warning: {warning}")
        for image in summary["images"]:
            print(f"  image: {image['file']}")
    return status


_ANALYZE = Command(
    "analyze",
    help="run the processing pipeline on local files, without a hub",
    handler=_cmd_analyze,
    description="Run the default pipeline on each ultrasound file (folders are searched "
    "recursively) and print its kinds, quantities (name, code, value, UCUM unit), "
    "findings and recommendations. Recommendations are decision support for the "
    "reviewing expert. Unreadable files (their pixel data incomplete or not decodable "
    "included) are reported on stderr and make the exit status 2. Images are written "
    "atomically, mode 0600; if one cannot be written (a full disk), the run stops with "
    "status 1 and removes the images it wrote. A run that fails removes the --out folder "
    "(and its parents) it made if nothing is in it.",
    args=(
        paths(),
        json_flag("one JSON array, an object per instance"),
        arg(
            "--out",
            type=Path,
            metavar="DIR",
            help="write derived images here (PNG, mode 0600; replaces older ones)",
        ),
    ),
)


COMMANDS = (_INSPECT, _SIMULATE, _DEMO, _PROCESSORS, _ANALYZE)
