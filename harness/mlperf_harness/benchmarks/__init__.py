"""Benchmarks behind one interface; ``get_benchmark(name, suite)`` picks one.

A registry entry is one implementation: what a benchmark is (inputs, model, dataset, metric).
Most benchmarks are the same in every round; where a round's differs (v1.0's 3d-unet is BraTS
2019, the current round's KiTS19), the round's table names the entry (``implementation``) and
``get_benchmark(name, suite)`` follows it. The registry names each module and class without
importing them (they bring numpy and their libraries), so the operator can read
``preprocess_version`` with the core packages only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..suites import load_suite

if TYPE_CHECKING:
    from .base import Benchmark

# implementation -> (module, class, version). Bump the version when a benchmark's preprocessing or
# its synthetic generator changes what it writes: its cached artifacts (synthetic models and datasets,
# preprocessed data) are then no longer reused. dlrm 2: float16 tables, full size at the real row counts.
_REGISTRY: dict[str, tuple[str, str, int]] = {
    "resnet50": ("resnet50", "ResNet50", 2),
    "ssd-resnet34": ("ssd_resnet34", "SSDResNet34", 1),
    "bert": ("bert", "Bert", 1),
    "dlrm": ("dlrm", "Dlrm", 2),
    "rnnt": ("rnnt", "Rnnt", 1),
    "3d-unet": ("unet3d", "Unet3D", 1),  # KiTS19, the current round's
    "3d-unet-brats19": ("unet3d.brats_benchmark", "Unet3DBraTS", 1),  # BraTS 2019, v1.0's
}
# The implementations whose synthetic datasets have a size of their own (dataset.synthetic.size):
# KiTS19's full cases have the real cases' shapes; the others ignore the field (nor is it in their keys).
SIZED_DATASETS = frozenset({"3d-unet"})


def implementation(name: str, suite: str | None = None) -> str:
    """The registry entry ``name`` runs as in ``suite`` (the round's table says), else ``name``."""
    return load_suite(suite).implementation(name) if suite is not None else name


def _entry(name: str) -> tuple[str, str, int]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(_REGISTRY)}") from None


def get_benchmark(name: str, suite: str | None = None) -> Benchmark:
    """The benchmark as ``suite`` defines it; without a suite, the registry entry ``name``."""
    import importlib

    module, cls, _ = _entry(implementation(name, suite))
    made: Benchmark = getattr(importlib.import_module(f"{__name__}.{module}"), cls)()
    return made


def preprocess_version(name: str, suite: str | None = None) -> int:
    return _entry(implementation(name, suite))[2]


__all__ = ["SIZED_DATASETS", "get_benchmark", "implementation", "preprocess_version"]
