"""A synthetic SQuAD v1.1 dev set and vocab.txt, answered by the FP32 synthetic model itself.

The text is made of generated words with what makes BERT's tokenization and SQuAD's answer mapping
non-trivial: capitals, accents (stripped by the tokenizer), punctuation (split off), numbers, words the
vocab only has as word + ``##s``, characters outside the vocab ([UNK]) and contexts long enough to need
several 384-token windows. Each question's answer is the FP32 model's own best span after the
reference's postprocessing, so FP32 scores exact_match = f1 = 100 and a broken pipeline visibly less.
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...fsutil import atomic_write_text
from .accuracy import Answer, best_answer, normalize_answer
from .squad import DEV_JSON, MAX_SEQ_LENGTH, SPECIAL_TOKENS, VOCAB, build_features, read_examples, read_vocab

COMMON = ("the", "of", "and", "in", "to", "a", "was", "is", "for", "on", "by", "with", "as", "at", "from", "that")
SUFFIXES = ("##ed", "##ing", "##ly", "##er")  # ##s is among the letters
PUNCT = tuple(".,;:!?'\"()-$%&/")
ACCENTS = {"a": "á", "e": "é", "i": "í", "o": "ö", "u": "ü", "n": "ñ", "c": "ç"}
OUTSIDE_VOCAB = ("€", "ß", "Ω")  # not in the synthetic vocab: [UNK] tokens
# Retries before a question is given up: each retry asks a new question about the same context.
MAX_ATTEMPTS = 40
# A question is kept only if its best span beats the next by this much (logit sum), so batch size or
# thread count (float reassociation, ~1e-6) can never flip the FP32 answer.
MARGIN = 1e-3
# SQuAD's answers are short (about 3 words on average): longer model spans are asked again.
MAX_ANSWER_WORDS = 10
README = "README.txt"


def _pick(rng: np.random.Generator, items: Sequence[str]) -> str:
    # rng.choice would turn a list into an array on every call: too slow over a 30,522-word vocab.
    return items[int(rng.integers(len(items)))]


def _pseudo_words(rng: np.random.Generator, count: int, taken: set[str]) -> list[str]:
    onsets = [*"bcdfghjklmprstvwz", "br", "ch", "st", "tr", "sh", "pl", "gr"]
    vowels = [*"aeiou", "ai", "ou", "ea"]
    codas = ["", "", "", *"nrlsmtk", "nd", "st"]
    words: list[str] = []
    while len(words) < count:
        n = int(rng.integers(1, 4))
        w = "".join(_pick(rng, onsets) + _pick(rng, vowels) + _pick(rng, codas) for _ in range(n))
        if w not in taken:
            taken.add(w)
            words.append(w)
    return words


def synthetic_vocab(size: int) -> list[str]:
    """A WordPiece vocab of ``size`` tokens: the special tokens, punctuation, digits, letters (whole and
    ``##`` pieces, so any lower-case ASCII word tokenizes), a few suffixes and common words, then
    generated words. The same for a given size, whatever the seed, so model and data always agree."""
    head = [*SPECIAL_TOKENS, *PUNCT, *string.digits, *string.ascii_lowercase]
    head += [f"##{c}" for c in string.ascii_lowercase + string.digits] + list(SUFFIXES) + list(COMMON)
    if size < len(head) + 16:
        raise ValueError(f"vocab size {size} is too small (needs more than {len(head) + 16})")
    rng = np.random.default_rng(20201)
    return head + _pseudo_words(rng, size - len(head), set(head))


def write_vocab(path: Path, tokens: list[str]) -> None:
    atomic_write_text(path, "".join(t + "\n" for t in tokens))


def vocab_words(tokens: list[str]) -> list[str]:
    """The generated whole words of a synthetic vocab (what the text is made of)."""
    return [t for t in tokens if len(t) > 1 and t.isalpha() and t.isascii() and t not in COMMON]


class _Text:
    """Generated English-looking text over a vocab's words."""

    def __init__(self, rng: np.random.Generator, words: list[str], vocab: set[str]) -> None:
        self.rng = rng
        self.words = words
        self.vocab = vocab

    def word(self) -> str:
        r = self.rng.random()
        w = _pick(self.rng, self.words)
        if r < 0.12:
            return _pick(self.rng, COMMON)
        if r < 0.17 and w + "s" not in self.vocab:
            return w + "s"  # tokenizes as w ##s
        if r < 0.22:
            return w.capitalize()
        if r < 0.26:  # an accented spelling: the tokenizer strips the accent back to w
            i = next((j for j, c in enumerate(w) if c in ACCENTS), None)
            return w if i is None else w[:i] + ACCENTS[w[i]] + w[i + 1 :]
        if r < 0.29:
            return (
                str(int(self.rng.integers(1000, 2030))) if self.rng.random() < 0.7 else f"{self.rng.random() * 99:.1f}"
            )
        if r < 0.31:
            return f"({w})"
        if r < 0.33:
            return f"{w}-{_pick(self.rng, self.words)}"
        if r < 0.35:
            return f"{w}'s"
        if r < 0.36:
            return f"{_pick(self.rng, OUTSIDE_VOCAB)}{int(self.rng.integers(2, 99))}"
        return w

    def sentence(self, n_words: int) -> str:
        out = [self.word() for _ in range(n_words)]
        out[0] = out[0][:1].upper() + out[0][1:]
        for i in range(1, n_words - 1):
            if self.rng.random() < 0.08:
                out[i] += ","
        return " ".join(out) + "."

    def context(self, n_words: int) -> str:
        sentences: list[str] = []
        left = n_words
        while left > 0:
            k = min(left, int(self.rng.integers(6, 20)))
            sentences.append(self.sentence(max(k, 2)))
            left -= k
        return " ".join(sentences)

    def question(self, context: str) -> str:
        # Mostly words from the context, as SQuAD's questions are.
        ctx_words = [w.strip(".,()") for w in context.split()]
        n = int(self.rng.integers(4, 12))
        picked = [_pick(self.rng, ctx_words) if self.rng.random() < 0.6 else self.word() for _ in range(n)]
        lead = _pick(self.rng, ["What", "Who", "When", "Which", "How many", "Where", "Why"])
        return " ".join([lead, *picked]) + "?"


def _plan(rng: np.random.Generator, text: _Text, n: int) -> list[dict[str, object]]:
    """Articles of paragraphs of questions (answers to come), ``n`` questions in all."""
    articles: list[dict[str, object]] = []
    qid = n_paragraphs = 0
    while qid < n:
        paragraphs: list[dict[str, object]] = []
        for _ in range(int(rng.integers(1, 5))):
            if qid >= n:
                break
            # One context in eight (the 2nd, 10th, ...) is long enough for two or more windows.
            long = n_paragraphs % 8 == 1
            n_paragraphs += 1
            n_words = int(rng.integers(280, 560)) if long else int(rng.integers(40, 220))
            context = text.context(n_words)
            qas = []
            for _ in range(min(int(rng.integers(1, 4)), n - qid)):
                qas.append({"id": f"{int(rng.integers(0, 2**63)):016x}{qid:08x}", "question": text.question(context)})
                qid += 1
            paragraphs.append({"context": context, "qas": qas})
        title = "_".join(w.capitalize() for w in (_pick(rng, text.words) for _ in range(int(rng.integers(1, 3)))))
        articles.append({"title": title, "paragraphs": paragraphs})
    return articles


def _usable(answer: Answer, context: str) -> bool:
    """An answer every correct pipeline gives again: clear winner, found verbatim in the context at its
    offset, short, and not empty after SQuAD's normalisation (that would score F1 0)."""
    words = normalize_answer(answer.text).split()
    at = context[answer.char_start : answer.char_start + len(answer.text)]
    return answer.margin >= MARGIN and at == answer.text and 0 < len(words) <= MAX_ANSWER_WORDS


def _write_dev(path: Path, articles: list[dict[str, object]]) -> None:
    doc = {
        "version": "1.1",
        "synthetic": "SYNTHETIC SQuAD v1.1 dev set: generated text; answers are the FP32 synthetic model's own spans",
        "data": articles,
    }
    atomic_write_text(path, json.dumps(doc, ensure_ascii=False))


def synthesize_dataset(out_dir: Path, seed: int, n: int, model_path: Path, batch_size: int = 16) -> dict[str, object]:
    """Write ``dev-v1.1.json`` (``n`` questions) and ``vocab.txt`` into ``out_dir``; answers from the
    FP32 model at ``model_path`` (run with onnxruntime, the reference's postprocessing)."""
    import onnxruntime as ort

    from .model import OUTPUTS, vocab_size
    from .pipeline import collate, mask_padding

    out_dir.mkdir(parents=True, exist_ok=True)
    tokens = synthetic_vocab(vocab_size(model_path))
    write_vocab(out_dir / VOCAB, tokens)
    vocab = read_vocab(out_dir / VOCAB)
    rng = np.random.default_rng(seed)
    text = _Text(rng, vocab_words(tokens), set(tokens))
    articles = _plan(rng, text, n)
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    out_names = [o.name for o in sess.get_outputs()]
    dev = out_dir / DEV_JSON
    qas = [(p, qa) for a in articles for p in a["paragraphs"] for qa in p["qas"]]  # type: ignore[attr-defined]
    pending = list(range(len(qas)))
    for attempt in range(MAX_ATTEMPTS):
        if not pending:
            break
        if attempt:
            for i in pending:  # a new question about the same context
                qas[i][1]["question"] = text.question(str(qas[i][0]["context"]))
        _write_dev(dev, articles)
        examples = read_examples(dev)
        subset = [examples[i] for i in pending]
        features = build_features(subset, vocab)
        start = np.empty((len(features), MAX_SEQ_LENGTH), np.float32)
        end = np.empty_like(start)
        for b in range(0, len(features), batch_size):
            batch = collate(
                [
                    {"input_ids": f.input_ids, "input_mask": f.input_mask, "segment_ids": f.segment_ids}
                    for f in features[b : b + batch_size]
                ]
            )
            # The logits as the harness logs them: padded tokens' at -10000 (pipeline.mask_padding).
            logits = mask_padding(dict(zip(out_names, sess.run(out_names, batch), strict=True)), batch["input_mask"])
            s, e = (logits[name] for name in OUTPUTS)
            start[b : b + len(s)], end[b : b + len(e)] = s, e
        by_example: dict[int, list[int]] = {}
        for fi, f in enumerate(features):
            by_example.setdefault(f.example_index, []).append(fi)
        still: list[int] = []
        for local, i in enumerate(pending):
            fis = by_example.get(local, [])
            got = best_answer(subset[local], [features[fi] for fi in fis], [(start[fi], end[fi]) for fi in fis])
            context = str(qas[i][0]["context"])
            if got is None or not _usable(got, context):
                still.append(i)
                continue
            qas[i][1]["answers"] = [{"text": got.text, "answer_start": got.char_start}]
        pending = still
    if pending:
        raise RuntimeError(f"{len(pending)} synthetic questions found no clear answer in {MAX_ATTEMPTS} attempts")
    _write_dev(dev, articles)
    facts: dict[str, object] = {
        "synthetic": True,
        "seed": seed,
        "questions": len(qas),
        "features": len(build_features(read_examples(dev), vocab)),
        "model": str(model_path),
    }
    atomic_write_text(
        out_dir / README,
        f"SYNTHETIC SQuAD v1.1 dev set (dev-v1.1.json, vocab.txt) generated by mlperf_harness: {json.dumps(facts)}\n",
    )
    return facts
