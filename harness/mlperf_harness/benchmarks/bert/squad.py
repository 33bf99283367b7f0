"""SQuAD v1.1 examples and BERT features as the MLPerf reference builds them.

The reference (language/bert: create_squad_data.py with transformers' ``BertTokenizer``) splits each
context on whitespace into words, WordPiece-tokenizes every word on its own, then cuts the context's
tokens into windows of at most ``384 - len(query) - 3`` tokens, ``doc_stride`` apart. Each window is one
feature: ``[CLS] query [SEP] window [SEP]`` padded with 0 to 384. The tokenizer here is the
``tokenizers`` library's BERT pipeline (BertNormalizer, BertPreTokenizer, WordPiece) over the model's
vocab.txt: lower case, accents stripped, punctuation split, as the reference's uncased tokenizer does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import HarnessError

MAX_SEQ_LENGTH = 384
MAX_QUERY_LENGTH = 64
DOC_STRIDE = 128
# The reference numbers its features from here (unique_id); kept so predictions match by id.
FIRST_UNIQUE_ID = 1000000000
DEV_JSON = "dev-v1.1.json"
VOCAB = "vocab.txt"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclass(frozen=True)
class Example:
    """One question: its id, text, the context split on whitespace, and where each word starts."""

    qas_id: str
    question_text: str
    doc_tokens: list[str]
    word_starts: list[int]  # character offset in the context of each doc token


@dataclass
class Feature:
    """One window of one example, with what the postprocessing needs to map logits back to words."""

    unique_id: int
    example_index: int
    doc_span_index: int
    tokens: list[str]
    token_to_orig_map: dict[int, int]  # feature position -> index in Example.doc_tokens
    token_is_max_context: dict[int, bool]
    input_ids: np.ndarray  # int32 (384,)
    input_mask: np.ndarray
    segment_ids: np.ndarray
    span: tuple[int, int]  # (start, length) of the window in the context's tokens


def _is_squad_whitespace(c: str) -> bool:
    # The reference splits contexts on these only (not on U+00A0 and other Unicode spaces).
    return c in " \t\r\n" or ord(c) == 0x202F


def split_context(text: str) -> tuple[list[str], list[int]]:
    """Whitespace-split a context the reference's way, with each word's start offset."""
    words: list[str] = []
    starts: list[int] = []
    prev_space = True
    for i, c in enumerate(text):
        if _is_squad_whitespace(c):
            prev_space = True
            continue
        if prev_space:
            words.append(c)
            starts.append(i)
        else:
            words[-1] += c
        prev_space = False
    return words, starts


def load_dev_json(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HarnessError(f"{path}: missing file (SQuAD v1.1 dev set, dev-v1.1.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HarnessError(f"{path}: not valid JSON ({exc}); download dev-v1.1.json again") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise HarnessError(f"{path}: no 'data' list; not a SQuAD v1.1 file")
    return data


def read_examples(path: Path) -> list[Example]:
    """Every question of a SQuAD v1.1 file, in file order (the order features and QSL indices follow)."""
    data = load_dev_json(path)
    examples: list[Example] = []
    try:
        for article in data["data"]:  # type: ignore[attr-defined]
            for paragraph in article["paragraphs"]:
                words, starts = split_context(paragraph["context"])
                for qa in paragraph["qas"]:
                    examples.append(Example(str(qa["id"]), str(qa["question"]), words, starts))
    except (KeyError, TypeError) as exc:
        raise HarnessError(f"{path}: missing field {exc} in a SQuAD article, paragraph or question") from None
    return examples


def read_vocab(path: Path) -> dict[str, int]:
    """vocab.txt: one token a line, its id the line number (as transformers' BertTokenizer reads it)."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        raise HarnessError(f"{path}: missing file (the BERT model's WordPiece vocab.txt)") from None
    if lines and lines[-1] == "":
        lines.pop()
    vocab = {tok: i for i, tok in enumerate(lines)}
    missing = [t for t in SPECIAL_TOKENS[:4] if t not in vocab]
    if missing:
        raise HarnessError(f"{path}: not a BERT vocab.txt (no {missing[0]} token); use the model's vocab.txt")
    return vocab


