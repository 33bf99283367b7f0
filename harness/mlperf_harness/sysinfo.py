"""The system description JSON of a submission: read off this machine where possible.

It holds exactly the fields of the run's round (``suites/<round>.yaml``, ``submission``); what
the machine cannot tell (cooling, interconnect topology) says "N/A" until the spec's
submission.systemOverrides fills it.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

from .spec import MLPerfRunSpec
from .suites import SubmissionRules

NA = "N/A"


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    sockets: set[str] = set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "physical id":
            sockets.add(value)
        elif key in ("model name", "cpu MHz", "cache size", "cpu cores") and key not in info:
            info[key] = value
    info["sockets"] = str(len(sockets) or 1)
    return info


def _memory_gb() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024**2:.0f} GB"
    except OSError:
        pass
    return NA


def default_system_name(spec: MLPerfRunSpec) -> str:
    if spec.submission.systemName:
        return spec.submission.systemName
    if spec.uses_gpu:
        return f"{spec.system.gpuProduct}x{spec.system.gpuCount}_{spec.backend}"
    return f"cpu-{os.cpu_count() or 1}c_{spec.backend}"


def describe(spec: MLPerfRunSpec, framework: str, storage: Path, rules: SubmissionRules) -> dict[str, object]:
    cpu = _cpuinfo()
    try:
        disk = f"{shutil.disk_usage(storage).total / 1e12:.1f} TB"
    except OSError:
        disk = NA
    gpus = spec.system.gpuCount if spec.uses_gpu else 0
    desc: dict[str, object] = {
        "division": spec.submission.division,
        "submitter": spec.submission.submitter,
        "status": spec.submission.status,
        "system_name": default_system_name(spec),
        "system_type": spec.category,
        "system_type_detail": NA,
        "number_of_nodes": 1,
        "host_processor_model_name": cpu.get("model name", platform.processor() or NA),
        "host_processors_per_node": int(cpu.get("sockets", "1")),
        "host_processor_core_count": os.cpu_count() or 1,
        "host_processor_frequency": f"{float(cpu['cpu MHz']):.0f} MHz" if "cpu MHz" in cpu else NA,
        "host_processor_caches": cpu.get("cache size", NA),
        "host_processor_interconnect": NA,
        "host_memory_capacity": _memory_gb(),
        "host_memory_configuration": NA,
        "host_storage_capacity": disk,
        "host_storage_type": NA,
        "host_networking": NA,
        "host_network_card_count": NA,
        "host_networking_topology": NA,
        "accelerators_per_node": gpus,
        "accelerator_model_name": spec.system.gpuProduct if gpus else NA,
        "accelerator_frequency": NA,
        "accelerator_host_interconnect": NA,
        "accelerator_interconnect": NA,
        "accelerator_interconnect_topology": NA,
        "accelerator_memory_capacity": NA,
        "accelerator_memory_configuration": NA,
        "accelerator_on-chip_memories": NA,
        "cooling": NA,
        "framework": framework,
        "operating_system": f"{platform.system()} {platform.release()}",
        "other_software_stack": f"Python {platform.python_version()}, mlcommons-loadgen, mlperf-operator harness",
        "hw_notes": "",
        "sw_notes": "SYNTHETIC data or model: not an MLPerf result" if spec.synthetic else "",
    }
    desc.update(spec.submission.systemOverrides)
    out = {field: desc.get(field, NA) for field in rules.systemFields}
    for field in rules.meaningfulFields:
        if out.get(field) in (0, "", None):  # the checker reads 0 and "" as "no answer"
            out[field] = "0" if out[field] == 0 else NA
    return out


def local_gpu() -> tuple[str, int]:
    """The GPU product (as GPU feature discovery names it) and count of this machine; ('', 0) without."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return "", 0
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return "", 0
    names = [n.strip() for n in out.splitlines() if n.strip()]
    return ("-".join(names[0].split()) if names else ""), len(names)


def _backend_sees_gpu(backend: str) -> bool:
    if backend == "onnxruntime":
        import onnxruntime as ort

        return "CUDAExecutionProvider" in ort.get_available_providers()
    return backend in ("pytorch", "tensorrt")


def localize(spec: MLPerfRunSpec) -> MLPerfRunSpec:
    """The spec as it runs here: the system is this machine and what the backend can use of it,
    whatever the manifest asked of a cluster (a CPU-only onnxruntime on a GPU node runs on the CPU)."""
    product, count = local_gpu()
    if count and not _backend_sees_gpu(spec.backend):
        product, count = "", 0
    system = spec.system.model_copy(update={"gpuProduct": product or "cpu", "gpuCount": count})
    return spec.model_copy(update={"system": system})
