"""SQuAD v1.1 questions and the BERT features MLPerf feeds, built as its reference builds them.

Followed: MLCommons inference ``language/bert`` — ``create_squad_data.py``
(``read_squad_examples``: a context is split into words on space, tab, CR, LF and U+202F;
``convert_examples_to_features``: the question's WordPieces cut to ``max_query_len``, the
context's WordPieces in windows of ``seq_len - len(question) - 3`` tokens moved by
``min(window, doc_stride)``, each window ``[CLS] question [SEP] window [SEP]`` padded with
zeros; ``_check_is_max_context``) and ``squad_QSL.py`` (384 / 128 / 64, one LoadGen sample
per feature, in order). Our own code.

Tokenizer: the reference's ``BertTokenizer`` (the Python one of transformers 4) in two
steps. BERT's basic tokenization runs here, in Python, so that every character is judged by
the same ``unicodedata`` tables as the reference's (the Rust normalizer's tables are of an
older Unicode and differ on ~50,000 recent code points): special tokens split out whole,
control characters dropped, whitespace to spaces, CJK characters split, lower case and
accents stripped, punctuation split off (:func:`basic_tokens`). The WordPiece step (greedy
longest match first, ``[UNK]`` for a word it cannot cover or longer than 100 characters)
is Hugging Face ``tokenizers``' ``WordPiece`` model. ``tests/test_squad.py`` checks the
tokens and features against the reference's own code and tokenizer.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlpi.core.contract.errors import DatasetError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
REQUIRED_TOKENS = ("[UNK]", "[CLS]", "[SEP]")
#: The reference's context word separators (``read_squad_examples``' ``is_whitespace``).
_WORD_BREAKS = frozenset(" \t\r\n\u202f")
#: The longest word WordPiece splits; a longer one is ``[UNK]`` (as in the reference).
MAX_WORD_CHARS = 100

FIX_DATA = "give SQuAD v1.1's dev-v1.1.json, or a file of the same format"


@dataclass(frozen=True)
class Example:
    """One question: its id, text, reference answers (``None``: the file gives none, so it
    can be run but not scored) and the paragraph it asks about."""

    qas_id: str
    question: str
    answers: tuple[str, ...] | None
    paragraph: int


@dataclass(frozen=True)
class Squad:
    """A SQuAD file read: every question in file order, and each paragraph's words."""

    examples: tuple[Example, ...]
    paragraphs: tuple[tuple[str, ...], ...]
    version: str


def read_squad(path: Path) -> Squad:
    """Questions and context words of a SQuAD v1.1 file; a DatasetError naming the first
    thing that is not SQuAD's format."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise DatasetError(f"there is no SQuAD file at {path}", FIX_DATA) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path} is not a SQuAD JSON file ({exc})", FIX_DATA) from None
    articles = _field(data, "data", list, path, "the file")
    examples: list[Example] = []
    paragraphs: list[tuple[str, ...]] = []
    for a, article in enumerate(articles):
        where = f"data[{a}]"
        for p, paragraph in enumerate(_field(article, "paragraphs", list, path, where)):
            where_p = f"{where}.paragraphs[{p}]"
            words = context_words(_field(paragraph, "context", str, path, where_p))
            number = len(paragraphs)
            paragraphs.append(words)
            for q, qa in enumerate(_field(paragraph, "qas", list, path, where_p)):
                where_q = f"{where_p}.qas[{q}]"
                qas_id = _field(qa, "id", str, path, where_q)
                question = _field(qa, "question", str, path, where_q)
                answers = None if "answers" not in qa else tuple(
                    _field(answer, "text", str, path, f"{where_q}.answers[{k}]")
                    for k, answer in enumerate(_field(qa, "answers", list, path, where_q))
                )
                examples.append(Example(qas_id, question, answers, number))
    version = data.get("version") if isinstance(data, dict) else None
    return Squad(tuple(examples), tuple(paragraphs), str(version))


def _field(holder: Any, key: str, kind: type, path: Path, where: str) -> Any:
    if not isinstance(holder, dict) or key not in holder:
        raise DatasetError(f"{path} is not in SQuAD's format: {where} has no '{key}'", FIX_DATA)
    value = holder[key]
    if not isinstance(value, kind):
        raise DatasetError(
            f"{path} is not in SQuAD's format: {where}.{key} is a {type(value).__name__}, not a {kind.__name__}", FIX_DATA
        )
    return value


def context_words(text: str) -> tuple[str, ...]:
    """A context split into words as ``read_squad_examples`` splits it."""
    words: list[str] = []
    current: list[str] = []
    for c in text:
        if c in _WORD_BREAKS:
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(c)
    if current:
        words.append("".join(current))
    return tuple(words)


def read_vocab(path: Path, size: int | None) -> list[str]:
    """A vocab.txt as a list of tokens (line ``i`` is token id ``i``); a DatasetError when it
    is missing, not text, of another size than the model's embedding table, or lacks a
    special token the features need."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"there is no vocabulary at {path}", "put BERT's vocab.txt there, or run `mlpi fetch bert-99`") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read the vocabulary {path}: {exc}", "give BERT's vocab.txt (UTF-8, one token per line)") from None
    tokens = text.split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()
    tokens = [t.rstrip("\r") for t in tokens]
    if size is not None and len(tokens) != size:
        raise DatasetError(
            f"the vocabulary {path} has {len(tokens)} tokens, but the model's embedding table has {size}",
            "use the vocab.txt that belongs to the model (BERT: zenodo record 3733868, 30522 lines)",
        )
    missing = [t for t in REQUIRED_TOKENS if t not in tokens]
    if missing:
        raise DatasetError(f"the vocabulary {path} has no {', '.join(missing)}", "use BERT's uncased vocab.txt")
    return tokens


