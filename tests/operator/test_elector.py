"""Leader election (leader.py) against an in-memory Lease with the API server's conditional writes, on a fake clock:
who takes the Lease when, who keeps it, when a leader knows it lost, and the handover on release."""

from __future__ import annotations

import copy
import json
import threading
import urllib.request
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from mlperf_operator import leader, metrics
from mlperf_operator.leader import LeaderElector, LeaseConfig
from test_retry import Clock


class Leases:
    """One Lease, written as the API server does: a replace must name the resourceVersion it read (else 409)."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.down = False

    def read_namespaced_lease(self, name: str, namespace: str, **_: Any) -> Any:
        if self.down:
            raise ApiException(status=503, reason="unavailable")
        if self.lease is None:
            raise ApiException(status=404, reason="not found")
        return SimpleNamespace(data=json.dumps(self.lease).encode())

    def create_namespaced_lease(self, namespace: str, body: dict[str, Any], **_: Any) -> None:
        if self.down:
            raise ApiException(status=503, reason="unavailable")
        if self.lease is not None:
            raise ApiException(status=409, reason="exists")
        self._store(body)

    def replace_namespaced_lease(self, name: str, namespace: str, body: dict[str, Any], **_: Any) -> None:
        if self.down:
            raise ApiException(status=503, reason="unavailable")
        assert self.lease is not None
        if body["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="conflict")
        self._store(body)

    def _store(self, body: dict[str, Any]) -> None:
        self.version += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.version)

    @property
    def spec(self) -> dict[str, Any]:
        assert self.lease is not None
        return dict(self.lease["spec"])


def candidate(api: Leases, clock: Clock, identity: str) -> LeaderElector:
    return LeaderElector(api, LeaseConfig("mlperf-operator", "ops", identity), clock=clock)  # type: ignore[arg-type]


def test_the_first_candidate_creates_the_lease_and_keeps_it_while_it_renews() -> None:
    api, clock = Leases(), Clock()
    a, b = candidate(api, clock, "a"), candidate(api, clock, "b")
    assert a.try_acquire_or_renew() and a.leading
    assert api.spec["holderIdentity"] == "a" and api.spec["leaseDurationSeconds"] == 10
    assert api.spec["leaseTransitions"] == 0
    acquired = api.spec["acquireTime"]
    for _ in range(20):  # 40 s of renewals every 2 s: b never gets it
        clock.now += 2
        assert a.try_acquire_or_renew() and a.leading
        assert not b.try_acquire_or_renew() and not b.leading
    assert api.spec["holderIdentity"] == "a" and api.spec["acquireTime"] == acquired


def test_a_standby_takes_over_a_lease_unchanged_for_its_duration_by_its_own_clock() -> None:
    api, clock = Leases(), Clock()
    a, b = candidate(api, clock, "a"), candidate(api, clock, "b")
    a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()  # b sees a's record now
    # a dies. Whatever the renewTime says (another machine's clock), b waits 10 s from when it saw it last change.
    clock.now += 9.5
    assert not b.try_acquire_or_renew()
    clock.now += 0.5
    assert b.try_acquire_or_renew() and b.leading
    assert api.spec["holderIdentity"] == "b" and api.spec["leaseTransitions"] == 1
    # a comes back (a paused process): it finds b's name and knows it lost, without writing.
    version = api.version
    assert not a.try_acquire_or_renew() and not a.leading and a.holder == "b"
    assert api.version == version


def test_a_released_lease_is_taken_at_once() -> None:
    api, clock = Leases(), Clock()
    a, b = candidate(api, clock, "a"), candidate(api, clock, "b")
    a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    a.release()
    assert not a.leading and not api.spec["holderIdentity"]
    assert api.spec["leaseDurationSeconds"] == 1
    assert b.try_acquire_or_renew()  # no clock advance: no waiting out the lease
    assert api.spec["holderIdentity"] == "b"


def test_release_by_a_candidate_that_does_not_lead_leaves_the_lease_alone() -> None:
    api, clock = Leases(), Clock()
    a, b = candidate(api, clock, "a"), candidate(api, clock, "b")
    a.try_acquire_or_renew()
    b.try_acquire_or_renew()
    version = api.version
    b.release()
    assert api.version == version and api.spec["holderIdentity"] == "a"


def test_a_leader_that_cannot_renew_stops_leading_before_any_standby_may_start() -> None:
    api, clock = Leases(), Clock()
    a, b = candidate(api, clock, "a"), candidate(api, clock, "b")
    a.try_acquire_or_renew()
    b.try_acquire_or_renew()
    api.down = True
    clock.now += 6.9
    assert not a.try_acquire_or_renew() and a.leading  # a failed renewal is tried again: still within the deadline
    clock.now += 0.1
    assert not a.leading  # 7 s without a renewal: it must stop
    clock.now += 2.9
    api.down = False
    assert not b.try_acquire_or_renew()  # ... while b still waits (10 s)
    clock.now += 0.1
    assert b.try_acquire_or_renew()


def test_of_two_candidates_writing_at_once_one_wins() -> None:
    api, clock = Leases(), Clock()
    a, b = candidate(api, clock, "a"), candidate(api, clock, "b")
    a.try_acquire_or_renew()
    a.release()
    stale = api.read_namespaced_lease("mlperf-operator", "ops")
    assert b.try_acquire_or_renew()
    # c read the free Lease before b wrote it: its write names an old resourceVersion and is refused.
    c = candidate(api, clock, "c")
    real = api.read_namespaced_lease
    api.read_namespaced_lease = lambda *_, **__: stale  # type: ignore[method-assign]
    assert not c.try_acquire_or_renew() and not c.leading
    api.read_namespaced_lease = real  # type: ignore[method-assign]
    assert api.spec["holderIdentity"] == "b"


def test_renew_until_reports_the_loss_to_another_holder() -> None:
    api, clock = Leases(), Clock()
    config = LeaseConfig("l", "ops", "a", lease_seconds=1, renew_seconds=0.01, renew_deadline=0.5)
    a = LeaderElector(api, config, clock=clock)  # type: ignore[arg-type]
    assert a.try_acquire_or_renew()
    api.lease["spec"]["holderIdentity"] = "usurper"  # type: ignore[index]
    assert a.renew_until(threading.Event()) is False
    stop = threading.Event()
    stop.set()
    assert candidate(api, clock, "x").renew_until(stop) is True  # stopped, not lost


def test_identities_are_unique_per_process_and_name_the_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "mlperf-operator-7d9f-abcde")
    one, two = leader.default_identity(), leader.default_identity()
    assert one.startswith("mlperf-operator-7d9f-abcde-") and one != two


def test_bad_timings_are_refused() -> None:
    with pytest.raises(ValueError, match="renew_seconds < renew_deadline < lease_seconds"):
        LeaseConfig("l", "ops", "a", lease_seconds=5, renew_deadline=7)


def test_run_as_leader_stands_by_serving_healthz_leads_then_gives_the_lease_back() -> None:
    api, clock = Leases(), Clock()
    holder = candidate(api, clock, "holder")
    holder.try_acquire_or_renew()
    config = LeaseConfig("mlperf-operator", "ops", "me", renew_seconds=0.05, retry_seconds=0.05)
    me = LeaderElector(api, config)  # type: ignore[arg-type]
    port = free_port()
    seen: dict[str, Any] = {}

    def work(stop: threading.Event) -> None:
        seen["leader"] = metrics.LEADER._value.get()
        seen["holder"] = api.spec["holderIdentity"]

    run = lambda: leader.run_as_leader(me, work, port, on_lost=lambda: None)  # noqa: E731
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    body = healthz(port)  # while "holder" holds the Lease: a live standby
    assert body == {"standby": True} and metrics.LEADER._value.get() == 0
    holder.release()
    thread.join(timeout=30)
    assert seen == {"leader": 1, "holder": "me"}
    assert not api.spec["holderIdentity"] and metrics.LEADER._value.get() == 0  # given back


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthz(port: int) -> Any:
    for _ in range(200):  # until the standby server listens; a bound against hangs
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                return json.loads(resp.read())
        except OSError:
            threading.Event().wait(0.05)
    raise AssertionError("no /healthz while standing by")
