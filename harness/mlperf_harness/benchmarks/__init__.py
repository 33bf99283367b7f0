"""Benchmarks behind one interface; ``get_benchmark(name)`` picks one."""

from __future__ import annotations

from .base import AccuracyReport, Benchmark, PendingBenchmark
from .bert import Bert
from .dlrm import Dlrm
from .resnet50 import ResNet50
from .rnnt import Rnnt
from .ssd_resnet34 import SSDResNet34
from .unet3d import Unet3D

_BENCHMARKS: dict[str, type[Benchmark]] = {b.name: b for b in (ResNet50, SSDResNet34, Bert, Dlrm, Rnnt, Unet3D)}


def get_benchmark(name: str) -> Benchmark:
    try:
        return _BENCHMARKS[name]()
    except KeyError:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(_BENCHMARKS)}") from None


__all__ = ["AccuracyReport", "Benchmark", "PendingBenchmark", "get_benchmark"]
