"""Scoring a LoadGen accuracy log as language/bert/accuracy-squad.py and evaluate-v1.1 do.

Each response is float32 (seq, 2): per token its start and end logit. Per question, over its features,
the 20 best start and 20 best end positions pair into candidate spans; spans outside the context, not
at their token's max-context window, reversed or longer than 30 tokens are dropped; the best sum of
logits wins, its WordPieces joined and projected back onto the original words (get_final_text). Then
SQuAD v1.1's exact match and token F1 against the answers, as percentages over every question.
"""

from __future__ import annotations

import collections
import json
import re
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import HarnessError
from .squad import DEV_JSON, MAX_SEQ_LENGTH, Example, Feature, load_dev_json, load_features

N_BEST = 20
MAX_ANSWER_LENGTH = 30
NO_ANSWER = "empty"  # the reference's placeholder when a question has no valid span
Logits = tuple[np.ndarray, np.ndarray]  # start, end: float64 (384,)


@dataclass(frozen=True)
class Answer:
    text: str
    char_start: int  # in the context, valid when the words around it are single-space separated
    margin: float  # best span's logit sum less the runner-up's (inf when alone)


def _best_indexes(logits: np.ndarray, n: int) -> list[int]:
    # Stable sort, highest first: equal logits keep the lower position first, as Python's sort does.
    return [int(i) for i in np.argsort(-logits, kind="stable")[:n]]


def _strip_spaces(text: str) -> tuple[str, list[int]]:
    kept = [i for i, c in enumerate(text) if c != " "]
    return "".join(text[i] for i in kept), kept


def final_text(pred_text: str, orig_text: str) -> tuple[str, int]:
    """get_final_text (uncased): the part of ``orig_text`` (original words) that the normalised
    prediction covers, found by aligning ``orig_text``'s basic tokenization character by character;
    ``orig_text`` itself when the alignment fails. Returns the text and its offset in ``orig_text``."""
    from .squad import basic_tokenize

    tok_text = " ".join(basic_tokenize(orig_text))
    start = tok_text.find(pred_text)
    if start == -1:
        return orig_text, 0
    end = start + len(pred_text) - 1
    orig_ns, orig_map = _strip_spaces(orig_text)
    tok_ns, tok_map = _strip_spaces(tok_text)
    if len(orig_ns) != len(tok_ns):
        return orig_text, 0
    tok_to_ns = {s: ns for ns, s in enumerate(tok_map)}
    if start not in tok_to_ns or end not in tok_to_ns:
        return orig_text, 0
    a, b = orig_map[tok_to_ns[start]], orig_map[tok_to_ns[end]]
    return orig_text[a : b + 1], a


def best_answer(example: Example, features: list[Feature], logits: list[Logits | None]) -> Answer | None:
    """The reference's top prediction for one question; None when no span is valid (it answers
    "empty"). ``logits[i]`` belongs to ``features[i]``; None for a feature the log does not hold."""
    best: tuple[float, int, int, int] | None = None
    runner_up = -np.inf
    for fi, (feature, result) in enumerate(zip(features, logits, strict=True)):
        if result is None:
            continue
        start_logits, end_logits = result
        ends = _best_indexes(end_logits, N_BEST)
        for s in _best_indexes(start_logits, N_BEST):
            if s >= len(feature.tokens) or s not in feature.token_to_orig_map:
                continue
            if not feature.token_is_max_context.get(s, False):
                continue
            for e in ends:
                if e >= len(feature.tokens) or e not in feature.token_to_orig_map:
                    continue
                if e < s or e - s + 1 > MAX_ANSWER_LENGTH:
                    continue
                score = float(start_logits[s]) + float(end_logits[e])
                if best is None or score > best[0]:  # strictly: ties keep the earlier candidate
                    if best is not None:
                        runner_up = best[0]
                    best = (score, fi, s, e)
                else:
                    runner_up = max(runner_up, score)
    if best is None:
        return None
    _, fi, s, e = best
    feature = features[fi]
    pieces = " ".join(feature.tokens[s : e + 1]).replace(" ##", "").replace("##", "")
    pred_text = " ".join(pieces.strip().split())
    w0, w1 = feature.token_to_orig_map[s], feature.token_to_orig_map[e]
    text, offset = final_text(pred_text, " ".join(example.doc_tokens[w0 : w1 + 1]))
    return Answer(text=text, char_start=example.word_starts[w0] + offset, margin=best[0] - runner_up)


