"""One process's device work against its CUDA graph captures, across the model instances' threads.

A capture must be alone on the device: torch's ``torch.cuda.graph`` synchronizes the whole device
and empties the allocator's cache as it begins, which fails while another thread's stream is
capturing ("operation not permitted when stream is capturing") and breaks that capture too; and a
call in another thread during a capture can do the same. On an H200 the harness's two instances
captured their first sequence lengths at once and both ran eagerly from then on.

So the SUT's workers hold ``GATE.work()`` around each batch (shared: instances run side by side),
and a capture during the run holds ``GATE.capture()`` (exclusive: it waits for the batches in
flight, and new batches wait for it). A thread that waits to capture from inside its own batch
does not hold the others up, so two instances that reach a new shape together capture in turn.
Single-threaded callers (plain loops, tests, the loading thread) pass straight through.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class DeviceGate:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._work: dict[int, int] = {}  # thread -> nesting depth of its work sections
        self._waiting: set[int] = set()  # threads waiting to capture (idle meanwhile)
        self._capturer: int | None = None

    @contextmanager
    def work(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if me not in self._work and me != self._capturer:  # nested or capturing: already admitted
                self._cond.wait_for(lambda: self._capturer is None and not self._waiting)
            self._work[me] = self._work.get(me, 0) + 1
        try:
            yield
        finally:
            with self._cond:
                self._work[me] -= 1
                if not self._work[me]:
                    del self._work[me]
                self._cond.notify_all()

    @contextmanager
    def capture(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._capturer == me:
                raise RuntimeError("device gate: a capture inside a capture")
            self._waiting.add(me)
            self._cond.notify_all()  # a thread waiting on this one's work may go now
            self._cond.wait_for(lambda: self._capturer is None and self._busy(me) == 0)
            self._waiting.discard(me)
            self._capturer = me
        try:
            yield
        finally:
            with self._cond:
                self._capturer = None
                self._cond.notify_all()

    def _busy(self, me: int) -> int:
        """Threads other than ``me`` inside a work section and not waiting to capture."""
        return sum(1 for t in self._work if t != me and t not in self._waiting)


GATE = DeviceGate()
