"""Group commit: threads that commit at the same time share one transaction and one fsync.

The archive's index (:mod:`usreview.store.archive`), the replay cache
(:mod:`usreview.envelope.replay`) and the audit log (:mod:`usreview.hub.audit`) each
commit through one :class:`GroupCommit`: one caller commits for all the others waiting,
and each returns only after that shared commit.

Wake-ups are targeted. When a batch is done, its callers are woken (each its own event)
and so is the first caller still waiting, who is handed the next batch to commit;
nobody else wakes. Waking every waiter after each batch (a condition's ``notify_all``)
would make all of them race for the GIL and the lock after every commit, and leave the
next batch to whichever won; here batches keep the callers' arrival order.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

_T = TypeVar("_T")
_R = TypeVar("_R")


class _Slot(Generic[_T, _R]):
    """One caller: its item, then its outcome or the batch it is to commit."""

    __slots__ = ("batch", "error", "item", "ready", "value")

    def __init__(self, item: _T) -> None:
        self.item = item
        self.ready = threading.Event()  # set once done, or handed a batch to commit
        self.batch: list[_Slot[_T, _R]] | None = None
        self.value: _R | None = None
        self.error: BaseException | None = None


class GroupCommit(Generic[_T, _R]):
    """Run concurrent callers' items in shared batches, one batch at a time.

    A caller of :meth:`submit` commits at once (alone) when no batch is being committed;
    otherwise it waits. When a batch is done, the oldest waiting caller commits the next
    one: its own item and up to ``max_batch - 1`` other waiting ones, oldest first. Nobody
    waits for a batch to fill: under load, what arrives while one batch commits forms the
    next. So this is also the lock of these commits (one at a time, no busy waiting).

    Parameters
    ----------
    commit
        Commits a batch; returns one outcome per item, in order: its result, or the
        exception that item's caller raises (the others are unaffected). If it raises
        instead, every caller in the batch raises that exception: nothing of the batch
        may then be taken as committed.
    max_batch
        Most items in one batch.
    """

    def __init__(
        self, commit: Callable[[Sequence[_T]], Sequence[_R | BaseException]], *, max_batch: int = 64
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._commit = commit
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._waiting: deque[_Slot[_T, _R]] = deque()
        self._busy = False
        #: Batches committed and items in them so far (a mean batch size for tests).
        self.batches = 0
        self.items = 0

    @property
    def waiting(self) -> int:
        """Callers waiting for the batch being committed to finish."""
        with self._lock:
            return len(self._waiting)

    def submit(self, item: _T) -> _R:
        """Commit ``item`` (with whatever else is waiting); return its result.

        Raises
        ------
        BaseException
            The exception ``commit`` gave for this item, or raised for its batch.
        """
        slot: _Slot[_T, _R] = _Slot(item)
        with self._lock:
            if self._busy:
                self._waiting.append(slot)
            else:
                self._busy = True
                slot.batch = [slot]  # nobody waits while nothing is being committed
        if slot.batch is None:
            slot.ready.wait()
        if slot.batch is not None:  # ours to commit (our own item is its first)
            batch, slot.batch = slot.batch, None
            self._lead(batch)
        if slot.error is not None:
            raise slot.error
        return slot.value  # type: ignore[return-value]  # set when no error

    def _lead(self, batch: list[_Slot[_T, _R]]) -> None:
        outcomes: Sequence[_R | BaseException] = []
        try:
            outcomes = self._commit([s.item for s in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} gave {len(outcomes)} outcomes")
        except BaseException as exc:
            outcomes = [exc] * len(batch)
        finally:  # whatever happens, hand out the outcomes and the next batch
            if len(outcomes) != len(batch):
                interrupted = RuntimeError("the commit of this batch was interrupted")
                outcomes = [interrupted] * len(batch)
            for slot, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    slot.error = outcome
                else:
                    slot.value = outcome
            woken = list(batch)
            with self._lock:
                self.batches += 1
                self.items += len(batch)
                if self._waiting:
                    leader = self._waiting.popleft()
                    leader.batch = [leader]
                    while self._waiting and len(leader.batch) < self._max_batch:
                        leader.batch.append(self._waiting.popleft())
                    woken.append(leader)
                else:
                    self._busy = False
            for slot in woken:
                slot.ready.set()
