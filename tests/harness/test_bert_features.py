"""bert features against the reference's feature building written out here in plain Python.

The reference (language/bert/create_squad_data.py with transformers' slow BertTokenizer): whitespace
split of the context, basic tokenization (clean, CJK, lower case, strip accents, punctuation split) and
greedy WordPiece of every word, query cut to 64 tokens, windows of the rest every 128 tokens, max context.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from mlperf_harness.benchmarks.bert import squad
from mlperf_harness.errors import HarnessError

# --- the reference's tokenizer (uncased BertTokenizer), plain Python --------------------------------


def ref_basic(text: str) -> list[str]:
    def control(c: str) -> bool:
        return c not in "\t\n\r" and unicodedata.category(c).startswith("C")

    def space(c: str) -> bool:
        return c in " \t\n\r" or unicodedata.category(c) == "Zs"

    def punct(c: str) -> bool:
        cp = ord(c)
        return (
            33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126 or unicodedata.category(c)[0] == "P"
        )

    def cjk(cp: int) -> bool:
        return 0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0xF900 <= cp <= 0xFAFF or 0x20000 <= cp <= 0x2FA1F

    text = "".join(" " if space(c) else c for c in text if ord(c) not in (0, 0xFFFD) and not control(c))
    text = "".join(f" {c} " if cjk(ord(c)) else c for c in text)
    out: list[str] = []
    for word in text.split():
        word = "".join(c for c in unicodedata.normalize("NFD", word.lower()) if unicodedata.category(c) != "Mn")
        cur = ""
        for c in word:
            if punct(c):
                out += [cur] if cur else []
                out.append(c)
                cur = ""
            else:
                cur += c
        out += [cur] if cur else []
    return out


def ref_wordpiece(word: str, vocab: dict[str, int]) -> list[str]:
    if len(word) > 100:
        return ["[UNK]"]
    pieces: list[str] = []
    start = 0
    while start < len(word):
        end = len(word)
        while end > start:
            piece = ("##" if start else "") + word[start:end]
            if piece in vocab:
                break
            end -= 1
        if end == start:
            return ["[UNK]"]
        pieces.append(piece)
        start = end
    return pieces


def ref_tokenize(text: str, vocab: dict[str, int]) -> list[str]:
    return [p for w in ref_basic(text) for p in ref_wordpiece(w, vocab)]


# --- the reference's feature building, plain Python -------------------------------------------------


def ref_features(context: str, question: str, vocab: dict[str, int], seq: int, query: int, stride: int) -> list[dict]:
    words: list[str] = []
    new_word = True
    for c in context:
        if c in " \t\r\n" or ord(c) == 0x202F:
            new_word = True
        else:
            if new_word:
                words.append(c)
            else:
                words[-1] += c
            new_word = False
    q = ref_tokenize(question, vocab)[:query]
    doc: list[str] = []
    orig: list[int] = []
    for i, w in enumerate(words):
        for t in ref_tokenize(w, vocab):
            doc.append(t)
            orig.append(i)
    room = seq - len(q) - 3
    spans = []
    start = 0
    while start < len(doc):
        length = min(len(doc) - start, room)
        spans.append((start, length))
        if start + length == len(doc):
            break
        start += min(length, stride)

    def max_context(si: int, pos: int) -> bool:
        best, best_i = None, None
        for i, (s, n) in enumerate(spans):
            if s <= pos <= s + n - 1:
                score = min(pos - s, s + n - 1 - pos) + 0.01 * n
                if best is None or score > best:
                    best, best_i = score, i
        return best_i == si

    out = []
    for si, (s, n) in enumerate(spans):
        tokens = ["[CLS]", *q, "[SEP]"]
        segment = [0] * len(tokens)
        to_orig, is_max = {}, {}
        for i in range(n):
            to_orig[len(tokens)] = orig[s + i]
            is_max[len(tokens)] = max_context(si, s + i)
            tokens.append(doc[s + i])
            segment.append(1)
        tokens.append("[SEP]")
        segment.append(1)
        ids = [vocab[t] for t in tokens]
        mask = [1] * len(ids)
        pad = seq - len(ids)
        out.append(
            {
                "tokens": tokens,
                "span": (s, n),
                "token_to_orig_map": to_orig,
                "token_is_max_context": is_max,
                "input_ids": ids + [0] * pad,
                "input_mask": mask + [0] * pad,
                "segment_ids": segment + [0] * pad,
            }
        )
    return out


# --- hand-written SQuAD questions -------------------------------------------------------------------

HISTORY = (
    'The leader was John Smith (1895-1943). Smith\'s café in Zürich, "Le Naïve", opened at 9:30 a.m.; '
    "it cost $1,200 (€1,100) — a lot! Ünïcödé façade, São Paulo's señor and the 東京 office\u200b joined. "
)
PARAGRAPHS = [
    ("Super Bowl 50 was an American football game; the Denver Broncos beat the Carolina Panthers 24\u201310.",
     ["Which NFL team won Super Bowl 50?", "What was the score (final)?"]),
    (HISTORY + "A\u00a0non-breaking space and a narrow\u202fno-break space, tabs\tand\nnewlines.  Double  spaces.",
     ["Who was the leader, and when was he born?", "What did the café cost in €?"]),
    ("Antidisestablishmentarianism" * 5 + " is a very long word; " + "x" * 120 + " is longer still.",
     ["How long is the word? " + "Why " * 70]),  # a question over 64 tokens is cut
    (" ".join([HISTORY] * 9) + "The end.", ["Where was the café?", "What happened at the end?"]),  # several windows
]  # fmt: skip


def make_vocab(texts: list[str]) -> dict[str, int]:
    """Most words whole, every third split into a stem and a ## piece, letters for the rest, [UNK] for
    what is left out (the euro sign, CJK)."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += list("abcdefghijklmnopqrstuvwxyz0123456789") + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    for i, w in enumerate(sorted({w for t in texts for w in ref_basic(t)})):
        if w in ("€", "東"):
            continue
        if i % 3 == 0 and len(w) > 4:
            tokens += [w[:3], "##" + w[3:]]
        else:
            tokens.append(w)
    return {t: i for i, t in enumerate(dict.fromkeys(tokens))}


