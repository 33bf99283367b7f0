#!/usr/bin/env python3
"""A local Kubernetes cluster from real binaries, with fake GPU nodes run by kwok.

    python tools/cluster.py up [--name dev]      start (or reuse a healthy) cluster; prints "ready in N s"
    python tools/cluster.py down [--name dev]    stop it and delete its state
    python tools/cluster.py status [--name dev]  exit 0 when healthy
    python tools/cluster.py kubeconfig [--name dev]
    python tools/cluster.py up --executor default --claim mlperf-cache   the dev cluster: pod executor, claim
    python tools/cluster.py env [--name dev]    export lines: KUBECONFIG, the repo's kubectl and helm on PATH
    python tools/cluster.py up --kueue          also Kueue (its CRDs, its manager, its webhooks): examples/kueue/

etcd, kube-apiserver, kube-controller-manager and kube-scheduler are the real control plane; kwok plays
the kubelet of the fake nodes with the stages in tools/kwok-stages/. Everything listens on 127.0.0.1 on
free ports chosen at start. State (PKI, kubeconfigs, logs, pids, etcd data) lives in
~/.cache/mlperf-operator/cluster/<name>/. The binaries come from tools/build-tools.sh.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CACHE = Path(os.environ.get("MLPERF_CACHE", Path.home() / ".cache" / "mlperf-operator"))
BIN = Path(os.environ.get("MLPERF_TOOLS_BIN", CACHE / "bin"))
CLUSTERS = CACHE / "cluster"
STAGES = Path(__file__).resolve().parent / "kwok-stages"
EXECUTOR = Path(__file__).resolve().parents[1] / "tests" / "cluster" / "executor.py"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
KUEUE = "kueue"  # opt-in (up --kueue, the tests' `kueue` fixture); stopped first, before its API server
KUEUE_VERSION = os.environ.get("KUEUE_VERSION", "v0.19.2")  # as tools/build-tools.sh builds it
# Kueue's manager insists on a metrics serving certificate at this fixed path unless it manages its own
# certificates (which are for a Service DNS name the API server cannot reach here): a throwaway one is put there.
KUEUE_METRICS_CERTS = Path("/etc/kueue/metrics/certs")
KUEUE_WEBHOOKS = ("kueue-mutating-webhook-configuration", "kueue-validating-webhook-configuration")
SERVICE_CIDR = "10.96.0.0/16"
FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
# The default StorageClass; kwok's volume stages (tools/kwok-stages/volume-stages.yaml) provision its claims.
STORAGE_CLASS: dict[str, Any] = {
    "apiVersion": "storage.k8s.io/v1",
    "kind": "StorageClass",
    "metadata": {"name": "kwok-volume", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
    "provisioner": "kwok.x-k8s.io/volume",
    "reclaimPolicy": "Delete",
    "volumeBindingMode": "Immediate",
}


class ClusterError(RuntimeError):
    """The cluster could not be started or is not healthy."""


@dataclass(frozen=True)
class NodePool:
    prefix: str
    count: int
    gpu_product: str | None = None
    gpu_count: int = 0
    gpu_memory_mb: int = 0
    gpu_family: str = ""
    compute: tuple[int, int] = (0, 0)


# The fake fleet: GPU nodes carry NVIDIA GPU-feature-discovery labels, capacity and the GPU taint.
NODE_POOLS = (
    NodePool("h200", 4, "NVIDIA-H200", 8, 143771, "hopper", (9, 0)),
    NodePool("a100", 2, "NVIDIA-A100-SXM4-80GB", 8, 81920, "ampere", (8, 0)),
    NodePool("cpu", 2),
)


def node_manifest(pool: NodePool, index: int) -> dict[str, Any]:
    name = f"{pool.prefix}-{index}"
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        "mlperf-operator.io/node-pool": pool.prefix,
    }
    capacity = {"cpu": "128", "memory": "1Ti", "pods": "110", "ephemeral-storage": "2Ti"}
    taints: list[dict[str, str]] = []
    if pool.gpu_product:
        labels |= {
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": pool.gpu_product,
            "nvidia.com/gpu.count": str(pool.gpu_count),
            "nvidia.com/gpu.memory": str(pool.gpu_memory_mb),
            "nvidia.com/gpu.family": pool.gpu_family,
            "nvidia.com/gpu.compute.major": str(pool.compute[0]),
            "nvidia.com/gpu.compute.minor": str(pool.compute[1]),
            "nvidia.com/cuda.driver.major": "570",
        }
        capacity["nvidia.com/gpu"] = str(pool.gpu_count)
        taints.append(dict(GPU_TAINT))
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": {FAKE_NODE_ANNOTATION: "fake"}},
        "spec": {"taints": taints},
        # Node status given at create time is kept; kwok's node-initialize stage keeps this capacity.
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def all_nodes() -> list[dict[str, Any]]:
    return [node_manifest(pool, i) for pool in NODE_POOLS for i in range(pool.count)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def pid_alive(pid: int, binary: str) -> bool:
    """True when pid runs `binary` (guards against a recycled pid of a long-dead cluster)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return Path(cmdline).name == binary and stat.rsplit(")", 1)[1].split()[0] != "Z"