def make_tokenizer(vocab: dict[str, int]):  # tokenizers.Tokenizer (no type stubs)
    """The uncased BERT tokenizer: clean text, CJK split, lower case + strip accents, punctuation split,
    greedy longest-match WordPiece (words over 100 characters become [UNK])."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tok


def basic_tokenize(text: str) -> list[str]:
    """BERT's basic (pre-WordPiece) tokenization, uncased: what get_final_text aligns against."""
    from tokenizers import normalizers, pre_tokenizers

    norm = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True)
    return [w for w, _ in pre_tokenizers.BertPreTokenizer().pre_tokenize_str(norm.normalize_str(text))]


def doc_spans(n_tokens: int, max_tokens: int, stride: int = DOC_STRIDE) -> list[tuple[int, int]]:
    """Windows (start, length) over a context's tokens: each at most max_tokens, starts ``stride``
    apart (or less when a window is shorter), the last one ending at the context's end."""
    spans: list[tuple[int, int]] = []
    start = 0
    while start < n_tokens:
        length = min(n_tokens - start, max_tokens)
        spans.append((start, length))
        if start + length == n_tokens:
            break
        start += min(length, stride)
    return spans


def is_max_context(spans: list[tuple[int, int]], span_index: int, position: int) -> bool:
    """Whether window ``span_index`` gives token ``position`` its most context: the largest
    min(left, right) context, ties to the longer window (+0.01 per token), then the earlier one."""
    best_score = -1.0
    best = -1
    for i, (start, length) in enumerate(spans):
        end = start + length - 1
        if position < start or position > end:
            continue
        score = min(position - start, end - position) + 0.01 * length
        if score > best_score:
            best_score, best = score, i
    return best == span_index


def build_features(
    examples: list[Example],
    vocab: dict[str, int],
    max_seq_length: int = MAX_SEQ_LENGTH,
    max_query_length: int = MAX_QUERY_LENGTH,
    doc_stride: int = DOC_STRIDE,
) -> list[Feature]:
    tok = make_tokenizer(vocab)
    cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
    features: list[Feature] = []
    for ex_index, ex in enumerate(examples):
        q = tok.encode(ex.question_text, add_special_tokens=False)
        q_tokens, q_ids = q.tokens[:max_query_length], q.ids[:max_query_length]
        # Each whitespace word tokenized on its own: word_ids says which word a token came from.
        doc = tok.encode(ex.doc_tokens, is_pretokenized=True, add_special_tokens=False) if ex.doc_tokens else None
        d_tokens: list[str] = doc.tokens if doc else []
        d_ids: list[int] = doc.ids if doc else []
        d_words: list[int] = list(doc.word_ids) if doc else []
        max_tokens = max_seq_length - len(q_tokens) - 3  # room left after [CLS], query, [SEP], [SEP]
        spans = doc_spans(len(d_tokens), max_tokens, doc_stride)
        for span_index, (start, length) in enumerate(spans):
            offset = len(q_tokens) + 2
            tokens = ["[CLS]", *q_tokens, "[SEP]", *d_tokens[start : start + length], "[SEP]"]
            ids = [cls_id, *q_ids, sep_id, *d_ids[start : start + length], sep_id]
            n = len(ids)
            input_ids = np.zeros(max_seq_length, np.int32)
            input_ids[:n] = ids
            mask = np.zeros(max_seq_length, np.int32)
            mask[:n] = 1
            segment = np.zeros(max_seq_length, np.int32)
            segment[offset:n] = 1
            features.append(
                Feature(
                    unique_id=FIRST_UNIQUE_ID + len(features),
                    example_index=ex_index,
                    doc_span_index=span_index,
                    tokens=tokens,
                    token_to_orig_map={offset + i: d_words[start + i] for i in range(length)},
                    token_is_max_context={
                        offset + i: is_max_context(spans, span_index, start + i) for i in range(length)
                    },
                    input_ids=input_ids,
                    input_mask=mask,
                    segment_ids=segment,
                    span=(start, length),
                )
            )
    return features


def load_features(dataset_dir: Path, vocab_path: Path | None = None) -> tuple[list[Example], list[Feature]]:
    """Examples and features of ``dataset_dir``'s dev-v1.1.json with the vocab.txt beside it (or
    ``vocab_path``)."""
    examples = read_examples(dataset_dir / DEV_JSON)
    vocab = read_vocab(vocab_path or dataset_dir / VOCAB)
    return examples, build_features(examples, vocab)
