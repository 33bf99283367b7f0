"""Speech-like synthetic audio: voiced and unvoiced segments with silences, deterministic from a generator."""

from __future__ import annotations

import numpy as np

from .features import SAMPLE_RATE


def synthetic_waveform(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """int16 audio of ``seconds``: segments of 60-250 ms, each a harmonic tone (random pitch and
    spectral tilt), a noise burst or a pause, under a smooth envelope, so that the filterbank
    features change from frame to frame as speech's do."""
    total = round(seconds * SAMPLE_RATE)
    out = np.zeros(total, dtype=np.float64)
    pos = 0
    while pos < total:
        n = min(int(rng.integers(int(0.06 * SAMPLE_RATE), int(0.25 * SAMPLE_RATE))), total - pos)
        t = np.arange(n) / SAMPLE_RATE
        kind = rng.random()
        if kind < 0.6:
            f0 = rng.uniform(90.0, 280.0)
            harmonics = np.arange(1, int(3800 // f0) + 1)
            amps = rng.random(harmonics.size) / harmonics ** rng.uniform(0.5, 1.5)
            seg = (amps[:, None] * np.sin(2 * np.pi * f0 * harmonics[:, None] * t + rng.uniform(0, 6.3))).sum(axis=0)
        elif kind < 0.85:
            seg = rng.standard_normal(n) * rng.uniform(0.2, 1.0)
        else:
            seg = np.zeros(n)
        envelope = np.sin(np.pi * np.arange(n) / max(n - 1, 1)) ** 2
        out[pos : pos + n] = seg * envelope * rng.uniform(0.05, 0.3)
        pos += n
    out += rng.standard_normal(total) * 3e-4  # a recording's noise floor: no frame is digital silence
    return np.clip(np.round(out * 32767.0), -32768, 32767).astype(np.int16)
