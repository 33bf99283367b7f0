"""The operator at scale (issue 21): N MLPerfRuns on a local control plane with kwok GPU nodes.

    nice -n 10 .venv/bin/python benchmarks/operator_scale.py [--runs 1000] [--nodes 64] [--steady 60]

Starts its own kube-apiserver, etcd, kube-controller-manager, kube-scheduler and kwok (tools/cluster.py),
adds --nodes kwok GPU nodes (half NVIDIA-H200, half NVIDIA-A100, 8 GPUs each), runs the operator as its own
process (python -m mlperf_operator) and applies --runs MLPerfRuns sharing one claim: resnet50 on onnxruntime,
the scenario (Offline, Server, SingleStream) and the GPU product varied, so that the dataset, model and
preprocessed data are shared by all, and each engine by the runs of its product and scenario, as in a real
campaign. Nothing runs in the pods: the stub executor (tests/cluster/stub_executor.py) writes at once the
outcome a successful step reports, and kwok ends the pod with it. What is measured is the operator and the
control plane on this machine; every result is SYNTHETIC.

Printed: the time until every run is admitted (its first Job created) and until all are Succeeded, from the
start of the apply; the operator's peak RSS and CPU seconds (/proc); API requests per run by verb and code
(the operator's own count, and the API server's apiserver_request_total for the resources it uses), 409s
during the run and in a steady-state window after it; reconciles per run; duplicate Jobs.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from cluster import Cluster, cluster_tools, wait_for  # noqa: E402
from cluster.operator_process import OperatorProcess  # noqa: E402
from cluster.stub_executor import CLAIM, PRODUCTS, StubExecutor, varied_run  # noqa: E402
from kubernetes import client  # noqa: E402
from mlperf_operator.api import GROUP, PLURAL, VERSION  # noqa: E402
from mlperf_operator.jobs import ARTIFACT_ANNOTATION, RUN_LABEL, STEP_LABEL  # noqa: E402

# The resources the operator reads and writes (the API server's counts of these include other clients' too).
OPERATOR_RESOURCES = {"mlperfruns", "configmaps", "persistentvolumeclaims", "jobs", "pods", "events", "workloads"}


def gpu_nodes(count: int) -> list[dict[str, Any]]:
    tools = cluster_tools()
    pools = [tools.NodePool("scale-h200", 0, PRODUCTS[0], 8, 143771, "hopper", (9, 0))]
    pools.append(tools.NodePool("scale-a100", 0, PRODUCTS[1], 8, 81920, "ampere", (8, 0)))
    return [tools.node_manifest(pools[i % 2], i // 2) for i in range(count)]


# --- measuring --------------------------------------------------------------------------------------------------


def request_counts(text: str, metric: str) -> collections.Counter[tuple[str, ...]]:
    """A Prometheus counter's samples by their labels (verb, resource[/subresource], code)."""
    counts: collections.Counter[tuple[str, ...]] = collections.Counter()
    for line in text.splitlines():
        if not line.startswith(metric + "{"):
            continue
        labels_text, value = line[len(metric) + 1 :].rsplit("} ", 1)
        labels = dict(part.split("=", 1) for part in labels_text.split('",') if "=" in part)
        labels = {k: v.strip('"') for k, v in labels.items()}
        resource = labels.get("resource", "?")
        if labels.get("subresource"):
            resource += "/" + labels["subresource"]
        counts[(labels.get("verb", "?"), resource, labels.get("code", "?"))] += float(value)
    return counts


def apiserver(cluster: Cluster) -> collections.Counter[tuple[str, ...]]:
    return request_counts(cluster.kubectl("get", "--raw", "/metrics").stdout, "apiserver_request_total")


def operator_metric(op: OperatorProcess, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in op.metrics().splitlines() if line.startswith(name + " "))