_SPECIAL_SPLIT = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")
_CJK = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
        (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


@functools.cache
def _cleaned(c: str) -> str:
    """A character as BERT's cleaning leaves it: whitespace becomes a space; NUL, U+FFFD and
    other control or unassigned characters go; a CJK character gets spaces around it."""
    if c in " \t\n\r" or unicodedata.category(c) == "Zs":
        return " "
    if ord(c) in (0, 0xFFFD) or unicodedata.category(c).startswith("C"):
        return ""
    if any(lo <= ord(c) <= hi for lo, hi in _CJK):
        return f" {c} "
    return c


@functools.cache
def _is_punctuation(c: str) -> bool:
    code = ord(c)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(c).startswith("P")


def _plain(word: str, by_character: bool) -> str:
    """Lower case without accents (NFD, combining marks dropped). ``by_character``: each
    character lower-cased on its own, as the reference tokenizer does before tokenizing
    (a final capital sigma then becomes σ, where ``str.lower`` of the word gives ς)."""
    if word.isascii():
        return word.lower()
    lower = "".join([c.lower() for c in word]) if by_character else word.lower()
    return "".join(c for c in unicodedata.normalize("NFD", lower) if unicodedata.category(c) != "Mn")


#: ASCII's control characters (BERT drops them; tab, LF and CR are whitespace), and an ASCII
#: word's pieces: a punctuation character, or a run of anything else.
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ASCII_PIECE = re.compile(r"[!-/:-@\[-`{-~]|[^!-/:-@\[-`{-~]+")


def basic_tokens(text: str, lower_case: bool = True, *, by_character: bool = False) -> list[str]:
    """BERT's basic tokenization of ``text`` (a special token is kept whole only when it is
    a whole word, as ``BasicTokenizer`` keeps its ``never_split``). ``by_character``: as the
    reference's ``BertTokenizer`` does it for the features (NFC first, lower case character
    by character); otherwise as ``get_final_text``'s ``BasicTokenizer`` does."""
    out: list[str] = []
    if by_character and not lower_case and not text.isascii():
        text = unicodedata.normalize("NFC", text)  # the reference tokenizer's first step (lower-casing's NFD undoes it)
    if text.isascii():  # the common case, the same rules in a few regular expressions
        for word in _ASCII_CONTROL.sub("", text).split():
            if word in SPECIAL_TOKENS:
                out.append(word)
            else:
                out.extend(_ASCII_PIECE.findall(word.lower() if lower_case else word))
        return out
    for word in "".join([_cleaned(c) for c in text]).split():
        if word in SPECIAL_TOKENS:
            out.append(word)
            continue
        if lower_case:
            word = _plain(word, by_character)
        current: list[str] = []
        for c in word:
            if _is_punctuation(c):
                if current:
                    out.append("".join(current))
                    current = []
                out.append(c)
            else:
                current.append(c)
        if current:
            out.append("".join(current))
    return out


def pre_tokens(text: str, lower_case: bool = True) -> list[str]:
    """The words WordPiece is given: special tokens split out of the text first (as the
    reference tokenizer's ``tokenize`` does), then the basic tokenization of the rest."""
    if "[" not in text:
        return basic_tokens(text, lower_case, by_character=True)
    out: list[str] = []
    for chunk in _SPECIAL_SPLIT.split(text):
        if chunk in SPECIAL_TOKENS:
            out.append(chunk)
        elif chunk:
            out.extend(basic_tokens(chunk, lower_case, by_character=True))
    return out


class WordPieceTokenizer:
    """BERT's uncased tokenizer over a vocabulary (see the module docstring)."""

    def __init__(self, vocab: Sequence[str], lower_case: bool = True) -> None:
        from tokenizers import Tokenizer, models

        self.ids = {token: i for i, token in enumerate(vocab)}  # a repeated token keeps its last id, as BERT's loader does
        self.lower_case = lower_case
        self._wordpiece = Tokenizer(models.WordPiece(vocab=self.ids, unk_token="[UNK]", max_input_chars_per_word=MAX_WORD_CHARS))

    def _pieces(self, words: list[str]) -> tuple[list[str], list[int]]:
        if not words:
            return [], []
        encoding = self._wordpiece.encode(words, is_pretokenized=True, add_special_tokens=False)
        return list(encoding.tokens), [int(w) for w in encoding.word_ids]

    def tokenize(self, text: str) -> list[str]:
        return self._pieces(pre_tokens(text, self.lower_case))[0]

    def tokenize_batch(self, texts: Sequence[str]) -> list[list[str]]:
        words = [pre_tokens(text, self.lower_case) for text in texts]
        encodings = self._wordpiece.encode_batch([w for w in words if w], is_pretokenized=True, add_special_tokens=False)
        pieces = iter(encodings)
        return [list(next(pieces).tokens) if w else [] for w in words]

    def tokenize_words(self, words: Sequence[str]) -> tuple[list[str], list[int]]:
        """Each word's pieces, in order, and the word each piece came from (a word that
        normalises to nothing gives none)."""
        pieces, _, origin = self.tokenize_paragraphs([words])[0]
        return pieces, origin

    def tokenize_paragraphs(self, paragraphs: Sequence[Sequence[str]]) -> list[tuple[list[str], list[int], list[int]]]:
        """:meth:`tokenize_words` of many paragraphs at once (in parallel): each one's pieces,
        their ids, and the word each came from."""
        flat_words: list[list[str]] = []
        origins: list[list[int]] = []
        for words in paragraphs:
            flat: list[str] = []
            origin: list[int] = []
            for number, word in enumerate(words):
                parts = pre_tokens(word, self.lower_case)
                flat.extend(parts)
                origin.extend([number] * len(parts))
            flat_words.append(flat)
            origins.append(origin)
        encodings = iter(self._wordpiece.encode_batch([f for f in flat_words if f], is_pretokenized=True,
                                                      add_special_tokens=False))
        out = []
        for flat, origin in zip(flat_words, origins):
            if not flat:
                out.append(([], [], []))
                continue
            encoding = next(encodings)
            out.append((list(encoding.tokens), list(encoding.ids), [origin[w] for w in encoding.word_ids]))
        return out


@dataclass(frozen=True)
class FeatureParams:
    """The reference's feature settings (``squad_QSL.py``)."""

    seq_len: int = 384
    doc_stride: int = 128
    max_query_len: int = 64
    lower_case: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"seq_len": self.seq_len, "doc_stride": self.doc_stride, "max_query_len": self.max_query_len,
                "lower_case": self.lower_case}


