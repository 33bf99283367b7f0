"""A pod executor that runs nothing: for measuring the operator itself at scale (hundreds of runs on a
2-core machine, where really running each pod's harness process, as PodExecutor does, would measure the
harness instead).

It watches the operator's Running pods and at once writes the outcome a successful step would have written
(PodExecutor's annotations, which kwok's stages turn into a terminated container with that message): the
artifact the operator planned for a producing step, one VALID SYNTHETIC performance result for a harness
step, a bare success for anything else. So the operator's whole pipeline runs (Jobs, leases, the cache
index, results, the status) while the pods' work is faked.

    with StubExecutor(api_client, namespace) as stub: ...   # stub.completed: how many pods it ended
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException
from mlperf_harness.pipeline import Step, plan
from mlperf_harness.results import ProducedArtifact, ScenarioResult, StepOutcome
from mlperf_harness.spec import MLPerfRunSpec
from mlperf_operator.api import GROUP, VERSION
from mlperf_operator.controller import backend_version
from mlperf_operator.jobs import STEP_LABEL

from .executor import EXIT_CODE, PART_OF, TERMINATION_MESSAGE

log = logging.getLogger("stub-executor")
STUB_MESSAGE = "SYNTHETIC: nothing ran (stub executor)"
PRODUCTS = ("NVIDIA-H200", "NVIDIA-A100-SXM4-80GB")  # the GPU products of tools/cluster.py's kwok nodes
SCENARIOS = ("Offline", "Server", "SingleStream")
CLAIM = "mlperf-cache"


def varied_run(name: str, i: int) -> dict[str, Any]:
    """The i-th of many cheap runs that share one claim: resnet50 on onnxruntime, performance only, the scenario
    and GPU product varied (so the dataset, model and preprocessed data are made once for all, each engine once
    per product and scenario)."""
    scenario = SCENARIOS[i % len(SCENARIOS)]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "MLPerfRun",
        "metadata": {"name": name},
        "spec": {
            "benchmark": "resnet50",
            "suite": "v1.0",
            "category": "edge" if scenario == "SingleStream" else "datacenter",
            "scenarios": [scenario],
            "testModes": ["PerformanceOnly"],
            "audits": [],
            "fast": True,
            "backend": "onnxruntime",
            "dataset": {"synthetic": {"samples": 16}},
            "model": {"synthetic": {}},
            "storage": {"existingClaim": CLAIM},
            "system": {"gpuProduct": PRODUCTS[(i // len(SCENARIOS)) % len(PRODUCTS)], "gpuCount": 1},
        },
    }


@functools.lru_cache(maxsize=256)
def _steps(spec_json: str) -> dict[str, Step]:
    spec = MLPerfRunSpec.model_validate_json(spec_json)
    return {s.name: s for s in plan(spec, backend_version(spec))}


def outcome(pod: dict[str, Any]) -> StepOutcome:
    """What the step of this pod would report had it succeeded."""
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0].get("env") or []}
    step = _steps(env["MLPERF_SPEC"])[pod["metadata"]["labels"][STEP_LABEL]]
    if step.artifact:
        made = ProducedArtifact(kind=step.artifact.kind, key=step.artifact.key, inputs=step.artifact.inputs)
        return StepOutcome(step=step.verb, ok=True, message=STUB_MESSAGE, artifact=made)
    if step.verb == "run-harness":  # --scenario S --test-mode M
        scenario, mode = step.args[1], step.args[3]
        result = ScenarioResult(
            scenario=scenario,
            testMode=mode,
            valid=True,
            resultValidity="VALID",
            samplesPerSecond=1000.0,
            synthetic=True,
            device="none (stub executor)",
        )
        return StepOutcome(step=step.verb, ok=True, message=STUB_MESSAGE, results=[result])
    return StepOutcome(step=step.verb, ok=True, message=STUB_MESSAGE)


class StubExecutor:
    def __init__(self, api: client.ApiClient, namespace: str, workers: int = 4) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.completed = 0
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stub-exec")
        self._thread = threading.Thread(target=self._loop, name="stub-exec-watch", daemon=True)

    def __enter__(self) -> StubExecutor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _loop(self) -> None:
        # A watch (not PodExecutor's polling): a thousand pods a minute are each seen once, at once.
        selector = {"label_selector": PART_OF, "field_selector": "status.phase=Running"}
        while not self._stop.is_set():
            try:
                listed = self.core.list_namespaced_pod(self.namespace, _preload_content=False, **selector)
                body = json.loads(listed.data)
                for pod in body["items"]:
                    self._offer(pod)
                stream = watch.Watch().stream(
                    self.core.list_namespaced_pod,
                    self.namespace,
                    resource_version=body["metadata"]["resourceVersion"],
                    timeout_seconds=60,
                    _request_timeout=90,
                    **selector,
                )
                for event in stream:
                    if self._stop.is_set():
                        return
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._offer(event["raw_object"])
            except Exception as exc:  # a 410 Gone or the API server busy: list again
                log.info("pod watch restarts: %s", exc)
                self._stop.wait(0.5)

    def _offer(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        if meta.get("deletionTimestamp") or EXIT_CODE in (meta.get("annotations") or {}):
            return
        if not pod["spec"].get("nodeName"):
            return
        with self._lock:
            if meta["uid"] in self._seen:
                return
            self._seen.add(meta["uid"])
        self._pool.submit(self._complete, pod)

    def _complete(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        try:
            message = outcome(pod).to_message()
            annotations = {EXIT_CODE: "0", TERMINATION_MESSAGE: message}
            self.core.patch_namespaced_pod(meta["name"], meta["namespace"], {"metadata": {"annotations": annotations}})
        except Exception as exc:
            if not (isinstance(exc, ApiException) and exc.status == 404):  # a deleted pod needs nothing
                log.warning("could not complete pod %s (tried again at the next list): %s", meta["name"], exc)
                with self._lock:
                    self._seen.discard(meta["uid"])
            return
        with self._lock:
            self.completed += 1
