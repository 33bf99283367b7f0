"""The README's cluster walk-through, run as written in a fresh clone (issue 22, finding 1).

The block under "Operator from your shell" runs in `bash -euo pipefail` in a `git clone` of this repository
(its committed state): `make dev-cluster` makes the clone's own .venv and a cluster of its own
(CLUSTER_NAME, so that it does not touch a dev cluster of yours), and the run must end Succeeded.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cluster import Cluster

REPO = Path(__file__).resolve().parents[1]


def walkthrough() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Operator from your shell") :]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, "no bash block under 'Operator from your shell'"
    return match.group(1)


def test_the_walkthrough_block_is_what_a_newcomer_needs() -> None:
    block = walkthrough()
    for needed in ("make dev-cluster", "source <(make -s dev-env)", "kubectl apply -f crds/", "mlperf-operator"):
        assert needed in block
    assert "helm install" not in block  # one operator: the chart is the other section's


@pytest.mark.timeout(1800)
def test_the_readme_cluster_walkthrough_runs_as_written_in_a_fresh_clone(cluster: Cluster, tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    # A newcomer's shell: no venv active, no KUBECONFIG, the system's PATH.
    outer_venv = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != outer_venv)
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "VIRTUAL_ENV", "MLPERF_CLUSTER")}
    env |= {"PATH": path, "CLUSTER_NAME": f"readme-{os.getpid()}"}
    try:
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", walkthrough()],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=1700,
        )
        log = clone / "operator.log"
        operator_log = log.read_text()[-3000:] if log.exists() else ""
        detail = f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}\noperator.log:\n{operator_log}"
        assert proc.returncode == 0, detail
        assert "resnet50-offline" in proc.stdout and "Succeeded" in proc.stdout, detail
        assert "condition met" in proc.stdout, detail
        # kubectl and the operator were the clone's own, not whatever the system has.
        which = "source <(make -s dev-env); command -v kubectl mlperf-operator"
        found = subprocess.run(["bash", "-c", which], cwd=clone, env=env, capture_output=True, text=True).stdout
        assert found.split() == [str(clone / ".venv/bin/kubectl"), str(clone / ".venv/bin/mlperf-operator")], found
    finally:
        subprocess.run(["make", "-s", "dev-cluster-down"], cwd=clone, env=env, capture_output=True, timeout=120)