# --- PKI (openssl): one CA; EC P-256 keys, which are quick to make and which Kubernetes accepts -------------


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ClusterError(f"openssl {' '.join(args[:2])} failed:\n{proc.stderr}")


def _cert(pki: Path, name: str, subject: str, usage: str, sans: str = "") -> None:
    """Issue <name>.crt/.key signed by the cluster CA."""
    ext = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature", f"extendedKeyUsage={usage}"]
    if sans:
        ext.append(f"subjectAltName={sans}")
    (pki / f"{name}.cnf").write_text("[req]\ndistinguished_name=dn\n[dn]\n[ext]\n" + "\n".join(ext) + "\n")
    _openssl(
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        subject,
        "-config",
        f"{name}.cnf",
        cwd=pki,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "3650",
        "-extfile",
        f"{name}.cnf",
        "-extensions",
        "ext",
        "-out",
        f"{name}.crt",
        cwd=pki,
    )


def make_pki(pki: Path) -> None:
    pki.mkdir(parents=True, exist_ok=True)
    (pki / "ca.cnf").write_text(
        "[req]\ndistinguished_name=dn\n[dn]\n[ext]\nbasicConstraints=critical,CA:TRUE\n"
        "keyUsage=critical,keyCertSign,cRLSign,digitalSignature\n"
    )
    _openssl(
        "req",
        "-x509",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=mlperf-operator-local-ca",
        "-days",
        "3650",
        "-config",
        "ca.cnf",
        "-extensions",
        "ext",
        cwd=pki,
    )
    sans = (
        "IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
        "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    )
    _cert(pki, "apiserver", "/CN=kube-apiserver", "serverAuth", sans)
    _cert(pki, "admin", "/O=system:masters/CN=kubernetes-admin", "clientAuth")
    _cert(pki, "kube-controller-manager", "/CN=system:kube-controller-manager", "clientAuth")
    _cert(pki, "kube-scheduler", "/CN=system:kube-scheduler", "clientAuth")
    # kwok plays the kubelet of many nodes at once; the Node authorizer only knows one node per identity.
    _cert(pki, "kwok", "/O=system:masters/CN=kwok-controller", "clientAuth")
    # The service-account token signing key pair.
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "sa.key", cwd=pki)
    _openssl("ec", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def kubeconfig_text(server: str, pki: Path, user: str, embed: bool, context: str) -> str:
    def ref(key: str, path: Path) -> dict[str, str]:
        if embed:
            return {f"{key}-data": base64.b64encode(path.read_bytes()).decode()}
        return {key: str(path)}

    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": {"server": server, **ref("certificate-authority", pki / "ca.crt")}}],
        "users": [
            {
                "name": user,
                "user": {**ref("client-certificate", pki / f"{user}.crt"), **ref("client-key", pki / f"{user}.key")},
            }
        ],
        "contexts": [{"name": context, "context": {"cluster": context, "user": user}}],
        "current-context": context,
    }
    return json.dumps(cfg, indent=2) + "\n"  # JSON is YAML, so kubectl and clients read it


# --- the cluster ---------------------------------------------------------------------------------------------


