"""Reading LoadGen's logs: mlperf_log_summary.txt (what the checker reads) and the detail log."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import HarnessError
from ..results import LatencyNs

_PCT = {"50.00": "p50", "90.00": "p90", "95.00": "p95", "97.00": "p97", "99.00": "p99", "99.90": "p999"}


@dataclass
class Summary:
    scenario: str = ""
    mode: str = ""
    validity: str = ""
    samples_per_second: float | None = None
    completed_samples_per_second: float | None = None
    scheduled_samples_per_second: float | None = None
    qps_without_overhead: float | None = None
    mean_latency_ns: float | None = None
    target_latency_ns: float | None = None  # the scenario's percentile latency (SS/MS/Server)
    early_stopping_ns: float | None = None  # the early-stopping estimate of that percentile (SS/MS)
    latency: dict[str, int] = field(default_factory=dict)
    min_duration_met: bool | None = None
    min_queries_met: bool | None = None
    early_stopping_met: bool | None = None
    samples_per_query: int = 1
    values: dict[str, str] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return self.validity == "VALID"

    def latency_ns(self) -> LatencyNs | None:
        return LatencyNs(**self.latency) if self.latency else None

    def score(self, early_stopping: bool = False) -> float | None:
        """The scenario's metric: samples/s (Offline, Server) or percentile latency ns (SS, MS);
        ``early_stopping``: the latencies' early-stopping estimates, the current rounds' metric."""
        if self.scenario == "Offline":
            return self.samples_per_second
        if self.scenario == "Server":
            return self.completed_samples_per_second or self.scheduled_samples_per_second
        return self.early_stopping_ns if early_stopping else self.target_latency_ns

    def throughput(self) -> float | None:
        if self.scenario == "Offline":
            return self.samples_per_second
        if self.scenario == "Server":
            return self.completed_samples_per_second or self.scheduled_samples_per_second
        if self.qps_without_overhead is not None:
            return self.qps_without_overhead * self.samples_per_query
        if self.mean_latency_ns:  # MultiStream prints per-query latencies only
            return self.samples_per_query * 1e9 / self.mean_latency_ns
        return None


def _yes(text: str) -> bool:
    return text.strip().lower().startswith("yes")


def parse_summary(path: Path) -> Summary:
    if not path.is_file():
        raise HarnessError(f"{path}: missing LoadGen summary")
    s = Summary()
    for raw in path.read_text().splitlines():
        if ":" not in raw:
            continue
        key, _, value = raw.partition(":")
        key, value = key.strip(), value.strip()
        s.values.setdefault(key, value)
        if key == "Scenario":
            s.scenario = value
        elif key == "Mode":
            s.mode = value
        elif key == "Result is":
            s.validity = value
        elif key == "Samples per second":
            s.samples_per_second = float(value)
        elif key == "Completed samples per second":
            s.completed_samples_per_second = float(value)
        elif key == "Scheduled samples per second":
            s.scheduled_samples_per_second = float(value)
        elif key == "QPS w/o loadgen overhead":
            s.qps_without_overhead = float(value)
        elif key == "Mean latency (ns)":
            s.mean_latency_ns = float(value)
        elif key == "samples_per_query":
            s.samples_per_query = int(value)
        elif key == "Min duration satisfied":
            s.min_duration_met = _yes(value)
        elif key == "Min queries satisfied":
            s.min_queries_met = _yes(value)
        elif re.fullmatch(r"\* Early stopping \d+\.\dth percentile estimate", key):
            s.early_stopping_ns = s.early_stopping_ns or float(value)  # the first: the scenario's percentile
        elif key.startswith("Early stopping satisfied"):
            s.early_stopping_met = _yes(value)
        elif re.fullmatch(r"\d+\.\dth percentile latency \(ns\)", key):
            s.target_latency_ns = float(value)
        else:
            m = re.fullmatch(r"(\d+\.\d\d) percentile latency \(ns\)", key)
            if m and m.group(1) in _PCT:
                s.latency[_PCT[m.group(1)]] = int(float(value))
    if not s.validity and s.mode != "AccuracyOnly":
        raise HarnessError(f"{path}: no 'Result is' line; the LoadGen run did not finish")
    return s


def _detail_entries(path: Path) -> list[dict[str, Any]]:
    entries = []
    for line in path.read_text().splitlines():
        if not line.startswith(":::MLLOG"):
            continue
        try:
            entries.append(json.loads(line[len(":::MLLOG") :]))
        except json.JSONDecodeError:
            continue
    return entries


def detail_errors(path: Path) -> list[str]:
    """Error entries of mlperf_log_detail.txt (each ``:::MLLOG {json}`` with is_error)."""
    if not path.is_file():
        return [f"{path.name} missing"]
    return [
        f"{e.get('key')}: {e.get('value')}"
        for e in _detail_entries(path)
        if isinstance(e.get("metadata"), dict) and e["metadata"].get("is_error")
    ]


def detail_values(path: Path) -> dict[str, str]:
    """The detail log's settings and results, key -> value as text (the first of each key)."""
    values: dict[str, str] = {}
    for e in _detail_entries(path):
        values.setdefault(str(e.get("key")), str(e.get("value")))
    return values
