"""The device gate with real threads: a capture waits for the batches in flight and holds new ones
back; two threads that want to capture from inside their batches both do, in turn. Every wait is
on an event or the gate's own state; the only timeouts bound a hang (a deadlock fails the test)."""

from __future__ import annotations

import threading
import time

import pytest
from mlperf_harness.device_gate import DeviceGate

HANG = 30.0  # seconds: only a deadlock reaches it


def _until(check: object, what: str) -> None:
    end = time.monotonic() + HANG
    while not check():  # type: ignore[operator]
        if time.monotonic() > end:
            pytest.fail(f"gate: {what} never happened")
        time.sleep(0.001)


def test_a_capture_waits_for_work_in_flight_and_holds_new_work_back() -> None:
    gate, log = DeviceGate(), []
    in_batch, end_batch, in_capture, end_capture = (threading.Event() for _ in range(4))

    def batch(name: str, started: threading.Event | None = None, release: threading.Event | None = None) -> None:
        with gate.work():
            log.append(f"{name} in")
            if started:
                started.set()
            if release:
                release.wait(HANG)
            log.append(f"{name} out")

    def capture() -> None:
        with gate.capture():
            log.append("capture in")
            in_capture.set()
            end_capture.wait(HANG)
            log.append("capture out")

    first = threading.Thread(target=batch, args=("first", in_batch, end_batch))
    first.start()
    in_batch.wait(HANG)
    cap = threading.Thread(target=capture)
    cap.start()
    _until(lambda: gate._waiting, "the capture waiting")
    late = threading.Thread(target=batch, args=("late",))
    late.start()
    _until(lambda: late.is_alive(), "the late batch starting")
    assert log == ["first in"]  # neither the capture nor the late batch got in beside the first batch
    end_batch.set()
    in_capture.wait(HANG)
    assert log == ["first in", "first out", "capture in"]  # the late batch still waits
    end_capture.set()
    for t in (first, cap, late):
        t.join(HANG)
        assert not t.is_alive()
    assert log == ["first in", "first out", "capture in", "capture out", "late in", "late out"]


def test_two_batches_that_capture_at_once_both_capture_in_turn() -> None:
    """Two instances reaching a new shape together: each waits to capture from inside its own batch."""
    gate, inside, captures = DeviceGate(), threading.Barrier(2, timeout=HANG), []
    lock = threading.Lock()
    active = []

    def instance(name: str) -> None:
        with gate.work():
            inside.wait()  # both inside a batch before either captures
            with gate.capture():
                with lock:
                    active.append(name)
                    assert len(active) == 1, active  # alone
                time.sleep(0.01)
                with gate.work():  # the capturer's own calls pass (nested)
                    captures.append(name)
                with lock:
                    active.remove(name)

    threads = [threading.Thread(target=instance, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG)
        assert not t.is_alive(), "deadlock"
    assert sorted(captures) == ["a", "b"]


def test_one_thread_passes_straight_through_and_a_nested_capture_is_refused() -> None:
    gate = DeviceGate()
    nested = pytest.raises(RuntimeError, match="capture inside a capture")
    with gate.work(), gate.work(), gate.capture(), nested, gate.capture():
        pass
    assert not gate._work and gate._capturer is None
