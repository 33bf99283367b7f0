"""Leader election on a coordination.k8s.io/v1 Lease: of the operator's replicas, exactly one reconciles.

The client's own ``kubernetes.leaderelection`` is not used: it cannot give the Lease back on shutdown (a standby
would wait out the whole lease after every rollout), it runs the leader's work in a thread while kopf wants the
main thread for its signals, and it ``sys.exit()``s from inside on bad settings. This one keeps client-go's rules:

- a candidate takes a Lease that has no holder, or whose record did not change for ``leaseDurationSeconds`` by
  the candidate's own clock (it never compares another machine's clock with its own);
- the leader renews every ``renew_seconds``; when it could not renew for ``renew_deadline`` (shorter than the
  lease), or finds another holder, it has lost: the process exits at once and its pod restarts as a standby;
- on SIGTERM the leader clears ``holderIdentity``, so the standby takes over at its next try, not a lease later.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

from . import metrics

log = logging.getLogger(__name__)
# What an unreachable or refusing API server raises: the next attempt (or the renew deadline) decides.
API_ERRORS = (ApiException, urllib3.exceptions.HTTPError, OSError)

LEASE_SECONDS = 10
RENEW_SECONDS = 2.0
# A standby looks every second, so it leads within LEASE_SECONDS + 2 s of the leader's last renewal.
RETRY_SECONDS = 1.0
# The leader stops before any standby may start: 7 s without a renewal < the lease's 10 s.
RENEW_DEADLINE = 7.0
# A request to the API server that hangs must not hold the renewal past the deadline.
REQUEST_TIMEOUT = 2.0


def default_identity() -> str:
    """The pod's name (the downward API's POD_NAME) or the host's, made unique per process: a container restarted
    in the same pod must not take the Lease of its dead predecessor for its own."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class LeaseConfig:
    name: str
    namespace: str
    identity: str
    lease_seconds: int = LEASE_SECONDS
    renew_seconds: float = RENEW_SECONDS
    retry_seconds: float = RETRY_SECONDS
    renew_deadline: float = RENEW_DEADLINE

    def __post_init__(self) -> None:
        if not self.renew_seconds < self.renew_deadline < self.lease_seconds:
            raise ValueError("leader election needs renew_seconds < renew_deadline < lease_seconds")


_RAW: dict[str, Any] = {"_preload_content": False, "_request_timeout": REQUEST_TIMEOUT}  # JSON in, JSON out


