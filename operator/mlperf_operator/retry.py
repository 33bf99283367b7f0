"""The operator's work queue of reconciles, and their retry with exponential backoff.

The reconciles that events start (kopf's, and a run's woken by a finished producer) are queued here by object, as
client-go's work queue does: an object waits in the queue at most once however many events come for it meanwhile
(its reconcile reads it afresh), and worker threads run the queue. kopf's handlers only queue, so kopf's
per-object event streams do not hold their events' bodies while they wait for a thread behind the reconciles (at
1000 runs on a loaded machine that backlog took the operator to 267 MB). Urgent objects (a run never reconciled, a
run woken by the artifact it waited for: both about to create their first Jobs) go before the others: admission
before progress.

kopf retries only its change handlers (``kopf.TemporaryError``, with progress kept in the object's annotations);
the operator's handlers are event handlers, which kopf calls once per event and never again. So the retry is
ours: after a failure a reconcile of the same object is due 1, 2, 4 ... up to 30 s later, at most one per
object however many events fail meanwhile; one that succeeds (from any event) resets the backoff.
"""

from __future__ import annotations

import collections
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
        self._work = threading.Condition()  # the queue's (workers wait on it; the retry thread on _wake)
        self._urgent: collections.deque[Key] = collections.deque()
        self._queue: collections.deque[Key] = collections.deque()
        # What the queue holds, and in which lane: an object is queued once (an entry of the other lane is stale).
        self._queued: dict[Key, bool] = {}
        self._workers: list[threading.Thread] = []

    def add(self, namespace: str, name: str, urgent: bool = False) -> None:
        """Queue a reconcile, which a worker runs, `urgent` ones first; an object already queued is not queued again
        but for a move to the urgent lane (one that a worker reconciles now is: the event may say what that
        reconcile did not read)."""
        key = (namespace, name)
        with self._work:
            lane = self._queued.get(key)
            if self._closed or (lane is not None and (lane or not urgent)):
                return
            self._queued[key] = urgent
            (self._urgent if urgent else self._queue).append(key)
            self._work.notify()

    def queued(self) -> list[Key]:
        """What is queued, in the order the workers take it."""
        with self._work:
            urgent = [k for k in self._urgent if self._queued.get(k) is True]
            return list(dict.fromkeys(urgent + [k for k in self._queue if self._queued.get(k) is False]))

    def run_queued(self) -> int:
        """Reconcile what is queued, in this thread (no workers: a test's, a one-off resync's); how many."""
        done = 0
        while key := self._next(block=False):
            self.reconcile(*key)
            done += 1
        return done

    def start(self, workers: int) -> None:
        """Start the worker threads (reconciles that run at once) and the retry thread."""
        for i in range(workers):
            thread = threading.Thread(target=self._work_forever, name=f"{self.what}-worker-{i}", daemon=True)
            thread.start()
            self._workers.append(thread)
        threading.Thread(target=self.run_forever, name=f"{self.what}-retries", daemon=True).start()

    def _work_forever(self) -> None:
        while key := self._next(block=True):
            self.reconcile(*key)

    def _next(self, block: bool) -> Key | None:
        """The next object queued, taken off the queue; None when closed, or (not `block`) when none is."""
        with self._work:
            while True:
                while block and not (self._urgent or self._queue) and not self._closed:
                    self._work.wait()
                if self._closed or not (self._urgent or self._queue):
                    return None
                urgent = bool(self._urgent)
                key = (self._urgent or self._queue).popleft()
                if self._queued.get(key) is urgent:  # else a stale entry: the object moved lanes, or was taken
                    del self._queued[key]
                    return key

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

    def close(self, timeout: float = 10.0) -> None:
        """Stop: what is queued is dropped (the next leader's resync finds it), the reconciles in flight end
        (within `timeout`: no write after the operator stopped)."""
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        with self._work:
            self._urgent.clear()
            self._queue.clear()
            self._queued.clear()
            self._work.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._workers:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

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
