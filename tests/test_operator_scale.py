"""Many runs at once on the real control plane (issue 21), small: thirty runs on the session cluster's kwok GPU
nodes, their pods ended by the stub executor (nothing runs; see tests/cluster/stub_executor.py). Every run
succeeds, no step gets a second Job, each shared artifact is made once, and at rest the operator gets no 409
and writes nothing. benchmarks/operator_scale.py is the same at a thousand runs, with the figures.
"""

from __future__ import annotations

import collections
import json
import time

import pytest
import yaml
from cluster import Cluster
from cluster.operator_process import OperatorProcess
from cluster.stub_executor import StubExecutor, varied_run
from kubernetes import client
from mlperf_operator.jobs import ARTIFACT_ANNOTATION, RUN_LABEL, STEP_LABEL
from test_operator_e2e import crds, get_run, make_claim, operator, wait_phase

__all__ = ["crds", "operator"]  # fixtures, used by name

RUNS = 30
REST_SECONDS = 20  # four of the test operator's 5 s resyncs


def requests(op: OperatorProcess) -> collections.Counter[tuple[str, str, str]]:
    """The operator's own API requests so far, by (verb, resource, code)."""
    counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for line in op.metrics().splitlines():
        if line.startswith("mlperf_api_requests_total{"):
            labels_text, value = line.split("{", 1)[1].rsplit("} ", 1)
            labels = dict(kv.split("=", 1) for kv in labels_text.split(","))
            key = (labels["verb"].strip('"'), labels["resource"].strip('"'), labels["code"].strip('"'))
            counts[key] += float(value)
    return counts


@pytest.mark.timeout(1800)
def test_thirty_runs_at_once_succeed_with_one_job_per_step_and_a_quiet_operator_at_rest(
    cluster: Cluster, api: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    make_claim(api, namespace)
    names = [f"many-{i:02d}" for i in range(RUNS)]
    with StubExecutor(api, namespace):
        docs = [varied_run(name, i) for i, name in enumerate(names)]
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(docs))
        for name in names:
            status = wait_phase(api, namespace, name, {"Succeeded", "Failed"}, operator)["status"]
            assert status["phase"] == "Succeeded", (name, json.dumps(status, indent=1)[:2000])
        assert all(get_run(api, namespace, n)["status"]["synthetic"] for n in names)

    jobs = [j.metadata for j in client.BatchV1Api(api).list_namespaced_job(namespace).items]
    per_step = collections.Counter((j.labels[RUN_LABEL], j.labels[STEP_LABEL]) for j in jobs)
    assert [k for k, n in per_step.items() if n > 1] == []
    per_artifact = collections.Counter(a for j in jobs if (a := (j.annotations or {}).get(ARTIFACT_ANNOTATION)))
    assert [a for a, n in per_artifact.items() if n > 1] == [], per_artifact

    time.sleep(REST_SECONDS / 2)  # the Job controller's last updates of the last Jobs
    before = requests(operator)
    time.sleep(REST_SECONDS)
    at_rest = requests(operator) - before
    assert not [k for k in at_rest if k[2] == "409"], at_rest
    # Events may still be on their way (they are posted off the reconciles' path); nothing else is written.
    assert not [k for k in at_rest if k[0] in ("POST", "PUT", "PATCH", "DELETE") and k[1] != "events"], at_rest