@dataclass
class LocalCluster:
    name: str = "dev"
    root: Path = CLUSTERS
    bin_dir: Path = BIN
    log: Any = field(default=print, repr=False)
    # Tie the processes to the process that starts them (a test session's own cluster): PR_SET_PDEATHSIG.
    die_with_parent: bool = False
    # Processes started by this object, kept so that they can be reaped (a cluster started in-process).
    _children: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)
    reused: bool = field(default=False, init=False)  # whether the last up() found it running

    @property
    def state_dir(self) -> Path:
        return self.root / self.name

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def pki(self) -> Path:
        return self.state_dir / "pki"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    def state(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.state_file.read_text()))
        except (OSError, ValueError):
            return {}

    def _save(self, state: dict[str, Any]) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)

    # -- health ------------------------------------------------------------------------------------------

    def dead_components(self) -> list[str]:
        pids = self.state().get("pids", {})
        return [c for c in COMPONENTS if not (c in pids and pid_alive(int(pids[c]), c))]

    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def _api(self, path: str, method: str = "GET", body: Any = None, timeout: float = 5) -> tuple[int, bytes]:
        """A request to the API server as the admin; (0, error) when it cannot be reached."""
        url = f"https://127.0.0.1:{self.state()['ports']['apiserver']}{path}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, context=self._ssl(), timeout=timeout) as resp:
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as e:
            return int(e.code), bytes(e.read())
        except (OSError, ValueError) as e:  # refused, TLS not up yet, timeouts
            return 0, str(e).encode()

    def _ready_problem(self) -> str | None:
        """What still keeps the cluster from being ready, or None."""
        code, body = self._api("/readyz")
        if code != 200:
            return f"kube-apiserver /readyz: {code} {body[-200:].decode(errors='replace')}"
        code, body = self._api("/api/v1/nodes?labelSelector=type%3Dkwok")
        if code != 200:
            return f"list nodes: {code}"
        nodes = json.loads(body)["items"]
        ready = [
            n
            for n in nodes
            if any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))
        ]
        # The node lifecycle controller must also have lifted its not-ready taint, or nothing schedules.
        untainted = [
            n
            for n in ready
            if not any(t["key"].startswith("node.kubernetes.io/") for t in n.get("spec", {}).get("taints", []))
        ]
        if len(untainted) < len(all_nodes()):
            return f"nodes ready: {len(untainted)}/{len(all_nodes())}"
        code, _ = self._api("/api/v1/namespaces/default/serviceaccounts/default")
        if code != 200:
            return "ServiceAccount default/default not created yet"
        return None

    def healthy(self) -> bool:
        return self.state_file.exists() and not self.dead_components() and self._ready_problem() is None

    # -- lifecycle ---------------------------------------------------------------------------------------

    def _binary(self, name: str) -> str:
        path = self.bin_dir / name
        if not os.access(path, os.X_OK):
            raise ClusterError(f"{path} is missing: build the tools first (make tools)")
        return str(path)

    def _spawn(self, component: str, args: list[str], env: dict[str, str] | None = None) -> int:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{component}.log", "ab") as out:
            # A session of its own: the cluster outlives `cluster.py up` and ignores the caller's Ctrl-C.
            proc = subprocess.Popen(
                [self._binary(component), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.state_dir,
                start_new_session=True,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
                env={**os.environ, **(env or {})},
            )
        state = self.state()
        state.setdefault("pids", {})[component] = proc.pid
        self._save(state)
        self._children[proc.pid] = proc
        return proc.pid

    def _wait(self, what: str, check: Any, deadline: float, components: tuple[str, ...], blame: str) -> None:
        """Poll check() until it returns None; fail early (with its log) if a component died, and quote
        the log of `blame`, the component most likely at fault, on a timeout."""
        while True:
            for c in components:
                if not pid_alive(int(self.state()["pids"][c]), c):
                    raise ClusterError(
                        f"{c} exited while waiting for {what}; last lines of "
                        f"{self.logs / (c + '.log')}:\n{log_tail(self.logs / (c + '.log'))}"
                    )
            problem = check()
            if problem is None:
                return
            if time.monotonic() > deadline:
                log = self.logs / f"{blame}.log"
                raise ClusterError(f"timed out waiting for {what}: {problem}; last lines of {log}:\n{log_tail(log)}")
            time.sleep(0.2)

    def up(self, timeout: float = 180) -> float:
        """Start the cluster, or reuse it when healthy. Returns the seconds it took."""
        t0 = time.monotonic()
        self.reused = self.healthy()
        if self.reused:
            return time.monotonic() - t0
        if self.state_dir.exists():
            self.log(f"cluster {self.name}: cleaning up a stale or half-started cluster")
            self.down()
        try:
            self._start(deadline=t0 + timeout)
        except BaseException:
            self._stop_processes()  # leave logs and state for a look, but no stray processes
            raise
        return time.monotonic() - t0

    def _start(self, deadline: float) -> None:
        for b in COMPONENTS:
            self._binary(b)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        ports = {k: free_port() for k in ("etcd", "etcd_peer", "apiserver", "kwok")}
        self._save({"name": self.name, "ports": ports, "pids": {}, "started": time.time()})
        make_pki(self.pki)
        server = f"https://127.0.0.1:{ports['apiserver']}"
        context = f"mlperf-{self.name}"
        self.kubeconfig.write_text(kubeconfig_text(server, self.pki, "admin", True, context))
        for user in ("kube-controller-manager", "kube-scheduler", "kwok"):
            (self.pki / f"{user}.kubeconfig").write_text(kubeconfig_text(server, self.pki, user, False, context))

        etcd_url = f"http://127.0.0.1:{ports['etcd']}"
        peer_url = f"http://127.0.0.1:{ports['etcd_peer']}"
        self._spawn(
            "etcd",
            [
                f"--data-dir={self.state_dir / 'etcd'}",
                "--name=node0",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=node0={peer_url}",
                "--auto-compaction-retention=1",
                # A throwaway test cluster: durability is not worth an fsync per write on a slow disk.
                "--unsafe-no-fsync",
            ],
        )
        pki = self.pki
        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={ports['apiserver']}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                "--authorization-mode=Node,RBAC",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # Endpoints may not hold a loopback address; nothing in-cluster dials the API by Service.
                "--endpoint-reconciler-type=none",
                f"--cert-dir={self.state_dir / 'apiserver-certs'}",
                "--allow-privileged=true",
            ],
        )
        self._wait(
            "etcd", lambda: None if _http_ok(f"{etcd_url}/health") else "not healthy", deadline, ("etcd",), "etcd"
        )
        self._wait(
            "kube-apiserver",
            lambda: None if self._api("/readyz")[0] == 200 else "kube-apiserver /readyz not ok",
            deadline,
            ("etcd", "kube-apiserver"),
            "kube-apiserver",
        )

        self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={pki / 'kube-controller-manager.kubeconfig'}",
                "--controllers=*",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--leader-elect=false",
                "--secure-port=0",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                f"--kubeconfig={pki / 'kube-scheduler.kubeconfig'}",
                "--leader-elect=false",
                "--secure-port=0",
            ],
        )
        stages = [str(p) for p in sorted(STAGES.glob("*.yaml"))]
        self._spawn(
            "kwok",
            [
                f"--kubeconfig={pki / 'kwok.kubeconfig'}",
                *(f"--config={s}" for s in stages),
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={FAKE_NODE_ANNOTATION}=fake",
                "--node-ip=127.0.0.1",
                f"--node-port={ports['kwok']}",
                f"--server-address=127.0.0.1:{ports['kwok']}",
                "--cidr=10.244.0.0/16",
                "--node-lease-duration-seconds=40",
            ],
            env={"KWOK_WORKDIR": str(self.state_dir / "kwok")},
        )  # keep kwok off ~/.kwok

        self._create_objects()
        self._wait("nodes and the default ServiceAccount", self._ready_problem, deadline, COMPONENTS, "kwok")

    def _create_objects(self) -> None:
        objects: list[tuple[str, dict[str, Any]]] = [("/apis/storage.k8s.io/v1/storageclasses", STORAGE_CLASS)]
        objects += [("/api/v1/nodes", node) for node in all_nodes()]
        for path, obj in objects:
            code, body = self._api(path, "POST", obj)
            if code not in (201, 409):
                raise ClusterError(
                    f"creating {obj['kind']} {obj['metadata']['name']} failed: {code} {body.decode(errors='replace')}"
                )

    def _stop_processes(self, grace: float = 5) -> None:
        pids = self.state().get("pids", {})
        # One at a time, clients first and etcd last: an API server whose etcd is gone is slow to stop.
        for c in (KUEUE, *reversed(COMPONENTS)):
            pid = int(pids.get(c, 0))
            if not pid or not pid_alive(pid, c):
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            end = time.monotonic() + grace
            while pid_alive(pid, c) and time.monotonic() < end:
                time.sleep(0.05)
            if pid_alive(pid, c):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for proc in self._children.values():  # started by this object: reap them
            proc.wait(timeout=5)
        self._children.clear()

    def down(self) -> None:
        self.stop_executor()
        self._stop_processes()
        shutil.rmtree(self.state_dir, ignore_errors=True)

    # -- Kueue: a real one, opt-in -------------------------------------------------------------------------

    def kueue_problem(self) -> str | None:
        """What keeps Kueue from admitting workloads now, or None."""
        ports = self.state().get("kueue", {})
        pid = int(self.state().get("pids", {}).get(KUEUE, 0))
        if not ports or not pid or not pid_alive(pid, KUEUE):
            return "kueue is not running"
        if not _http_ok(f"http://127.0.0.1:{ports['health']}/readyz"):
            return "kueue /readyz not ok"  # ready once its webhook server serves
        return None

    def start_kueue(self, timeout: float = 120) -> float:
        """Start Kueue (tools/build-tools.sh builds it) against this cluster, or reuse a ready one: its CRDs, its
        manager as a local process with the cluster's admin kubeconfig, and its webhooks, which the API server
        reaches over TLS at 127.0.0.1 with a serving certificate from the cluster's CA. Returns the seconds taken.

        Only Jobs labelled kueue.x-k8s.io/queue-name go through its Job webhooks (an objectSelector), so that a
        stopped Kueue cannot block other Jobs of the cluster."""
        t0 = time.monotonic()
        if self.kueue_problem() is None:
            return time.monotonic() - t0
        home = CACHE / "tools" / f"kueue-{KUEUE_VERSION}"
        crds, webhooks = home / "crds", home / "webhooks.yaml"
        self._binary(KUEUE)
        if not crds.is_dir() or not webhooks.is_file():
            raise ClusterError(f"{crds} or {webhooks} is missing: build the tools first (make tools)")
        self.stop_kueue()
        work = self.state_dir / "kueue"
        (work / "certs").mkdir(parents=True, exist_ok=True)
        _cert(self.pki, "kueue-webhook", "/CN=kueue-webhook", "serverAuth", "IP:127.0.0.1,DNS:localhost")
        shutil.copy(self.pki / "kueue-webhook.crt", work / "certs" / "tls.crt")
        shutil.copy(self.pki / "kueue-webhook.key", work / "certs" / "tls.key")
        _kueue_metrics_cert(self.pki)
        ports = {k: free_port() for k in ("webhook", "health", "metrics")}
        state = self.state()
        state["kueue"] = ports
        self._save(state)
        (work / "config.yaml").write_text(json.dumps(kueue_config(ports, work / "certs"), indent=2))
        self._kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds))
        self._kubectl("wait", "--for=condition=Established", "-f", str(crds), "--timeout=60s")
        self._api(
            "/api/v1/namespaces",
            "POST",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kueue-system"}},
        )  # its home namespace
        self._spawn(KUEUE, [f"--config={work / 'config.yaml'}"], env={"KUBECONFIG": str(self.kubeconfig)})
        deadline = t0 + timeout
        self._wait("kueue", self.kueue_problem, deadline, (*COMPONENTS, KUEUE), KUEUE)
        ca = base64.b64encode((self.pki / "ca.crt").read_bytes()).decode()
        for config in kueue_webhooks(webhooks.read_text(), f"https://127.0.0.1:{ports['webhook']}", ca):
            kind = config["kind"].lower() + "s"
            self._api(f"/apis/admissionregistration.k8s.io/v1/{kind}/{config['metadata']['name']}", "DELETE")
            code, body = self._api(f"/apis/admissionregistration.k8s.io/v1/{kind}", "POST", config)
            if code != 201:
                raise ClusterError(
                    f"registering Kueue's {config['kind']} failed: {code} {body.decode(errors='replace')}"
                )
        return time.monotonic() - t0

    def stop_kueue(self) -> None:
        """Unregister Kueue's webhooks (nothing may call a stopped webhook server), then stop it."""
        if self.state_file.exists() and not self.dead_components():
            for name, kind in zip(KUEUE_WEBHOOKS, ("mutating", "validating"), strict=True):
                self._api(f"/apis/admissionregistration.k8s.io/v1/{kind}webhookconfigurations/{name}", "DELETE")
        pid = int(self.state().get("pids", {}).get(KUEUE, 0))
        if pid and pid_alive(pid, KUEUE):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            end = time.monotonic() + 10
            while pid_alive(pid, KUEUE) and time.monotonic() < end:
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if (proc := self._children.pop(pid, None)) is not None:
                proc.wait(timeout=5)

    def _kubectl(self, *args: str) -> None:
        kubectl = self.bin_dir / "kubectl"
        proc = subprocess.run(
            [str(kubectl), f"--kubeconfig={self.kubeconfig}", *args], capture_output=True, text=True, timeout=120
        )
        if proc.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args[:2])} failed: {proc.stderr.strip()}")

    # -- what the dev cluster adds: the pod executor and the example's claim -----------------------------------

    def executor_pid(self) -> int | None:
        pid = int(self.state().get("executor", {}).get("pid", 0))
        return pid if pid and pid_alive(pid, Path(sys.executable).name) else None

    def start_executor(self, namespaces: list[str]) -> int:
        """kwok runs no containers: the pod executor (tests/cluster/executor.py) runs the step pods of these
        namespaces as local processes, with this Python's `mlperf`. Without it a step pod stays Running and
        its run never gets further."""
        if (pid := self.executor_pid()) is not None:
            return pid
        args = [sys.executable, str(EXECUTOR), "--kubeconfig", str(self.kubeconfig)]
        args += ["--workdir", str(self.state_dir / "executor")]
        for ns in namespaces:
            args += ["--namespace", ns]
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / "pod-executor.log", "ab") as out:
            proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        state = self.state()
        state["executor"] = {"pid": proc.pid, "namespaces": namespaces}
        self._save(state)
        return proc.pid

    def stop_executor(self) -> None:
        if (pid := self.executor_pid()) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def create_claim(self, namespace: str, name: str, size: str = "10Gi") -> None:
        """A PVC of the default StorageClass, which kwok's volume stages bind at once."""
        claim = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}},
        }
        code, body = self._api(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims", "POST", claim)
        if code not in (201, 409):
            raise ClusterError(f"creating PVC {namespace}/{name} failed: {code} {body.decode(errors='replace')}")

    def env(self) -> str:
        """Shell lines that point kubectl, helm and mlperf-operator at this cluster: the repository's own
        binaries first on PATH (the venv's kubectl and the built helm, not whatever the system has)."""
        venv_bin = Path(sys.executable).parent
        return f"export KUBECONFIG={self.kubeconfig}\nexport PATH={venv_bin}:{self.bin_dir}:$PATH\n"

    def status(self) -> dict[str, Any]:
        state = self.state()
        dead = self.dead_components() if state else list(COMPONENTS)
        problem = None if dead else self._ready_problem()
        return {
            "name": self.name,
            "state_dir": str(self.state_dir),
            "kubeconfig": str(self.kubeconfig),
            "ports": state.get("ports", {}),
            "pids": state.get("pids", {}),
            "dead": dead,
            "healthy": bool(state) and not dead and problem is None,
            "problem": problem if not dead else f"not running: {', '.join(dead)}",
            # Opt-in: only said when this cluster ever started Kueue.
            **({"kueue": self.kueue_problem() or "ready"} if "kueue" in state else {}),
        }


def kueue_config(ports: dict[str, int], cert_dir: Path) -> dict[str, Any]:
    """Kueue's Configuration: batch Jobs only, and only those that name a LocalQueue; one replica, so no leader
    election; certificates from the cluster's CA instead of its own Service-bound ones."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": "kueue-system",
        "manageJobsWithoutQueueName": False,
        "integrations": {"frameworks": ["batch/job"]},
        "internalCertManagement": {"enable": False},
        "webhook": {"host": "127.0.0.1", "port": ports["webhook"], "certDir": str(cert_dir)},
        "health": {"healthProbeBindAddress": f"127.0.0.1:{ports['health']}"},
        "metrics": {"bindAddress": f"127.0.0.1:{ports['metrics']}"},
        "leaderElection": {"leaderElect": False},
        # The on-demand visibility API is an aggregated API server on a fixed port: not needed, and two clusters
        # on one machine would fight over the port.
        "featureGates": {"VisibilityOnDemand": False},
        "clientConnection": {"qps": 100, "burst": 200},
    }


def kueue_webhooks(manifests: str, url: str, ca_bundle: str) -> list[dict[str, Any]]:
    """Kueue's webhook configurations (config/components/webhook/manifests.yaml of its module), cut to what this
    manager serves (its own kinds and batch Jobs: a webhook of a disabled integration would answer 404 and fail
    every request), reached by URL, and Job webhooks limited to Jobs that name a LocalQueue."""
    import yaml  # the venv's; only Kueue needs it

    configs = []
    for doc in yaml.safe_load_all(manifests):
        if not doc:
            continue
        kept = []
        for hook in doc.get("webhooks") or []:
            path = hook["clientConfig"]["service"]["path"]
            if "kueue-x-k8s-io" not in path and "batch-v1-job" not in path:
                continue
            hook["clientConfig"] = {"url": url + path, "caBundle": ca_bundle}
            if "batch-v1-job" in path:
                hook["objectSelector"] = {
                    "matchExpressions": [{"key": "kueue.x-k8s.io/queue-name", "operator": "Exists"}]
                }
            kept.append(hook)
        kind = "mutating" if doc["kind"].startswith("Mutating") else "validating"
        doc["metadata"] = {"name": f"kueue-{kind}-webhook-configuration"}
        doc["webhooks"] = kept
        configs.append(doc)
    return configs


def _kueue_metrics_cert(pki: Path) -> None:
    """A serving certificate at the path Kueue's manager reads it from (KUEUE_METRICS_CERTS)."""
    if (KUEUE_METRICS_CERTS / "tls.crt").exists() and (KUEUE_METRICS_CERTS / "tls.key").exists():
        return
    _cert(pki, "kueue-metrics", "/CN=kueue-metrics", "serverAuth", "IP:127.0.0.1,DNS:localhost")
    try:
        KUEUE_METRICS_CERTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(pki / "kueue-metrics.crt", KUEUE_METRICS_CERTS / "tls.crt")
        shutil.copy(pki / "kueue-metrics.key", KUEUE_METRICS_CERTS / "tls.key")
    except OSError as e:
        raise ClusterError(f"Kueue needs its metrics certificate in {KUEUE_METRICS_CERTS}: {e}") from e


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the parent goes, however it goes."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def prune(prefix: str, min_age: float = 300) -> None:
    """Delete the state of clusters named prefix* that have no live process left (crashed sessions).
    Young ones are spared: they may be starting right now."""
    for state_dir in CLUSTERS.glob(f"{prefix}*"):
        cluster = LocalCluster(state_dir.name)
        started = float(cluster.state().get("started", 0))
        if time.time() - started > min_age and len(cluster.dead_components()) == len(COMPONENTS):
            shutil.rmtree(state_dir, ignore_errors=True)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (OSError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("up", "down", "status", "kubeconfig", "env"))
    parser.add_argument("--name", default=os.environ.get("MLPERF_CLUSTER", "dev"))
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for readiness (up)")
    parser.add_argument(
        "--executor", action="append", metavar="NAMESPACE", help="up: run the step pods of this namespace"
    )
    parser.add_argument("--claim", action="append", metavar="NAME", help="up: create this PVC in namespace default")
    parser.add_argument("--kueue", action="store_true", help="up: also start Kueue (tools/build-tools.sh builds it)")
    args = parser.parse_args(argv)
    cluster = LocalCluster(args.name)
    if args.command == "up":
        try:
            seconds = cluster.up(timeout=args.timeout)
            for claim in args.claim or []:
                cluster.create_claim("default", claim)
            if args.executor:
                pid = cluster.start_executor(args.executor)
            if args.kueue:
                kueue_seconds = cluster.start_kueue()
        except ClusterError as e:
            print(f"cluster {args.name}: failed to start: {e}", file=sys.stderr)
            return 1
        how = "already running, healthy" if cluster.reused else "started"
        print(f"cluster {args.name}: ready in {seconds:.1f} s ({how})")
        for claim in args.claim or []:
            print(f"  PersistentVolumeClaim default/{claim}")
        if args.executor:
            print(f"  pod executor (pid {pid}) runs the step pods of {', '.join(args.executor)}: {cluster.logs}")
        if args.kueue:
            print(f"  kueue {KUEUE_VERSION} ready in {kueue_seconds:.1f} s: {cluster.logs / 'kueue.log'}")
        print(f"  export KUBECONFIG={cluster.kubeconfig}")
    elif args.command == "env":
        print(cluster.env(), end="")
    elif args.command == "down":
        cluster.down()
        print(f"cluster {args.name}: down")
    elif args.command == "status":
        st = cluster.status()
        print(json.dumps(st, indent=2))
        return 0 if st["healthy"] else 1
    else:
        print(cluster.kubeconfig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
