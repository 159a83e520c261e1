"""The service's worklist cache: fresh answers shared, changes seen at once or within ttl."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from usreview.hub.api.worklist_cache import WorklistCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_answers_are_shared_within_ttl_and_recomputed_after() -> None:
    clock, calls = Clock(), []

    def compute() -> list[dict[str, Any]]:
        calls.append(clock.now)
        return [{"study_instance_uid": f"1.{len(calls)}"}]

    cache = WorklistCache(ttl=2.0, clock=clock)
    first = cache.get(("Reviewer", "", ""), compute)
    assert json.loads(first.body) == {"studies": [{"study_instance_uid": "1.1"}]}
    clock.now += 1.9
    assert cache.get(("Reviewer", "", ""), compute) is first and len(calls) == 1
    assert cache.get(("Reviewer", "processed", ""), compute).count == 1  # another filter
    assert len(calls) == 2
    clock.now += 0.2
    later = cache.get(("Reviewer", "", ""), compute)
    assert later.etag != first.etag and len(calls) == 3


def test_a_change_made_here_is_seen_at_once() -> None:
    clock, n = Clock(), [0]

    def compute() -> list[dict[str, Any]]:
        n[0] += 1
        return [{"n": n[0]}]

    cache = WorklistCache(ttl=60.0, clock=clock)
    before = cache.get(("k",), compute)
    cache.invalidate()
    assert cache.get(("k",), compute).etag != before.etag


def test_an_answer_computed_across_a_change_is_not_kept() -> None:
    clock = Clock()
    cache = WorklistCache(ttl=60.0, clock=clock)

    def racing() -> list[dict[str, Any]]:
        cache.invalidate()  # a claim lands while the worklist is being read
        return [{"stale": True}]

    cache.get(("k",), racing)
    fresh = cache.get(("k",), lambda: [{"stale": False}])
    assert json.loads(fresh.body)["studies"] == [{"stale": False}]


def test_filters_made_up_by_callers_are_kept_no_longer_than_ttl() -> None:
    clock = Clock()
    cache = WorklistCache(ttl=2.0, clock=clock)
    for n in range(50):  # a caller tries ?site=x0, x1, ...: one a second
        cache.get(("Reviewer", "*", "", f"x{n}"), list)
        clock.now += 1.0
        assert len(cache) <= 2


def test_a_change_made_by_another_service_process_is_seen_at_once(tmp_path: Path) -> None:
    """Two processes' caches share the marker: a claim in one drops the other's answers
    (a worklist read from the other process showed a study unclaimed for up to ttl)."""
    clock, n = Clock(), [0]

    def compute() -> list[dict[str, Any]]:
        n[0] += 1
        return [{"n": n[0]}]

    marker = tmp_path / "worklist.changed"
    ours = WorklistCache(ttl=60.0, clock=clock, marker=marker)
    theirs = WorklistCache(ttl=60.0, clock=clock, marker=marker)
    before = ours.get(("k",), compute)
    assert ours.get(("k",), compute) is before  # nothing changed: the cached answer
    theirs.invalidate()  # the first change creates the marker
    after = ours.get(("k",), compute)
    assert after.etag != before.etag and ours.get(("k",), compute) is after
    theirs.invalidate()  # and the next ones, however soon, are seen too
    assert ours.get(("k",), compute).etag != after.etag
    assert WorklistCache(ttl=60.0, clock=clock).get(("k",), compute).count == 1  # no marker
