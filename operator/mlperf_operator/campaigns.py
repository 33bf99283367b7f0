"""One reconcile of one MLPerfCampaign: read its runs, decide (campaign.py), act."""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from mlperf_harness.spec import MLPerfRunSpec
from pydantic import ValidationError

from . import metrics
from .api import CAMPAIGN_PLURAL
from .campaign import (
    CAMPAIGN_LABEL,
    MLPerfCampaignSpec,
    MLPerfCampaignStatus,
    build_run,
    campaign_labels,
    decide,
    owned_by,
)
from .jobs import build_submission_job, run_label
from .kube import Kube
from .observe import JobView, job_view

log = logging.getLogger(__name__)


class CampaignController:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)

    def reconcile(self, namespace: str, name: str) -> None:
        """Bring the campaign's runs in line with its matrix; safe to call at any time, any number of times."""
        key = f"{namespace}/{name}"
        with self._locks[key]:
            campaign = self.kube.get_campaign(namespace, name)
            if campaign is None or campaign["metadata"].get("deletionTimestamp"):
                metrics.observe_campaign(namespace, name, None)
                self._locks.pop(key, None)  # state pruned with the campaign
                return
            previous = MLPerfCampaignStatus.model_validate(campaign.get("status") or {})
            try:
                spec = MLPerfCampaignSpec.model_validate(campaign.get("spec") or {})
            except ValidationError as exc:
                errors = "; ".join(f"spec.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
                self._write(campaign, previous, previous.model_copy(update={"phase": "Failed", "message": errors}))
                return
            selector = f"{CAMPAIGN_LABEL}={run_label(name)}"
            runs = [r for r in self.kube.campaign_runs(namespace, selector) if owned_by(r, campaign)]
            decision = decide(campaign, spec, runs, previous, self._submission_jobs(campaign, selector))
            for run in decision.delete:
                self.kube.delete_run(namespace, run)
            for point, attempt in decision.create:
                self.kube.create(build_run(campaign, point, attempt))
            if (job := decision.submit) is not None:
                self.kube.create(
                    build_submission_job(
                        campaign,
                        job.name,
                        MLPerfRunSpec.model_validate(job.spec),
                        campaign_labels(name),
                        job.runs,
                        job.out,
                    )
                )
            self._write(campaign, previous, decision.status)
            for type_, reason, message in decision.events:
                self.kube.event(campaign, type_, reason, message)
            metrics.observe_campaign(namespace, name, decision.status)

    def _submission_jobs(self, campaign: dict[str, Any], selector: str) -> dict[str, JobView]:
        """The campaign's submission Jobs, by name, as the operator reads a step's Job."""
        ns = campaign["metadata"]["namespace"]
        selector += ",app.kubernetes.io/component=submission"
        jobs = [j for j in self.kube.jobs(ns, selector) if owned_by(j, campaign)]
        if not jobs:
            return {}
        pods = self.kube.pods(ns, selector)
        return {j["metadata"]["name"]: job_view(j, pods, self.kube.pod_log_tail) for j in jobs}

    def _write(self, campaign: dict[str, Any], previous: MLPerfCampaignStatus, status: MLPerfCampaignStatus) -> None:
        new = status.model_dump(mode="json", exclude_none=True)
        if new != previous.model_dump(mode="json", exclude_none=True):
            meta = campaign["metadata"]
            self.kube.patch_status(meta["namespace"], meta["name"], new, plural=CAMPAIGN_PLURAL)

    def resync(self, namespaces: list[str] | None, reconcile: Callable[[str, str], None] | None = None) -> None:
        for campaign in self.kube.list_campaigns(namespaces):
            meta = campaign["metadata"]
            try:
                (reconcile or self.reconcile)(meta["namespace"], meta["name"])
            except Exception:
                log.exception("reconcile of campaign %s/%s failed", meta["namespace"], meta["name"])