def read_log(path: Path, n_features: int) -> dict[int, Logits]:
    """qsl_idx -> (start, end) logits from an mlperf_log_accuracy.json; a response shorter than 384
    tokens is padded with -10000 as the reference pads it; the last response for an index wins."""
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError:
        raise HarnessError(f"{path}: missing accuracy log (run the accuracy mode first)") from None
    except json.JSONDecodeError as exc:
        raise HarnessError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); truncated log?") from None
    if not isinstance(entries, list):
        raise HarnessError(f"{path}: not a LoadGen accuracy log (expected a JSON list)")
    out: dict[int, Logits] = {}
    for entry in entries:
        try:
            idx = int(entry["qsl_idx"])
            raw = bytes.fromhex(entry["data"])
        except (KeyError, TypeError, ValueError) as exc:
            raise HarnessError(
                f"{path}: bad entry {str(entry)[:80]!r} ({exc}); expected qsl_idx and hex data"
            ) from None
        if not 0 <= idx < n_features:
            raise HarnessError(f"{path}: qsl_idx {idx} out of range (the dataset has {n_features} features)")
        if len(raw) % 8 or len(raw) > MAX_SEQ_LENGTH * 8:
            raise HarnessError(
                f"{path}: qsl_idx {idx} has {len(raw)} bytes; a response is float32 (seq <= 384, 2) start/end logits"
            )
        pairs = np.frombuffer(raw, np.float32).reshape(-1, 2)
        start = np.full(MAX_SEQ_LENGTH, -10000.0)
        end = np.full(MAX_SEQ_LENGTH, -10000.0)
        start[: len(pairs)], end[: len(pairs)] = pairs[:, 0], pairs[:, 1]
        out[idx] = (start, end)
    return out


def predictions(examples: list[Example], features: list[Feature], logits: dict[int, Logits]) -> dict[str, str]:
    """qas_id -> predicted answer text, as write_predictions writes predictions.json."""
    by_example: dict[int, list[int]] = collections.defaultdict(list)
    for i, f in enumerate(features):
        by_example[f.example_index].append(i)
    out: dict[str, str] = {}
    for ei, ex in enumerate(examples):
        idx = by_example[ei]
        got = best_answer(ex, [features[i] for i in idx], [logits.get(i) for i in idx])
        out[ex.qas_id] = got.text if got is not None else NO_ANSWER
    return out


def normalize_answer(s: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    s = "".join(c for c in s.lower() if c not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def f1_score(prediction: str, truth: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    same = sum((collections.Counter(pred) & collections.Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def evaluate(data: list[dict[str, object]], preds: dict[str, str]) -> dict[str, float]:
    """evaluate-v1.1: best exact match and F1 over each question's answers, in percent of all questions
    (an unanswered one scores 0)."""
    em = f1 = 0.0
    total = 0
    for article in data:
        for paragraph in article["paragraphs"]:  # type: ignore[attr-defined]
            for qa in paragraph["qas"]:
                total += 1
                if qa["id"] not in preds:
                    continue
                truths = [a["text"] for a in qa["answers"]]
                pred = preds[qa["id"]]
                em += max(normalize_answer(pred) == normalize_answer(t) for t in truths)
                f1 += max(f1_score(pred, t) for t in truths)
    return {"exact_match": 100.0 * em / total, "f1": 100.0 * f1 / total}


def score(accuracy_log: Path, dataset_dir: Path, vocab_path: Path | None = None) -> tuple[dict[str, float], str]:
    """Score ``accuracy_log`` against ``dataset_dir`` (dev-v1.1.json and vocab.txt): the metrics and
    the line the official script prints, ``{"exact_match": ..., "f1": ...}``."""
    examples, features = load_features(dataset_dir, vocab_path)
    preds = predictions(examples, features, read_log(accuracy_log, len(features)))
    data = load_dev_json(dataset_dir / DEV_JSON)["data"]
    try:
        metrics = evaluate(data, preds)  # type: ignore[arg-type]
    except (KeyError, TypeError) as exc:
        raise HarnessError(f"{dataset_dir / DEV_JSON}: missing field {exc} in a question's answers") from None
    except ZeroDivisionError:
        raise HarnessError(f"{dataset_dir / DEV_JSON}: no questions") from None
    return metrics, json.dumps(metrics)


RESPONSE_DESCRIPTION = (
    "float32 (384, 2) per sample: each token's start and end logit, as the reference's onnxruntime SUT "
    "stacks the model's two outputs, so accuracy-squad.py reads it with its default --output_dtype float32; "
    "padded tokens' logits are -10000, as accuracy-squad.py pads a shorter response"
)


def accuracy_command(accuracy_log: Path, dataset_dir: Path, vocab_path: Path | None = None) -> str:
    """The official script's command line (mlcommons/inference language/bert) for ``accuracy_log``."""
    vocab = vocab_path or dataset_dir / "vocab.txt"
    return (
        f"python3 language/bert/accuracy-squad.py --vocab_file {vocab} --val_data {dataset_dir / DEV_JSON} "
        f"--log_file {accuracy_log} --out_file predictions.json --features_cache_file eval_features.pickle"
    )
