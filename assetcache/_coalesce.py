"""Group commit: the calls of one blocking function that arrive while it runs
are joined into its next run.

The threads of a big batch record their uploads as their requests answer,
which is in waves: eight answers within a millisecond or two. Each record is
a write transaction, and the writers of one database take turns, so seven of
them would wait for the first and then commit one after the other. Joined,
the seven that queued meanwhile commit together in the next transaction (one
``BEGIN``/``COMMIT``, one write of each touched page, statements of many
rows): every caller still returns only once its own rows are committed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from ._errors import AssetCacheError

I = TypeVar("I")  # noqa: E741 - an item
R = TypeVar("R")


class _Slot(Generic[I, R]):
    __slots__ = ("done", "error", "filled", "item", "lead", "result")

    def __init__(self, item: I) -> None:
        self.item = item
        self.done = threading.Event()
        self.lead = False  # handed the lead: run the queue instead of waiting
        self.result: R | None = None
        self.error: BaseException | None = None
        self.filled = False  # result or error set

    def get(self) -> R:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


class Coalescer(Generic[I, R]):
    """``coalescer(item)`` returns ``run([item, ...])``'s result for ``item``.

    The first caller runs ``run`` with its item; callers arriving meanwhile
    queue, and when the run ends the first of them runs the whole queue
    (at most ``most`` items a run). When a joined run raises, each of its items
    runs again alone, so one caller's bad item fails only that caller.
    ``run`` must be idempotent per item (a failed run changed nothing, or the
    same again changes nothing more) and return one result per item, in order.
    A follower waits as long as the run it joined, whose own waits are bounded.
    """

    def __init__(self, run: Callable[[list[I]], Sequence[R]], most: int = 64) -> None:
        self._run = run
        self._most = max(1, most)
        self._lock = threading.Lock()
        self._queue: list[_Slot[I, R]] = []
        self._busy = False
        self._pid = os.getpid()

    def __call__(self, item: I) -> R:
        slot: _Slot[I, R] = _Slot(item)
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the parent's runs are not ours
                self._pid, self._queue, self._busy = os.getpid(), [], False
            self._queue.append(slot)
            lead = not self._busy
            self._busy = True
        if not lead:
            slot.done.wait()
            if not slot.lead:
                return slot.get()
        self._lead()
        return slot.get()

    def _lead(self) -> None:
        with self._lock:
            batch, self._queue = self._queue[: self._most], self._queue[self._most :]
        try:
            self._serve(batch)
        finally:
            for s in batch:  # an interrupt mid-run: no follower waits for ever
                if not s.filled:
                    s.filled = True
                    s.error = AssetCacheError("interrupted while writing to the cache database")
                s.done.set()
            with self._lock:
                if self._queue:
                    nxt = self._queue[0]
                    nxt.lead = True
                    nxt.done.set()
                else:
                    self._busy = False

    def _serve(self, batch: list[_Slot[I, R]]) -> None:
        try:
            results = self._run([s.item for s in batch])
        except Exception as exc:
            if len(batch) == 1:
                batch[0].error, batch[0].filled = exc, True
                return
        else:
            for s, result in zip(batch, results, strict=True):
                s.result, s.filled = result, True
            return
        for s in batch:  # joined, it failed: each alone, each with its own outcome
            try:
                s.result = self._run([s.item])[0]
            except Exception as exc:
                s.error = exc
            s.filled = True
