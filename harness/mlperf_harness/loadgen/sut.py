"""The system under test: LoadGen hands queries over, backend instances batch, infer and respond.

One worker thread per backend instance (one per GPU, or several per device), each with its own
queue: ``issue`` never blocks, it cuts a query into batch-sized pieces and gives each piece to
the instance with the fewest samples outstanding. A worker whose queue runs dry takes a piece
from the fullest other queue, so a slow instance holds up nobody at the end of an Offline run.
Each worker takes up to a batch of samples, waiting at most
``batch_timeout_s`` for more (dynamic batching for Server; zero elsewhere), runs its backend and
answers every sample exactly once with its real output bytes, in one QuerySamplesComplete per
batch, as soon as that batch completes (responses come back in order of completion).

What a batch is belongs to the benchmark: its size counts samples, or rows where one sample
is many (``Benchmark.cost_tensor``), in order of length where the benchmark has one
(``Benchmark.lengths``); fixed-shape tensors are gathered straight into
preallocated buffers, ragged ones are collated by the benchmark; ``Benchmark.infer`` runs the
model's parts and ``Benchmark.responses`` turns the outputs into each sample's bytes.

A backend that keeps the loaded samples in device memory (``Backend.resident``) is handed the
samples' rows in the QSL's loaded set instead of the gathered samples (start_from_device).
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from itertools import repeat

import mlperf_loadgen as lg
import numpy as np

from ..backends.base import Backend
from ..benchmarks.base import MODEL, Batch, Benchmark
from ..device_gate import GATE
from .qsl import SampleLibrary

Parts = Mapping[str, Backend]
Piece = tuple[np.ndarray, np.ndarray]  # (LoadGen response ids, QSL indices)
_STOP = None
_NOTHING = np.empty(0, dtype=np.uint8)  # the response of a sample whose batch failed
# The GIL's switch interval while the SUT runs (Python's default: 5 ms). A worker's numpy call
# lets go of the GIL and then waits for it while another thread runs Python, up to the interval:
# with one thread running Python beside it, dlrm's collate of a 67,356-row batch took 125 ms at
# 5 ms and 21 at 0.5, against 3.2 alone (benchmarks/dlrm_collate.py, BENCHMARKS.md, 2026-12-05).
# The workers, LoadGen's thread and the backends' Python all share the one GIL.
SWITCH_INTERVAL_S = 0.0005


class _Instance:
    """One model (its backend parts), its queue and its worker thread. ``outstanding`` (samples
    queued or running from this queue) changes under the SUT's lock; ``samples`` (samples this
    instance ran) is written by its worker alone."""

    def __init__(self, index: int, parts: Parts) -> None:
        self.index = index
        self.parts = parts
        self.backend = parts[MODEL] if MODEL in parts else next(iter(parts.values()))
        self.placeholder = np.empty((0, 0), dtype=np.uint8)  # a null backend's input: its length is the batch
        self.scratch: dict[str, np.ndarray] = {}  # a ragged collate's arrays, reused batch after batch
        self.queue: queue.SimpleQueue[Piece | None] = queue.SimpleQueue()
        self.outstanding = 0
        self.samples = 0
        self.thread: threading.Thread | None = None


class HarnessSUT:
    def __init__(
        self,
        models: Sequence[Parts],
        qsl: SampleLibrary,
        bench: Benchmark,
        batch_size: int,
        batch_timeout_s: float = 0.0,
    ) -> None:
        if not models:
            raise ValueError("the SUT needs at least one backend instance")
        self.qsl = qsl
        self.bench = bench
        self.batch_size = batch_size
        self.timeout = batch_timeout_s
        self.errors: list[BaseException] = []
        self.instances = [_Instance(i, parts) for i, parts in enumerate(models)]
        self._lock = threading.Lock()
        self._next = 0  # round-robin start, so ties spread over the instances
        self._interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._interval, SWITCH_INTERVAL_S))
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
        if self.qsl.length is not None and len(a_idx) > self.batch_size:
            # Samples of like length batched together (Offline's one query): each batch padded to
            # little more than its own samples. LoadGen takes the responses by id, in any order.
            order = np.argsort(self.qsl.length[a_idx], kind="stable")
            a_ids, a_idx = a_ids[order], a_idx[order]
        elif self.qsl.cost is None and not self.qsl.store.ragged and len(a_idx) > self.batch_size:
            # Offline's one query in runs of consecutive loaded rows: a batch is then a slice of
            # the loaded set, not a copy (ssd's 4 images of 400x400 took 5 % of a CPU run to copy).
            order = self.qsl.in_runs(a_idx)
            a_ids, a_idx = a_ids[order], a_idx[order]
        for part in self._cut(a_idx):
            self._dispatch((a_ids[part], a_idx[part]))

    def _cost(self, idx: np.ndarray) -> int:
        return len(idx) if self.qsl.cost is None else int(self.qsl.cost[idx].sum())

    def _cut(self, idx: np.ndarray) -> list[slice]:
        """Slices of ``idx`` that fill a batch each: ``batch_size`` samples, or as many samples as
        fit in ``batch_size`` rows (a sample larger than a batch is a batch of its own)."""
        bs, n = self.batch_size, len(idx)
        costs = self.qsl.costs(idx)
        if costs is None:
            return [slice(start, start + bs) for start in range(0, n, bs)]
        cuts, start, rows = [], 0, 0
        for i, c in enumerate(costs.tolist()):
            if rows and rows + c > bs:
                cuts.append(slice(start, i))
                start, rows = i, 0
            rows += c
        cuts.append(slice(start, n))
        return cuts

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
        sys.setswitchinterval(self._interval)

    def _work(self, inst: _Instance) -> None:
        backend = inst.backend
        # Fixed-shape samples that the benchmark batches by stacking: gathered into buffers.
        stacks = not self.qsl.store.ragged and type(self.bench).collate is Benchmark.collate
        gathers = backend.consumes_input and not backend.resident and stacks
        bufs = self.qsl.buffers(self.batch_size) if gathers else {}
        q = inst.queue
        while True:
            got = self._steal(inst) if q.empty() and len(self.instances) > 1 else None
            item = got[0] if got else q.get()
            if item is _STOP:
                return
            parts: list[tuple[Piece, _Instance]] = [(item, got[1] if got else inst)]
            count = self._cost(item[1])
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
                count += self._cost(more[1])
            ids = item[0] if len(parts) == 1 else np.concatenate([p[0] for p, _ in parts])
            idx = item[1] if len(parts) == 1 else np.concatenate([p[1] for p, _ in parts])
            for part in self._cut(idx) if len(parts) > 1 else [slice(None)]:
                self._run(inst, ids[part], idx[part], bufs)
            with self._lock:
                for (piece_ids, _), source in parts:
                    source.outstanding -= len(piece_ids)
            if stop:
                return

    def _run(self, inst: _Instance, ids: np.ndarray, idx: np.ndarray, bufs: dict[str, np.ndarray]) -> None:
        backend = inst.backend
        n = len(ids)
        batch = Batch(idx, self.qsl.costs(idx))
        try:
            if backend.resident:
                with GATE.work():
                    outputs = backend.predict_rows(self.qsl.rows(idx))
            elif not backend.consumes_input:  # null: a placeholder that only says the batch's rows
                rows = batch.rows
                if rows > len(inst.placeholder):
                    inst.placeholder = np.empty((rows, 0), dtype=np.uint8)
                outputs = backend.predict({"": inst.placeholder[:rows]})
            else:
                if bufs:
                    gathered = self.qsl.gather(idx, bufs)
                else:
                    gathered = self.bench.collate(self.qsl.samples(idx, inst.scratch))
                with GATE.work():  # a capture in another instance's thread waits for it (device_gate)
                    outputs = self.bench.infer(inst.parts, gathered)
            out = self.bench.responses(outputs, batch)
            if len(out) != n:
                raise RuntimeError(f"{len(out)} responses for {n} samples")
        except BaseException as exc:  # answer anyway: LoadGen must never wait forever
            self.errors.append(exc)
            out = [_NOTHING] * n
        respond(ids, out)
        inst.samples += n


def respond(ids: np.ndarray, out: np.ndarray | Sequence[np.ndarray]) -> None:
    """One QuerySamplesComplete for a batch; each response points at its sample's bytes (a row
    of one array, or an array of its own), which stay alive for the duration of the call
    (LoadGen copies what it logs)."""
    n = len(ids)
    if isinstance(out, np.ndarray):
        out = np.ascontiguousarray(out)
        row = out.nbytes // n
        base = out.ctypes.data
        responses = list(map(lg.QuerySampleResponse, ids.tolist(), range(base, base + row * n, row), repeat(row, n)))
    else:
        arrays = [np.ascontiguousarray(a) for a in out]
        responses = [
            lg.QuerySampleResponse(i, a.ctypes.data, a.nbytes) for i, a in zip(ids.tolist(), arrays, strict=True)
        ]
    lg.QuerySamplesComplete(responses)
