"""One LoadGen test: settings, QSL, SUT and backend(s) together, logs into one directory."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import mlperf_loadgen as lg

from ..backends.base import Backend
from ..benchmarks.base import Benchmark
from ..config import HarnessConfig
from ..fsutil import atomic_write_text
from ..suites import load_suite
from . import settings
from .qsl import SampleLibrary, open_samples
from .sut import HarnessSUT

AUDIT_CONFIG = "audit.config"
BackendFactory = Callable[[], Backend]


@dataclass
class RunOutput:
    log_dir: Path
    completed: int
    wall_s: float
    device: str
    backend: str
    errors: list[str]
    instance_samples: list[int]  # samples each backend instance ran, in instance order


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _instance(
    make_backend: BackendFactory,
    cfg: HarnessConfig,
    device: int,
    bench: Benchmark,
    model_path: Path,
    qsl_lib: SampleLibrary,
) -> Backend:
    """One backend instance on ``device``, loaded and warmed up, its samples device-resident
    when the config asks and the backend can."""
    b = make_backend()
    b.device_index = device
    b.configure(cfg)
    b.load(model_path, cfg.batchSize, cfg.precision, output_name=bench.output_name)
    if cfg.startFromDevice and b.reserve_samples(qsl_lib.performance_count):
        qsl_lib.on_load.append(b.stage_samples)
    b.warmup(min(cfg.batchSize, 8))
    return b


def run_loadgen(
    cfg: HarnessConfig,
    mode: str,
    log_dir: Path,
    bench: Benchmark,
    samples_path: Path,
    model_path: Path,
    make_backend: BackendFactory,
    audit: str | None = None,
) -> RunOutput:
    """Run LoadGen once with logs in ``log_dir``.

    For an audit, ``audit.config`` is written into ``log_dir`` and LoadGen runs with that as its
    working directory (it reads audit.config from the CWD), then the file is removed, as the
    compliance procedure prescribes. Without an audit, LoadGen is pointed at a file that does not
    exist, so a stray audit.config in the CWD can never change a normal run.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    conf_path = log_dir / "user.conf"
    atomic_write_text(conf_path, settings.user_conf(cfg))
    if not cfg.loadgen.compiledIn:
        atomic_write_text(log_dir / "mlperf.conf", settings.round_mlperf_conf(load_suite(cfg.suite), cfg.benchmark))

    data = open_samples(samples_path, bench.sample_shape(), "int8" if cfg.inputDtype == "int8" else "float32")
    qsl_lib = SampleLibrary(data, cfg.loadgen.performanceSampleCount)
    backends = [
        _instance(make_backend, cfg, device, bench, model_path, qsl_lib)
        for device in range(max(1, cfg.devices))
        for _ in range(max(1, cfg.workers))
    ]
    ts = settings.test_settings(cfg, mode, conf_path, qsl_lib.total, audit)

    log_settings = lg.LogSettings()
    log_settings.log_output.outdir = str(log_dir)
    log_settings.log_output.copy_summary_to_stdout = False
    log_settings.enable_trace = False

    sut = HarnessSUT(backends, qsl_lib, bench.postprocess, cfg.batchSize, cfg.batchTimeoutUs / 1e6)
    sut_handle = lg.ConstructFastSUT(sut.issue, sut.flush)
    qsl_handle = lg.ConstructQSL(qsl_lib.total, qsl_lib.performance_count, qsl_lib.load, qsl_lib.unload)
    audit_path = log_dir / AUDIT_CONFIG
    start = time.perf_counter()
    try:
        if audit:
            atomic_write_text(audit_path, settings.audit_config(audit, cfg))
            with _cwd(log_dir):
                lg.StartTestWithLogSettings(sut_handle, qsl_handle, ts, log_settings, AUDIT_CONFIG)
        else:
            absent = str(log_dir / ".no-audit.config")
            lg.StartTestWithLogSettings(sut_handle, qsl_handle, ts, log_settings, absent)
    finally:
        wall = time.perf_counter() - start
        audit_path.unlink(missing_ok=True)
        sut.stop()
        lg.DestroyQSL(qsl_handle)
        lg.DestroyFastSUT(sut_handle)
    names = list(dict.fromkeys(b.device() for b in backends))
    device = names[0] if len(backends) == 1 else f"{len(backends)} instances on {', '.join(names)}"
    described = backends[0].describe()
    for b in backends:
        b.close()
    errors = [f"{type(e).__name__}: {e}" for e in sut.errors[:3]]
    return RunOutput(log_dir, sut.completed, wall, device, described, errors, sut.instance_samples)
