"""The test session's handle on the local cluster of tools/cluster.py."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from kubernetes import client, config

REPO = Path(__file__).resolve().parents[2]
DEV_CLUSTER = "dev"


def cluster_tools() -> ModuleType:
    """tools/cluster.py as a module (tools/ is scripts, not a package; `cluster` is taken by tests/cluster)."""
    name = "mlperf_tools_cluster"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tools" / "cluster.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@dataclass
class Cluster:
    name: str
    state_dir: Path
    kubeconfig: Path
    bin_dir: Path
    owned: bool  # started for this session, so torn down at its end
    local: Any = field(repr=False, default=None)  # the tools/cluster.py LocalCluster behind it

    def api_client(self) -> client.ApiClient:
        api: client.ApiClient = config.new_client_from_config(config_file=str(self.kubeconfig))  # type: ignore[no-untyped-call]
        return api

    def env(self) -> dict[str, str]:
        """Environment for subprocesses that should talk to this cluster."""
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        kubectl = self.bin_dir / "kubectl"
        if not kubectl.exists():
            kubectl = Path(sys.executable).parent / "kubectl"
        proc = subprocess.run(
            [str(kubectl), *args], env=self.env(), input=input, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return proc


def acquire() -> Cluster:
    """The healthy `make dev-cluster` cluster if there is one, else a cluster of this session's own, named
    test-<pid> so that concurrent sessions do not share (and tear down) one; its processes die with us."""
    tools = cluster_tools()
    dev = tools.LocalCluster(DEV_CLUSTER)
    if dev.healthy():
        return Cluster(dev.name, dev.state_dir, dev.kubeconfig, dev.bin_dir, owned=False, local=dev)
    tools.prune("test-")
    own = tools.LocalCluster(f"test-{os.getpid()}", die_with_parent=True)
    own.up()
    return Cluster(own.name, own.state_dir, own.kubeconfig, own.bin_dir, owned=True, local=own)


def release(cluster: Cluster) -> None:
    if cluster.owned:
        cluster.local.down()
