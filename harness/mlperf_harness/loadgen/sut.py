"""The system under test: LoadGen hands queries over, backend instances batch, infer and respond.

One worker thread per backend instance (one per GPU, or several per device), each with its own
queue: ``issue`` never blocks, it cuts a query into batch-sized pieces and gives each piece to
the instance with the fewest samples outstanding. A worker whose queue runs dry takes a piece
from the fullest other queue, so a slow instance holds up nobody at the end of an Offline run.
Each worker takes up to a batch of samples, waiting at most
``batch_timeout_s`` for more (dynamic batching for Server; zero elsewhere), runs its backend and
answers every sample exactly once with its real output bytes, in one QuerySamplesComplete per
batch, as soon as that batch completes (responses come back in order of completion).

A backend that keeps the loaded samples in device memory (``Backend.resident``) is handed the
samples' rows in the QSL's loaded set instead of the gathered samples (start_from_device).
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
Piece = tuple[np.ndarray, np.ndarray]  # (LoadGen response ids, QSL indices)
_STOP = None


class _Instance:
    """One backend, its queue and its worker thread. ``outstanding`` (samples queued or running
    from this queue) changes under the SUT's lock; ``samples`` (samples this instance ran) is
    written by its worker alone."""

    def __init__(self, index: int, backend: Backend) -> None:
        self.index = index
        self.backend = backend
        self.queue: queue.SimpleQueue[Piece | None] = queue.SimpleQueue()
        self.outstanding = 0
        self.samples = 0
        self.thread: threading.Thread | None = None


class HarnessSUT:
    def __init__(
        self,
        backends: list[Backend],
        qsl: SampleLibrary,
        postprocess: Postprocess,
        batch_size: int,
        batch_timeout_s: float = 0.0,
    ) -> None:
        if not backends:
            raise ValueError("the SUT needs at least one backend instance")
        self.qsl = qsl
        self.postprocess = postprocess
        self.batch_size = batch_size
        self.timeout = batch_timeout_s
        self.errors: list[BaseException] = []
        self.instances = [_Instance(i, b) for i, b in enumerate(backends)]
        self._lock = threading.Lock()
        self._next = 0  # round-robin start, so ties spread over the instances
        for inst in self.instances:
            inst.thread = threading.Thread(
                target=self._work, args=(inst,), name=f"sut-worker-{inst.index}", daemon=True
            )
            inst.thread.start()

    @property
    def completed(self) -> int:
        return sum(i.samples for i in self.instances)

    @property
    def instance_samples(self) -> list[int]:
        return [i.samples for i in self.instances]

    # LoadGen callbacks (ConstructFastSUT passes plain lists of ids and indices).
    def issue(self, ids: list[int], indices: list[int]) -> None:
        a_ids, a_idx = np.asarray(ids, dtype=np.uint64), np.asarray(indices, dtype=np.int64)
        bs = self.batch_size
        for start in range(0, len(a_ids), bs):
            self._dispatch((a_ids[start : start + bs], a_idx[start : start + bs]))

    def _dispatch(self, piece: Piece) -> None:
        instances = self.instances
        if len(instances) == 1:
            target = instances[0]
        else:
            n = len(instances)
            start = self._next
            self._next = (start + 1) % n
            target = min((instances[(start + k) % n] for k in range(n)), key=lambda i: i.outstanding)
        with self._lock:
            target.outstanding += len(piece[0])
        target.queue.put(piece)

    def _steal(self, inst: _Instance) -> tuple[Piece, _Instance] | None:
        """A piece from the fullest other queue, for a worker whose own queue is empty."""
        others = [o for o in self.instances if o is not inst and o.queue.qsize() > 0]
        for victim in sorted(others, key=lambda o: -o.queue.qsize()):
            try:
                piece = victim.queue.get_nowait()
            except queue.Empty:
                continue
            if piece is _STOP:  # never take another worker's stop signal
                victim.queue.put(piece)
                continue
            return piece, victim
        return None

    def flush(self) -> None:
        pass

    def stop(self) -> None:
        for inst in self.instances:
            inst.queue.put(_STOP)
        for inst in self.instances:
            assert inst.thread is not None
            inst.thread.join()

    def _work(self, inst: _Instance) -> None:
        backend = inst.backend
        spec = backend.input_spec
        sample_shape = tuple(d or 1 for d in spec.shape[1:])
        if backend.consumes_input and not backend.resident:
            buf = np.empty((self.batch_size, *sample_shape), dtype=spec.dtype)
        else:
            buf = np.empty((self.batch_size, 0), dtype=np.float32)
        q = inst.queue
        while True:
            got = self._steal(inst) if q.empty() and len(self.instances) > 1 else None
            item = got[0] if got else q.get()
            if item is _STOP:
                return
            parts: list[tuple[Piece, _Instance]] = [(item, got[1] if got else inst)]
            count = len(item[0])
            stop = False
            deadline = time.monotonic() + self.timeout
            while count < self.batch_size:
                wait = deadline - time.monotonic()
                try:
                    more = q.get(timeout=wait) if wait > 0 else q.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stop = True
                    break
                parts.append((more, inst))
                count += len(more[0])
            ids = item[0] if len(parts) == 1 else np.concatenate([p[0] for p, _ in parts])
            idx = item[1] if len(parts) == 1 else np.concatenate([p[1] for p, _ in parts])
            for start in range(0, len(ids), self.batch_size):
                end = start + self.batch_size
                self._run(inst, ids[start:end], idx[start:end], buf)
            with self._lock:
                for (piece_ids, _), source in parts:
                    source.outstanding -= len(piece_ids)
            if stop:
                return

    def _run(self, inst: _Instance, ids: np.ndarray, idx: np.ndarray, buf: np.ndarray) -> None:
        backend = inst.backend
        n = len(ids)
        try:
            if backend.resident:
                raw = backend.predict_rows(self.qsl.rows(idx))
            else:
                raw = backend.predict(self.qsl.gather(idx, buf) if backend.consumes_input else buf[:n])
            out = np.ascontiguousarray(self.postprocess(raw))
            if len(out) != n:
                raise RuntimeError(f"backend returned {len(out)} outputs for {n} samples")
        except BaseException as exc:  # answer anyway: LoadGen must never wait forever
            self.errors.append(exc)
            out = np.zeros(n, dtype=np.int32)
        respond(ids, out)
        inst.samples += n


def respond(ids: np.ndarray, out: np.ndarray) -> None:
    """One QuerySamplesComplete for a batch; each response points at its row of ``out``, which
    stays alive for the duration of the call (LoadGen copies what it logs)."""
    n = len(ids)
    row = out.nbytes // n
    base = out.ctypes.data
    responses = list(map(lg.QuerySampleResponse, ids.tolist(), range(base, base + row * n, row), repeat(row, n)))
    lg.QuerySamplesComplete(responses)
