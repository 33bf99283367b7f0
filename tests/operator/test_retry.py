"""A failed reconcile is retried with backoff (retry.py), through the real Controller against a fake Kube that fails
N times: 1, 2, 4 ... capped, one pending retry per run, reset by a success, never for a permanent error."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from mlperf_operator.campaigns import CampaignController
from mlperf_operator.controller import Controller
from mlperf_operator.retry import Retries


class Clock:
    """A monotonic clock that moves only when a test moves it."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FlakyKube:
    """Enough of Kube for a run whose claim does not exist yet: reading the claim fails `failures` times with
    `status`, then answers that there is none (the run then waits for it, a status write)."""

    def __init__(self, failures: int, status: int = 500) -> None:
        self.failures, self.status = failures, status
        self.claim_reads = 0
        self.statuses: list[dict[str, Any]] = []
        self.events: list[tuple[str, str]] = []
        self.run: dict[str, Any] = {
            "kind": "MLPerfRun",
            "metadata": {"name": "r", "namespace": "ns", "uid": "u-1", "generation": 1},
            "spec": {"benchmark": "resnet50", "storage": {"existingClaim": "cache"}},
        }

    def get_run(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.run

    def get_claim(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.claim_reads += 1
        if self.claim_reads <= self.failures:
            raise ApiException(status=self.status, reason="flaky")
        return None

    def patch_status(self, namespace: str, name: str, status: dict[str, Any], plural: str = "") -> None:
        self.statuses.append(status)
        self.run = {**self.run, "status": status}

    def event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((reason, message))


def retrying(failures: int, status: int = 500) -> tuple[FlakyKube, Retries, Clock]:
    kube, clock = FlakyKube(failures, status), Clock()
    return kube, Retries(Controller(kube).reconcile, clock=clock), clock  # type: ignore[arg-type]


def test_a_failing_reconcile_is_retried_after_1_2_4_s_until_it_succeeds() -> None:
    kube, retries, clock = retrying(failures=3)
    retries.reconcile("ns", "r")  # the event's reconcile: fails, and never raises into kopf
    delays = []
    while retries.pending():
        (due,) = retries.pending().values()
        delays.append(due - clock.now)
        assert retries.run_due() == 0  # not before it is due
        clock.now = due
        assert retries.run_due() == 1
    assert delays == [1, 2, 4]
    assert kube.claim_reads == 4
    assert kube.run["status"]["message"].startswith("waiting for PersistentVolumeClaim cache")
    # Each failure said so on the run, once: the same message is not written (nor an Event posted) again.
    assert [reason for reason, _ in kube.events] == ["ReconcileError", "ClaimMissing"]
    assert "retried with backoff" in kube.events[0][1] and "500" in kube.events[0][1]


def test_the_backoff_is_capped() -> None:
    _, retries, clock = retrying(failures=8)
    retries.reconcile("ns", "r")
    delays = []
    while retries.pending():
        (due,) = retries.pending().values()
        delays.append(due - clock.now)
        clock.now = due
        retries.run_due()
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30]


def test_events_that_fail_meanwhile_add_no_second_retry() -> None:
    kube, retries, clock = retrying(failures=6)
    retries.reconcile("ns", "r")
    first = retries.pending()
    for _ in range(4):  # a burst of events for the same run, each failing
        retries.reconcile("ns", "r")
    assert retries.pending() == first == {("ns", "r"): clock.now + 1}
    clock.now += 1
    assert retries.run_due() == 1  # one retry, not five
    assert retries.pending() == {("ns", "r"): clock.now + 2}  # and the backoff went on from where it was
    assert kube.claim_reads == 6


def test_a_success_from_any_event_resets_the_backoff() -> None:
    kube, retries, clock = retrying(failures=2)
    retries.reconcile("ns", "r")
    clock.now += 1
    retries.run_due()
    assert retries.pending() == {("ns", "r"): clock.now + 2}
    retries.reconcile("ns", "r")  # a Job's event, before the retry is due: succeeds
    assert retries.pending() == {}
    clock.now += 60
    assert retries.run_due() == 0  # the retry that was pending is gone
    kube.failures, kube.claim_reads = 1, 0  # fails again later: backoff starts over at 1 s
    retries.reconcile("ns", "r")
    assert retries.pending() == {("ns", "r"): clock.now + 1}


def test_a_rejected_spec_fails_the_run_and_is_not_retried() -> None:
    kube, retries, _ = retrying(failures=1, status=422)
    retries.reconcile("ns", "r")
    assert retries.pending() == {}
    assert kube.run["status"]["phase"] == "Failed"
    assert kube.run["status"]["conditions"][0]["reason"] == "Rejected"


def test_one_runs_retry_does_not_delay_another_run() -> None:
    calls: list[tuple[str, str]] = []
    broken = {"a"}

    def reconcile(namespace: str, name: str) -> None:
        calls.append((namespace, name))
        if name in broken:
            raise RuntimeError("boom")

    clock = Clock()
    retries = Retries(reconcile, clock=clock)
    retries.reconcile("ns", "a")
    retries.reconcile("ns", "b")
    assert retries.pending() == {("ns", "a"): clock.now + 1}
    broken.clear()
    clock.now += 1
    assert retries.run_due() == 1 and calls[-1] == ("ns", "a") and retries.pending() == {}


class FlakyCampaigns:
    """Reading the campaign fails `failures` times, then it is gone (a reconcile that ends at once)."""

    def __init__(self, failures: int) -> None:
        self.failures, self.reads = failures, 0

    def get_campaign(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads += 1
        if self.reads <= self.failures:
            raise ApiException(status=503, reason="unavailable")
        return None


def test_a_campaign_is_retried_too_by_the_retry_thread() -> None:
    kube = FlakyCampaigns(failures=3)
    retries = Retries(CampaignController(kube).reconcile, "campaign", first=0.01)  # type: ignore[arg-type]
    thread = threading.Thread(target=retries.run_forever, daemon=True)
    thread.start()
    retries.reconcile("ns", "c")
    done = threading.Event()
    for _ in range(500):  # a bound against hangs, not a speed check
        if kube.reads == 4 and not retries.pending():
            done.set()
            break
        threading.Event().wait(0.02)
    retries.close()
    thread.join(timeout=10)
    assert done.is_set(), (kube.reads, retries.pending())
    assert not thread.is_alive()


@pytest.mark.parametrize("status", [409, 429, 500, 503])
def test_conflicts_and_server_errors_are_retried(status: int) -> None:
    _, retries, _ = retrying(failures=1, status=status)
    retries.reconcile("ns", "r")
    assert list(retries.pending()) == [("ns", "r")]


class WakingController(Controller):
    """A producer run `p` whose reconcile ends an artifact that the run `r` waits for (the rest of a real
    reconcile is the cluster tests')."""

    def _reconcile(self, run: dict[str, Any]) -> set[str]:
        return {"r"} if run["metadata"]["name"] == "p" else super()._reconcile(run)


def test_a_woken_run_whose_reconcile_fails_is_retried_with_the_same_backoff() -> None:
    kube, clock = FlakyKube(failures=2, status=503), Clock()
    kube.get_run = lambda namespace, name: {**kube.run, "metadata": {**kube.run["metadata"], "name": name}}  # type: ignore[method-assign]
    controller = WakingController(kube, retry_clock=clock)  # type: ignore[arg-type]
    controller.reconcile("ns", "p")  # queues r's reconcile, for the workers
    assert controller.retries.queued() == [("ns", "r")]
    assert controller.retries.run_queued() == 1  # as a worker would: r's reconcile fails
    assert controller.retries.pending() == {("ns", "r"): clock.now + 1}  # not lost until the next resync
    clock.now += 1
    assert controller.retries.run_due() == 1  # fails again: the backoff goes on, as for a kopf event's reconcile
    assert controller.retries.pending() == {("ns", "r"): clock.now + 2}
    clock.now += 2
    assert controller.retries.run_due() == 1 and controller.retries.pending() == {}
    assert kube.claim_reads == 3
    assert kube.run["status"]["message"].startswith("waiting for PersistentVolumeClaim cache")
    controller.close()


def test_an_object_waits_in_the_queue_once_however_many_events_come() -> None:
    calls: list[tuple[str, str]] = []
    retries = Retries(lambda namespace, name: calls.append((namespace, name)))
    for name in ("a", "b", "a", "a", "b", "c"):
        retries.add("ns", name)
    assert retries.queued() == [("ns", "a"), ("ns", "b"), ("ns", "c")]  # first come, first reconciled
    assert retries.run_queued() == 3 and calls == [("ns", "a"), ("ns", "b"), ("ns", "c")]
    assert retries.queued() == []


def test_an_event_during_the_objects_reconcile_queues_it_again() -> None:
    retries: Retries
    calls: list[str] = []

    def reconcile(namespace: str, name: str) -> None:
        calls.append(name)
        if len(calls) == 1:
            retries.add(namespace, name)  # an event while it runs: that reconcile may have read the object before

    retries = Retries(reconcile)
    retries.add("ns", "a")
    assert retries.run_queued() == 2 and calls == ["a", "a"]


def test_workers_run_the_queue_and_close_drops_what_is_left() -> None:
    done: list[str] = []
    release = threading.Event()

    def reconcile(namespace: str, name: str) -> None:
        if name == "slow":
            release.wait(10)
        done.append(name)

    retries = Retries(reconcile)
    retries.start(workers=2)
    retries.add("ns", "slow")
    for name in ("a", "b"):
        retries.add("ns", name)
    for _ in range(500):  # a bound against hangs, not a speed check
        if sorted(done) == ["a", "b"]:
            break
        threading.Event().wait(0.02)
    assert sorted(done) == ["a", "b"]  # one worker held by "slow", the other ran the rest
    release.set()
    retries.close()
    assert "slow" in done  # the reconcile in flight ended before close() returned
    retries.add("ns", "d")  # after close: dropped
    assert retries.queued() == [] and "d" not in done


def test_urgent_objects_go_first_and_an_object_moves_to_the_urgent_lane_once() -> None:
    calls: list[str] = []
    retries = Retries(lambda namespace, name: calls.append(name))
    for name in ("job-event-a", "job-event-b"):
        retries.add("ns", name)
    retries.add("ns", "new-run", urgent=True)
    retries.add("ns", "job-event-b", urgent=True)  # woken while queued: moves up, and is not reconciled twice
    retries.add("ns", "new-run")  # a later event of an urgent one leaves it where it is
    assert retries.queued() == [("ns", "new-run"), ("ns", "job-event-b"), ("ns", "job-event-a")]
    assert retries.run_queued() == 3 and calls == ["new-run", "job-event-b", "job-event-a"]
