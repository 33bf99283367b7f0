"""The system under test: LoadGen hands queries over, worker threads batch, infer and respond.

``issue`` never blocks: it enqueues the query and returns. Each worker takes up to a batch of
samples, waiting at most ``batch_timeout_s`` for more to arrive (dynamic batching for Server;
zero elsewhere, where a query is a batch already or the only one), runs the backend and answers
every sample exactly once with its real output bytes, in one QuerySamplesComplete per batch.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from itertools import repeat

import mlperf_loadgen as lg
import numpy as np

from ..backends.base import Backend
from .qsl import SampleLibrary

Postprocess = Callable[[np.ndarray], np.ndarray]
_STOP = None


class HarnessSUT:
    def __init__(
        self,
        backends: list[Backend],
        qsl: SampleLibrary,
        postprocess: Postprocess,
        batch_size: int,
        batch_timeout_s: float = 0.0,
    ) -> None:
        self.qsl = qsl
        self.postprocess = postprocess
        self.batch_size = batch_size
        self.timeout = batch_timeout_s
        self.queue: queue.SimpleQueue[tuple[np.ndarray, np.ndarray] | None] = queue.SimpleQueue()
        self.completed = 0
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self.workers = [
            threading.Thread(target=self._work, args=(b,), name=f"sut-worker-{i}", daemon=True)
            for i, b in enumerate(backends)
        ]
        for w in self.workers:
            w.start()

    # LoadGen callbacks (ConstructFastSUT passes plain lists of ids and indices).
    def issue(self, ids: list[int], indices: list[int]) -> None:
        a_ids, a_idx = np.asarray(ids, dtype=np.uint64), np.asarray(indices, dtype=np.int64)
        bs = self.batch_size
        if len(a_ids) <= bs:
            self.queue.put((a_ids, a_idx))
            return
        # A large (Offline) query becomes batch-sized pieces, so every worker gets a share.
        for start in range(0, len(a_ids), bs):
            self.queue.put((a_ids[start : start + bs], a_idx[start : start + bs]))

    def flush(self) -> None:
        pass

    def stop(self) -> None:
        for _ in self.workers:
            self.queue.put(_STOP)
        for w in self.workers:
            w.join()

    def _work(self, backend: Backend) -> None:
        spec = backend.input_spec
        sample_shape = tuple(d or 1 for d in spec.shape[1:])
        if backend.consumes_input:
            buf = np.empty((self.batch_size, *sample_shape), dtype=spec.dtype)
        else:
            buf = np.empty((self.batch_size, 0), dtype=np.float32)
        while True:
            item = self.queue.get()
            if item is _STOP:
                return
            parts, count = [item], len(item[0])
            stop = False
            deadline = time.monotonic() + self.timeout
            while count < self.batch_size:
                wait = deadline - time.monotonic()
                try:
                    more = self.queue.get(timeout=wait) if wait > 0 else self.queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stop = True
                    break
                parts.append(more)
                count += len(more[0])
            ids = parts[0][0] if len(parts) == 1 else np.concatenate([p[0] for p in parts])
            idx = parts[0][1] if len(parts) == 1 else np.concatenate([p[1] for p in parts])
            for start in range(0, len(ids), self.batch_size):
                end = start + self.batch_size
                self._run(backend, ids[start:end], idx[start:end], buf)
            if stop:
                return

    def _run(self, backend: Backend, ids: np.ndarray, idx: np.ndarray, buf: np.ndarray) -> None:
        n = len(ids)
        try:
            batch = self.qsl.gather(idx, buf) if backend.consumes_input else buf[:n]
            out = np.ascontiguousarray(self.postprocess(backend.predict(batch)))
            if len(out) != n:
                raise RuntimeError(f"backend returned {len(out)} outputs for {n} samples")
        except BaseException as exc:  # answer anyway: LoadGen must never wait forever
            self.errors.append(exc)
            out = np.zeros(n, dtype=np.int32)
        respond(ids, out)
        with self._lock:
            self.completed += n


def respond(ids: np.ndarray, out: np.ndarray) -> None:
    """One QuerySamplesComplete for a batch; each response points at its row of ``out``, which
    stays alive for the duration of the call (LoadGen copies what it logs)."""
    n = len(ids)
    row = out.nbytes // n
    base = out.ctypes.data
    responses = list(map(lg.QuerySampleResponse, ids.tolist(), range(base, base + row * n, row), repeat(row, n)))
    lg.QuerySamplesComplete(responses)