def write_squad(path: Path, paragraphs: list[tuple[str, list[str]]]) -> None:
    data = [
        {
            "title": "Hand_written",
            "paragraphs": [
                {"context": c, "qas": [{"id": f"q{i}-{j}", "question": q, "answers": []} for j, q in enumerate(qs)]}
                for i, (c, qs) in enumerate(paragraphs)
            ],
        }
    ]
    path.write_text(json.dumps({"version": "1.1", "data": data}, ensure_ascii=False))


@pytest.mark.parametrize(("seq", "query", "stride"), [(384, 64, 128), (48, 12, 8)])
def test_features_equal_the_reference(tmp_path: Path, seq: int, query: int, stride: int) -> None:
    texts = [c for c, _ in PARAGRAPHS] + [q for _, qs in PARAGRAPHS for q in qs]
    vocab = make_vocab(texts)
    write_squad(tmp_path / "dev-v1.1.json", PARAGRAPHS)
    examples = squad.read_examples(tmp_path / "dev-v1.1.json")
    got = squad.build_features(examples, vocab, seq, query, stride)
    want = [f for c, qs in PARAGRAPHS for q in qs for f in ref_features(c, q, vocab, seq, query, stride)]
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.tokens == w["tokens"]
        assert g.span == w["span"]
        assert g.token_to_orig_map == w["token_to_orig_map"]
        assert g.token_is_max_context == w["token_is_max_context"]
        for name in ("input_ids", "input_mask", "segment_ids"):
            arr = getattr(g, name)
            assert arr.dtype == np.int32 and arr.shape == (seq,)
            assert arr.tolist() == w[name]
    # The cases are there: several windows, [UNK], a cut query, unique ids in order.
    assert max(f.doc_span_index for f in got) >= 1
    assert any("[UNK]" in f.tokens for f in got)
    assert [f.unique_id for f in got] == list(range(squad.FIRST_UNIQUE_ID, squad.FIRST_UNIQUE_ID + len(got)))
    if seq == 384:
        assert sum(1 for f in got if f.example_index == 6) >= 3  # the long context needs 3 windows


def test_doc_spans_and_max_context() -> None:
    # 10 tokens, windows of 4 every 3: the last window ends at the end.
    spans = squad.doc_spans(10, 4, 3)
    assert spans == [(0, 4), (3, 4), (6, 4)]
    # token 3: left 3/right 0 in window 0, left 0/right 3 in window 1: tie on min, same length -> window 0.
    assert squad.is_max_context(spans, 0, 3) and not squad.is_max_context(spans, 1, 3)
    assert squad.is_max_context(spans, 1, 4) and squad.is_max_context(spans, 2, 9)
    # 318 tokens, a 384 window with a 64-token query: the 0.01-per-token bonus outweighs one token of
    # context, so token 223 (min context 93 + 3.17 vs 94 + 1.90) stays with the longer first window.
    spans = squad.doc_spans(318, 317, 128)
    assert spans == [(0, 317), (128, 190)]
    assert squad.is_max_context(spans, 0, 223) and not squad.is_max_context(spans, 1, 223)
    assert squad.is_max_context(spans, 1, 317)  # only the second window holds the last token


def test_bad_files_name_the_file(tmp_path: Path) -> None:
    dev = tmp_path / "dev-v1.1.json"
    with pytest.raises(HarnessError, match=r"dev-v1\.1\.json: missing file"):
        squad.read_examples(dev)
    dev.write_text('{"version": "1.1", "data": [{"title": "t", "paragraphs": [{"qas": []')
    with pytest.raises(HarnessError, match=r"dev-v1\.1\.json: not valid JSON"):
        squad.read_examples(dev)
    dev.write_text('{"version": "1.1", "data": [{"title": "t", "paragraphs": [{"qas": []}]}]}')
    with pytest.raises(HarnessError, match="missing field 'context'"):
        squad.read_examples(dev)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\nhello\n")
    with pytest.raises(HarnessError, match=r"vocab.txt: not a BERT vocab.txt \(no \[UNK\]"):
        squad.read_vocab(vocab)