@dataclass
class Features:
    """Every feature of a SQuAD file, and what scoring needs to map logits back to words.

    Feature ``f`` (LoadGen sample ``f``) holds ``input_ids[f]``, ``input_mask[f]`` and
    ``segment_ids[f]``; it is window ``span_start[f]``..``+span_length[f]`` of the context
    pieces of question ``example[f]``, whose first piece sits at position
    ``query_length[f] + 2``. ``max_context[f, i]`` is the reference's
    ``token_is_max_context`` of position ``i``. ``pieces[p]`` / ``piece_word[p]`` are
    paragraph ``p``'s context pieces and the word each came from.
    """

    input_ids: np.ndarray
    input_mask: np.ndarray
    segment_ids: np.ndarray
    example: np.ndarray
    span_start: np.ndarray
    span_length: np.ndarray
    query_length: np.ndarray
    max_context: np.ndarray
    pieces: list[list[str]]
    piece_word: list[list[int]]

    @property
    def count(self) -> int:
        return int(self.input_ids.shape[0])


def doc_spans(n_pieces: int, window: int, stride: int) -> list[tuple[int, int]]:
    """``(start, length)`` of each context window, as the reference slides them."""
    spans: list[tuple[int, int]] = []
    start = 0
    while start < n_pieces:
        length = min(n_pieces - start, window)
        spans.append((start, length))
        if start + length == n_pieces:
            break
        start += min(length, stride)
    return spans


