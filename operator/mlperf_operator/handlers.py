"""kopf handlers. Only event handlers: no finalizers, so a run stays deletable without the operator.

Every handler funnels into ``Controller.reconcile``, which is level-triggered and idempotent;
a periodic resync covers any event that was missed while the operator was away or busy.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import kopf
from prometheus_client import start_http_server

from .api import CAMPAIGN_KIND, CAMPAIGN_PLURAL, GROUP, KIND, PLURAL, VERSION
from .campaigns import CampaignController
from .controller import Controller
from .jobs import PART_OF
from .kube import Kube, load_config

log = logging.getLogger(__name__)
RESYNC_SECONDS = float(os.environ.get("MLPERF_RESYNC_SECONDS", "30"))
_controller: Controller | None = None
_campaigns: CampaignController | None = None
# Set by __main__ in single-namespace mode; None watches (and resyncs) every namespace.
WATCHED_NAMESPACES: list[str] | None = None


def controller() -> Controller:
    """The process's one controller: made by the startup handler, which kopf runs before any other, so
    concurrent first events share it and its per-run locks."""
    if _controller is None:
        raise RuntimeError("the controller is made at startup; no handler may run before it")
    return _controller


def campaigns() -> CampaignController:
    if _campaigns is None:
        raise RuntimeError("the campaign controller is made at startup; no handler may run before it")
    return _campaigns


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    global _controller, _campaigns
    load_config()
    kube = Kube(event_workers=2)
    _controller, _campaigns = Controller(kube, recent_seconds=RESYNC_SECONDS), CampaignController(kube)
    log.info("made the controller")
    settings.posting.level = logging.ERROR  # the controller posts its own, meaningful events
    settings.watching.server_timeout = 300
    settings.execution.max_workers = int(os.environ.get("MLPERF_WORKERS", "16"))
    port = int(os.environ.get("MLPERF_METRICS_PORT", "8080"))
    if port:
        start_http_server(port)
        log.info("metrics on :%d/metrics", port)
    stop = threading.Event()
    threading.Thread(target=_resync_forever, args=(stop,), name="resync", daemon=True).start()


@kopf.on.event(GROUP, VERSION, PLURAL)
def run_changed(name: str, namespace: str | None, body: kopf.Body, type: str | None, **_: Any) -> None:
    if not namespace:
        return
    if type == "DELETED":
        controller().forget(body["metadata"]["uid"])
    if type == "DELETED" or not controller().settled(dict(body)):  # no GET for an ended run or our own write
        controller().reconcile(namespace, name)
    for owner in body.metadata.get("ownerReferences") or []:  # a campaign's point moved on
        if owner.get("kind") == CAMPAIGN_KIND and owner.get("apiVersion", "").startswith(GROUP):
            campaigns().reconcile(namespace, owner["name"])


@kopf.on.event(GROUP, VERSION, CAMPAIGN_PLURAL)
def campaign_changed(name: str, namespace: str | None, **_: Any) -> None:
    if namespace:
        campaigns().reconcile(namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels={"app.kubernetes.io/part-of": PART_OF})
def job_changed(body: kopf.Body, namespace: str | None, type: str | None, **_: Any) -> None:
    if not namespace:
        return
    for owner in body.metadata.get("ownerReferences") or []:
        if not owner.get("apiVersion", "").startswith(GROUP):
            continue
        if owner.get("kind") == KIND:
            # The Job controller updates a Job several times per state its run reads, and on after the run ended.
            if controller().job_moved(dict(body), deleted=type == "DELETED") and not controller().ended(owner["uid"]):
                controller().reconcile(namespace, owner["name"])
        elif owner.get("kind") == CAMPAIGN_KIND:  # the campaign's submission Job
            campaigns().reconcile(namespace, owner["name"])


def _resync_forever(stop: threading.Event) -> None:
    while not stop.wait(RESYNC_SECONDS):
        try:
            controller().resync(WATCHED_NAMESPACES)
            campaigns().resync(WATCHED_NAMESPACES)
        except Exception:
            log.exception("resync failed; retrying in %.0f s", RESYNC_SECONDS)
