"""LibriSpeech dev-clean as the RNN-T reference prepares and reads it, and its SYNTHETIC stand-in.

Layout (the reference's run.sh), under one dataset directory:

- ``LibriSpeech/dev-clean/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`` and
  ``<speaker>-<chapter>.trans.txt`` (one ``<id> <TRANSCRIPT>`` line per utterance): the download;
- ``dev-clean-wav/<speaker>/<chapter>/<id>.wav`` and ``dev-clean-wav.json``: the reference's
  conversion (convert_librispeech.py: same samples as 16-bit wav, a manifest with the lower-cased
  transcript and sox's facts about each file);
- the QSL keeps the manifest's utterances of at most 15 s (2,513 of dev-clean's 2,703), in its order.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from ...errors import HarnessError
from ...fsutil import atomic_write_json, atomic_write_text, staging_dir
from . import MANIFEST
from .decoder import collate, infer
from .features import SAMPLE_RATE, filterbank_features
from .model import onnx_runner
from .synth import synthetic_waveform

LABELS = (" ", *string.ascii_lowercase, "'")
BLANK = len(LABELS)  # 28: the RNN-T's extra class, never in a transcript
MAX_DURATION = 15.0  # seconds: the reference QSL's filter
SOURCE = Path("LibriSpeech") / "dev-clean"
WAV_DIR = "dev-clean-wav"
SYNTHETIC_NOTE = "SYNTHETIC: generated audio; transcripts are a random-weight RNN-T's own greedy decode.\n"

# The reference's text cleaning (english_cleaners with punctuation removal): punctuation that is not a
# label becomes a space, '&' and '+' become words.
_PUNCTUATION = str.maketrans({c: " " for c in string.punctuation if c not in "+&" and c not in LABELS})
_LABEL_INDEX = {c: i for i, c in enumerate(LABELS)}


@dataclass(frozen=True)
class Utterance:
    audio_path: Path
    duration: float
    transcript: str  # normalised, label characters only
    labels: tuple[int, ...]


def normalize_transcript(text: str, where: str = "transcript") -> str:
    """The reference's normalisation for LibriSpeech's alphabet. Its number and abbreviation expansion
    never applies to LibriSpeech (capitals, apostrophes, spaces): text that would need it is refused."""
    if any(c.isdigit() for c in text):
        raise HarnessError(
            f"{where}: digits in {text[:40]!r}; the reference spells numbers out, which is not done here"
        )
    text = text.lower().translate(_PUNCTUATION).replace("&", " and ").replace("+", " plus ")
    text = re.sub(r"\s+", " ", text).strip()
    return "".join(c for c in text if c in _LABEL_INDEX)


def read_wav(path: Path) -> np.ndarray:
    """float32 mono samples in [-1, 1) at 16 kHz, as the reference's AudioSegment loads them."""
    try:
        samples, rate = sf.read(str(path), dtype="float32")
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise HarnessError(f"{path}: unreadable audio ({exc}); convert the dataset again") from exc
    if samples.ndim == 2:
        samples = samples.mean(axis=1, dtype=np.float32)
    if rate != SAMPLE_RATE:
        import librosa  # the reference resamples with librosa too

        samples = librosa.resample(samples, orig_sr=rate, target_sr=SAMPLE_RATE).astype(np.float32)
    if samples.size < 2:
        raise HarnessError(f"{path}: {samples.size} samples; the file is truncated, convert the dataset again")
    return np.asarray(samples, dtype=np.float32)


def _transcripts(source: Path) -> list[tuple[Path, str, str]]:
    """(flac, id, transcript) for every line of every .trans.txt under ``source``, in a fixed order."""
    found = []
    for txt in sorted(source.rglob("*.trans.txt")):
        for number, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            utt_id, _, transcript = line.partition(" ")
            flac = txt.parent / f"{utt_id}.flac"
            if not flac.is_file():
                raise HarnessError(f"{txt}:{number}: {flac.name} is missing; download dev-clean again")
            found.append((flac, utt_id, transcript))
    if not found:
        raise HarnessError(f"{source}: no *.trans.txt files; download LibriSpeech dev-clean into it")
    return found


def convert_dataset(dataset_dir: Path, out_dir: Path | None = None) -> Path:
    """LibriSpeech/dev-clean (FLAC) -> dev-clean-wav/ (16-bit wav) and dev-clean-wav.json, as the
    reference's convert_librispeech.py writes them, into ``out_dir`` (default: beside the download;
    elsewhere when that is read-only, a PVC). The wav directory appears complete or not at all."""
    out = out_dir or dataset_dir
    source = dataset_dir / SOURCE
    if not source.is_dir():
        raise HarnessError(f"{source}: missing; download LibriSpeech dev-clean (or synthesize it) first")
    entries = []
    with staging_dir(out / WAV_DIR) as stage:
        for flac, utt_id, transcript in _transcripts(source):
            try:
                pcm, rate = sf.read(str(flac), dtype="int16")
            except (sf.LibsndfileError, RuntimeError) as exc:
                raise HarnessError(f"{flac}: unreadable FLAC ({exc}); download dev-clean again") from exc
            rel = flac.parent.relative_to(source) / f"{utt_id}.wav"
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(stage / rel), pcm, rate, subtype="PCM_16", format="WAV")
            num = int(pcm.shape[0])
            info = {
                "channels": 1 if pcm.ndim == 1 else int(pcm.shape[1]),
                "sample_rate": float(rate),
                "bitrate": 16,
                "duration": num / rate,
                "num_samples": num,
                "encoding": "Signed Integer PCM",
                "silent": not bool(np.any(pcm)),
                "fname": f"{WAV_DIR}/{rel.as_posix()}",
                "speed": 1,
            }
            entries.append(
                {
                    "transcript": transcript.lower().strip(),
                    "files": [info],
                    "original_duration": info["duration"],
                    "original_num_samples": num,
                }
            )
        if (source.parent / "README.TXT").is_file() and "SYNTHETIC" in (source.parent / "README.TXT").read_text():
            atomic_write_text(stage / "README.TXT", SYNTHETIC_NOTE)
    manifest = out / MANIFEST
    atomic_write_json(manifest, entries)
    return manifest


