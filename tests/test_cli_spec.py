"""The declarative sub-command table and the parser it builds."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from usreview.cli import build_parser
from usreview.cli.spec import Command, add_command, arg, one_of


def _run(args: argparse.Namespace) -> int:
    return 7


def _root(*commands: Command) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in commands:
        add_command(sub, command)
    return parser


def test_arguments_and_handler_reach_the_namespace() -> None:
    parser = _root(
        Command(
            "go",
            help="h",
            handler=_run,
            args=(arg("paths", nargs="+"), arg("--n", type=int, default=3)),
        )
    )
    args = parser.parse_args(["go", "a", "b", "--n", "5"])
    assert (args.paths, args.n, args.handler(args)) == (["a", "b"], 5, 7)
    assert parser.parse_args(["go", "a"]).n == 3


def test_one_of_refuses_two(capsys: pytest.CaptureFixture[str]) -> None:
    parser = _root(
        Command(
            "go",
            help="h",
            handler=_run,
            args=(one_of(arg("--a", action="store_true"), arg("--b", action="store_true")),),
        )
    )
    assert parser.parse_args(["go", "--b"]).b is True
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["go", "--a", "--b"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_actions_required_only_without_a_handler(capsys: pytest.CaptureFixture[str]) -> None:
    leaf = Command("leaf", help="h", handler=_run)
    parser = _root(
        Command("group", help="h", actions=(leaf,)),
        Command("runs", help="h", handler=_run, actions=(leaf,)),
    )
    assert parser.parse_args(["group", "leaf"]).group_command == "leaf"
    runs = parser.parse_args(["runs"])
    assert (runs.runs_command, runs.handler) == (None, _run)
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["group"])
    assert exc.value.code == 2
    assert "required: ACTION" in capsys.readouterr().err


def _walk(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += _walk(child)
    return found


def test_every_usreview_command_runs_a_handler_or_requires_an_action() -> None:
    parsers = _walk(build_parser())
    assert len(parsers) > 20
    for parser in parsers[1:]:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        handler = parser.get_default("handler")
        assert callable(handler) or (subs and subs[0].required), parser.prog


def test_a_reader_that_leaves_early_stops_the_command_quietly(tmp_path: Path) -> None:
    """``usreview ... | head``: no error line, no traceback, the status of a SIGPIPE."""
    import shutil
    import subprocess
    import sys

    from usreview.simulate import simulate

    first = simulate("pw", tmp_path / "sim", seed=1)[0]
    for n in range(100):
        shutil.copy(first, tmp_path / f"copy{n:03d}.dcm")
    code = "import sys; from usreview.cli import main; sys.exit(main(sys.argv[1:]))"
    command = [sys.executable, "-c", code, "inspect", "--json", str(tmp_path)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as cli:
        assert cli.stdout is not None and cli.stderr is not None
        # Gone before the first byte: the command reads 100 files before it writes, and a
        # reader that closes mid-write may see the write succeed partly, not fail.
        cli.stdout.close()
        err = cli.stderr.read().decode()
    assert cli.returncode == 141 and err == ""


@pytest.mark.parametrize("value", ["99999", "-1", "0", "80x"])
def test_demo_port_is_checked_when_the_arguments_are_parsed(
    value: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import usreview.demo
    from usreview.cli import main

    def never(*args: object, **kwargs: object) -> int:
        raise AssertionError("the demo ran")

    monkeypatch.setattr(usreview.demo, "run_demo", never)
    with pytest.raises(SystemExit) as usage:
        main(["demo", "--out", "unused", "--port", value])
    assert usage.value.code == 2
    err = capsys.readouterr().err
    assert f"usreview demo: error: argument --port: invalid port '{value}': use 1 to 65535" in err
    assert "Traceback" not in err


def test_every_usreview_command_and_argument_says_what_it_is() -> None:
    """``--help`` of each command has a description (or its one-line help), and every
    argument and option its own help."""
    undocumented = []
    for parser in _walk(build_parser())[1:]:
        if not parser.description:
            undocumented.append(f"{parser.prog}: no description")
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            if not action.help:
                undocumented.append(f"{parser.prog}: {action.metavar or action.dest}")
    assert not undocumented, undocumented
