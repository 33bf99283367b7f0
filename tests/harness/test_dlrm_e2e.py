"""dlrm end to end on the small synthetic model: synthesize, preprocess, batch by rows, run with
onnxruntime, log the reference's responses, score AUC as accuracy-dlrm.py does.

accuracy-dlrm.py's computation (labels in the log, its default) is written out below: keep the
first entry per qsl_idx, read float32 [prediction, label] pairs, sklearn's roc_auc_score over
all rows in log order, a row good when its rounded prediction equals its label.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import sklearn.metrics
from mlperf_harness.benchmarks.dlrm import TARGET_AUC, accuracy, batching, criteo, model, synthetic
from mlperf_harness.errors import HarnessError

SAMPLES = 12


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dlrm-e2e")
    path = model.build_model(root / "dlrm.onnx", seed=9)
    synthetic.synthesize_dataset(root / "data", seed=4, n=SAMPLES, model_path=path)
    return root


def reference_script(log: Path) -> str:
    results, targets, good, seen = [], [], 0, set()
    for entry in json.loads(log.read_text()):
        if entry["qsl_idx"] in seen:
            continue
        seen.add(entry["qsl_idx"])
        data = np.frombuffer(bytes.fromhex(entry["data"]), np.float32).reshape(-1, 2)
        for result, target in data:
            results.append(result)
            targets.append(target)
            good += int(result.round() == target)
    auc = sklearn.metrics.roc_auc_score(np.array(targets), np.array(results))
    total = len(results)
    return (
        f"AUC={100.0 * auc:.3f}%, accuracy={100.0 * good / total:.3f}%, good={good}, total={total}, queries={len(seen)}"
    )


def run_all(work: Path, max_rows: int = 1500) -> tuple[list[dict[str, np.ndarray]], list[np.ndarray]]:
    ds = criteo.preprocess(work / "data")
    sess = ort.InferenceSession(str(work / "dlrm.onnx"), providers=["CPUExecutionProvider"])

    def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"pred": sess.run(["pred"], feed)[0]}

    samples = list(ds)
    out: list[np.ndarray] = []
    for idx in batching.batches_by_rows(ds.row_counts().tolist(), max_rows):
        group = [samples[i] for i in idx]
        batch = {**batching.collate(group), batching.LABEL: batching.labels(group)}
        out += batching.responses(batching.infer(run, batch), [len(s["label"]) for s in group])
    return samples, out


def write_log(path: Path, responses: list[np.ndarray], order: list[int] | None = None) -> Path:
    order = list(range(len(responses))) if order is None else order
    entries = [{"seq_id": k, "qsl_idx": i, "data": responses[i].tobytes().hex().upper()} for k, i in enumerate(order)]
    path.write_text(json.dumps(entries))
    return path


def test_synthetic_dataset_is_the_reference_layout(work: Path) -> None:
    data = work / "data"
    facts = json.loads((data / criteo.DATASET_JSON).read_text())
    assert facts["synthetic"] is True and "SYNTHETIC" in facts["note"] and facts["samples"] == SAMPLES
    sizes = criteo.quantile_sizes(SAMPLES)
    assert (data / criteo.TEST_FILE).stat().st_size == 160 * int(sizes.sum()) == 160 * facts["rows"]
    assert np.load(data / criteo.COUNTS_FILE)["counts"].tolist() == list(model.table_sizes("small"))
    # The reference's own grouping of this file (no trace) gives the same samples as the trace.
    assert criteo.read_trace(data / criteo.TRACE_FILE).tolist() == criteo.quantile_boundaries(facts["rows"]).tolist()
    assert 0 < facts["clicks"] < facts["rows"]
    again = work / "again"
    synthetic.synthesize_dataset(again, seed=4, n=SAMPLES, model_path=work / "dlrm.onnx")
    assert (again / criteo.TEST_FILE).read_bytes() == (data / criteo.TEST_FILE).read_bytes()


def test_fp32_scores_100_and_equals_the_official_computation(work: Path) -> None:
    samples, responses = run_all(work)
    assert len(responses) == SAMPLES
    for s, r in zip(samples, responses, strict=True):
        assert r.dtype == np.float32 and r.shape == (2 * len(s["label"]),)
        assert np.array_equal(r[1::2], s["label"])
    # Batching by rows does not change a sample's bytes.
    _, one_by_one = run_all(work, max_rows=1)
    assert all(np.allclose(a, b, rtol=1e-6) for a, b in zip(responses, one_by_one, strict=True))
    log = write_log(work / "mlperf_log_accuracy.json", responses, order=[3, 1, 3, *range(SAMPLES)])  # with duplicates
    metrics, line = accuracy.score(log, work / "data")
    assert line == reference_script(log)
    assert metrics["AUC"] == 100.0 and metrics["accuracy"] == 100.0 and metrics["queries"] == SAMPLES
    assert metrics["total"] == sum(len(s["label"]) for s in samples)
    assert line.startswith("AUC=100.000%, accuracy=100.000%")


def test_response_bytes_are_the_references(work: Path) -> None:
    """main.py logs ``np.array(processed_results[s:e], np.float32)``: rows of [prediction, label]."""
    samples, responses = run_all(work)
    pred = responses[0][0::2]
    reference = np.array([[p, t] for p, t in zip(pred, samples[0]["label"], strict=True)], np.float32)
    assert responses[0].tobytes() == reference.tobytes()


def test_shuffled_predictions_fail_the_target(work: Path) -> None:
    _, responses = run_all(work)
    rng = np.random.default_rng(0)
    pairs = np.concatenate(responses).reshape(-1, 2)
    pairs[:, 0] = rng.permutation(pairs[:, 0])
    bounds = np.cumsum([0, *(len(r) // 2 for r in responses)])
    broken = [pairs[s:e].reshape(-1).copy() for s, e in itertools.pairwise(bounds)]
    log = write_log(work / "shuffled.json", broken)
    metrics, line = accuracy.score(log)
    assert line == reference_script(log)
    assert metrics["AUC"] < 0.99 * TARGET_AUC and metrics["AUC"] < 60.0


def test_bad_logs_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="missing accuracy log"):
        accuracy.score(tmp_path / "none.json")
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps([{"seq_id": 0, "qsl_idx": 0, "data": np.ones(3, np.float32).tobytes().hex()}]))
    with pytest.raises(HarnessError, match="not \\[prediction, label\\] pairs"):
        accuracy.score(odd)
    one_class = tmp_path / "one.json"
    one_class.write_text(json.dumps([{"seq_id": 0, "qsl_idx": 0, "data": np.ones(4, np.float32).tobytes().hex()}]))
    metrics, line = accuracy.score(one_class)  # as the script: sklearn's nan, printed
    assert np.isnan(metrics["AUC"]) and line == "AUC=nan%, accuracy=100.000%, good=2, total=2, queries=1"
