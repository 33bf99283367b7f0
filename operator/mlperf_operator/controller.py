"""One reconcile of one MLPerfRun: observe, decide, act."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
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
from .retry import Retries, permanent
from .status import TERMINAL_PHASES, MLPerfRunStatus, now

log = logging.getLogger(__name__)
LEASE_ATTEMPTS = 5
CLAIM_SECONDS = 60.0  # how long a claim once read is taken to still exist (its GET is not repeated per reconcile)
HOLDER_SECONDS = 5.0  # how long a lease's holder once read is taken to still be making its artifact


def backend_version(spec: MLPerfRunSpec) -> str:
    """The operator's plan names the backend by its image (it cannot look inside): the plan's artifact keys
    are requests, and the cache index records what the pods answered them with (cacheindex.py)."""
    return f"{spec.backend}@{spec.images.harness}"


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    parse = lambda t: datetime.fromisoformat(t.replace("Z", "+00:00"))  # noqa: E731
    return (parse(end) - parse(start)).total_seconds()


class _Locks:
    """One lock per run, kept only while a reconcile of the run holds or waits for it: a thousand finished runs
    leave no entry behind."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._held: dict[str, tuple[threading.Lock, list[int]]] = {}  # key -> (its lock, [users])

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._held.setdefault(key, (threading.Lock(), [0]))
            users[0] += 1
        try:
            with lock:
                yield
        finally:
            with self._guard:
                users[0] -= 1
                if not users[0]:
                    del self._held[key]


