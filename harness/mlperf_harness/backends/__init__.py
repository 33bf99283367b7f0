"""Inference backends behind one interface, and the registry that picks one by name."""

from __future__ import annotations

from .base import Backend, TensorSpec

_REGISTRY: dict[str, tuple[str, str]] = {
    "onnxruntime": ("mlperf_harness.backends.onnxrt", "OnnxRuntimeBackend"),
    "pytorch": ("mlperf_harness.backends.torch_backend", "PyTorchBackend"),
    "tensorrt": ("mlperf_harness.backends.tensorrt_backend", "TensorRTBackend"),
    "null": ("mlperf_harness.backends.null", "NullBackend"),
}

BACKENDS = tuple(_REGISTRY)


def backend_class(name: str) -> type[Backend]:
    """The backend class by registry name; imported lazily so a missing GPU stack costs nothing."""
    import importlib

    try:
        module, cls = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown backend {name!r}; known: {', '.join(_REGISTRY)}") from None
    found: type[Backend] = getattr(importlib.import_module(module), cls)
    return found


_PACKAGES = {"onnxruntime": "onnxruntime", "pytorch": "torch", "tensorrt": "tensorrt"}


def engine_version(name: str) -> str:
    """``<backend>-<runtime version>``: the backend part of an engine's cache key (the pipeline
    and the verbs must agree on it, so both call this)."""
    from importlib.metadata import PackageNotFoundError, version

    package = _PACKAGES.get(name)
    if package is None:
        return name
    try:
        return f"{name}-{version(package)}"
    except PackageNotFoundError:
        return f"{name}-missing"


def get_backend(name: str) -> Backend:
    return backend_class(name)()


__all__ = ["BACKENDS", "Backend", "TensorSpec", "backend_class", "engine_version", "get_backend"]