def load_manifest(dataset_dir: Path, manifest: Path | None = None) -> list[Utterance]:
    """The reference QSL's utterances: manifest order, at most 15 s, transcripts normalised."""
    path = manifest or dataset_dir / MANIFEST
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HarnessError(f"{path}: missing; run preprocess (it converts the dataset) first") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HarnessError(
            f"{path}: not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc}); convert again"
        ) from exc
    if not isinstance(entries, list):
        raise HarnessError(f"{path}: expected a JSON list of utterances; convert the dataset again")
    out = []
    for i, entry in enumerate(entries):
        try:
            duration = float(entry["original_duration"])
            fname = next(f["fname"] for f in entry["files"] if f["speed"] == 1)
            text = entry["transcript"]
        except (KeyError, TypeError, StopIteration, ValueError) as exc:
            raise HarnessError(
                f"{path}: entry {i} lacks {exc} (transcript, files[speed 1].fname, original_duration)"
            ) from exc
        if duration > MAX_DURATION:
            continue
        norm = normalize_transcript(str(text), f"{path} entry {i}")
        out.append(Utterance(dataset_dir / fname, duration, norm, tuple(_LABEL_INDEX[c] for c in norm)))
    return out


def preprocess(dataset_dir: Path) -> Iterator[dict[str, np.ndarray]]:
    """Samples in QSL order: {"feature": (T, 240) float32, "feature_length": () int64}. Converts the
    FLAC download first when the manifest is not there yet."""
    if not (dataset_dir / MANIFEST).is_file():
        convert_dataset(dataset_dir)
    for utt in load_manifest(dataset_dir):
        wave = read_wav(utt.audio_path)
        feat = filterbank_features(wave)
        yield {"feature": feat, "feature_length": np.array(feat.shape[0], dtype=np.int64)}


def synthesize_dataset(
    out_dir: Path, seed: int, n: int, model_path: Path, seconds: tuple[float, float] = (1.5, 14.5), batch: int = 8
) -> dict[str, object]:
    """A SYNTHETIC LibriSpeech/dev-clean under ``out_dir``: ``n`` utterances of speech-like FLAC audio
    in speaker/chapter folders, with .trans.txt transcripts that are the greedy decode of the FP32
    model in ``model_path`` (a directory of the three graphs), so that FP32 scores WER 0."""
    rng = np.random.default_rng(seed)
    run = onnx_runner(model_path)
    ids = []
    speaker = int(rng.integers(100, 900))
    for i in range(n):
        if i % 16 == 0:  # a new speaker every two chapters, a new chapter every 8 utterances
            speaker += int(rng.integers(1, 90))
        chapter = speaker * 100 + (i // 8) % 2 + 1
        ids.append((speaker, chapter, f"{speaker}-{chapter}-{i % 8:04d}"))
    audio = [synthetic_waveform(rng, float(rng.uniform(*seconds))) for _ in range(n)]
    texts: list[str] = []
    for start in range(0, n, batch):
        chunk = audio[start : start + batch]
        samples = []
        for pcm in chunk:
            feat = filterbank_features(pcm.astype(np.float32) / np.float32(32768.0))  # what read_wav will give
            samples.append({"feature": feat, "feature_length": np.array(feat.shape[0], dtype=np.int64)})
        out = infer(run, collate(samples))
        for row, count in zip(out["labels"], out["label_count"], strict=True):
            texts.append(" ".join("".join(LABELS[k] for k in row[:count]).split()))
    final = out_dir / "LibriSpeech"
    with staging_dir(final) as stage:
        (stage / "README.TXT").write_text(SYNTHETIC_NOTE + f"seed={seed} utterances={n}\n")
        lines: dict[Path, list[str]] = {}
        for (speaker, chapter, utt_id), pcm, text in zip(ids, audio, texts, strict=True):
            folder = stage / "dev-clean" / str(speaker) / str(chapter)
            folder.mkdir(parents=True, exist_ok=True)
            sf.write(str(folder / f"{utt_id}.flac"), pcm, SAMPLE_RATE, subtype="PCM_16", format="FLAC")
            lines.setdefault(folder / f"{speaker}-{chapter}.trans.txt", []).append(f"{utt_id} {text.upper()}")
        for path, rows in lines.items():
            path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    words = sum(len(t.split()) for t in texts)
    return {
        "synthetic": True,
        "seed": seed,
        "utterances": n,
        "words": words,
        "hours": math.fsum(a.size for a in audio) / SAMPLE_RATE / 3600,
    }
