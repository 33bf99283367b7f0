"""One reconcile of one MLPerfRun: observe, decide, act."""

from __future__ import annotations

import json
import logging
import threading
from collections import defaultdict
from datetime import datetime
from typing import Any

from mlperf_harness.pipeline import Phase, Step, plan
from mlperf_harness.spec import MLPerfRunSpec
from pydantic import ValidationError

from . import metrics
from .jobs import build_cache_index, build_claim, build_job, claim_name
from .kube import Kube, job_views
from .reconcile import Decision, decide
from .status import TERMINAL_PHASES, MLPerfRunStatus, now

log = logging.getLogger(__name__)


def backend_version(spec: MLPerfRunSpec) -> str:
    """In a cluster the harness image pins the backend's version, so the image names it."""
    return f"{spec.backend}@{spec.images.harness}"


def _cache_key(relpath: str) -> str:
    return relpath.removeprefix("cache/").replace("/", ".")  # ConfigMap keys allow no '/'


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    parse = lambda t: datetime.fromisoformat(t.replace("Z", "+00:00"))  # noqa: E731
    return (parse(end) - parse(start)).total_seconds()


class Controller:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)

    def reconcile(self, namespace: str, name: str) -> None:
        """Bring one run a step further; safe to call at any time, any number of times."""
        with self._locks[f"{namespace}/{name}"]:
            run = self.kube.get_run(namespace, name)  # fresh: an event's copy may predate our last write
            if run is None or run["metadata"].get("deletionTimestamp"):
                metrics.observe_phase(f"{namespace}/{name}", None)
                return
            try:
                self._reconcile(run)
            except Exception as exc:
                metrics.RECONCILE_ERRORS.labels(type(exc).__name__).inc()
                raise

    def _reconcile(self, run: dict[str, Any]) -> None:
        meta = run["metadata"]
        ns, name, generation = meta["namespace"], meta["name"], meta.get("generation", 1)
        previous = MLPerfRunStatus.model_validate(run.get("status") or {})
        key = f"{ns}/{name}"
        if previous.phase in TERMINAL_PHASES:
            metrics.observe_phase(key, previous.phase.value)
            return
        try:
            spec = MLPerfRunSpec.model_validate(run.get("spec") or {})
        except ValidationError as exc:
            self._fail_invalid(run, previous, exc)
            return

        claim = self._ensure_claim(run, spec, previous)
        if claim is None:
            return
        index = self.kube.cache_index(ns, claim) or {}
        steps = plan(spec, backend_version(spec))
        jobs = job_views(self.kube, ns, name)
        cached = {s.artifact.relpath for s in steps if s.artifact and _cache_key(s.artifact.relpath) in index}
        decision = decide(name, generation, spec, steps, previous, jobs, cached, claim)
        self._act(run, spec, claim, decision, previous)

    def _act(
        self, run: dict[str, Any], spec: MLPerfRunSpec, claim: str, decision: Decision, previous: MLPerfRunStatus
    ) -> None:
        meta = run["metadata"]
        ns, name = meta["namespace"], meta["name"]
        # Jobs first: a status that names a Job which was never created would wait forever.
        for step in decision.create:
            if self.kube.create(build_job(run, spec, step, claim)):
                metrics.JOBS_CREATED.labels(step.verb).inc()
        entries = {_cache_key(s.artifact.relpath): _entry(s, name) for s in decision.cached if s.artifact}
        if entries:
            self.kube.add_cache_entries(ns, claim, entries)
        self._record_metrics(run, spec, decision)
        new = decision.status.model_dump(mode="json", exclude_none=True)
        if new != previous.model_dump(mode="json", exclude_none=True):
            self.kube.patch_status(ns, name, new)
        for event in decision.events:
            self.kube.event(run, event.type, event.reason, event.message)

    def _record_metrics(self, run: dict[str, Any], spec: MLPerfRunSpec, decision: Decision) -> None:
        meta = run["metadata"]
        for step, st in decision.finished:
            if st.cacheHit and step.artifact:
                metrics.CACHE_HITS.labels(step.artifact.kind).inc()
            elif (seconds := _seconds(st.startTime, st.endTime)) is not None:
                metrics.STEP_DURATION.labels(step.verb, spec.benchmark).observe(seconds)
        status = decision.status
        metrics.observe_phase(f"{meta['namespace']}/{meta['name']}", status.phase.value)
        if status.phase == Phase.SUCCEEDED:
            for result in status.results:
                metrics.observe_result(meta["namespace"], meta["name"], spec.benchmark, spec.system.gpuProduct, result)

    def _ensure_claim(self, run: dict[str, Any], spec: MLPerfRunSpec, previous: MLPerfRunStatus) -> str | None:
        """The claim's name once it and its cache index exist; None (and a waiting status) before."""
        ns, name = run["metadata"]["namespace"], run["metadata"]["name"]
        if spec.storage.create is not None:
            self.kube.create(build_claim(run, spec))
            claim = claim_name(name)
        else:
            assert spec.storage.existingClaim is not None
            claim = spec.storage.existingClaim
        pvc = self.kube.get_claim(ns, claim)
        if pvc is None:
            message = f"waiting for PersistentVolumeClaim {claim} (spec.storage.existingClaim) to exist"
            if previous.message != message:
                status = previous.model_copy(update={"message": message, "startTime": previous.startTime or now()})
                self.kube.patch_status(ns, name, status.model_dump(mode="json", exclude_none=True))
                self.kube.event(run, "Warning", "ClaimMissing", message)
            return None
        self.kube.create(build_cache_index(pvc))
        return claim

    def _fail_invalid(self, run: dict[str, Any], previous: MLPerfRunStatus, exc: ValidationError) -> None:
        meta = run["metadata"]
        errors = "; ".join(f"spec.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        status = previous.model_copy(deep=True)
        status.phase = Phase.FAILED
        status.message = f"invalid spec: {errors}"
        status.completionTime = now()
        status.set_condition("Failed", True, "InvalidSpec", status.message, meta.get("generation", 1))
        self.kube.patch_status(meta["namespace"], meta["name"], status.model_dump(mode="json", exclude_none=True))
        self.kube.event(run, "Warning", "InvalidSpec", status.message)


def _entry(step: Step, run: str) -> str:
    assert step.artifact is not None
    return json.dumps({"inputs": step.artifact.inputs, "producedBy": f"{run}/{step.name}", "at": now()})
