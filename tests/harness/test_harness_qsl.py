"""The QSL loads exactly the samples LoadGen asks for; the SUT answers each sample once."""

from __future__ import annotations

import numpy as np
import pytest
from mlperf_harness.loadgen.qsl import SampleLibrary


def test_load_exactly_the_requested_samples() -> None:
    data = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    lib = SampleLibrary(data, performance_sample_count=4)
    assert lib.performance_count == 4
    lib.load([7, 2, 5, 0])
    assert lib.ram.shape == (4, 3) and lib.ram.flags.c_contiguous
    out = np.empty((8, 3), dtype=np.float32)
    got = lib.gather(np.array([5, 7, 5]), out)
    assert np.array_equal(got, data[[5, 7, 5]])
    with pytest.raises(RuntimeError, match="sample 3 was issued but not loaded"):
        lib.gather(np.array([3]), out)
    lib.unload([7, 2, 5, 0])
    assert lib.ram.shape == (0, 3)


def test_performance_count_is_capped_by_the_dataset() -> None:
    assert SampleLibrary(np.zeros((5, 2), dtype=np.float32), 1024).performance_count == 5
