"""Compliance-test verdicts, computed by the project's own code with the official criteria.

* TEST01: every output logged during the performance run equals the accuracy run's output for
  the same qsl_idx, and performance is within 10 % of the submission run.
* TEST04-A/B (v1.0): B (one sample issued over and over) is not faster than A (unique samples)
  by more than 10 % (20 % SingleStream). TEST04 (current): not more than 10 % faster than the
  submission run.
* TEST05 (v1.0): performance with alternate seeds within 5 % of the submission run.

SingleStream runs with a 90th-percentile latency at or under 200 µs get a 20 % band, as the
official scripts allow for OS noise on very short latencies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import HarnessError
from .loadgen.logs import Summary

SHORT_LATENCY_NS = 200_000
LATENCY_SCENARIOS = ("SingleStream", "MultiStream")


@dataclass(frozen=True)
class Verdict:
    passed: bool
    text: str  # the verify_*.txt content
    details: str  # one short line for the results model


def _load_log(path: Path) -> list[dict[str, object]]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise HarnessError(f"{path}: missing accuracy log") from None
    except json.JSONDecodeError as exc:
        raise HarnessError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, list):
        raise HarnessError(f"{path}: not a LoadGen accuracy log (expected a list)")
    return data


def verify_accuracy(reference_log: Path, test_log: Path) -> Verdict:
    """TEST01's accuracy check; compares whole responses (the official script compares the first
    element of each; whole bytes is stricter and equal for single-value responses)."""
    acc, perf = _load_log(reference_log), _load_log(test_log)
    results: dict[int, str] = {}
    dup = dup_mismatch = 0
    for e in acc:
        idx, data = int(e["qsl_idx"]), str(e["data"])  # type: ignore[call-overload]
        if idx in results:
            dup += 1
            dup_mismatch += results[idx] != data
        else:
            results[idx] = data
    match = mismatch = missing = 0
    for e in perf:
        idx, data = int(e["qsl_idx"]), str(e["data"])  # type: ignore[call-overload]
        if idx not in results:
            missing += 1
            continue
        match += 1
        mismatch += results[idx] != data
    passed = mismatch == 0 and match > 0
    text = (
        "\n".join(
            [
                "Verifying accuracy.",
                f"num_acc_log_entries = {len(acc)}",
                f"num_acc_log_duplicate_keys = {dup}",
                f"num_acc_log_data_mismatch = {dup_mismatch}",
                f"num_perf_log_entries = {len(perf)}",
                f"num_perf_log_qsl_idx_match = {match}",
                f"num_perf_log_data_mismatch = {mismatch}",
                f"num_missing_qsl_idxs = {missing}",
                "TEST PASS" if passed else "TEST FAIL",
            ]
        )
        + "\n"
    )
    return Verdict(passed, text, f"{mismatch} of {match} logged outputs differ from the accuracy run")


def _band(scenario: str, ref: Summary, threshold: float) -> float:
    if scenario == "SingleStream" and (ref.score() or 0) <= SHORT_LATENCY_NS:
        return max(threshold, 0.20)
    return threshold


def _score(s: Summary, path_hint: str) -> float:
    score = s.score()
    if score is None or score <= 0:
        raise HarnessError(f"{path_hint}: no performance figure in the LoadGen summary")
    return score


def verify_performance(test: str, reference: Summary, audited: Summary, threshold: float) -> Verdict:
    """TEST01 / TEST05: the audited run's score within ``threshold`` of the submission run's."""
    ref, got = _score(reference, "submission run"), _score(audited, f"{test} run")
    band = _band(reference.scenario, reference, threshold)
    ratio = got / ref
    passed = (1 - band) < ratio < (1 + band)
    unit = "ns" if reference.scenario in LATENCY_SCENARIOS else "samples/s"
    text = (
        f"Verifying performance.\nreference score = {ref:g} {unit}\ntest score = {got:g} {unit}\n"
        f"ratio = {ratio:.4f} (pass band ±{band:.0%})\n{'TEST PASS' if passed else 'TEST FAIL'}\n"
    )
    return Verdict(passed, text, f"score ratio {ratio:.3f} vs submission (±{band:.0%})")


def _faster_by(scenario: str, base: float, other: float) -> float:
    """How much faster ``other`` is than ``base`` (0.1 = 10 % faster); latency: lower is faster."""
    return base / other - 1 if scenario in LATENCY_SCENARIOS else other / base - 1


def verify_test04_pair(a: Summary, b: Summary) -> Verdict:
    """v1.0: TEST04-B (same sample) must not beat TEST04-A (unique samples) by more than the band."""
    sa, sb = _score(a, "TEST04-A run"), _score(b, "TEST04-B run")
    band = 0.20 if a.scenario == "SingleStream" else 0.10
    faster = _faster_by(a.scenario, sa, sb)
    passed = faster <= band
    text = (
        f"Verifying performance.\nTEST04-A score = {sa:g}\nTEST04-B score = {sb:g}\n"
        f"B faster than A by {faster:+.2%} (limit {band:.0%})\n{'TEST PASS' if passed else 'TEST FAIL'}\n"
    )
    return Verdict(passed, text, f"B vs A {faster:+.1%} faster (limit {band:.0%})")


def verify_test04_single(reference: Summary, audited: Summary, threshold: float) -> Verdict:
    """Current round: the same-sample run must not be faster than the submission by more than 10 %."""
    ref, got = _score(reference, "submission run"), _score(audited, "TEST04 run")
    band = _band(reference.scenario, reference, threshold)
    faster = _faster_by(reference.scenario, ref, got)
    passed = faster <= band
    text = (
        f"Verifying performance.\nreference score = {ref:g}\nTEST04 score = {got:g}\n"
        f"TEST04 faster by {faster:+.2%} (limit {band:.0%})\n{'TEST PASS' if passed else 'TEST FAIL'}\n"
    )
    return Verdict(passed, text, f"{faster:+.1%} faster than submission (limit {band:.0%})")