def max_context(spans: Sequence[tuple[int, int]], n_pieces: int) -> np.ndarray:
    """For each piece, the span whose window gives it the most context on its shorter side
    (``_check_is_max_context``: score ``min(left, right) + 0.01 * length``, first best wins)."""
    positions = np.arange(n_pieces, dtype=np.int64)
    scores = np.full((len(spans), n_pieces), -np.inf)
    for k, (start, length) in enumerate(spans):
        end = start + length - 1
        inside = (positions >= start) & (positions <= end)
        score = np.minimum(positions - start, end - positions) + 0.01 * length
        scores[k, inside] = score[inside]
    return np.argmax(scores, axis=0)


def build_features(squad: Squad, tokenizer: WordPieceTokenizer, params: FeatureParams) -> Features:
    """Every question's features, in the reference's order."""
    cls_id, sep_id = tokenizer.ids["[CLS]"], tokenizer.ids["[SEP]"]
    unk_id = tokenizer.ids["[UNK]"]
    pieces: list[list[str]] = []
    piece_word: list[list[int]] = []
    piece_ids: list[np.ndarray] = []
    for tokens, ids, word_of in tokenizer.tokenize_paragraphs(squad.paragraphs):
        pieces.append(tokens)
        piece_word.append(word_of)
        piece_ids.append(np.asarray(ids, dtype=np.int32))
    questions = tokenizer.tokenize_batch([e.question for e in squad.examples])

    rows: list[tuple[int, int, int, int]] = []  # example, span start, span length, query length
    query_ids: list[np.ndarray] = []
    contexts: list[np.ndarray] = []
    for number, (example, query) in enumerate(zip(squad.examples, questions)):
        query = query[: params.max_query_len]
        window = params.seq_len - len(query) - 3
        if window < 1:
            raise DatasetError(
                f"seq_len {params.seq_len} leaves no room for context after a {len(query)}-piece question",
                "use max_query_len at most seq_len - 4",
            )
        n = len(pieces[example.paragraph])
        if n == 0:  # a context with no pieces: no window, so no feature (the reference's "empty")
            continue
        spans = doc_spans(n, window, params.doc_stride)
        best = max_context(spans, n)
        qids = np.asarray([tokenizer.ids.get(t, unk_id) for t in query], dtype=np.int32)
        for k, (start, length) in enumerate(spans):
            rows.append((number, start, length, len(query)))
            query_ids.append(qids)
            contexts.append(best[start : start + length] == k)

    count = len(rows)
    input_ids = np.zeros((count, params.seq_len), dtype=np.int32)
    input_mask = np.zeros((count, params.seq_len), dtype=np.uint8)
    segment_ids = np.zeros((count, params.seq_len), dtype=np.uint8)
    best_context = np.zeros((count, params.seq_len), dtype=bool)
    for f, ((number, start, length, q), qids, is_best) in enumerate(zip(rows, query_ids, contexts)):
        paragraph = squad.examples[number].paragraph
        first = q + 2
        input_ids[f, 0] = cls_id
        input_ids[f, 1 : q + 1] = qids
        input_ids[f, q + 1] = sep_id
        input_ids[f, first : first + length] = piece_ids[paragraph][start : start + length]
        input_ids[f, first + length] = sep_id
        input_mask[f, : first + length + 1] = 1
        segment_ids[f, first : first + length + 1] = 1
        best_context[f, first : first + length] = is_best
    table = np.asarray(rows, dtype=np.int32).reshape(count, 4)
    return Features(
        input_ids=input_ids,
        input_mask=input_mask,
        segment_ids=segment_ids,
        example=table[:, 0].copy(),
        span_start=table[:, 1].copy(),
        span_length=table[:, 2].copy(),
        query_length=table[:, 3].copy(),
        max_context=best_context,
        pieces=pieces,
        piece_word=piece_word,
    )