class Controller:
    def __init__(
        self, kube: Kube, recent_seconds: float = 0.0, retry_clock: Callable[[], float] = time.monotonic
    ) -> None:
        """`recent_seconds`: the resync period; a resync passes over a run reconciled within half of it."""
        self.kube = kube
        # Every reconcile the operator starts goes through these (retry.py): a kopf event's and a woken run's are
        # queued for the workers, the resync's run in its thread; a failed one is retried with backoff.
        self.retries = Retries(self.reconcile, "run", clock=retry_clock)
        self.recent_seconds = recent_seconds
        self._reconciled: dict[str, float] = {}  # live runs, when each was last reconciled
        self._locks = _Locks()
        # Runs waiting for another run's artifact, by (namespace, claim, key); lost on a restart, when the
        # resync finds them instead.
        self._waiters: defaultdict[tuple[str, str, str], set[str]] = defaultdict(set)
        # The resourceVersion of each live run's last status write: its watch event brings nothing new.
        self._written: dict[str, str] = {}
        self._claims: dict[tuple[str, str], tuple[dict[str, Any], float]] = {}  # claims read, and when
        # uids of runs read making an artifact: when, and Kueue's reason if the step making it was queued
        self._holders: dict[str, tuple[float, str]] = {}
        self._ended: set[str] = set()  # uids of the live runs that ended: their Jobs' events change nothing
        self._job_states: dict[str, tuple[Any, ...]] = {}  # what each live Job last said (job_moved)
        self._making = threading.Lock()  # held while a claim's cache index is made

    def settled(self, run: dict[str, Any], written: bool = True) -> bool:
        """Whether this copy of a run (a watch event's, a list's) needs no reconcile: the run ended (a terminal
        run never changes again, so any copy of it is current; its results are exported from it), or, with
        `written`, the copy is the operator's own last status write coming back."""
        meta = run["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        if meta.get("deletionTimestamp"):
            return False
        status = MLPerfRunStatus.model_validate(run.get("status") or {})
        if status.phase in TERMINAL_PHASES:
            self._export(run, status)
            return True
        return written and self._written.get(key) == meta.get("resourceVersion")

    def ended(self, uid: str) -> bool:
        """Whether the run of this uid is known to have ended."""
        return uid in self._ended

    def forget(self, uid: str) -> None:
        """A run was deleted: its uid's state goes (its name's, with the reconcile that finds it gone)."""
        self._ended.discard(uid)
        self._holders.pop(uid, None)

    def job_moved(self, job: dict[str, Any], deleted: bool = False) -> bool:
        """Whether a Job's event says something its run's reconcile reads (a condition, suspension, a pod ready,
        a failed attempt), not one of the Job controller's bookkeeping updates in between."""
        uid, status = job["metadata"]["uid"], job.get("status") or {}
        if deleted:
            self._job_states.pop(uid, None)
            return True
        conditions = sorted(c["type"] for c in status.get("conditions") or [] if c.get("status") == "True")
        suspended = bool((job.get("spec") or {}).get("suspend"))
        said = (tuple(conditions), suspended, status.get("ready") or 0, status.get("failed") or 0)
        if self._job_states.get(uid) == said:
            return False
        first = uid not in self._job_states
        self._job_states[uid] = said
        # A new Job that has not moved yet (its creation, the Job controller's first count) tells its run nothing:
        # the reconcile that created it wrote the run's status after it, and a restarted operator reconciles every
        # run from the run's own first event. One suspended at its creation (by Kueue) does: the run is queued.
        return not (first and said == ((), False, 0, 0))

    def reconcile(self, namespace: str, name: str) -> None:
        """Bring one run a step further; safe to call at any time, any number of times."""
        with self._locks.hold(f"{namespace}/{name}"):
            metrics.RECONCILES.inc()
            run = self.kube.get_run(namespace, name)  # fresh: an event's copy may predate our last write
            self._reconciled[f"{namespace}/{name}"] = time.monotonic()
            if run is None or run["metadata"].get("deletionTimestamp"):
                metrics.forget_run(namespace, name)
                self._written.pop(f"{namespace}/{name}", None)  # state pruned with the run
                self._reconciled.pop(f"{namespace}/{name}", None)
                if run is not None:
                    self.forget(run["metadata"]["uid"])
                return
            try:
                waiting = self._reconcile(run)
            except Exception as exc:
                metrics.RECONCILE_ERRORS.labels(type(exc).__name__).inc()
                self._report_error(run, exc)
                raise
        for other in sorted(waiting):  # queued for the workers, first: they can create their first Jobs now
            self.retries.add(namespace, other, urgent=True)

    def close(self) -> None:
        self.retries.close()

    def resync(self, namespaces: list[str] | None) -> None:
        """Reconcile every run that has not ended (an ended one is exported from the list, no GET), one after
        another in this thread, not through the queue: a resync's thousand quiet runs queued at once made the
        events' reconciles wait behind them (20 s stalls at 1000 runs). One run's error is that run's (its status
        and Events say it, its retry follows), not the others'."""
        due: list[tuple[str, str]] = []  # names only: the pages of the list are not held while reconciling
        for run in self.kube.list_runs(namespaces):
            meta = run["metadata"]
            if self.settled(run, written=False):  # its own write may be current, but time (a deadline) passed
                continue
            # A burst of new runs is reconciled by its events; the resync is for the runs that went quiet (half
            # the period: a run the last resync reconciled is not passed over for a faster loop this time).
            last = self._reconciled.get(f"{meta['namespace']}/{meta['name']}", 0.0)
            if time.monotonic() - last >= self.recent_seconds / 2:
                due.append((meta["namespace"], meta["name"]))
        for namespace, name in due:
            self.retries.reconcile(namespace, name)

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
                self._patch_status(meta["namespace"], meta["name"], body)
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
        # Once every artifact step ended the cache index has nothing left to tell this run: not read again.
        ended = all((st := previous.step(s.name)) and st.state in ("Succeeded", "Failed") for s in steps if s.artifact)
        for _ in range(LEASE_ATTEMPTS):
            data, version = ({}, "") if ended else self._cache_index(pvc)
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
        uid = holder["uid"]
        if uid == run["metadata"]["uid"] or uid in self._ended:
            return None
        at, queued = self._holders.get(uid, (0.0, ""))
        if time.monotonic() - at > HOLDER_SECONDS:  # not asked per waiting run and reconcile
            other = self.kube.get_run(run["metadata"]["namespace"], holder["run"])
            if other is None or other["metadata"]["uid"] != uid:
                return None
            status = other.get("status") or {}
            if status.get("phase") in TERMINAL_PHASES:
                return None
            step: dict[str, Any] = next((s for s in status.get("steps") or [] if s.get("name") == holder["step"]), {})
            queued = str(step.get("message", "")).removeprefix("Kueue: ") if step.get("state") == "Queued" else ""
            now_ = time.monotonic()
            self._holders = {u: v for u, v in self._holders.items() if now_ - v[0] <= HOLDER_SECONDS}
            self._holders[uid] = (now_, queued)
        if queued:
            return f"run {holder['run']} (step {holder['step']}, queued in Kueue: {queued})"
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
            self._patch_status(ns, name, new)
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

    def _export(self, run: dict[str, Any], status: MLPerfRunStatus) -> None:
        meta, spec = run["metadata"], run.get("spec") or {}
        metrics.observe_phase(f"{meta['namespace']}/{meta['name']}", status.phase.value)
        if status.phase in TERMINAL_PHASES:
            self._ended.add(meta["uid"])
            self._written.pop(f"{meta['namespace']}/{meta['name']}", None)
            self._reconciled.pop(f"{meta['namespace']}/{meta['name']}", None)
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
        read, at = self._claims.get((ns, claim), (None, 0.0))
        if read is not None and time.monotonic() - at < CLAIM_SECONDS:
            return read
        pvc = self.kube.get_claim(ns, claim)
        if pvc is None and spec.storage.create is not None:
            self.kube.create(build_claim(run, spec))
            pvc = self.kube.get_claim(ns, claim)
        if pvc is not None:
            self._claims[(ns, claim)] = (pvc, time.monotonic())
        if pvc is None:
            message = f"waiting for PersistentVolumeClaim {claim} (spec.storage.existingClaim) to exist"
            if previous.message != message:
                status = previous.model_copy(update={"message": message, "startTime": previous.startTime or now()})
                self._patch_status(ns, name, status.model_dump(mode="json", exclude_none=True))
                self.kube.event(run, "Warning", "ClaimMissing", message)
            return None
        return pvc

    def _cache_index(self, pvc: dict[str, Any]) -> tuple[dict[str, str], str]:
        """The claim's cache index (made the first time a run asks for it) and its resourceVersion."""
        ns, claim = pvc["metadata"]["namespace"], pvc["metadata"]["name"]
        found = self.kube.cache_index(ns, claim)
        if found is None:
            with self._making:  # the first runs of a claim come at once: one of them POSTs, none gets a 409
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
        self._patch_status(meta["namespace"], meta["name"], status.model_dump(mode="json", exclude_none=True))
        self.kube.event(run, "Warning", reason, message)

    def _patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self._written[f"{namespace}/{name}"] = self.kube.patch_status(namespace, name, status)


def _api_message(exc: Exception) -> str:
    """An API error's own message (it names the field), else the exception's text."""
    if isinstance(exc, ApiException) and exc.body:
        try:
            return f"{exc.status} {json.loads(exc.body).get('message', exc.reason)}"
        except (ValueError, AttributeError):
            pass
    return f"{type(exc).__name__}: {exc}"[:MESSAGE_LIMIT]
