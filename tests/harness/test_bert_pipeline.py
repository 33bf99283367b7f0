"""bert end to end on the real steps: real LoadGen + onnxruntime on the small synthetic BERT and a
synthetic SQuAD set; every scenario each round allows, in both modes, the rounds' audits, the report's
tree names and the null backend."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from harness_support import make_spec
from mlperf_harness import steps
from mlperf_harness.backends.faulty import CorruptOutputs, Paced
from mlperf_harness.benchmarks import bert
from mlperf_harness.report import run_report
from mlperf_harness.samples import SampleStore
from mlperf_harness.workspace import Workspace

QUESTIONS = 12  # a few contexts need two 384-token windows: about 14 samples
F1_REFERENCE = 90.874
BERT: dict[str, Any] = {
    "benchmark": "bert",
    "dataset": {"synthetic": {"samples": QUESTIONS, "seed": 5}},
    "model": {"synthetic": {"seed": 5}},
    "audits": [],
}
# Short runs: every path exercised, far below a submission's 600 s.
RUNS: dict[str, dict[str, Any]] = {
    "Offline": {"batchSize": 4, "loadgen": {"minDurationMs": 300, "minQueryCount": 8, "expectedQps": 20}},
    "SingleStream": {"batchSize": 1, "loadgen": {"minDurationMs": 200, "minQueryCount": 4, "targetLatencyMs": 50}},
    "Server": {"batchSize": 2, "loadgen": {"minDurationMs": 500, "minQueryCount": 4, "targetQps": 4}},
}
# Each round's categories and scenarios for bert (bert-99.9: v1.0 datacenter, v6.1 edge).
ROUNDS = [("v1.0", "datacenter", "Offline"), ("v1.0", "datacenter", "Server"), ("v1.0", "edge", "SingleStream")]
ROUNDS += [("v6.1", "edge", "SingleStream"), ("v6.1", "edge", "Offline")]
PACE_S = 0.4  # per batch of 1: audit timing that a busy 2-core machine cannot disturb
AUDITED: dict[str, Any] = {
    "batchSize": 1,
    "loadgen": {"minDurationMs": 600, "minQueryCount": 6, "expectedQps": 4, "performanceSampleCount": 6},
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("bert-work")
    ws = Workspace(make_spec(**BERT), workdir, "prepare", quiet=True)
    for step in (steps.download_model, steps.download_data, steps.preprocess):
        assert step(ws).ok
    return workdir


def _ws(root: Path, run: str, **over: Any) -> Workspace:
    return Workspace(make_spec(**{**BERT, **over}), root, run, quiet=True)


def test_preprocess_writes_the_features_and_what_scoring_reads(root: Path) -> None:
    ws = _ws(root, "store")
    store = SampleStore(ws.preprocessed_dir, ws.bench.inputs("fp32"))
    assert store.count > QUESTIONS and store.facts["synthetic"]
    assert [(s.name, s.shape, s.dtype) for s in store.specs] == [(n, (384,), "int32") for n in bert.INPUTS]
    features = bert.preprocess(ws.preprocessed_dir)  # the copies of dev-v1.1.json and vocab.txt
    assert len(features) == store.count
    assert all(np.array_equal(store.sample(i)[n], f[n]) for i, f in enumerate(features) for n in bert.INPUTS)
    assert ws.bench.model_file(ws.model_dir).name == "model.onnx" and (ws.model_dir / "vocab.txt").is_file()


@pytest.mark.parametrize(("suite", "category", "scenario"), ROUNDS)
def test_every_scenario_of_each_round_runs_and_scores_100(root: Path, suite: str, category: str, scenario: str) -> None:
    run = f"{suite}-{category}-{scenario}"
    ws = _ws(root, run, suite=suite, category=category, scenarios=[scenario], **RUNS[scenario])
    assert steps.build_engine(ws, scenario).ok
    [perf] = steps.run_harness(ws, scenario, "PerformanceOnly").results
    assert perf.resultValidity in ("VALID", "INVALID") and perf.samplesPerSecond and perf.latencyNs is not None
    assert perf.synthetic and not perf.submittable and perf.backend.startswith("onnxruntime")
    [acc] = steps.run_harness(ws, scenario, "AccuracyOnly").results
    assert acc.accuracy == 100.0 and acc.accuracyPassed and acc.accuracyMetric == "F1"
    assert acc.accuracyTarget == round(F1_REFERENCE * 0.99, 4)
    log_dir = ws.harness_dir(scenario, "AccuracyOnly")
    assert (log_dir / "accuracy.txt").read_text().splitlines()[1] == '{"exact_match": 100.0, "f1": 100.0}'
    logged = json.loads((log_dir / "mlperf_log_accuracy.json").read_text())
    assert len(logged) == ws.samples().count and all(len(e["data"]) == 384 * 2 * 4 * 2 for e in logged)


def _audited(root: Path, run: str, suite: str, category: str, configVer: str = "default") -> Workspace:
    ws = _ws(root, run, suite=suite, category=category, configVer=configVer, audits=None, **AUDITED)
    ws.perf_backend_wrapper = lambda b: Paced(b, PACE_S)
    assert steps.run_harness(ws, "Offline", "PerformanceOnly").results[0].valid
    [acc] = steps.run_harness(ws, "Offline", "AccuracyOnly").results
    target = 0.999 if configVer == "high_accuracy" else 0.99
    assert acc.accuracy == 100.0 and acc.accuracyTarget == round(F1_REFERENCE * target, 4)
    return ws


@pytest.mark.parametrize(
    ("suite", "category", "config_ver", "tests", "tree"),
    [
        ("v1.0", "datacenter", "high_accuracy", ["TEST01", "TEST05"], "bert-99.9"),
        ("v6.1", "edge", "default", ["TEST01"], "bert-99"),
    ],
)
def test_the_rounds_audits_pass_and_the_tree_names_the_accuracy_level(
    root: Path, suite: str, category: str, config_ver: str, tests: list[str], tree: str
) -> None:
    ws = _audited(root, f"audit-{suite}", suite, category, config_ver)
    assert ws.spec.effective_audits == tests  # the round's list: no TEST04 for bert
    for test in tests:
        [verdict] = steps.audit(ws, test, "Offline").audits
        assert verdict.passed, f"{test}: {verdict.details}"
    assert "TEST PASS" in (ws.audit_dir("TEST01", "Offline") / "verify_accuracy.txt").read_text()
    assert run_report(ws).ok
    results = next((ws.workdir.submission(ws.run) / suite).glob("closed/*/results/*"))
    assert [d.name for d in results.iterdir()] == [tree]
    acc = (results / tree / "Offline" / "accuracy" / "accuracy.txt").read_text()
    assert '"f1": 100.0' in acc and "hash=" in acc


def test_test01_falls_back_to_scoring_when_logits_differ_but_answers_do_not(root: Path) -> None:
    """Every logit one higher in performance mode: other bytes, the same best spans. The official
    fallback scores the logged subset and passes it, as it should."""
    ws = _audited(root, "corrupt", "v6.1", "edge")
    ws.perf_backend_wrapper = lambda b: Paced(CorruptOutputs(b), PACE_S)
    [verdict] = steps.audit(ws, "TEST01", "Offline").audits
    text = (ws.audit_dir("TEST01", "Offline") / "verify_accuracy.txt").read_text()
    assert "num_perf_log_data_mismatch = 0" not in text and "fallback: TEST PASS" in text
    assert verdict.passed or verdict.verdict == "NOT JUDGED"


def test_null_backend_offline_is_valid(root: Path) -> None:
    loadgen = {"minDurationMs": 300, "minQueryCount": 1, "expectedQps": 5000}
    ws = _ws(root, "null", backend="null", suite="v6.1", category="edge", batchSize=8, loadgen=loadgen)
    ws.perf_backend_wrapper = lambda b: Paced(b, 0.002)
    [result] = steps.run_harness(ws, "Offline", "PerformanceOnly").results
    assert result.valid, result.invalidReason
    assert result.backend.startswith("null")
