"""One reconcile of one MLPerfRun: observe, decide, act."""

from __future__ import annotations

import json
import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from typing import Any

from kubernetes.client.exceptions import ApiException
from mlperf_harness.pipeline import Phase, plan
from mlperf_harness.spec import MLPerfRunSpec
from pydantic import ValidationError

from . import cacheindex, metrics, observe
from .jobs import build_cache_index, build_claim, build_job, claim_name
from .kube import Kube
from .observe import MESSAGE_LIMIT
from .reconcile import Decision, decide
from .retry import permanent
from .status import TERMINAL_PHASES, MLPerfRunStatus, now

log = logging.getLogger(__name__)
LEASE_ATTEMPTS = 5


def backend_version(spec: MLPerfRunSpec) -> str:
    """The operator's plan names the backend by its image (it cannot look inside): the plan's artifact keys
    are requests, and the cache index records what the pods answered them with (cacheindex.py)."""
    return f"{spec.backend}@{spec.images.harness}"


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    parse = lambda t: datetime.fromisoformat(t.replace("Z", "+00:00"))  # noqa: E731
    return (parse(end) - parse(start)).total_seconds()


class Controller:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        # Runs waiting for another run's artifact, by (namespace, claim, key); lost on a restart, when the
        # resync finds them instead.
        self._waiters: defaultdict[tuple[str, str, str], set[str]] = defaultdict(set)

    def reconcile(self, namespace: str, name: str) -> None:
        """Bring one run a step further; safe to call at any time, any number of times."""
        with self._locks[f"{namespace}/{name}"]:
            run = self.kube.get_run(namespace, name)  # fresh: an event's copy may predate our last write
            if run is None or run["metadata"].get("deletionTimestamp"):
                metrics.forget_run(namespace, name)
                self._locks.pop(f"{namespace}/{name}", None)  # state pruned with the run
                return
            try:
                waiting = self._reconcile(run)
            except Exception as exc:
                metrics.RECONCILE_ERRORS.labels(type(exc).__name__).inc()
                self._report_error(run, exc)
                raise
        for other in sorted(waiting):  # outside this run's lock: the other run's reconcile takes its own
            try:
                self.reconcile(namespace, other)
            except Exception:
                log.exception("reconcile of %s/%s failed", namespace, other)

    def resync(self, namespaces: list[str] | None, reconcile: Callable[[str, str], None] | None = None) -> None:
        """Reconcile every run (through `reconcile`, the operator's retrying one, when given); one run's error is
        that run's (its status and Events say it), not the others'."""
        for run in self.kube.list_runs(namespaces):
            meta = run["metadata"]
            try:
                (reconcile or self.reconcile)(meta["namespace"], meta["name"])
            except Exception:
                log.exception("reconcile of %s/%s failed", meta["namespace"], meta["name"])

    def _report_error(self, run: dict[str, Any], exc: Exception) -> None:
        """Say on the run why it does not progress; an API server's rejection of what the spec asks is final."""
        meta = run["metadata"]
        what = _api_message(exc)
        run = self.kube.get_run(meta["namespace"], meta["name"]) or run  # what the failed reconcile wrote counts
        previous = MLPerfRunStatus.model_validate(run.get("status") or {})
        try:
            if permanent(exc):
                self._fail(run, previous, "Rejected", f"the API server rejected an object of this run: {what}")
                return
            message = f"reconcile failed (retried with backoff): {what}"
            if previous.message != message:
                status = previous.model_copy(update={"message": message})
                body = status.model_dump(mode="json", exclude_none=True)
                self.kube.patch_status(meta["namespace"], meta["name"], body)
                self.kube.event(run, "Warning", "ReconcileError", message)
        except Exception:
            log.exception("could not report the error of %s/%s", meta["namespace"], meta["name"])

    def _reconcile(self, run: dict[str, Any]) -> set[str]:
        """One reconcile; the names of the runs (of the namespace) that can go on now because of it."""
        meta = run["metadata"]
        ns, name, generation = meta["namespace"], meta["name"], meta.get("generation", 1)
        previous = MLPerfRunStatus.model_validate(run.get("status") or {})
        if previous.phase in TERMINAL_PHASES:
            # The status is the memory: a restarted operator exports the results it finds there.
            self._export(run, previous)
            return set()
        try:
            spec = MLPerfRunSpec.model_validate(run.get("spec") or {})
        except ValidationError as exc:
            self._fail_invalid(run, previous, exc)
            return set()

        pvc = self._ensure_claim(run, spec, previous)
        if pvc is None:
            return set()
        claim = pvc["metadata"]["name"]
        steps = plan(spec, backend_version(spec))
        jobs = self._job_views(run)
        for _ in range(LEASE_ATTEMPTS):
            data, version = self._cache_index(pvc)
            answers = cacheindex.answers(data)
            planned = [s.artifact.relpath for s in steps if s.artifact]
            cached = {p: answers[p] for p in planned if p in answers}
            producing = {
                p: holder for p in planned if (holder := self._producer(run, data.get(cacheindex.lease_key(p))))
            }
            decision = decide(name, generation, spec, steps, previous, jobs, cached, claim, producing)
            if self._take_leases(run, claim, decision, version):
                break
        else:
            raise RuntimeError(f"the cache index of claim {claim} kept changing under {LEASE_ATTEMPTS} attempts")
        for step in decision.waiting:
            if step.artifact:
                self._waiters[(ns, claim, cacheindex.lease_key(step.artifact.relpath))].add(name)
        return self._act(run, spec, claim, decision, previous, data)

    def _job_views(self, run: dict[str, Any]) -> dict[str, observe.JobView]:
        meta = run["metadata"]
        jobs = observe.own_jobs(run, self.kube.run_jobs(meta["namespace"], meta["name"]))
        if not jobs:
            return {}
        # A suspended Job waits for Kueue: its Workload says why (read only then, so no Kueue costs nothing).
        queued = [j["metadata"]["uid"] for j in jobs if (j.get("spec") or {}).get("suspend")]
        workloads = self.kube.workloads(meta["namespace"], queued) if queued else []
        pods = self.kube.run_pods(meta["namespace"], meta["name"])
        return observe.job_views(jobs, pods, self.kube.pod_log_tail, workloads)

    def _producer(self, run: dict[str, Any], lease: str | None) -> str | None:
        """Who else is producing an artifact now: a lease of another run that still runs (a run that ended or
        is gone left a stale one behind, which the next producer takes over). A producer whose Job waits in
        Kueue's queue keeps its lease (one producer per artifact; a queue wait is no failure), and the runs
        behind it are told that it is queued, and Kueue's reason."""
        if not lease:
            return None
        holder = json.loads(lease)
        if holder["uid"] == run["metadata"]["uid"]:
            return None
        other = self.kube.get_run(run["metadata"]["namespace"], holder["run"])
        if other is None or other["metadata"]["uid"] != holder["uid"]:
            return None
        status = other.get("status") or {}
        if status.get("phase") in TERMINAL_PHASES:
            return None
        step: dict[str, Any] = next((s for s in status.get("steps") or [] if s.get("name") == holder["step"]), {})
        if step.get("state") == "Queued":
            why = str(step.get("message", "")).removeprefix("Kueue: ")
            return f"run {holder['run']} (step {holder['step']}, queued in Kueue: {why})"
        return f"run {holder['run']} (step {holder['step']})"

    def _take_leases(self, run: dict[str, Any], claim: str, decision: Decision, version: str) -> bool:
        """One producer per artifact across runs: the leases for the artifact Jobs about to be created, taken in
        one write conditional on the index read; False when another run wrote it meanwhile (decide again)."""
        leases: dict[str, str | None] = {
            cacheindex.lease_key(s.artifact.relpath): cacheindex.lease(run, s.name)
            for s in decision.create
            if s.artifact
        }
        return not leases or self.kube.patch_cache_index(run["metadata"]["namespace"], claim, leases, version)

    def _act(
        self,
        run: dict[str, Any],
        spec: MLPerfRunSpec,
        claim: str,
        decision: Decision,
        previous: MLPerfRunStatus,
        index: dict[str, str],
    ) -> set[str]:
        meta = run["metadata"]
        ns, name = meta["namespace"], meta["name"]
        for job in decision.suspend:  # its pod would wait for a node for ever, holding its place in a quota
            self.kube.suspend_job(ns, job)
        # Jobs first: a status that names a Job which was never created would wait forever.
        for step in decision.create:
            if self.kube.create(build_job(run, spec, step, claim)):
                metrics.JOBS_CREATED.labels(step.verb).inc()
        # A finished producer records the artifact its pod wrote and gives its lease back in one write.
        ended = {cacheindex.lease_key(s.artifact.relpath) for s, st in decision.finished if s.artifact and st.job}
        entries: dict[str, str | None] = dict.fromkeys(ended)
        for step, made in decision.cached:  # two steps of a run (two scenarios' engines) may answer with one
            assert step.artifact is not None
            seen = {**index, **{k: v for k, v in entries.items() if v is not None}}
            key, value = cacheindex.record(seen, step.artifact.relpath, made, f"{name}/{step.name}")
            entries[key] = value
        if entries:
            self.kube.patch_cache_index(ns, claim, entries)
        self._record_metrics(run, spec, decision)
        new = decision.status.model_dump(mode="json", exclude_none=True)
        if new != previous.model_dump(mode="json", exclude_none=True):
            self.kube.patch_status(ns, name, new)
        for event in decision.events:
            self.kube.event(run, event.type, event.reason, event.message)
        # The runs that waited for these artifacts go on now, not at the next resync.
        return {w for k in ended for w in self._waiters.pop((ns, claim, k), set()) if w != name}

    def _record_metrics(self, run: dict[str, Any], spec: MLPerfRunSpec, decision: Decision) -> None:
        for step, st in decision.finished:
            if st.cacheHit and step.artifact:
                metrics.CACHE_HITS.labels(step.artifact.kind).inc()
            elif (seconds := _seconds(st.startTime, st.endTime)) is not None:
                metrics.STEP_DURATION.labels(step.verb, spec.benchmark).observe(seconds)
        self._export(run, decision.status)

    @staticmethod
    def _export(run: dict[str, Any], status: MLPerfRunStatus) -> None:
        meta, spec = run["metadata"], run.get("spec") or {}
        metrics.observe_phase(f"{meta['namespace']}/{meta['name']}", status.phase.value)
        if status.phase == Phase.SUCCEEDED:
            gpu = (spec.get("system") or {}).get("gpuProduct", "")
            for result in status.results:
                metrics.observe_result(meta["namespace"], meta["name"], spec.get("benchmark", ""), gpu, result)

    def _ensure_claim(
        self, run: dict[str, Any], spec: MLPerfRunSpec, previous: MLPerfRunStatus
    ) -> dict[str, Any] | None:
        """The run's claim once it exists (created for storage.create); None, and a waiting status, before.
        Read before written: a reconcile of a run whose claim exists writes nothing here."""
        ns, name = run["metadata"]["namespace"], run["metadata"]["name"]
        claim = claim_name(name) if spec.storage.create is not None else spec.storage.existingClaim
        assert claim is not None
        pvc = self.kube.get_claim(ns, claim)
        if pvc is None and spec.storage.create is not None:
            self.kube.create(build_claim(run, spec))
            pvc = self.kube.get_claim(ns, claim)
        if pvc is None:
            message = f"waiting for PersistentVolumeClaim {claim} (spec.storage.existingClaim) to exist"
            if previous.message != message:
                status = previous.model_copy(update={"message": message, "startTime": previous.startTime or now()})
                self.kube.patch_status(ns, name, status.model_dump(mode="json", exclude_none=True))
                self.kube.event(run, "Warning", "ClaimMissing", message)
            return None
        return pvc

    def _cache_index(self, pvc: dict[str, Any]) -> tuple[dict[str, str], str]:
        """The claim's cache index (made the first time a run asks for it) and its resourceVersion."""
        ns, claim = pvc["metadata"]["namespace"], pvc["metadata"]["name"]
        found = self.kube.cache_index(ns, claim)
        if found is None:
            self.kube.create(build_cache_index(pvc))
            found = self.kube.cache_index(ns, claim)
        return found or ({}, "")

    def _fail_invalid(self, run: dict[str, Any], previous: MLPerfRunStatus, exc: ValidationError) -> None:
        errors = "; ".join(f"spec.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        self._fail(run, previous, "InvalidSpec", f"invalid spec: {errors}")

    def _fail(self, run: dict[str, Any], previous: MLPerfRunStatus, reason: str, message: str) -> None:
        meta = run["metadata"]
        status = previous.model_copy(deep=True)
        status.phase = Phase.FAILED
        status.message = message
        status.completionTime = now()
        status.set_condition("Failed", True, reason, message, meta.get("generation", 1))
        self.kube.patch_status(meta["namespace"], meta["name"], status.model_dump(mode="json", exclude_none=True))
        self.kube.event(run, "Warning", reason, message)


def _api_message(exc: Exception) -> str:
    """An API error's own message (it names the field), else the exception's text."""
    if isinstance(exc, ApiException) and exc.body:
        try:
            return f"{exc.status} {json.loads(exc.body).get('message', exc.reason)}"
        except (ValueError, AttributeError):
            pass
    return f"{type(exc).__name__}: {exc}"[:MESSAGE_LIMIT]
