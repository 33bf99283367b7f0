"""Batching, the reference's greedy RNN-T decoding (decoders.py ScriptGreedyDecoder) and the responses.

The reference decodes one utterance at a time: per encoder frame, up to 30 symbols, each from the
joint net on the frame and the prediction net's output for the labels so far, until the blank wins.
Here a batch of utterances advances frame by frame together; an utterance past its last frame, or
whose frame the blank already closed, is left out of the calls. The prediction net runs only when a
label is emitted: the reference recomputes it on the same label and state after a blank, which gives
the same output, so caching it changes nothing in the result. On the pytorch backend's GPU the same
decoding runs with its state on the device (``device_decoder``, chosen by ``on_device``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from ...backends.base import Backend
from ...errors import HarnessError
from .features import FEATURES
from .model import NUM_LABELS, PRED_LAYERS, SIZES, SOS, Runner

BLANK_INDEX = NUM_LABELS  # 28, after the 28 labels
MAX_SYMBOLS_PER_STEP = 30
PRED_WIDTH = {enc: pred for enc, pred, _ in SIZES.values()}


def collate(samples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Samples {"feature": (T_i, 240) float32, "feature_length": () int64} -> the encoder's inputs:
    ``feature`` (B, max T, 240) zero-padded, ``feature_length`` (B,) int64."""
    if not samples:
        raise HarnessError("rnnt: collate got an empty batch")
    for i, s in enumerate(samples):
        feat = s["feature"]
        if feat.ndim != 2 or feat.shape[1] != FEATURES or feat.dtype != np.float32:
            raise HarnessError(f"rnnt sample {i}: feature {feat.dtype}{feat.shape}, expected float32 (T, {FEATURES})")
    lengths = np.array([int(s["feature_length"]) for s in samples], dtype=np.int64)
    batch = np.zeros((len(samples), int(max(s["feature"].shape[0] for s in samples)), FEATURES), np.float32)
    for i, s in enumerate(samples):
        batch[i, : s["feature"].shape[0]] = s["feature"]
    return {"feature": batch, "feature_length": lengths}


def greedy_decode(run: Runner, encoded: np.ndarray, lengths: np.ndarray, pred_width: int = 0) -> list[list[int]]:
    """Greedy labels for each of B utterances from ``encoded`` (B, T, H) and their frame counts.
    ``pred_width`` is the prediction net's width (0: the one that goes with this encoder width)."""
    batch = encoded.shape[0]
    width = pred_width or PRED_WIDTH[encoded.shape[2]]
    # The reference's first prediction step: no label yet (the zero embedding), no state (zeros).
    # It is the same for every utterance: computed once.
    zeros = np.zeros((1, PRED_LAYERS, width), np.float32)
    start = run("prediction", {"symbol": np.full((1, 1), SOS, np.int64), "hidden": zeros, "cell": zeros})
    g = np.repeat(start["g"][:, 0], batch, axis=0)
    hidden = np.repeat(start["hidden_out"], batch, axis=0)
    cell = np.repeat(start["cell_out"], batch, axis=0)
    labels: list[list[int]] = [[] for _ in range(batch)]
    for t in range(int(lengths.max(initial=0))):
        rows = np.flatnonzero(lengths > t)
        added = np.zeros(batch, dtype=np.int64)
        while rows.size:
            logits = run("joint", {"f": np.ascontiguousarray(encoded[rows, t]), "g": g[rows]})["logits"]
            best = logits.argmax(axis=1)
            emit = best != BLANK_INDEX
            rows, best = rows[emit], best[emit]
            if not rows.size:
                break
            for r, k in zip(rows.tolist(), best.tolist(), strict=True):
                labels[r].append(k)
            out = run(
                "prediction",
                {
                    "symbol": best.astype(np.int64)[:, None],
                    "hidden": hidden[rows],
                    "cell": cell[rows],
                },
            )
            g[rows], hidden[rows], cell[rows] = out["g"][:, 0], out["hidden_out"], out["cell_out"]
            added[rows] += 1
            rows = rows[added[rows] < MAX_SYMBOLS_PER_STEP]
    return labels


def on_device(parts: Mapping[str, Backend]) -> bool:
    """Whether ``device_decoder`` decodes: every part on one GPU with torch tensors in and out
    (the pytorch backend), unless MLPERF_RNNT_DEVICE_DECODER=0 (the host loop, to compare)."""
    if os.environ.get("MLPERF_RNNT_DEVICE_DECODER", "1") == "0":
        return False
    places = [part.tensor_device() for part in parts.values()]
    first = places[0]
    return first is not None and first[0].type == "cuda" and all(p == first for p in places)


def infer(run: Runner, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Encoder then greedy decoding -> ``labels`` (B, max U) int64 padded with -1, ``label_count`` (B,)."""
    enc = run("encoder", batch)
    decoded = greedy_decode(run, enc["encoded"], enc["encoded_length"])
    counts = np.array([len(d) for d in decoded], dtype=np.int64)
    out = np.full((len(decoded), int(counts.max(initial=0))), -1, dtype=np.int64)
    for i, d in enumerate(decoded):
        out[i, : len(d)] = d
    return {"labels": out, "label_count": counts}


def responses(outputs: Mapping[str, np.ndarray], count: int) -> list[np.ndarray]:
    """One response per sample of a batch of ``count``, what the reference SUT logs: its label
    indices as int64 (array('q')). ``labels`` may be wider than the longest sequence (the null
    backend's (n, 1) zeros with counts 0: empty transcripts)."""
    labels, counts = outputs["labels"], outputs["label_count"]
    if len(counts) != count:
        raise HarnessError(f"rnnt: {len(counts)} decoded utterances for {count} samples")
    return [np.ascontiguousarray(labels[i, : int(n)], dtype="<i8") for i, n in enumerate(counts)]
