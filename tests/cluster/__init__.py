"""Test helpers for the local kwok cluster: the session cluster, the pod executor, waiting."""

from .control_plane import Cluster, acquire, cluster_tools, release
from .executor import PodExecutor, PodRun
from .wait import wait_for

__all__ = ["Cluster", "PodExecutor", "PodRun", "acquire", "cluster_tools", "release", "wait_for"]
