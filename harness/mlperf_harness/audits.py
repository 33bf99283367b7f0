"""Compliance-test verdicts, computed by the project's own code with the official criteria.

* TEST01: every output logged during the performance run equals the accuracy run's output for
  the same qsl_idx, and performance is within 10 % of the submission run.
* TEST04-A/B (v1.0): B (one sample issued over and over) is not faster than A (unique samples)
  by more than 10 % (20 % SingleStream). TEST04 (current): not more than 10 % faster than the
  submission run.
* TEST05 (v1.0): performance with alternate seeds within 5 % of the submission run.

SingleStream runs with a 90th-percentile latency at or under 200 µs get a 20 % band, as the
official scripts allow for OS noise on very short latencies.

A run shortened below the round's minimum duration (a demo or debug run, never submittable) is
timed over seconds on a machine that may be shared, where identical runs differ by 25 % and,
under heavy load, by over 2x: there a timing comparison that misses its band but stays within
``NOISE_FACTOR`` is NOT JUDGED rather than failed. What no noise explains (a cache that answers
repeated samples many times faster, a logging path several times slower) still fails, and so
does every accuracy check.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import HarnessError
from .loadgen.logs import Summary

SHORT_LATENCY_NS = 200_000
NOISE_FACTOR = 3.0
LATENCY_SCENARIOS = ("SingleStream", "MultiStream")


@dataclass(frozen=True)
class Verdict:
    passed: bool
    text: str  # the verify_*.txt content
    details: str  # one short line for the results model
    speedup: float = 1.0  # timing checks: how much faster the audited run was (0.5 = half as fast)

    def within_noise(self) -> bool:
        """The timing differs by less than short runs on a shared machine do."""
        return 1 / NOISE_FACTOR <= self.speedup <= NOISE_FACTOR


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


def _score(s: Summary, path_hint: str, current: bool) -> float:
    # Too few queries for an early-stopping estimate: LoadGen marks that run INVALID, which
    # fails the comparison anyway; its percentile latency still says how far off it was.
    score = s.score(early_stopping=current) or s.score()
    if score is None or score <= 0:
        raise HarnessError(f"{path_hint}: no performance figure in the LoadGen summary")
    return score


def _invalid(**runs: Summary) -> str:
    """The official scripts fail a comparison with an INVALID run in it, whatever the figures."""
    bad = [name for name, s in runs.items() if not s.valid]
    return f"TEST FAIL: {' and '.join(bad)} results are invalid\n" if bad else ""


def _verdict(passed: bool, lines: list[str], invalid: str, details: str, speedup: float) -> Verdict:
    text = "Verifying performance.\n" + "".join(f"{line}\n" for line in lines)
    text += invalid or ("TEST PASS\n" if passed else "TEST FAIL: Test score invalid\n")
    return Verdict(passed and not invalid, text, details + (f"; {invalid.strip()[11:]}" if invalid else ""), speedup)


def verify_performance(test: str, reference: Summary, audited: Summary, threshold: float, current: bool) -> Verdict:
    """TEST01 / TEST05: the audited run's score within the band of the submission run's. The
    current round scores SingleStream / MultiStream by their early-stopping latency estimates and
    widens the band to 20 % below 200 µs (SingleStream) or 1.6 ms (MultiStream); v1.0 by the
    percentile latency, 20 % for SingleStream under 200 µs."""
    ref, got = _score(reference, "submission run", current), _score(audited, f"{test} run", current)
    latency = reference.scenario in LATENCY_SCENARIOS
    short = {"SingleStream": SHORT_LATENCY_NS, "MultiStream": 1_600_000 if current else 0}.get(reference.scenario, 0)
    band = max(threshold, 0.20) if latency and ref <= short else threshold
    ratio = got / ref
    unit = "ns" if latency else "samples/s"
    return _verdict(
        (1 - band) <= ratio <= (1 + band),
        [
            f"reference score = {ref:g} {unit}",
            f"test score = {got:g} {unit}",
            f"ratio = {ratio:.4f} (band ±{band:.0%})",
        ],
        _invalid(reference=reference, test=audited),
        f"score ratio {ratio:.3f} vs submission (±{band:.0%})",
        1 / ratio if latency else ratio,
    )


def _faster_by(scenario: str, base: float, other: float) -> float:
    """How much faster ``other`` is than ``base`` (0.1 = 10 % faster); latency: lower is faster."""
    return base / other - 1 if scenario in LATENCY_SCENARIOS else other / base - 1


def verify_test04_pair(a: Summary, b: Summary) -> Verdict:
    """v1.0: TEST04-B (same sample) must not beat TEST04-A (unique samples) by more than the band.
    Both issue only the performance sample count, so they are INVALID (too short) by design: v1.0.1's
    verify_test4_performance.py compares their figures without reading their validity, and so do we."""
    sa, sb = _score(a, "TEST04-A run", False), _score(b, "TEST04-B run", False)
    band = 0.20 if a.scenario == "SingleStream" else 0.10
    faster = _faster_by(a.scenario, sa, sb)
    return _verdict(
        faster <= band,
        [
            f"TEST04-A score = {sa:g}",
            f"TEST04-B score = {sb:g}",
            f"B faster than A by {faster:+.2%} (limit {band:.0%})",
        ],
        "",
        f"B vs A {faster:+.1%} faster (limit {band:.0%})",
        1 + faster,
    )


def verify_test04_single(reference: Summary, audited: Summary, threshold: float) -> Verdict:
    """Current round: the same-sample run no more than the band faster than the submission run.
    The official script compares SingleStream and MultiStream as throughputs (1e9 / early-stopping
    latency) against thresholds meant for latencies, so its band is 20 % for both: so is ours."""
    ref, got = _score(reference, "submission run", True), _score(audited, "TEST04 run", True)
    band = max(threshold, 0.20) if reference.scenario in LATENCY_SCENARIOS else threshold
    faster = _faster_by(reference.scenario, ref, got)
    return _verdict(
        faster < band,
        [f"reference score = {ref:g}", f"test score = {got:g}", f"TEST04 faster by {faster:+.2%} (limit {band:.0%})"],
        _invalid(reference=reference, test=audited),
        f"{faster:+.1%} faster than submission (limit {band:.0%})",
        1 + faster,
    )
