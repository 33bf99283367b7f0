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
from ..benchmarks.base import MODEL, Benchmark
from ..config import HarnessConfig
from ..errors import HarnessError
from ..fsutil import atomic_write_text
from ..samples import SampleStore
from ..suites import load_suite
from . import settings
from .pool import Instance, InstancePool, close_instances, load_key
from .qsl import SampleLibrary
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


def keep_samples(cfg: HarnessConfig, bench: Benchmark, parts: dict[str, Backend], capacity: int) -> bool:
    """Whether an instance keeps its loaded samples on its device (start_from_device): a model of one
    part, the config asks, the benchmark's batches are its samples stacked, and the backend
    reserves room for ``capacity`` of them (it can). Its batches are then rows (``predict_rows``)."""
    single = parts.get(MODEL) if len(parts) == 1 else None
    if single is None or not (cfg.startFromDevice and bench.device_resident):
        return False
    return single.reserve_samples(capacity)


def _instance(
    make_backend: BackendFactory,
    cfg: HarnessConfig,
    device: int,
    bench: Benchmark,
    model_paths: dict[str, Path],
    qsl_lib: SampleLibrary,
) -> dict[str, Backend]:
    """One instance of the model on ``device``: a backend per part, loaded and warmed up, room for
    its samples on the device when the config asks and the backend can (``resident``)."""
    parts: dict[str, Backend] = {}
    for part, path in model_paths.items():
        b = make_backend()
        b.device_index = device
        b.configure(cfg)
        b.load(path, cfg.batchSize, cfg.precision, outputs=[s.name for s in bench.outputs] if part == MODEL else ())
        parts[part] = b
    keep_samples(cfg, bench, parts, qsl_lib.performance_count)
    n = min(cfg.batchSize, 8)
    # A model whose batch is not a stack of samples (dlrm's (26, rows) offsets) is warmed up with
    # the benchmark's own example batch; others with zeros of the graph's inputs, at its batch where fixed.
    own = type(bench).example is not Benchmark.example
    for part, b in parts.items():  # after reserving: a GPU backend captures its graphs for where its inputs live
        m = min(n, b.fixed_batch or n)
        b.warmup(
            bench.example(cfg.inputDtype, n) if own and part == MODEL else {s.name: s.zeros(m) for s in b.input_specs}
        )
    if any(b.graphs_per_shape() for b in parts.values()):  # their graphs captured now, not in the run
        for feeds in bench.warm_batches(cfg.inputDtype, cfg.batchSize):
            bench.infer(parts, feeds)
    return parts


def fixed_batch_note(bench: Benchmark, parts: dict[str, Backend], batch_size: int) -> str:
    """What a run says of a graph whose batch is fixed below the batch size: the benchmark's ``infer``
    runs it in calls of its batch (said with the result's backend), or the run is refused."""
    notes = []
    for part, b in parts.items():
        if b.fixed_batch is None or b.fixed_batch >= batch_size:
            continue
        if not bench.splits_batches:
            raise HarnessError(
                f"spec.batchSize: {bench.name}'s {part} graph takes a batch of exactly {b.fixed_batch} "
                f"(its input's first dimension), not {batch_size}; set batchSize: {b.fixed_batch} or give a model "
                "with a dynamic batch dimension"
            )
        notes.append(f"{part} graph batch {b.fixed_batch}: batches of {batch_size} run as {b.fixed_batch}-sample calls")
    return f" ({'; '.join(notes)})" if notes else ""


def run_loadgen(
    cfg: HarnessConfig,
    mode: str,
    log_dir: Path,
    bench: Benchmark,
    samples_dir: Path,
    model_paths: dict[str, Path],
    make_backend: BackendFactory,
    audit: str | None = None,
    pool: InstancePool | None = None,
) -> RunOutput:
    """Run LoadGen once with logs in ``log_dir``.

    For an audit, ``audit.config`` is written into ``log_dir`` and LoadGen runs with that as its
    working directory (it reads audit.config from the CWD), then the file is removed, as the
    compliance procedure prescribes. Without an audit, LoadGen is pointed at a file that does not
    exist, so a stray audit.config in the CWD can never change a normal run. With ``pool``, the
    instances come from it (loaded once for the runs that load the same) and stay open.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    conf_path = log_dir / "user.conf"
    atomic_write_text(conf_path, settings.user_conf(cfg))
    if not cfg.loadgen.compiledIn:
        atomic_write_text(log_dir / "mlperf.conf", settings.round_mlperf_conf(load_suite(cfg.suite), cfg.benchmark))

    store = SampleStore(samples_dir, bench.inputs(cfg.inputDtype))
    qsl_lib = SampleLibrary(store, cfg.loadgen.performanceSampleCount, bench.cost_tensor, bench.lengths(store))

    def load() -> list[Instance]:
        return [
            _instance(make_backend, cfg, device, bench, model_paths, qsl_lib)
            for device in range(max(1, cfg.devices))
            for _ in range(max(1, cfg.workers))
        ]

    models = pool.take(load_key(cfg, mode, model_paths), load) if pool else load()
    for parts in models:  # each run's sample set staged on the device of the instances that keep it
        if len(parts) == 1 and parts.get(MODEL) is not None and parts[MODEL].resident:
            qsl_lib.on_load.append(parts[MODEL].stage_samples)
    backends = [b for parts in models for b in parts.values()]
    batch_note = fixed_batch_note(bench, models[0], cfg.batchSize)  # refused before LoadGen starts
    ts = settings.test_settings(cfg, mode, conf_path, qsl_lib.total, audit)

    log_settings = lg.LogSettings()
    log_settings.log_output.outdir = str(log_dir)
    log_settings.log_output.copy_summary_to_stdout = False
    log_settings.enable_trace = False

    sut = HarnessSUT(models, qsl_lib, bench, cfg.batchSize, cfg.batchTimeoutUs / 1e6)
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
    device = names[0] if len(models) == 1 else f"{len(models)} instances on {', '.join(names)}"
    described = backends[0].describe() + batch_note
    if pool is None:
        close_instances(models)
    errors = [f"{type(e).__name__}: {e}" for e in sut.errors[:3]]
    return RunOutput(log_dir, sut.completed, wall, device, described, errors, sut.instance_samples)
