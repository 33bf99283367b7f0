"""The operator and CPU harness images, built for real and run (issue 22).

No container registry is reachable here and containers cannot start (the runtime is refused rlimits and
cgroups), but `podman build --isolation=chroot` works. The base is made from Debian's packages
(images/base.sh: debootstrap, then `podman import`) and given to the Dockerfiles as PYTHON_IMAGE, whose
default is the public python image that users pull. The operator then runs from its image's filesystem
(`podman image mount`, then chroot as UID 65532) against the local cluster and drives the example to
Succeeded; the harness image's `mlperf` runs the quickstart. The GPU image's NVIDIA base cannot be had here.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cluster import Cluster, PodExecutor
from cluster.operator_process import OperatorProcess
from kubernetes import client
from test_operator_e2e import EXAMPLE, apply, crds, make_claim, wait_phase

__all__ = ["crds"]  # a fixture, used by name

REPO = Path(__file__).resolve().parents[1]
TAG = "localhost/mlperf-operator/{}:test"
BUILT: dict[str, float] = {}  # image -> seconds its build took


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        reason = f"{tool} is not installed (apt-get install podman debootstrap; `make image-tools` does it)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def base_image() -> str:
    _need("podman"), _need("debootstrap")
    if os.geteuid() != 0:
        pytest.skip("debootstrap, podman image mount and chroot need root")
    proc = subprocess.run([str(REPO / "images" / "base.sh")], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def build(image: str, base: str) -> str:
    tag = TAG.format(image)
    started = time.monotonic()
    files = ["-f", f"images/{image}/Dockerfile", "--ignorefile", f"images/{image}/Dockerfile.dockerignore"]
    proc = subprocess.run(
        ["podman", "build", "--isolation=chroot", "--build-arg", f"PYTHON_IMAGE={base}", *files, "-t", tag, "."],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, f"podman build of {image} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    BUILT[image] = time.monotonic() - started
    return tag


@pytest.fixture(scope="session")
def operator_image(base_image: str) -> str:
    return build("operator", base_image)


@pytest.fixture(scope="session")
def harness_image(base_image: str) -> str:
    return build("harness-cpu", base_image)


@pytest.fixture
def image_root(request: pytest.FixtureRequest) -> Iterator[Path]:
    tag = request.getfixturevalue(request.param)
    mounted = subprocess.run(["podman", "image", "mount", tag], capture_output=True, text=True, check=True)
    try:
        yield Path(mounted.stdout.strip())
    finally:
        subprocess.run(["podman", "image", "unmount", tag], capture_output=True)


def chroot_command(root: Path, shared: Path, argv: list[str], tmp_path: Path) -> list[str]:
    """A command that runs argv in the image's filesystem as UID 65532, as its pod would: the image
    read-only, /tmp a directory of the host (shared), /proc and /dev the host's, the host's network."""
    shared.mkdir(exist_ok=True)
    shared.chmod(0o1777)
    script = tmp_path / f"in-image-{len(list(tmp_path.glob('in-image-*')))}.sh"
    script.write_text(
        "#!/bin/sh\n"
        f"mount --bind {shared} {root}/tmp && mount --bind /proc {root}/proc && mount --bind /dev {root}/dev && "
        f"exec env -i PATH=/opt/venv/bin:/usr/bin:/bin HOME=/tmp PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 "
        f'KUBECONFIG="$KUBECONFIG" MLPERF_METRICS_PORT="$MLPERF_METRICS_PORT" '
        f'MLPERF_RESYNC_SECONDS="$MLPERF_RESYNC_SECONDS" '
        f'{shutil.which("chroot")} --userspec=65532:65532 {root} {" ".join(argv)} "$@"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return ["unshare", "--mount", "--propagation", "private", str(script)]


@pytest.mark.timeout(2400)
@pytest.mark.parametrize("image_root", ["operator_image"], indirect=True)
def test_the_operator_from_its_image_drives_the_example_to_succeeded(
    cluster: Cluster,
    api: client.ApiClient,
    namespace: str,
    crds: None,
    pod_executor: PodExecutor,
    image_root: Path,
    tmp_path: Path,
) -> None:
    shared = tmp_path / "tmp"
    command = chroot_command(image_root, shared, ["/opt/venv/bin/mlperf-operator"], tmp_path)
    shutil.copy(cluster.kubeconfig, shared / "kubeconfig")
    (shared / "kubeconfig").chmod(0o644)
    make_claim(api, namespace)
    with OperatorProcess(Path("/tmp/kubeconfig"), [namespace], tmp_path / "operator.log", command=command) as op:
        apply(cluster, namespace, yaml.safe_load(EXAMPLE.read_text()))
        status = wait_phase(api, namespace, "resnet50-offline", {"Succeeded", "Failed"}, op)["status"]
        assert status["phase"] == "Succeeded", status
        assert "made the controller" in op.log_tail(400)
    assert not (image_root / "opt" / "venv" / "lib" / "python3.11" / "site-packages" / "numpy").exists()
    print(f"image builds: {BUILT}")


@pytest.mark.timeout(2400)
@pytest.mark.parametrize("image_root", ["harness_image"], indirect=True)
def test_the_harness_image_runs_the_quickstart(image_root: Path, tmp_path: Path) -> None:
    shared = tmp_path / "tmp"
    command = chroot_command(image_root, shared, ["mlperf"], tmp_path)
    shutil.copy(EXAMPLE, shared / "example.yaml")
    (shared / "example.yaml").chmod(0o644)
    proc = subprocess.run(
        [*command, "run", "-f", "/tmp/example.yaml", "--workdir", "/tmp/work"],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    out = proc.stdout + proc.stderr
    # Exit 1 is the quickstart's own verdict when an audit's timing check fails from noise (README).
    assert proc.returncode in (0, 1), out[-4000:]
    assert "MLPerf results: resnet50-offline" in out and "SYNTHETIC" in out, out[-4000:]
    results = sorted(p.name for p in (shared / "work" / "runs" / "resnet50-offline" / "results").glob("*.json"))
    assert "Offline-PerformanceOnly.json" in results and "Offline-AccuracyOnly.json" in results, results
    print(f"image builds: {BUILT}")
