"""The real operator (``python -m mlperf_operator``) as a subprocess of the test session.

It runs exactly as in a pod, only with a kubeconfig: which identity it acts as is whatever that
kubeconfig holds (the admin, or a ServiceAccount token for RBAC tests).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from .wait import wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OperatorProcess:
    def __init__(
        self,
        kubeconfig: Path,
        namespaces: list[str],
        log_path: Path,
        resync_seconds: float = 5,
        command: list[str] | None = None,
        leader: str | None = None,
    ) -> None:
        """`command`: what starts the operator (default: this venv's); KUBECONFIG names `kubeconfig` either way.
        `leader`: with --leader-election, as candidate `<leader>-<start number>` (each start is a new candidate),
        the Lease in the first watched namespace."""
        self.kubeconfig, self.namespaces, self.log_path = kubeconfig, namespaces, log_path
        self.resync_seconds = resync_seconds
        self.leader = leader
        self.command = command or [sys.executable, "-m", "mlperf_operator"]
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def identity(self) -> str:
        """Its name in the Lease (leader election only)."""
        return f"{self.leader}-{self.starts}"

    def start(self) -> OperatorProcess:
        args = [*self.command, "--health-port", str(self.health_port)]
        for ns in self.namespaces:
            args += ["--namespace", ns]
        self.starts += 1
        if self.leader:
            args += ["--leader-election", "--lease-namespace", self.namespaces[0], "--leader-identity", self.identity]
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "MLPERF_METRICS_PORT": str(self.metrics_port),
            "MLPERF_RESYNC_SECONDS": str(self.resync_seconds),
        }
        env.pop("KUBERNETES_SERVICE_HOST", None)
        log = self.log_path.open("ab")
        log.write(f"\n===== operator start #{self.starts} =====\n".encode())
        self.proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._healthy, timeout=60, what=f"the operator's /healthz (log: {self.log_path})")
        return self

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the operator exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def stop(self, kill: bool = False) -> None:
        """Stop it; kill=True is a crash (SIGKILL), with no chance to tidy up."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def restart(self, kill: bool = True) -> None:
        self.stop(kill=kill)
        self.start()

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> OperatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
