"""Shared by the archive's tests: fake clocks, instance metadata, envelope bytes, and
processes released together."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from usreview.dicom import ImageKind
from usreview.store import InstanceMetadata

US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


class Clock:
    """A fake clock that moves one second per reading, or as told."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


class StillClock:
    """A clock that stands still until told to move."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def meta(n: int, *, study: int = 1, series: int = 1, content: str = "a") -> InstanceMetadata:
    """Metadata of instance ``n``; ``content`` stands for the plaintext's bytes."""
    return InstanceMetadata(
        sop_instance_uid=f"1.2.826.0.1.{n}",
        study_instance_uid=f"1.2.826.0.2.{study}",
        series_instance_uid=f"1.2.826.0.3.{study}.{series}",
        sop_class_uid=US_IMAGE,
        kinds=["bmode", ImageKind.COLOR_FLOW, "bmode"],
        plaintext_sha256=hashlib.sha256(f"{n}-{content}".encode()).hexdigest(),
        size=1000 + n,
    )


def envelope(n: int) -> bytes:
    """Envelope bytes: different at each sealing, as real envelopes are."""
    return f"envelope {n} ".encode() + os.urandom(64)


def in_processes_at_once(target: Callable[..., object], count: int, *args: object) -> list[int]:
    """Run ``target(*args)`` in ``count`` forked processes released together; exit codes."""
    context = multiprocessing.get_context("fork")
    start = context.Barrier(count, timeout=30)

    def run() -> None:
        start.wait()
        target(*args)

    processes = [context.Process(target=run) for _ in range(count)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    return [process.exitcode for process in processes]  # type: ignore[misc]
