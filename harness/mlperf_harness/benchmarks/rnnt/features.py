"""Log-mel filterbank features as the RNN-T reference's ``FilterbankFeatures`` computes them at inference.

configs/rnnt.toml [input_eval]: 16 kHz, 20 ms hann window in a 512-point FFT, 10 ms hop, 80 mel
filters (librosa's, as the reference builds them), log, frames stacked by 3, per-feature
normalisation. The reference's dither is deterministic at inference: dither**2 added to the power
spectrum, no noise.
"""

from __future__ import annotations

from functools import cache

import librosa
import numpy as np

SAMPLE_RATE = 16000
WIN_LENGTH = int(SAMPLE_RATE * 0.02)  # 320 samples
HOP_LENGTH = int(SAMPLE_RATE * 0.01)  # 160 samples
N_FFT = 512
N_MELS = 80
FRAME_SPLICING = 3
FEATURES = N_MELS * FRAME_SPLICING  # 240: the encoder's input width
PREEMPH = 0.97
DITHER = 1e-5
LOG_GUARD = 1e-20
STD_GUARD = 1e-5


@cache
def mel_filterbank() -> np.ndarray:
    """(80, 257) float32, librosa's slaney mel filters from 0 Hz to Nyquist, as the reference builds them."""
    fb = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=0.0, fmax=SAMPLE_RATE / 2)
    return np.asarray(fb, dtype=np.float32)


@cache
def _window() -> np.ndarray:
    # torch.hann_window(320, periodic=False): the symmetric window; librosa centres it in the FFT.
    return np.hanning(WIN_LENGTH).astype(np.float32)


def feature_length(num_samples: int) -> int:
    """Frames the reference keeps for ``num_samples`` of audio (its ``get_seq_len``)."""
    frames = (num_samples + HOP_LENGTH - 1) // HOP_LENGTH
    return (frames + FRAME_SPLICING - 1) // FRAME_SPLICING


def filterbank_features(waveform: np.ndarray) -> np.ndarray:
    """(num_samples,) float32 audio in [-1, 1] -> (T, 240) float32 features, T = ``feature_length``."""
    x = np.asarray(waveform, dtype=np.float32)
    if x.ndim != 1 or x.size < 2:
        raise ValueError(f"expected a mono waveform of at least 2 samples, got shape {x.shape}")
    x = np.concatenate([x[:1], x[1:] - np.float32(PREEMPH) * x[:-1]])
    spec = librosa.stft(
        x, n_fft=N_FFT, hop_length=HOP_LENGTH, win_length=WIN_LENGTH, window=_window(), center=True, pad_mode="reflect"
    )
    power = (spec.real**2 + spec.imag**2).astype(np.float32) + np.float32(DITHER**2)
    logmel = np.log(mel_filterbank() @ power + np.float32(LOG_GUARD))  # (80, frames)
    # Stack each frame with the next two (zeros past the end), then keep every third.
    frames = logmel.shape[1]
    stacked = [logmel]
    for n in range(1, FRAME_SPLICING):
        shifted = np.zeros_like(logmel)
        shifted[:, : frames - n] = logmel[:, n:]
        stacked.append(shifted)
    spliced = np.concatenate(stacked, axis=0)[:, ::FRAME_SPLICING]  # (240, ceil(frames / 3))
    # Statistics over the frames the reference counts (its seq_len can be one short of the frames).
    length = feature_length(x.size)
    valid = spliced[:, :length]
    mean = valid.mean(axis=1, keepdims=True)
    std = valid.std(axis=1, ddof=1, keepdims=True) + np.float32(STD_GUARD)
    return np.ascontiguousarray(((valid - mean) / std).T, dtype=np.float32)
