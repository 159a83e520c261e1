"""The progress of ``usreview site push``: the numbers it shows, on a terminal and not."""

from __future__ import annotations

import io
import re
from pathlib import Path

from usreview.site.progress import PushProgress, format_duration


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_give_rate_and_time_left() -> None:
    clock, out = _Clock(), io.StringIO()
    progress = PushProgress(out, tty=False, clock=clock)
    total, step = 40, 0.25  # 4 instances/s
    for done in range(1, 11):
        clock.now += step
        progress(done, total, Path(f"IM{done:04d}.dcm"), "stored")
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in out.getvalue()
    last = re.fullmatch(
        r"\[(\d+)/(\d+)\] (\S+): stored \(([\d.]+) inst/s, ETA (\d+) s\)", lines[-1]
    )
    assert last is not None
    assert (int(last[1]), int(last[2]), last[3]) == (10, total, "IM0010.dcm")
    assert float(last[4]) == 1 / step
    assert int(last[5]) == round((total - 10) * step)


def test_a_terminal_gets_one_redrawn_bar_and_failures_on_their_own_lines() -> None:
    clock, out = _Clock(), io.StringIO()
    progress = PushProgress(out, tty=True, clock=clock)
    total = 8
    for done in range(1, total + 1):
        clock.now += 0.5
        progress(done, total, Path(f"f{done}.dcm"), "refused" if done == 3 else "stored")
    text = out.getvalue()
    assert text.count("\r[") == total and text.endswith("\n")
    bars = re.findall(r"\r\[([#.]+)\] (\d+)/8 (\d+)% ([\d.]+) inst/s ETA (\S+ ?s?)", text)
    assert [len(b[0]) for b in bars] == [24] * total
    assert [b[0].count("#") for b in bars] == [24 * n // total for n in range(1, total + 1)]
    assert [int(b[2]) for b in bars] == [100 * n // total for n in range(1, total + 1)]
    assert {float(b[3]) for b in bars} == {2.0}
    assert "\r\x1b[Kf3.dcm: refused\n" in text  # the bar is cleared, the failure stays


def test_format_duration() -> None:
    assert format_duration(42.4) == "42 s"
    assert format_duration(187) == "3:07"
    assert format_duration(3723) == "1:02:03"
    assert format_duration(-1) == "0 s"
