"""The operator's reads and writes against the Kubernetes API, as plain dicts (what they mean is observe.py's).

Creation is idempotent by name (409 means it is already there), so a restarted operator never
makes a second copy of anything.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast
from urllib.parse import urlsplit

import kubernetes
from kubernetes.client.exceptions import ApiException

from . import metrics
from .api import (
    CAMPAIGN_PLURAL,
    GROUP,
    KUEUE_GROUP,
    KUEUE_JOB_UID_LABEL,
    KUEUE_VERSION,
    PLURAL,
    VERSION,
    WORKLOAD_PLURAL,
)
from .jobs import RUN_LABEL, cache_index_name, run_label
from .status import now

log = logging.getLogger(__name__)


def load_config() -> None:
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        kubernetes.config.load_incluster_config()
    else:
        kubernetes.config.load_kube_config()


def request_labels(method: str, url: str) -> tuple[str, str]:
    """(verb, resource) of a request as the API server's apiserver_request_total names them: a GET of a
    collection is a LIST, a subresource is resource/subresource."""
    parts = urlsplit(url).path.strip("/").split("/")
    rest = parts[2:] if parts[:1] == ["api"] else parts[3:]  # /api/v1/... or /apis/<group>/<version>/...
    if rest[:1] == ["namespaces"] and len(rest) > 2:
        rest = rest[2:]
    resource = "/".join([rest[0], *rest[2:3]]) if rest else "?"
    verb = "LIST" if method == "GET" and len(rest) == 1 else method
    return verb, resource


class CountingApiClient(kubernetes.client.ApiClient):
    """Counts the operator's own API requests by verb, resource and code (mlperf_api_requests_total): the API
    server's metrics cannot tell them from the Job controller's, the scheduler's or kwok's."""

    def call_api(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        verb, resource = request_labels(method, url)
        try:
            response = super().call_api(method, url, *args, **kwargs)
        except ApiException as exc:
            metrics.API_REQUESTS.labels(verb, resource, str(exc.status)).inc()
            raise
        metrics.API_REQUESTS.labels(verb, resource, str(response.status)).inc()
        return response


class Kube:
    def __init__(
        self, api_client: kubernetes.client.ApiClient | None = None, event_workers: int = 0, threads: int = 0
    ) -> None:
        """`event_workers`: threads that post Events off the reconcile's path, as client-go's recorder does
        (0: posted before event() returns). `threads`: how many threads send requests at once, besides those;
        each keeps a connection (the client's pool holds 10 otherwise: the others' connections were discarded
        after each request and made again, a TLS handshake each)."""
        if api_client is None:
            config = kubernetes.client.Configuration.get_default_copy()
            config.connection_pool_maxsize = max(config.connection_pool_maxsize, threads + event_workers)
            api_client = CountingApiClient(config)
        self.client = api_client
        self._events = ThreadPoolExecutor(event_workers, thread_name_prefix="events") if event_workers else None
        self.core = kubernetes.client.CoreV1Api(self.client)
        self.batch = kubernetes.client.BatchV1Api(self.client)
        self.custom = kubernetes.client.CustomObjectsApi(self.client)

    # --- reads -------------------------------------------------------------------------------

    @staticmethod
    def _json(response: Any) -> Any:
        return json.loads(response.data)

    @staticmethod
    def _unparsed(response: Any) -> None:
        """A write's answer, asked for with _preload_content=False so that the client does not parse it into its
        models (it is not used): read, which gives its connection back to the pool."""
        _ = response.data

    def get_run(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return cast(
                dict[str, Any], self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list_runs(self, namespaces: list[str] | None = None, page: int = 100) -> Iterator[dict[str, Any]]:
        """Runs of the watched namespaces (all when None): a namespaced operator may not list cluster-wide. In
        pages: a thousand runs' statuses at once were the operator's peak of memory, every resync."""
        scopes: list[str | None] = list(namespaces) if namespaces else [None]
        for ns in scopes:
            token = None
            while True:
                if ns is None:
                    listed = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, limit=page, _continue=token)
                else:
                    listed = self.custom.list_namespaced_custom_object(
                        GROUP, VERSION, ns, PLURAL, limit=page, _continue=token
                    )
                yield from cast(dict[str, Any], listed)["items"]
                token = cast(dict[str, Any], listed)["metadata"].get("continue")
                if not token:
                    break

    def get_campaign(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return cast(
                dict[str, Any],
                self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, CAMPAIGN_PLURAL, name),
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list_campaigns(self, namespaces: list[str] | None = None) -> list[dict[str, Any]]:
        if not namespaces:
            listed = self.custom.list_cluster_custom_object(GROUP, VERSION, CAMPAIGN_PLURAL)
            return cast(dict[str, Any], listed)["items"]
        found: list[dict[str, Any]] = []
        for ns in namespaces:
            listed = self.custom.list_namespaced_custom_object(GROUP, VERSION, ns, CAMPAIGN_PLURAL)
            found += cast(dict[str, Any], listed)["items"]
        return found

    def campaign_runs(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        listed = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, label_selector=selector)
        return cast(dict[str, Any], listed)["items"]

    def run_jobs(self, namespace: str, run: str) -> list[dict[str, Any]]:
        return self.jobs(namespace, f"{RUN_LABEL}={run_label(run)}")

    def run_pods(self, namespace: str, run: str) -> list[dict[str, Any]]:
        return self.pods(namespace, f"{RUN_LABEL}={run_label(run)}")

    def jobs(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        resp = self.batch.list_namespaced_job(namespace, label_selector=selector, _preload_content=False)
        return self._json(resp)["items"]

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        resp = self.core.list_namespaced_pod(namespace, label_selector=selector, _preload_content=False)
        return self._json(resp)["items"]

    def workloads(self, namespace: str, job_uids: list[str]) -> list[dict[str, Any]]:
        """Kueue's Workloads of these Jobs; none where Kueue is not installed."""
        selector = f"{KUEUE_JOB_UID_LABEL} in ({','.join(sorted(job_uids))})"
        try:
            listed = self.custom.list_namespaced_custom_object(
                KUEUE_GROUP, KUEUE_VERSION, namespace, WORKLOAD_PLURAL, label_selector=selector
            )
        except ApiException as exc:
            if exc.status == 404:
                return []
            raise
        return cast(dict[str, Any], listed)["items"]

    def get_claim(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            resp = self.core.read_namespaced_persistent_volume_claim(name, namespace, _preload_content=False)
            return self._json(resp)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def cache_index(self, namespace: str, claim: str) -> tuple[dict[str, str], str] | None:
        """The claim's cache index: its data and the resourceVersion that a conditional patch names."""
        try:
            resp = self.core.read_namespaced_config_map(cache_index_name(claim), namespace, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        index = self._json(resp)
        return index.get("data") or {}, index["metadata"]["resourceVersion"]

    def pod_log_tail(self, namespace: str, pod: str, lines: int = 20) -> str:
        try:
            return str(self.core.read_namespaced_pod_log(pod, namespace, tail_lines=lines))
        except ApiException:
            return ""  # no kubelet to ask (or the pod is gone): the termination message must do

    # --- writes ------------------------------------------------------------------------------

    def create(self, obj: dict[str, Any]) -> bool:
        """Create an object; False when one of that name already exists."""
        ns, kind = obj["metadata"]["namespace"], obj["kind"]
        creators: dict[str, Callable[..., Any]] = {
            "Job": self.batch.create_namespaced_job,
            "PersistentVolumeClaim": self.core.create_namespaced_persistent_volume_claim,
            "ConfigMap": self.core.create_namespaced_config_map,
            "MLPerfRun": lambda ns, body, **kw: self.custom.create_namespaced_custom_object(
                GROUP, VERSION, ns, PLURAL, body, **kw
            ),
        }
        create = creators[kind]
        try:
            self._unparsed(create(ns, obj, _preload_content=False))
            return True
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise

    def suspend_job(self, namespace: str, name: str) -> None:
        """A suspended Job keeps its history; the Job controller removes its pods."""
        try:
            self._unparsed(
                self.batch.patch_namespaced_job(name, namespace, {"spec": {"suspend": True}}, _preload_content=False)
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    def patch_cache_index(
        self, namespace: str, claim: str, entries: dict[str, str | None], resource_version: str | None = None
    ) -> bool:
        """Merge entries into the index (None removes one); with a resourceVersion only if nobody wrote since:
        False when somebody did."""
        body: dict[str, Any] = {"data": entries}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            name = cache_index_name(claim)
            self._unparsed(self.core.patch_namespaced_config_map(name, namespace, body, _preload_content=False))
        except ApiException as exc:
            if exc.status == 409 and resource_version:
                return False
            raise
        return True

    def delete_run(self, namespace: str, name: str) -> None:
        """Delete a run; its Jobs and pods go with it (the garbage collector follows their owner)."""
        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def patch_status(self, namespace: str, name: str, status: dict[str, Any], plural: str = PLURAL) -> str:
        """Write the status; the object's resourceVersion after the write."""
        body = {"status": status}
        patched = self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, plural, name, body)
        return str(cast(dict[str, Any], patched)["metadata"]["resourceVersion"])

    def event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """An Event about a run or a campaign."""
        meta = obj["metadata"]
        stamp = now()
        body = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": obj.get("kind", "MLPerfRun"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "mlperf-operator"},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        if self._events is None:
            self._post_event(body)
        else:
            self._events.submit(self._post_event, body)

    def _post_event(self, body: dict[str, Any]) -> None:
        try:
            namespace = body["metadata"]["namespace"]
            self._unparsed(self.core.create_namespaced_event(namespace, cast(Any, body), _preload_content=False))
        except Exception as exc:  # an event is never worth failing a reconcile for
            log.warning("could not post event %s: %s", body["reason"], exc)
