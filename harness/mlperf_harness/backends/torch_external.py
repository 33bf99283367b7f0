"""External initializers memory-mapped for onnx2torch (dlrm's 45 GiB of tables), and the memory a
load took (``memory_figures``). On a GPU, the move of mapped tensors to the device and the device
figures are untested (tests/harness/test_torch_external.py has the test, skipped without CUDA).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from ..errors import HarnessError


def _mappable(tensor: onnx.TensorProto) -> bool:
    """Whether numpy can map the tensor's bytes (not bfloat16, float8, strings)."""
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).kind in "biuf"


def _mapped_array(tensor: onnx.TensorProto) -> np.ndarray | None:
    """An external initializer whose location is absolute (``map_external``) as a copy-on-write
    memory map of its bytes: nothing is read until used, and the pages go when the array does.
    None for any other (read as onnx2torch reads it)."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL or not _mappable(tensor):
        return None
    info = {e.key: e.value for e in tensor.external_data}
    if not Path(info.get("location", "")).is_absolute():
        return None
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).newbyteorder("<")
    shape = tuple(int(d) for d in tensor.dims)
    if not np.prod(shape, dtype=np.int64):
        return np.zeros(shape, dtype)
    return np.memmap(info["location"], dtype=dtype, mode="c", offset=int(info.get("offset", 0)), shape=shape)


def register_mapped_tensors() -> None:
    """onnx2torch reads every initializer into memory and then copies it (``OnnxTensor.to_numpy``):
    for dlrm's tables, two host copies of 45 GiB before the backend's own copy to the device. Ours
    maps external ones instead (``_mapped_array``): a buffer stays a view of the file until moved to
    the device, a weight a module copies (a Linear's) is read once. Inline ones read as before."""
    from onnx2torch.onnx_tensor import OnnxTensor

    if getattr(OnnxTensor.to_numpy, "mapped", False):
        return
    read = OnnxTensor.to_numpy

    def to_numpy(self: Any) -> np.ndarray:
        mapped = _mapped_array(self.proto)
        return read(self) if mapped is None else mapped

    to_numpy.mapped = True  # type: ignore[attr-defined]
    OnnxTensor.to_numpy = to_numpy


def map_external(proto: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """A copy of ``proto`` (its external data not loaded) whose external initializers name their
    files by absolute path, so that ``_mapped_array`` maps them from anywhere; those numpy cannot
    map are read in (onnx refuses an absolute location)."""
    from onnx.external_data_helper import load_external_data_for_tensor

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for tensor in out.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        for entry in tensor.external_data:
            if entry.key == "location" and not (path.parent / entry.value).is_file():
                raise HarnessError(f"{path.name}: external data file {entry.value} of {tensor.name} is missing")
        if not _mappable(tensor):
            load_external_data_for_tensor(tensor, str(path.parent))
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]
            continue
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = str((path.parent / entry.value).resolve())
    return out


def memory_figures(dev: Any) -> dict[str, int]:
    """Memory after a load, in bytes: the process's peak resident set so far (``ru_maxrss``: the
    most it held at once, mapped file pages included, whatever loaded it) and its resident set now;
    on a GPU, what torch's allocator holds on the device and the most it held (every instance of
    the process on that device together); on an H100, dlrm's load: 48.1 GB allocated."""
    import resource

    figures = {"hostPeakRssBytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    with contextlib.suppress(OSError, ValueError, IndexError):  # Linux: resident pages, the second field
        figures["hostRssBytes"] = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    if dev is not None and dev.type == "cuda":
        figures["deviceAllocatedBytes"] = int(torch.cuda.memory_allocated(dev))
        figures["devicePeakBytes"] = int(torch.cuda.max_memory_allocated(dev))
    return figures
