"""A kubelet stand-in for the kwok cluster: it really runs the operator's pods, as local processes.

kwok fakes pod lifecycles but runs nothing. Pods labelled app.kubernetes.io/part-of=mlperf-operator are
left Running by the kwok stages (tools/kwok-stages/pod-stages.yaml) until this executor has run their
container's command and written the outcome back as annotations:

    kwok.mlperf-operator.io/exit-code             the process's return code (kwok then ends the pod with it)
    kwok.mlperf-operator.io/termination-message   the file at $MLPERF_TERMINATION_LOG (last 4096 bytes),
                                                  which kwok copies into the container's terminated.message
    kwok.mlperf-operator.io/log-tail              the last 50 lines of output (kwok serves no pod logs)

Each pod runs once (keyed by uid), at most `max_parallel` at a time. The first container's command + args
run with its env (values, fieldRefs, Secret and ConfigMap keys), PVC volumes mapped to
<workdir_root>/pvcs/<namespace>/<claim>/ (mount paths in args and env are rewritten to the local dirs),
and the venv's bin first on PATH so `mlperf` resolves. A pod that stops running (deleted, e.g. by a Job's
deadline) has its process killed.

    with PodExecutor(kubeconfig, namespaces=["ns"]) as ex: ...
    python tests/cluster/executor.py --kubeconfig ~/.cache/mlperf-operator/cluster/dev/kubeconfig
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import ctypes
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

PART_OF = "app.kubernetes.io/part-of=mlperf-operator"
ANNOTATION_PREFIX = "kwok.mlperf-operator.io/"
EXIT_CODE = ANNOTATION_PREFIX + "exit-code"
TERMINATION_MESSAGE = ANNOTATION_PREFIX + "termination-message"
LOG_TAIL = ANNOTATION_PREFIX + "log-tail"
MAX_MESSAGE_BYTES = 4096  # what the kubelet keeps of a termination message
LOG_TAIL_LINES = 50
LOG_TAIL_BYTES = 16384

log = logging.getLogger("pod-executor")


@dataclass
class PodRun:
    """One executed pod; `returncode` is None while it runs (137 when killed because its pod went away)."""

    namespace: str
    name: str
    uid: str
    argv: list[str]
    log_path: Path
    returncode: int | None = None
    termination_message: str = ""
    done: threading.Event = field(default_factory=threading.Event, repr=False)


def _default_root() -> Path:
    return Path(tempfile.gettempdir()) / "mlperf-pod-executor"


class PodExecutor:
    def __init__(
        self,
        kubeconfig: str | os.PathLike[str],
        namespaces: Iterable[str] | None = None,
        workdir_root: str | os.PathLike[str] | None = None,
        max_parallel: int = 2,
        label_selector: str = PART_OF,
        poll_interval: float = 0.25,
    ) -> None:
        self.namespaces = list(namespaces) if namespaces is not None else None
        self.root = Path(workdir_root) if workdir_root else _default_root()
        self.label_selector = label_selector
        self.poll_interval = poll_interval
        self.runs: dict[str, PodRun] = {}  # by pod uid
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix="pod-exec")
        self._poller: threading.Thread | None = None
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)  # type: ignore[no-untyped-call]
        cfg.connection_pool_maxsize = max_parallel + 2
        self.api = client.CoreV1Api(client.ApiClient(cfg))
        # The venv that runs us is the one whose `mlperf` the pods should run.
        self.bin_dir = Path(sys.executable).parent

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> PodExecutor:
        self.root.mkdir(parents=True, exist_ok=True)
        self._poller = threading.Thread(target=self._poll_loop, name="pod-exec-poll", daemon=True)
        self._poller.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._poller:
            self._poller.join(timeout=10)
        with self._lock:
            for proc in self._procs.values():
                _kill(proc)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> PodExecutor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait(self, name: str, namespace: str | None = None, timeout: float = 60) -> PodRun:
        """Wait until a pod with this name (the newest one, if several) has been run to its end."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                runs = [
                    r for r in self.runs.values() if r.name == name and (namespace is None or r.namespace == namespace)
                ]
            if runs and runs[-1].done.is_set():
                return runs[-1]
            time.sleep(0.1)
        raise TimeoutError(f"pod {namespace}/{name} was not executed within {timeout} s")

    # -- discovery -----------------------------------------------------------------------------------------

    def _list_running(self) -> list[Any]:
        labels, running = self.label_selector, "status.phase=Running"
        if self.namespaces is None:
            return list(self.api.list_pod_for_all_namespaces(label_selector=labels, field_selector=running).items)
        pods: list[Any] = []
        for ns in self.namespaces:
            pods += self.api.list_namespaced_pod(ns, label_selector=labels, field_selector=running).items
        return pods

    def _poll_loop(self) -> None:
        # Polling a label- and phase-filtered list is cheap against a local API server and, unlike a watch,
        # needs no resourceVersion bookkeeping and stops at once.
        while not self._stop.is_set():
            try:
                pods = self._list_running()
            except Exception as e:  # the API server restarting; keep going
                log.warning("listing pods failed: %s", e)
                self._stop.wait(1)
                continue
            live = set()
            for pod in pods:
                uid = pod.metadata.uid
                live.add(uid)
                annotations = pod.metadata.annotations or {}
                if (
                    uid in self.runs
                    or pod.metadata.deletion_timestamp
                    or not pod.spec.node_name
                    or EXIT_CODE in annotations
                ):
                    continue
                run = self._prepare(pod)
                with self._lock:
                    self.runs[uid] = run
                self._pool.submit(self._execute, pod, run)
            # A pod that is no longer Running (deleted, or ended by someone else) takes its process with it.
            with self._lock:
                for uid, proc in list(self._procs.items()):
                    if uid not in live:
                        log.info("pod %s stopped running; killing its process", self.runs[uid].name)
                        _kill(proc)
            self._stop.wait(self.poll_interval)

    # -- running one pod -------------------------------------------------------------------------------------

    def _pod_dir(self, pod: Any) -> Path:
        name = f"{pod.metadata.name}-{pod.metadata.uid[:8]}"
        return Path(self.root, "pods", pod.metadata.namespace, name)

    def _prepare(self, pod: Any) -> PodRun:
        c = pod.spec.containers[0]
        pod_dir = self._pod_dir(pod)
        pod_dir.mkdir(parents=True, exist_ok=True)
        return PodRun(
            pod.metadata.namespace,
            pod.metadata.name,
            pod.metadata.uid,
            [*(c.command or []), *(c.args or [])],
            pod_dir / "output.log",
        )

    def _execute(self, pod: Any, run: PodRun) -> None:
        try:
            self._run_process(pod, run)
        except Exception as e:  # report as a failed container rather than leave the pod Running forever
            log.exception("executing pod %s/%s failed", run.namespace, run.name)
            with open(run.log_path, "a") as f:
                f.write(f"pod-executor: {type(e).__name__}: {e}\n")
            run.returncode = 128
            self._report(run, run.returncode, f"pod-executor: {e}")
        finally:
            run.done.set()

    def _run_process(self, pod: Any, run: PodRun) -> None:
        container = pod.spec.containers[0]
        pod_dir = self._pod_dir(pod)
        mounts = self._mounts(pod, container, pod_dir)
        env = self._env(pod, container, mounts)
        term_log = pod_dir / "termination-log"
        term_log.write_text("")
        env["MLPERF_TERMINATION_LOG"] = str(term_log)
        argv = [_expand(_rewrite(a, mounts), env) for a in run.argv]
        run.argv = argv
        if not argv:
            raise ValueError("the container has no command: the executor cannot run an image's entrypoint")
        cwd = Path(_rewrite(container.working_dir, mounts)) if container.working_dir else pod_dir
        cwd.mkdir(parents=True, exist_ok=True)
        log.info("running pod %s/%s: %s", run.namespace, run.name, " ".join(argv))
        with open(run.log_path, "wb") as out:
            try:
                proc = subprocess.Popen(
                    argv,
                    env=env,
                    cwd=cwd,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            except OSError as e:  # e.g. command not found: what a runtime reports as exit code 127
                out.write(f"pod-executor: cannot start {argv[0]}: {e}\n".encode())
                run.returncode = 127
                self._report(run, 127, f"cannot start {argv[0]}: {e}")
                return
            with self._lock:
                self._procs[run.uid] = proc
            rc = proc.wait()
            with self._lock:
                self._procs.pop(run.uid, None)
        if self._stop.is_set() and rc < 0:
            return  # we killed it on shutdown: leave the pod alone
        run.returncode = rc if rc >= 0 else 128 - rc  # killed by signal N -> 128+N, like a container
        message = term_log.read_bytes()[-MAX_MESSAGE_BYTES:].decode(errors="replace")
        if not message and rc != 0 and container.termination_message_policy == "FallbackToLogsOnError":
            message = "\n".join(_tail(run.log_path, 80))[-2048:]
        self._report(run, run.returncode, message)

    def _report(self, run: PodRun, rc: int, message: str) -> None:
        run.termination_message = message
        tail = "\n".join(_tail(run.log_path, LOG_TAIL_LINES))[-LOG_TAIL_BYTES:]
        annotations = {TERMINATION_MESSAGE: message, LOG_TAIL: tail, EXIT_CODE: str(rc)}
        try:
            self.api.patch_namespaced_pod(run.name, run.namespace, {"metadata": {"annotations": annotations}})
        except ApiException as e:
            if e.status != 404:  # a pod deleted meanwhile needs no result
                raise
        log.info("pod %s/%s exited %s", run.namespace, run.name, rc)

    def _mounts(self, pod: Any, container: Any, pod_dir: Path) -> list[tuple[str, Path]]:
        """(mountPath, local dir) for each volumeMount, longest mountPath first."""
        local: dict[str, Path] = {}
        for vol in pod.spec.volumes or []:
            if vol.persistent_volume_claim:
                local[vol.name] = self.root / "pvcs" / pod.metadata.namespace / vol.persistent_volume_claim.claim_name
            elif vol.empty_dir is not None:
                local[vol.name] = pod_dir / "volumes" / vol.name
            elif vol.config_map or vol.secret:
                local[vol.name] = self._materialize(pod.metadata.namespace, vol, pod_dir / "volumes" / vol.name)
        mounts = []
        for m in container.volume_mounts or []:
            if m.name in local:
                path = local[m.name] / (m.sub_path or "")
                path.mkdir(parents=True, exist_ok=True)
                if m.mount_path.rstrip("/"):  # a volume at / cannot be told apart from any path
                    mounts.append((m.mount_path.rstrip("/"), path))
        return sorted(mounts, key=lambda mp: len(mp[0]), reverse=True)

    def _materialize(self, namespace: str, vol: Any, target: Path) -> Path:
        """Write a ConfigMap or Secret volume's keys as files, like the kubelet does."""
        target.mkdir(parents=True, exist_ok=True)
        if vol.config_map:
            cm = self.api.read_namespaced_config_map(vol.config_map.name, namespace)
            files = {k: v.encode() for k, v in (cm.data or {}).items()}
            files |= {k: base64.b64decode(v) for k, v in (cm.binary_data or {}).items()}
            items = vol.config_map.items
        else:
            secret = self.api.read_namespaced_secret(vol.secret.secret_name, namespace)
            files = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
            items = vol.secret.items
        paths = {i.key: i.path for i in items} if items else {k: k for k in files}
        for key, rel in paths.items():
            if key in files:
                (target / rel).parent.mkdir(parents=True, exist_ok=True)
                (target / rel).write_bytes(files[key])
        return target

    def _env(self, pod: Any, container: Any, mounts: list[tuple[str, Path]]) -> dict[str, str]:
        ns = pod.metadata.namespace
        # The host's environment (HOME, locale, proxies) minus what a pod would never see.
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
        env["PYTHONUNBUFFERED"] = "1"  # output reaches the log as it happens (a container image would set it)
        for src in container.env_from or []:
            prefix = src.prefix or ""
            if src.config_map_ref:
                data = self._config_map_data(ns, src.config_map_ref.name, src.config_map_ref.optional)
            else:
                data = self._secret_data(ns, src.secret_ref.name, src.secret_ref.optional)
            env |= {prefix + k: v for k, v in data.items()}
        for var in container.env or []:
            value = self._env_value(pod, var)
            if value is not None:
                env[var.name] = _rewrite(_expand(value, env), mounts)
        return env

    def _env_value(self, pod: Any, var: Any) -> str | None:
        if var.value_from is None:
            return str(var.value or "")
        src = var.value_from
        if src.field_ref:
            return _field(pod, src.field_ref.field_path)
        if src.secret_key_ref:
            ref = src.secret_key_ref
            return self._secret_data(pod.metadata.namespace, ref.name, ref.optional).get(ref.key)
        if src.config_map_key_ref:
            ref = src.config_map_key_ref
            return self._config_map_data(pod.metadata.namespace, ref.name, ref.optional).get(ref.key)
        return None  # resourceFieldRef: no meaning outside a container

    def _config_map_data(self, ns: str, name: str, optional: bool | None) -> dict[str, str]:
        try:
            return dict(self.api.read_namespaced_config_map(name, ns).data or {})
        except ApiException as e:
            if e.status == 404 and optional:
                return {}
            raise

    def _secret_data(self, ns: str, name: str, optional: bool | None) -> dict[str, str]:
        try:
            data = self.api.read_namespaced_secret(name, ns).data or {}
        except ApiException as e:
            if e.status == 404 and optional:
                return {}
            raise
        return {k: base64.b64decode(v).decode(errors="replace") for k, v in data.items()}


def _field(pod: Any, path: str) -> str:
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return str((getattr(pod.metadata, m.group(1)) or {}).get(m.group(2), ""))
    values = {
        "metadata.name": pod.metadata.name,
        "metadata.namespace": pod.metadata.namespace,
        "metadata.uid": pod.metadata.uid,
        "spec.nodeName": pod.spec.node_name,
        "spec.serviceAccountName": pod.spec.service_account_name,
        "status.podIP": pod.status.pod_ip,
        "status.hostIP": pod.status.host_ip,
    }
    return str(values.get(path) or "")


def _rewrite(text: str, mounts: list[tuple[str, Path]]) -> str:
    """Point every use of a mount path (as a whole path prefix) at its local directory, in one pass so that
    a rewritten path is not rewritten again by a shorter mount path (/cache -> /tmp/x, then /tmp)."""
    if not mounts:
        return text
    local = dict(mounts)
    alternatives = "|".join(re.escape(m) for m, _ in mounts)  # longest first: /data/models before /data
    pattern = rf"(?<![\w.-])({alternatives})(?=/|$|[^\w.-])"
    return re.sub(pattern, lambda m: str(local[m.group(1)]), text)


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command, args and env values; $$ escapes."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        text,
    )


def _tail(path: Path, lines: int) -> list[str]:
    try:
        with open(path, errors="replace") as f:
            return [line.rstrip("\n") for line in collections.deque(f, maxlen=lines)]
    except OSError:
        return []


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the thread that started it goes (a killed test session)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: the harness may have children


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the operator's pods of a kwok cluster locally.")
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"), required="KUBECONFIG" not in os.environ)
    parser.add_argument("--namespace", "-n", action="append", help="watch only these (default: all)")
    parser.add_argument("--workdir", default=None, help=f"state root (default {_default_root()})")
    parser.add_argument("--max-parallel", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with PodExecutor(args.kubeconfig, args.namespace, args.workdir, args.max_parallel):
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