def _micro_time() -> str:
    """A MicroTime as the API server writes it (RFC 3339, always six fraction digits)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        api: kubernetes.client.CoordinationV1Api,
        config: LeaseConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api, self.config, self.clock = api, config, clock
        self.holder = ""  # the holder last read (or written)
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last read, and when it changed
        self._observed_at = 0.0
        self._renewed_at: float | None = None  # when the last renewal that succeeded was sent; None: not leading

    @property
    def leading(self) -> bool:
        return self._renewed_at is not None and self.clock() - self._renewed_at < self.config.renew_deadline

    def try_acquire_or_renew(self) -> bool:
        """One attempt to take or renew the Lease; True when this candidate holds it now."""
        me, sent = self.config.identity, self.clock()
        try:
            lease = self._read()
            if lease is None:
                return self._won(self._write(None, me, transitions=0), sent, me)
            spec = lease.get("spec") or {}
            self.holder = spec.get("holderIdentity") or ""
            record = (self.holder, spec.get("renewTime") or "")
            if record != self._observed:
                self._observed, self._observed_at = record, self.clock()
            if self.holder not in ("", me):
                self._renewed_at = None  # somebody else's: lost, if it was ours
                alive_for = float(spec.get("leaseDurationSeconds") or self.config.lease_seconds)
                if self.clock() < self._observed_at + alive_for:
                    return False
            transitions = int(spec.get("leaseTransitions") or 0) + (self.holder != me)
            return self._won(self._write(lease, me, transitions), sent, me)
        except API_ERRORS as exc:
            log.warning("leader election: could not read or write Lease %s: %s", self._where(), exc)
            return False

    def acquire(self, stop: threading.Event) -> bool:
        """Stand by until this candidate leads (True) or `stop` is set (False)."""
        log.info("standing by as %s for Lease %s", self.config.identity, self._where())
        while not stop.is_set():
            if self.try_acquire_or_renew():
                log.info("leading as %s (Lease %s)", self.config.identity, self._where())
                return True
            stop.wait(self.config.retry_seconds)
        return False

    def renew_until(self, stop: threading.Event) -> bool:
        """Renew until `stop` is set (True) or the lead is lost (False): another holder, or no renewal for the
        renew deadline. A failed renewal is tried again at the next beat."""
        while not stop.wait(self.config.renew_seconds):
            if not self.try_acquire_or_renew() and not self.leading:
                log.error("lost the Lease %s (held by %r now)", self._where(), self.holder)
                return False
        return True

    def release(self) -> None:
        """Give the Lease back so that a standby leads at once; it is only ours to give while we lead."""
        if not self.leading:
            return
        self._renewed_at = None
        try:
            lease = self._read()
            if lease is not None and (lease.get("spec") or {}).get("holderIdentity") == self.config.identity:
                self._write(lease, None, int(lease["spec"].get("leaseTransitions") or 0), seconds=1)
                log.info("released the Lease %s", self._where())
        except API_ERRORS as exc:  # the standby then waits the lease out
            log.warning("could not release the Lease %s: %s", self._where(), exc)

    def _won(self, written: bool, sent: float, me: str) -> bool:
        if written:
            self._renewed_at, self.holder = sent, me
        return written

    def _where(self) -> str:
        return f"{self.config.namespace}/{self.config.name}"

    def _read(self) -> dict[str, Any] | None:
        try:
            resp: Any = self.api.read_namespaced_lease(self.config.name, self.config.namespace, **_RAW)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(json.loads(resp.data))

    def _write(self, lease: dict[str, Any] | None, holder: str | None, transitions: int, seconds: int = 0) -> bool:
        """Create the Lease (lease None) or replace the one read, conditional on its resourceVersion: False when
        another candidate wrote it in between."""
        now = _micro_time()
        old = (lease or {}).get("spec") or {}
        spec = {
            "holderIdentity": holder,
            "leaseDurationSeconds": seconds or self.config.lease_seconds,
            "acquireTime": old.get("acquireTime") if old.get("holderIdentity") == holder else now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }
        body: Any = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "spec": spec}  # a dict, not a V1Lease
        try:
            if lease is None:
                body["metadata"] = {"name": self.config.name, "namespace": self.config.namespace}
                self.api.create_namespaced_lease(self.config.namespace, body, **_RAW)
            else:
                body["metadata"] = lease["metadata"]  # its resourceVersion makes the write conditional
                self.api.replace_namespaced_lease(self.config.name, self.config.namespace, body, **_RAW)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True


@contextlib.contextmanager
def _standby_health(port: int) -> Iterator[None]:
    """/healthz while standing by (kopf serves it once leading): a standby is alive, not stuck."""
    if not port:
        yield
        return

    class Healthz(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()
            self.wfile.write(b'{"standby": true}')

        def log_message(self, *_: Any) -> None:  # probes every few seconds are not news
            pass

    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), Healthz)
    threading.Thread(target=server.serve_forever, name="standby-healthz", daemon=True).start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()  # the port is kopf's next


def _exit_lost() -> None:
    """client-go's rule: a replica that lost its lead stops at once, mid-reconcile or not; its pod restarts as a
    standby, and whatever it left half done the new leader's level-triggered reconcile finishes."""
    logging.shutdown()
    os._exit(1)


def run_as_leader(
    elector: LeaderElector,
    work: Callable[[threading.Event], None],
    health_port: int,
    on_lost: Callable[[], None] = _exit_lost,
) -> None:
    """Stand by until leading, then run `work(stop)` while renewing the Lease in a thread; `stop` is set on SIGTERM
    or SIGINT, after which the Lease is given back. Losing the lead calls `on_lost` (by default: exit 1 now)."""
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():  # (only there may it handle signals)
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        metrics.LEADER.set(0)
        with _standby_health(health_port):
            leading = elector.acquire(stop)
        if leading:
            _lead(elector, work, stop, on_lost)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _lead(
    elector: LeaderElector, work: Callable[[threading.Event], None], stop: threading.Event, on_lost: Callable[[], None]
) -> None:
    metrics.LEADER.set(1)

    def renew() -> None:
        if not elector.renew_until(stop):
            metrics.LEADER.set(0)
            on_lost()

    renewer = threading.Thread(target=renew, name="lease-renewer", daemon=True)
    renewer.start()
    try:
        work(stop)
    finally:
        stop.set()
        renewer.join(timeout=elector.config.renew_seconds + 5)
        elector.release()
        metrics.LEADER.set(0)