def proc_stats(pid: int) -> tuple[float, float, float]:
    """(RSS MB, peak RSS MB, CPU seconds) of a process, from /proc."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024, cpu


def list_jobs(batch: client.BatchV1Api, namespace: str) -> list[dict[str, Any]]:
    # Plain JSON: the client's models take seconds of a shared core for a thousand Jobs.
    return list(json.loads(batch.list_namespaced_job(namespace, _preload_content=False).data)["items"])


def stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def diff(after: collections.Counter[tuple[str, ...]], before: collections.Counter[tuple[str, ...]]) -> dict:
    return {k: v for k, v in ((k, after[k] - before[k]) for k in after) if v > 0}


def table(counts: dict[tuple[str, ...], float], runs: int, keep: set[str] | None = None) -> list[str]:
    rows = sorted((k, v) for k, v in counts.items() if keep is None or k[1].split("/")[0] in keep)
    return [f"    {verb:6} {resource:32} {code:4} {v:8.0f}  {v / runs:7.2f}/run" for (verb, resource, code), v in rows]


def conflicts(counts: dict[tuple[str, ...], float]) -> dict[str, float]:
    return {f"{verb} {resource}": v for (verb, resource, code), v in counts.items() if code == "409"}


# --- the benchmark ----------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--nodes", type=int, default=64, help="kwok GPU nodes (8 GPUs each), besides the cluster's own")
    ap.add_argument("--steady", type=float, default=60, help="seconds of the steady-state window after all succeeded")
    ap.add_argument("--resync", type=float, default=30, help="the operator's MLPERF_RESYNC_SECONDS")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    tools = cluster_tools()
    local = tools.LocalCluster(f"scale-{os.getpid()}", die_with_parent=True)
    print(f"starting the control plane ({local.name}) ...", flush=True)
    local.up()
    cluster = Cluster(local.name, local.state_dir, local.kubeconfig, local.bin_dir, owned=True, local=local)
    workdir = Path(tempfile.mkdtemp(prefix="operator-scale-"))
    try:
        figures = measure(cluster, args, workdir)
    finally:
        local.down()
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


def setup(cluster: Cluster, api: client.ApiClient, nodes: int) -> str:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "-f", str(REPO / "crds"), "--timeout=60s")
    core = client.CoreV1Api(api)
    for node in gpu_nodes(nodes):
        core.create_node(node)
    namespace = f"scale-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": namespace}})
    wait_for(lambda: core.list_namespaced_service_account(namespace).items, timeout=60, what="the default SA")
    cluster.local.create_claim(namespace, CLAIM)
    ready = lambda: core.read_namespaced_persistent_volume_claim(CLAIM, namespace).status.phase == "Bound"  # noqa: E731
    wait_for(ready, timeout=60, what=f"PVC {CLAIM} to bind")
    return namespace


def measure(cluster: Cluster, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    api = cluster.api_client()
    namespace = setup(cluster, api, args.nodes)
    custom, batch = client.CustomObjectsApi(api), client.BatchV1Api(api)
    names = [f"run-{i:04d}" for i in range(args.runs)]
    log = workdir / "operator.log"
    with (
        OperatorProcess(cluster.kubeconfig, [namespace], log, resync_seconds=args.resync) as op,
        StubExecutor(api, namespace) as stub,
    ):
        assert op.proc is not None
        pid = op.proc.pid
        before = apiserver(cluster)
        print(f"applying {args.runs} runs to {args.nodes} kwok GPU nodes (operator pid {pid}, log {log}) ...")
        start = time.time()
        for i, name in enumerate(names):
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, varied_run(name, i))
        applied = time.time() - start
        first_job: dict[str, float] = {}
        created: dict[str, float] = {}
        phases: collections.Counter[str] = collections.Counter()
        peak_rss = 0.0
        while True:
            rss, _, cpu = proc_stats(pid)
            peak_rss = max(peak_rss, rss)
            for job in list_jobs(batch, namespace):
                run, made = job["metadata"]["labels"][RUN_LABEL], job["metadata"]["creationTimestamp"]
                first_job[run] = min(first_job.get(run, time.time()), stamp(made))
            runs = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
            created.update({r["metadata"]["name"]: stamp(r["metadata"]["creationTimestamp"]) for r in runs})
            phases = collections.Counter((r.get("status") or {}).get("phase", "New") for r in runs)
            elapsed = time.time() - start
            print(f"  {elapsed:6.0f} s  admitted {len(first_job)}  {dict(phases)}  rss {rss:.0f} MB  cpu {cpu:.0f} s")
            if phases["Succeeded"] + phases["Failed"] == args.runs or elapsed > args.timeout:
                break
            time.sleep(5)
        done = time.time() - start
        during = apiserver(cluster)
        own_during = request_counts(op.metrics(), "mlperf_api_requests_total")
        reconciles = operator_metric(op, "mlperf_reconciles_total")
        print(f"all ended after {done:.0f} s; steady-state window of {args.steady:.0f} s ...", flush=True)
        time.sleep(args.steady)
        after = apiserver(cluster)
        own_after = request_counts(op.metrics(), "mlperf_api_requests_total")
        steady_reconciles = operator_metric(op, "mlperf_reconciles_total") - reconciles
        rss, hwm, cpu = proc_stats(pid)
        peak_rss = max(peak_rss, hwm)
        listed = list_jobs(batch, namespace)
        jobs = [j["metadata"] for j in listed]

    per_step = collections.Counter((j["labels"][RUN_LABEL], j["labels"][STEP_LABEL]) for j in jobs)
    per_artifact = collections.Counter(a for j in jobs if (a := (j.get("annotations") or {}).get(ARTIFACT_ANNOTATION)))
    admitted = max((t - start for t in first_job.values()), default=float("nan"))
    # The shared artifacts' producer chain (dataset, model, preprocess, engines), on the admission's critical path:
    # each Job's creation and completion from the apply's start (1 s resolution), and how many runs had been
    # admitted by the time it completed.
    chain = []
    for job in sorted(listed, key=lambda j: j["metadata"]["creationTimestamp"]):
        if ARTIFACT_ANNOTATION not in (job["metadata"].get("annotations") or {}):
            continue
        made, ended = stamp(job["metadata"]["creationTimestamp"]), (job.get("status") or {}).get("completionTime")
        done_at = stamp(ended) if ended else float("nan")
        by_then = sum(1 for t in first_job.values() if t <= done_at)
        step = job["metadata"]["labels"][STEP_LABEL]
        chain.append(f"{step} created {made - start:.0f} s, done {done_at - start:.0f} s ({by_then} admitted by then)")
    # Each run's own wait, from its creation (the apply of a thousand runs takes a while itself); 1 s resolution.
    waits = sorted(t - created[run] for run, t in first_job.items() if run in created)
    run_counts, steady_counts = diff(during, before), diff(after, during)
    figures: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores (shared), {os.uname().release}",
        "runs": args.runs,
        "nodes": args.nodes,
        "phases": dict(phases),
        "apply_seconds": round(applied, 1),
        "all_admitted_seconds": round(admitted, 1),
        "producer_chain": chain,
        "admitted_runs": len(first_job),
        "admission_wait_median_seconds": waits[len(waits) // 2] if waits else None,
        "admission_wait_max_seconds": waits[-1] if waits else None,
        "all_succeeded_seconds": round(done, 1),
        "operator_peak_rss_mb": round(peak_rss, 1),
        "operator_cpu_seconds": round(cpu, 1),
        "reconciles_per_run": round(reconciles / args.runs, 2),
        "steady_reconciles": steady_reconciles,
        "jobs": len(jobs),
        "pods_completed_by_stub": stub.completed,
        "duplicate_jobs": sum(n - 1 for n in per_step.values() if n > 1),
        "artifacts_made_twice": sum(n - 1 for n in per_artifact.values() if n > 1),
        "conflicts_409_during": conflicts(run_counts),
        "conflicts_409_steady": conflicts(steady_counts),
        "operator_requests_during": {" ".join(k): v for k, v in diff(own_during, collections.Counter()).items()},
        "operator_requests_steady": {" ".join(k): v for k, v in diff(own_after, own_during).items()},
    }
    report(figures, run_counts, steady_counts, own_during, own_after)
    return figures


def report(
    figures: dict[str, Any],
    run_counts: dict[tuple[str, ...], float],
    steady_counts: dict[tuple[str, ...], float],
    own_during: collections.Counter[tuple[str, ...]],
    own_after: collections.Counter[tuple[str, ...]],
) -> None:
    n = figures["runs"]
    print(f"\n== operator at scale: {n} runs, {figures['nodes']} kwok GPU nodes, {figures['machine']} ==")
    print("SYNTHETIC: kwok fakes the nodes and pods; the stub executor fakes every step's outcome at once.")
    for key in (
        "phases",
        "apply_seconds",
        "all_admitted_seconds",
        "producer_chain",
        "admission_wait_median_seconds",
        "admission_wait_max_seconds",
        "all_succeeded_seconds",
        "operator_peak_rss_mb",
        "operator_cpu_seconds",
        "reconciles_per_run",
        "steady_reconciles",
        "jobs",
        "duplicate_jobs",
        "artifacts_made_twice",
        "conflicts_409_during",
        "conflicts_409_steady",
    ):
        if isinstance(figures[key], list):
            print(f"  {key}:" + "".join(f"\n    {line}" for line in figures[key]))
        else:
            print(f"  {key:24} {figures[key]}")
    print("  the operator's own requests during the run (verb, resource, code):")
    print("\n".join(table(dict(own_during), n)))
    print(f"  the operator's own requests in the {figures['steady_reconciles']:.0f}-reconcile steady window:")
    print("\n".join(table(diff(own_after, own_during), n)) or "    none")
    print("  apiserver_request_total during the run, resources the operator uses (all clients):")
    print("\n".join(table(run_counts, n, OPERATOR_RESOURCES)))
    print("  apiserver_request_total in the steady window, resources the operator uses (all clients):")
    print("\n".join(table(steady_counts, n, OPERATOR_RESOURCES)) or "    none")


if __name__ == "__main__":
    main()
