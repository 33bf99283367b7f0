"""RNN-T data plumbing: the reference's conversion and manifest, its 15 s filter and text
normalisation, and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from mlperf_harness.benchmarks import get_benchmark, rnnt
from mlperf_harness.benchmarks.rnnt import data as D
from mlperf_harness.errors import HarnessError


def fake_librispeech(root: Path, seconds: tuple[float, ...] = (2.0, 3.5, 16.0)) -> list[np.ndarray]:
    """A dev-clean download of the real layout, audio and transcripts made up."""
    chapter = root / "LibriSpeech" / "dev-clean" / "84" / "121123"
    chapter.mkdir(parents=True)
    rng = np.random.default_rng(0)
    audio, lines = [], []
    for i, s in enumerate(seconds):
        pcm = (rng.standard_normal(int(s * 16000)) * 3000).astype(np.int16)
        sf.write(str(chapter / f"84-121123-{i:04d}.flac"), pcm, 16000, subtype="PCM_16", format="FLAC")
        audio.append(pcm)
        lines.append(f"84-121123-{i:04d} GO DO YOU HEAR" + (" IT'S" if i == 0 else ""))
    (chapter / "84-121123.trans.txt").write_text("\n".join(lines) + "\n")
    return audio


def test_conversion_writes_the_references_layout_and_manifest(tmp_path: Path) -> None:
    audio = fake_librispeech(tmp_path)
    manifest = D.convert_dataset(tmp_path)
    assert manifest == tmp_path / "dev-clean-wav.json"
    entries = json.loads(manifest.read_text())
    assert [e["transcript"] for e in entries] == ["go do you hear it's", "go do you hear", "go do you hear"]
    first = entries[0]
    assert set(first) == {"transcript", "files", "original_duration", "original_num_samples"}
    info = first["files"][0]
    assert info["fname"] == "dev-clean-wav/84/121123/84-121123-0000.wav"
    assert (info["sample_rate"], info["bitrate"], info["channels"], info["speed"]) == (16000.0, 16, 1, 1)
    assert info["num_samples"] == first["original_num_samples"] == audio[0].size
    assert first["original_duration"] == info["duration"] == audio[0].size / 16000
    # The wav holds the FLAC's samples exactly, read as the reference reads them.
    wav, rate = sf.read(str(tmp_path / info["fname"]), dtype="int16")
    assert rate == 16000 and np.array_equal(wav, audio[0])
    np.testing.assert_array_equal(D.read_wav(tmp_path / info["fname"]), audio[0].astype(np.float32) / 32768)
    # The QSL keeps utterances of at most 15 s: the 16 s one is not a sample.
    utts = D.load_manifest(tmp_path)
    assert len(utts) == 2 and utts[0].labels[:3] == (7, 15, 0)
    samples = list(rnnt.preprocess(tmp_path))
    assert [s["feature"].shape for s in samples] == [(67, 240), (117, 240)]
    assert all(s["feature_length"].dtype == np.int64 for s in samples)


def test_text_normalisation_is_the_references_for_librispeech() -> None:
    assert D.normalize_transcript("  Hello,  WORLD! it's  A&B+C ") == "hello world it's a and b plus c"
    with pytest.raises(HarnessError, match="digits"):
        D.normalize_transcript("chapter 12")


def test_bad_inputs_give_one_line_errors(tmp_path: Path) -> None:
    fake_librispeech(tmp_path, (2.0,))
    flac = next((tmp_path / "LibriSpeech").rglob("*.flac"))
    flac.write_bytes(flac.read_bytes()[:100])
    with pytest.raises(HarnessError, match=r"84-121123-0000\.flac: unreadable FLAC"):
        D.convert_dataset(tmp_path)
    assert not (tmp_path / "dev-clean-wav").exists()  # nothing half-written
    (tmp_path / "dev-clean-wav.json").write_text('[{"files": []}]')
    with pytest.raises(HarnessError, match="entry 0 lacks"):
        D.load_manifest(tmp_path)
    (tmp_path / "dev-clean-wav.json").write_text('[{"files": [{"fname": "x.wav", "speed": 1}], "original_dur')
    with pytest.raises(HarnessError, match="not valid JSON"):
        D.load_manifest(tmp_path)
    (tmp_path / "dev-clean-wav.json").write_text(
        json.dumps([{"files": [{"fname": "x.wav", "speed": 1}], "original_duration": 1.0, "transcript": "a b"}])
    )
    log = tmp_path / "mlperf_log_accuracy.json"
    log.write_text('[{"seq_id": 0, "qsl_idx": 0, "data": "0100')
    with pytest.raises(HarnessError, match="truncated or not JSON"):
        rnnt.score(log, tmp_path)
    log.write_text('[{"seq_id": 0, "qsl_idx": 0, "data": "01000000"}]')  # 4 bytes: int32, not int64
    with pytest.raises(HarnessError, match="4 bytes for qsl_idx 0"):
        rnnt.score(log, tmp_path)
    log.write_text('[{"seq_id": 0, "qsl_idx": 0, "data": "1C00000000000000"}]')  # the blank, 28
    with pytest.raises(HarnessError, match="label index out of range"):
        rnnt.score(log, tmp_path)
    with pytest.raises(HarnessError, match="float32"):
        rnnt.collate([{"feature": np.zeros((5, 240), np.float64), "feature_length": np.array(5)}])
    with pytest.raises(HarnessError, match=r"rnnt_encoder\.onnx: missing"):
        rnnt.onnx_runner(tmp_path)
    (tmp_path / "rnnt_encoder.onnx").write_bytes(b"\x08\x07")
    with pytest.raises(HarnessError, match="not a valid ONNX graph"):
        rnnt.onnx_runner(tmp_path)


def test_registration_is_unchanged() -> None:
    bench = get_benchmark("rnnt")
    assert isinstance(bench, rnnt.Rnnt) and bench.name == "rnnt"
