"""RNN-T end to end on the small synthetic model: synthesize dev-clean, convert and preprocess it as
the reference does, decode in batches, log the responses as LoadGen does, score: WER 0. A decoder
that drops every tenth label fails the round's target."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from mlperf_harness.benchmarks import rnnt
from mlperf_harness.benchmarks.rnnt.model import SOS

N = 5


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict[str, np.ndarray]]]:
    root = tmp_path_factory.mktemp("rnnt")
    rnnt.build_model(root / "model", seed=3, size="small")
    rnnt.synthesize_dataset(root / "data", seed=4, n=N, model_path=root / "model", seconds=(1.5, 6.0), batch=N)
    samples = list(rnnt.preprocess(root / "data"))
    return root / "model", root / "data", samples


def write_log(path: Path, responses: list[np.ndarray]) -> Path:
    entries = [{"seq_id": i, "qsl_idx": i, "data": r.tobytes().hex().upper()} for i, r in enumerate(responses)]
    path.write_text(json.dumps(entries))
    return path


def decode_all(run: rnnt.model.Runner, samples: list[dict[str, np.ndarray]], batch: int) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    for start in range(0, len(samples), batch):
        chunk = samples[start : start + batch]
        out += rnnt.responses(rnnt.infer(run, rnnt.collate(chunk)), len(chunk))
    return out


def test_end_to_end_scores_wer_zero(setup: tuple[Path, Path, list[dict[str, np.ndarray]]], tmp_path: Path) -> None:
    model, data, samples = setup
    assert len(samples) == N
    assert "SYNTHETIC" in (data / "LibriSpeech" / "README.TXT").read_text()
    run = rnnt.onnx_runner(model)
    responses = decode_all(run, samples, batch=2)  # batches of utterances of different lengths
    assert all(r.dtype == np.dtype("<i8") for r in responses)
    assert sum(len(r) for r in responses) > 10 * N  # the synthetic model speaks
    metrics, line = rnnt.score(write_log(tmp_path / "mlperf_log_accuracy.json", responses), data)
    assert line == "Word Error Rate: 0.0%, accuracy=100.0%"
    assert metrics["wer"] == 0.0 and metrics["words"] >= N


def test_dropping_every_tenth_label_fails_the_target(
    setup: tuple[Path, Path, list[dict[str, np.ndarray]]], tmp_path: Path
) -> None:
    model, data, samples = setup
    responses = decode_all(rnnt.onnx_runner(model), samples, batch=N)
    flat = np.concatenate(responses)
    keep = np.arange(flat.size) % 10 != 9
    bounds = np.cumsum([0, *(len(r) for r in responses)])
    dropped = [flat[a:b][keep[a:b]] for a, b in itertools.pairwise(bounds)]
    metrics, _ = rnnt.score(write_log(tmp_path / "mlperf_log_accuracy.json", dropped), data)
    assert round(rnnt.TARGET_ACCURACY, 5) == 91.62252
    assert metrics["accuracy"] < rnnt.TARGET_ACCURACY


def reference_greedy(run: rnnt.model.Runner, encoded: np.ndarray, length: int) -> list[int]:
    """decoders.py's loop for one utterance, written out: the prediction net is called before every
    joint step, on the last label and the state kept since it was emitted."""
    width = 64
    hidden = cell = np.zeros((1, 2, width), np.float32)
    labels: list[int] = []
    for t in range(length):
        for _ in range(30):
            last = labels[-1] if labels else SOS
            p = run("prediction", {"symbol": np.array([[last]]), "hidden": hidden, "cell": cell})
            k = int(run("joint", {"f": encoded[t : t + 1], "g": p["g"][:, 0]})["logits"][0].argmax())
            if k == 28:
                break
            labels.append(k)
            hidden, cell = p["hidden_out"], p["cell_out"]
    return labels


def test_batched_decoder_matches_the_reference_loop(setup: tuple[Path, Path, list[dict[str, np.ndarray]]]) -> None:
    model, _, samples = setup
    run = rnnt.onnx_runner(model)
    batched = decode_all(run, samples, batch=N)
    for sample, got in zip(samples, batched, strict=True):
        enc = run("encoder", rnnt.collate([sample]))
        want = reference_greedy(run, enc["encoded"][0], int(enc["encoded_length"][0]))
        assert got.tolist() == want
