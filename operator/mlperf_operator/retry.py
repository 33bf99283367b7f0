"""A failed reconcile is tried again with exponential backoff, not at the next resync.

kopf retries only its change handlers (``kopf.TemporaryError``, with progress kept in the object's annotations);
the operator's handlers are event handlers, which kopf calls once per event and never again. So the retry is
ours: after a failure a reconcile of the same object is due 1, 2, 4 ... up to 30 s later, at most one per
object however many events fail meanwhile; one that succeeds (from any event) resets the backoff.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable

from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
FIRST_DELAY = 1.0
MAX_DELAY = 30.0


def permanent(exc: Exception) -> bool:
    """The API server rejected what the spec asks for (422): trying again cannot help."""
    return isinstance(exc, ApiException) and exc.status == 422


class Retries:
    def __init__(
        self,
        reconcile: Callable[[str, str], None],
        what: str = "run",
        first: float = FIRST_DELAY,
        cap: float = MAX_DELAY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._reconcile, self.what, self.first, self.cap, self.clock = reconcile, what, first, cap, clock
        self._wake = threading.Condition()
        self._failures: dict[Key, int] = {}  # consecutive failures of an object that still fails
        self._due: dict[Key, float] = {}  # its one pending retry
        self._heap: list[tuple[float, Key]] = []  # the same, by time; entries no longer in _due are skipped
        self._closed = False

    def reconcile(self, namespace: str, name: str) -> None:
        """Reconcile now; on an error that is not permanent, schedule the retry. Never raises: the error is the
        object's (its status and Events say it) and its retry's."""
        key = (namespace, name)
        try:
            self._reconcile(namespace, name)
        except Exception as exc:
            if permanent(exc):
                self._forget(key)
                log.error("reconcile of %s %s/%s failed for good: %s", self.what, namespace, name, exc)
                return
            delay = self._schedule(key)
            log.error("reconcile of %s %s/%s failed; again in %.0f s", self.what, namespace, name, delay, exc_info=True)
            return
        self._forget(key)

    def pending(self) -> dict[Key, float]:
        """The retries due, by object: when (on the clock)."""
        with self._wake:
            return dict(self._due)

    def run_due(self) -> int:
        """Reconcile the objects whose retry is due now; how many."""
        with self._wake:
            keys = self._pop_due()
        for key in keys:
            self.reconcile(*key)
        return len(keys)

    def run_forever(self) -> None:
        """The retry thread's body, until close()."""
        while True:
            with self._wake:
                while not self._closed and not self._pop_ready():
                    self._wake.wait(timeout=self._heap[0][0] - self.clock() if self._heap else None)
                if self._closed:
                    return
            self.run_due()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify_all()

    def _schedule(self, key: Key) -> float:
        with self._wake:
            if key in self._due:  # one pending retry per object: it reads the object afresh anyway
                return self._due[key] - self.clock()
            failures = self._failures.get(key, 0)
            delay = min(self.first * 2**failures, self.cap)
            self._failures[key] = failures + 1
            self._due[key] = due = self.clock() + delay
            heapq.heappush(self._heap, (due, key))
            self._wake.notify_all()
            return delay

    def _forget(self, key: Key) -> None:
        with self._wake:
            self._failures.pop(key, None)
            self._due.pop(key, None)

    def _pop_ready(self) -> bool:
        """Drop stale heap entries; True when the first one is due."""
        while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return bool(self._heap) and self._heap[0][0] <= self.clock()

    def _pop_due(self) -> list[Key]:
        keys = []
        while self._pop_ready():
            _, key = heapq.heappop(self._heap)
            del self._due[key]
            keys.append(key)
        return keys
