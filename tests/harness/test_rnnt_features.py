"""The RNN-T filterbank features against the reference's operations written out in plain numpy:
torch.stft's framing (reflect padding, the symmetric hann window centred in the 512-point FFT), the
power spectrum plus the deterministic dither, librosa's mel filters, log, frame stacking by 3 and
per-feature normalisation with the unbiased std, cut to the reference's seq_len."""

from __future__ import annotations

import numpy as np
import pytest
from mlperf_harness.benchmarks.rnnt import features as F
from mlperf_harness.benchmarks.rnnt.synth import synthetic_waveform


def reference_features(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = np.concatenate([x[:1], x[1:] - 0.97 * x[:-1]])
    padded = np.pad(x, (256, 256), mode="reflect")
    n = np.arange(320)
    window = np.zeros(512)
    window[96 : 96 + 320] = 0.5 - 0.5 * np.cos(2 * np.pi * n / 319)
    frames = 1 + (len(padded) - 512) // 160
    stft = np.stack([np.fft.rfft(padded[i * 160 : i * 160 + 512] * window) for i in range(frames)], axis=1)
    power = np.abs(stft) ** 2 + 1e-5**2
    import librosa  # the reference's own filterbank

    fb = librosa.filters.mel(sr=16000, n_fft=512, n_mels=80, fmin=0, fmax=8000).astype(np.float64)
    y = np.log(fb @ power + 1e-20)
    seq = [y] + [np.pad(y[:, k:], ((0, 0), (0, k))) for k in (1, 2)]
    y = np.concatenate(seq, axis=0)[:, ::3]
    frames = (len(x) + 159) // 160
    seq_len = (frames + 2) // 3
    y = y[:, :seq_len]
    y = (y - y.mean(axis=1, keepdims=True)) / (y.std(axis=1, ddof=1, keepdims=True) + 1e-5)
    return y.T


@pytest.mark.parametrize("num_samples", [16000 * 2, 16000 * 2 + 77, 16000 * 3 + 160 * 5])
def test_features_match_the_reference_operations(num_samples: int) -> None:
    pcm = synthetic_waveform(np.random.default_rng(num_samples), num_samples / 16000)
    wave = pcm.astype(np.float32) / 32768.0
    ours = F.filterbank_features(wave)
    ref = reference_features(wave)
    assert ours.dtype == np.float32 and ours.shape == ref.shape == (F.feature_length(num_samples), 240)
    # float32 against float64: normalised features agree to a few thousandths.
    np.testing.assert_allclose(ours, ref, atol=5e-3, rtol=0)
    assert np.abs(ours - ref).mean() < 2e-4


def test_seq_len_is_the_references() -> None:
    # A multiple of the hop gives one frame fewer than the STFT has: the reference drops it.
    assert F.feature_length(160 * 30) == 10
    assert F.feature_length(160 * 30 + 1) == 11
    assert F.FEATURES == 240
