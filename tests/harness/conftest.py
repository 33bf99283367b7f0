"""Fixtures for the harness tests: one synthetic resnet50 work directory per session (model,
dataset and preprocessed data are made once and shared through the artifact cache); each test
uses its own run name, so runs never see each other's logs."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from harness_support import make_spec
from mlperf_harness import steps
from mlperf_harness.workspace import Workspace

_names = itertools.count()


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mlperf-work")
    ws = Workspace(make_spec(), root, "prepare", quiet=True)
    for step in (steps.download_model, steps.download_data, steps.preprocess):
        assert step(ws).ok
    return root


@pytest.fixture
def workspace(workdir: Path) -> Any:
    """A factory: ``workspace(**spec_overrides)`` -> a Workspace with a fresh run name."""

    def make(run: str | None = None, **over: Any) -> Workspace:
        return Workspace(make_spec(**over), workdir, run or f"t{next(_names)}", quiet=True)

    return make


@pytest.fixture(autouse=True)
def _termination_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "termination-log"
    monkeypatch.setenv("MLPERF_TERMINATION_LOG", str(path))
    return path
