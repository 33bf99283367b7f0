"""``greedy_decode`` with its state on the device: the pytorch backend's parts on a GPU.

The host loop of ``decoder.greedy_decode`` uploads, runs and downloads the joint and the prediction
nets per frame and per symbol, on rows that shrink on the host: on an H200 the GPU idles 87 % of a
batch. Here every row of the batch takes one fixed-shape step at a time, with masks instead of
shrinking rows, and each row keeps its own frame (rows are independent in greedy decoding, so a
row need not wait for the others' symbols to finish a frame). One step, on every row:

- the joint net on the row's current frame and its prediction output ``g``, then the argmax;
- ``emit``: the row is still within its frames and the argmax is not the blank; its label goes
  into the row's next slot of ``labels``;
- the prediction net on that label; ``g``, ``hidden`` and ``cell`` take the new values where a row
  emitted and keep the old ones elsewhere (the reference's state after a blank);
- a row that did not emit, or emitted its 30th symbol of the frame, goes on to its next frame.

The same labels as ``greedy_decode`` (the same calls on the same values, row by row). A step where
no row is within its frames changes nothing, so the host reads whether any row still is only every
``STEPS_PER_READ`` steps, after the longest row's frame count. On a GPU one step (joint, argmax,
prediction, updates) is captured once per padded batch and frame capacity as a CUDA graph, and
runs eagerly where the capture fails (``eager_reason``). On an H200 (2026-12-04) its labels equalled
the host loop's in fp32 and fp16, the step captured (the test of tests/harness/test_torch_graph.py);
on a CPU the same test runs the steps eagerly where torch is installed (CI has none: it skips).
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Mapping
from contextlib import ExitStack
from typing import Any

import numpy as np
import torch

from ...backends.base import Backend
from ...device_gate import GATE
from .decoder import BLANK_INDEX, MAX_SYMBOLS_PER_STEP
from .model import SOS

STEPS_PER_READ = 8  # steps between two reads of "any row left" (a wasted step costs one replay)
MIN_FRAMES = 64  # the smallest frame capacity: a CUDA graph per power of two from here


class _State:
    """One padded batch's buffers: the step reads and writes only these (a CUDA graph's statics)."""

    def __init__(self, rows: int, frames: int, width: int, layers: int, pred: int, dev: Any, dtype: Any) -> None:
        def ints() -> Any:
            return torch.zeros(rows, dtype=torch.int64, device=dev)

        self.encoded = torch.zeros(rows, frames, width, dtype=dtype, device=dev)
        self.length, self.frame, self.added, self.count = ints(), ints(), ints(), ints()
        self.rows = torch.arange(rows, device=dev)
        self.g = torch.zeros(rows, pred, dtype=dtype, device=dev)
        self.hidden = torch.zeros(rows, layers, pred, dtype=dtype, device=dev)
        self.cell = torch.zeros_like(self.hidden)
        # Every frame may emit 30 symbols; one slot more takes the unconditional write of a row
        # that has filled the others (its count is past its last label).
        self.labels = torch.zeros(rows, frames * MAX_SYMBOLS_PER_STEP + 1, dtype=torch.int64, device=dev)
        self.left = torch.zeros((), dtype=torch.bool, device=dev)  # any row within its frames
        self.graph: Any = None

    def step(self, joint: Backend, prediction: Backend) -> None:
        within = self.frame < self.length
        f = self.encoded[self.rows, self.frame.clamp(max=self.encoded.shape[1] - 1)]
        best = joint.predict_tensors({"f": f, "g": self.g})["logits"].argmax(dim=1)
        emit = within & (best != BLANK_INDEX)
        # Written on every row at its count; only an emitting row's count moves past it.
        self.labels.scatter_(1, self.count.clamp(max=self.labels.shape[1] - 1)[:, None], best[:, None])
        out = prediction.predict_tensors({"symbol": best[:, None], "hidden": self.hidden, "cell": self.cell})
        keep = emit[:, None]
        self.g.copy_(torch.where(keep, out["g"][:, 0], self.g))
        self.hidden.copy_(torch.where(keep[:, :, None], out["hidden_out"], self.hidden))
        self.cell.copy_(torch.where(keep[:, :, None], out["cell_out"], self.cell))
        self.count += emit
        self.added += emit
        advance = within & (~emit | (self.added >= MAX_SYMBOLS_PER_STEP))
        self.frame += advance
        self.added.masked_fill_(advance, 0)
        self.left.copy_((self.frame < self.length).any())


class DeviceDecoder:
    """Greedy decoding of the pytorch backend's parts on their device. ``graphs``: capture a step
    as a CUDA graph (on a GPU)."""

    def __init__(self, parts: Mapping[str, Backend], graphs: bool = True) -> None:
        place = parts["joint"].tensor_device()
        assert place is not None, "the parts have no device entry"
        self.dev, self.dtype = place
        self.graphs = graphs and self.dev.type == "cuda"
        self.eager_reason = ""  # why the steps run without a CUDA graph on a GPU
        self.captured = 0  # CUDA graphs of a step (one per padded batch and frame capacity)
        self._states: dict[tuple[int, int, int], _State] = {}
        self._start: tuple[Any, Any, Any] | None = None
        self._stream = torch.cuda.Stream(device=self.dev) if self.dev.type == "cuda" else None

    def infer(self, parts: Mapping[str, Backend], batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``decoder.infer`` on the device: the encoder, then the greedy labels -> ``labels`` (B, max U)
        int64 padded with -1 and ``label_count`` (B,)."""
        with self._on_device():
            feeds = {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.dev) for k, v in batch.items()}
            enc = parts["encoder"].predict_tensors(feeds)
            labels, counts = self.decode(parts, enc["encoded"], enc["encoded_length"])
            count = counts.cpu().numpy()
            out = labels[:, : int(count.max(initial=0))].cpu().numpy()
        out[np.arange(out.shape[1]) >= count[:, None]] = -1
        return {"labels": out, "label_count": count}

    def decode(self, parts: Mapping[str, Backend], encoded: Any, lengths: Any) -> tuple[Any, Any]:
        """Labels (B, slots) int64 and their counts (B,), on the device, for ``encoded`` (B, T, H) and
        its frame counts (B,): views of the decoder's buffers, valid until its next call."""
        with self._on_device():
            n, frames, width = encoded.shape
            state = self._state(parts, n, frames, width)
            self._reset(parts, state, encoded, lengths)
            steps = frames  # every row takes at least its frame count of steps
            while state.left.item():
                for _ in range(steps):
                    if state.graph is not None:
                        state.graph.replay()
                    else:
                        state.step(parts["joint"], parts["prediction"])
                steps = STEPS_PER_READ
            return state.labels[:n], state.count[:n]

    def _on_device(self) -> ExitStack:
        stack = ExitStack()
        stack.enter_context(torch.inference_mode())
        if self._stream is not None:
            stack.enter_context(torch.cuda.device(self.dev))
            stack.enter_context(torch.cuda.stream(self._stream))
        return stack

    def _state(self, parts: Mapping[str, Backend], n: int, frames: int, width: int) -> _State:
        """The buffers (and step graph) for ``n`` rows of ``frames`` frames: on a GPU, rows padded to
        a power of two; frames to one, so that few graphs are made."""
        rows = n if self._stream is None else 1 << max(n - 1, 0).bit_length()
        cap = max(MIN_FRAMES, 1 << (frames - 1).bit_length())
        key = (rows, cap, width)
        if key not in self._states:
            layers, pred = _prediction_state(parts["prediction"])
            state = _State(rows, cap, width, layers, pred, self.dev, self.dtype)
            if self.graphs and not self.eager_reason:
                state.graph = self._capture(parts, state)
            self._states[key] = state
        return self._states[key]

    def _capture(self, parts: Mapping[str, Backend], state: _State) -> Any:
        """One step as a CUDA graph; None (and eager from then on) where the capture fails."""
        joint, prediction = parts["joint"], parts["prediction"]
        graph = torch.cuda.CUDAGraph()
        try:
            # Captured in a worker thread at a batch's first shape: alone on the device (device_gate).
            with GATE.capture():
                side = torch.cuda.Stream(device=self.dev)
                side.wait_stream(torch.cuda.current_stream(self.dev))
                with torch.cuda.stream(side):
                    for _ in range(3):  # cuDNN's choices and allocations happen outside the graph
                        state.step(joint, prediction)
                torch.cuda.current_stream(self.dev).wait_stream(side)
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    state.step(joint, prediction)
        except RuntimeError as exc:
            self.eager_reason = f"capture failed: {str(exc).splitlines()[0][:160]}"
            sys.stderr.write(f"rnnt: no CUDA graph for the decoder step ({self.eager_reason}); running eagerly\n")
            return None
        self.captured += 1
        return graph

    def _reset(self, parts: Mapping[str, Backend], state: _State, encoded: Any, lengths: Any) -> None:
        """The batch into the state: its frames, counts and the start state on every row (rows past
        the batch have no frames: they never emit)."""
        n, frames = encoded.shape[:2]
        state.encoded[:n, :frames].copy_(encoded)
        state.length.zero_()
        state.length[:n].copy_(lengths)
        state.left.copy_((state.length > 0).any())
        for t in (state.frame, state.added, state.count):
            t.zero_()
        g, hidden, cell = self._start_state(parts)
        state.g.copy_(g.expand_as(state.g))
        state.hidden.copy_(hidden.expand_as(state.hidden))
        state.cell.copy_(cell.expand_as(state.cell))

    def _start_state(self, parts: Mapping[str, Backend]) -> tuple[Any, Any, Any]:
        """The reference's first prediction step (no label, no state), the same for every row."""
        if self._start is None:
            layers, pred = _prediction_state(parts["prediction"])
            zeros = torch.zeros(1, layers, pred, dtype=self.dtype, device=self.dev)
            symbol = torch.full((1, 1), SOS, dtype=torch.int64, device=self.dev)
            out = parts["prediction"].predict_tensors({"symbol": symbol, "hidden": zeros, "cell": zeros})
            self._start = (out["g"][:, 0].clone(), out["hidden_out"].clone(), out["cell_out"].clone())
        return self._start


def _prediction_state(prediction: Backend) -> tuple[int, int]:
    """(layers, width) of the prediction net's state, from its ``hidden`` input (B, layers, width)."""
    spec = next(s for s in prediction.input_specs if s.name == "hidden")
    layers, width = spec.shape[-2:]
    assert layers is not None and width is not None, f"prediction hidden {spec.shape}: fixed layers and width"
    return layers, width


_decoders: weakref.WeakKeyDictionary[Backend, DeviceDecoder] = weakref.WeakKeyDictionary()
_lock = threading.Lock()  # the decoders' table


def decoder_for(parts: Mapping[str, Backend]) -> DeviceDecoder:
    """The decoder of a model instance (kept with its joint part: its buffers and graphs); CUDA
    graphs as the parts have them (the pytorch backend's MLPERF_TORCH_GRAPHS=0: none)."""
    with _lock:
        if parts["joint"] not in _decoders:
            _decoders[parts["joint"]] = DeviceDecoder(parts, graphs=getattr(parts["joint"], "use_graphs", True))
        return _decoders[parts["joint"]]
