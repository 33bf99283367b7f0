"""Benchmarks behind one interface; ``get_benchmark(name)`` picks one.

The registry names each benchmark's module and class without importing them (they bring numpy
and their libraries), so the operator can read ``preprocess_version`` with the core packages only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Benchmark

# name -> (module, class, preprocess version). Bump the version when a benchmark's preprocessing or
# its synthetic generator changes what it writes: cached artifacts are then no longer reused.
_REGISTRY: dict[str, tuple[str, str, int]] = {
    "resnet50": ("resnet50", "ResNet50", 2),
    "ssd-resnet34": ("ssd_resnet34", "SSDResNet34", 1),
    "bert": ("bert", "Bert", 1),
    "dlrm": ("dlrm", "Dlrm", 1),
    "rnnt": ("rnnt", "Rnnt", 1),
    "3d-unet": ("unet3d", "Unet3D", 1),
}


def _entry(name: str) -> tuple[str, str, int]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(_REGISTRY)}") from None


def get_benchmark(name: str) -> Benchmark:
    import importlib

    module, cls, _ = _entry(name)
    made: Benchmark = getattr(importlib.import_module(f"{__name__}.{module}"), cls)()
    return made


def preprocess_version(name: str) -> int:
    return _entry(name)[2]


__all__ = ["get_benchmark", "preprocess_version"]
