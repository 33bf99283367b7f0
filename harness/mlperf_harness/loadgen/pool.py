"""Model instances kept loaded from one LoadGen run to the next that loads the same (a tuning's
probes and the tuned run after them): each run otherwise loads and warms its own, which on an H200
took bert about 30 s a probe (42 shapes captured in each of 2 instances) and would take dlrm its
45 GiB of tables. No LoadGen import here: the steps and the tuner hold a pool before any run."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from ..backends.base import Backend
from ..config import HarnessConfig

Instance = dict[str, Backend]  # a backend per model part
# The config fields a run changes without changing what its instances load (the tuner's probes).
NOT_LOADED = {"loadgen", "scenario", "batchTimeoutUs", "latencyBoundNs", "userConfNotes", "notSubmittable", "shortened"}


class InstancePool:
    """The instances of the last load (one at a time: another load closes them first); closed by
    its owner or at the end of a ``with`` block. A run given a pool leaves its instances open."""

    def __init__(self) -> None:
        self._key: str | None = None
        self._instances: list[Instance] = []

    def take(self, key: str, build: Callable[[], list[Instance]]) -> list[Instance]:
        if key != self._key:
            self.close()  # the earlier load's memory back first
            self._instances, self._key = build(), key
        return self._instances

    def close(self) -> None:
        close_instances(self._instances)
        self._instances, self._key = [], None

    def __enter__(self) -> InstancePool:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def shared(pool: InstancePool | None, wanted: bool = True) -> contextlib.AbstractContextManager[InstancePool | None]:
    """``pool`` where given (its owner closes it), else a pool of its own for a ``with`` block where
    ``wanted``, else None."""
    if pool is not None:
        return contextlib.nullcontext(pool)
    return InstancePool() if wanted else contextlib.nullcontext()


def close_instances(instances: list[Instance]) -> None:
    for parts in instances:
        for b in parts.values():
            b.close()


def load_key(cfg: HarnessConfig, mode: str, model_paths: dict[str, Path]) -> str:
    """What an instance's load depends on: the model files, the mode (an audit's backend differs)
    and the config's load settings; not the LoadGen settings a probe changes."""
    load = cfg.model_dump(mode="json", exclude=NOT_LOADED)
    sizes = (cfg.loadgen.performanceSampleCount,)
    return repr((mode, sorted((k, str(v)) for k, v in model_paths.items()), sorted(load.items()), sizes))
