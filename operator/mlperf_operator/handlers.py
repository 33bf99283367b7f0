"""kopf handlers. Only event handlers: no finalizers, so a run stays deletable without the operator.

Every handler queues a reconcile (retry.py's work queue, run by worker threads) and returns: ``Controller.reconcile``
is level-triggered and idempotent, a failed one is retried with backoff, and a periodic resync covers any event
that was missed while the operator was away or busy. The handlers are coroutines: a few dict lookups, run in
kopf's event loop, not in its thread pool behind the reconciles.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import kopf

from .api import CAMPAIGN_KIND, CAMPAIGN_PLURAL, GROUP, KIND, PLURAL, VERSION
from .campaigns import CampaignController
from .controller import Controller
from .jobs import PART_OF
from .kube import Kube, load_config
from .retry import Retries

log = logging.getLogger(__name__)
RESYNC_SECONDS = float(os.environ.get("MLPERF_RESYNC_SECONDS", "30"))
WORKERS = int(os.environ.get("MLPERF_WORKERS", "16"))  # run reconciles at once (threads waiting on the API server)
CAMPAIGN_WORKERS = 2
_controller: Controller | None = None
_campaigns: CampaignController | None = None
_campaign_retries: Retries | None = None
# The operator's stop flag (__main__ gives kopf the same one), set at kopf's cleanup at the latest: the resync
# thread ends with the operator.
STOP = threading.Event()
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


def reconcile_run(namespace: str, name: str) -> None:
    """Queue a reconcile of a run; retried with backoff while it fails (the controller's queue: the same for a
    run woken by a finished producer)."""
    controller().retries.add(namespace, name)


def reconcile_campaign(namespace: str, name: str) -> None:
    _made(_campaign_retries).add(namespace, name)


def _made(retries: Retries | None) -> Retries:
    if retries is None:
        raise RuntimeError("the retries are made at startup; no handler may run before it")
    return retries


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    global _controller, _campaigns, _campaign_retries
    load_config()
    kube = Kube(event_workers=2, threads=WORKERS + CAMPAIGN_WORKERS + 3)  # and the resync and retry threads
    _controller, _campaigns = Controller(kube, recent_seconds=RESYNC_SECONDS), CampaignController(kube)
    _campaign_retries = Retries(_campaigns.reconcile, "campaign")
    log.info("made the controller")
    settings.posting.level = logging.ERROR  # the controller posts its own, meaningful events
    settings.watching.server_timeout = 300
    threading.Thread(target=_resync_forever, args=(STOP,), name="resync", daemon=True).start()
    _controller.retries.start(WORKERS)
    _campaign_retries.start(CAMPAIGN_WORKERS)


@kopf.on.cleanup()
def stop_threads(**_: Any) -> None:
    STOP.set()
    if _controller is not None:
        _controller.close()
    if _campaign_retries is not None:
        _campaign_retries.close()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def run_changed(name: str, namespace: str | None, body: kopf.Body, type: str | None, **_: Any) -> None:
    if not namespace:
        return
    if type == "DELETED":
        controller().forget(body["metadata"]["uid"])
    if type == "DELETED" or not controller().settled(dict(body)):  # no GET for an ended run or our own write
        # A run never reconciled goes first: its first Jobs wait on it (admission before progress).
        controller().retries.add(namespace, name, urgent=not (body.get("status") or {}).get("phase"))
    for owner in body.metadata.get("ownerReferences") or []:  # a campaign's point moved on
        if owner.get("kind") == CAMPAIGN_KIND and owner.get("apiVersion", "").startswith(GROUP):
            reconcile_campaign(namespace, owner["name"])


@kopf.on.event(GROUP, VERSION, CAMPAIGN_PLURAL)
async def campaign_changed(name: str, namespace: str | None, **_: Any) -> None:
    if namespace:
        reconcile_campaign(namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels={"app.kubernetes.io/part-of": PART_OF})
async def job_changed(body: kopf.Body, namespace: str | None, type: str | None, **_: Any) -> None:
    if not namespace:
        return
    for owner in body.metadata.get("ownerReferences") or []:
        if not owner.get("apiVersion", "").startswith(GROUP):
            continue
        if owner.get("kind") == KIND:
            # The Job controller updates a Job several times per state its run reads, and on after the run ended.
            if controller().job_moved(dict(body), deleted=type == "DELETED") and not controller().ended(owner["uid"]):
                reconcile_run(namespace, owner["name"])
        elif owner.get("kind") == CAMPAIGN_KIND:  # the campaign's submission Job
            reconcile_campaign(namespace, owner["name"])


def _resync_forever(stop: threading.Event) -> None:
    while not stop.wait(RESYNC_SECONDS):
        try:
            controller().resync(WATCHED_NAMESPACES)
            campaigns().resync(WATCHED_NAMESPACES, reconcile_campaign)
        except Exception:
            log.exception("resync failed; retrying in %.0f s", RESYNC_SECONDS)
