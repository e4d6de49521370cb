"""LibriSpeech transcripts normalised as MLPerf's RNN-T reference normalises them.

Followed: MLCommons inference ``retired_benchmarks/speech_recognition/rnnt/`` —
``pytorch/parts/manifest.py`` (``normalize_string``: the punctuation table and the
``good_token`` filter; ``Manifest.parse_transcript``: characters to label ids),
``pytorch/parts/text/cleaners.py`` (``english_cleaners``) and
``pytorch/parts/text/numbers.py`` (``normalize_numbers``).

Normalisation, in the reference's order: transliterate to ASCII (unidecode), lower-case,
expand numbers (inflect, imported only for a transcript holding a digit: importing it takes
seconds), expand abbreviations (``mr.`` -> ``mister``...), turn punctuation into spaces
(``string.punctuation`` less ``+``, ``&`` and any label character), ``&`` -> `` and ``,
``+`` -> `` plus ``, collapse whitespace, strip, then keep only label characters. A
transcript whose normalisation raises is dropped by the reference (:func:`normalize_transcript`
answers None), which shifts every later sample index.

Two rules of ``numbers.py`` can never fire and are left out: its pounds rule looks for
``£``, which unidecode has already turned into ``PS``; its time rule (``8:00``) looks for
digits after every digit has been spelt out.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from mlpi.core.contract.errors import DatasetError

INSTALL_HINT = "pip install 'mlpi[rnnt]'"

_ABBREVIATIONS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(rf"\b{short}\.", re.IGNORECASE), long)
    for short, long in (
        ("mrs", "misess"), ("mr", "mister"), ("dr", "doctor"), ("st", "saint"), ("co", "company"),
        ("jr", "junior"), ("maj", "major"), ("gen", "general"), ("drs", "doctors"), ("rev", "reverend"),
        ("lt", "lieutenant"), ("hon", "honorable"), ("sgt", "sergeant"), ("capt", "captain"),
        ("esq", "esquire"), ("ltd", "limited"), ("col", "colonel"), ("ft", "fort"),
    )
)
_WHITESPACE = re.compile(r"\s+")
_DIGIT = re.compile(r"[0-9]")
_GROUPED_NUMBER = re.compile(r"[0-9][0-9,]+[0-9]")
_DOLLARS = re.compile(r"\$([0-9.,]*[0-9]+)")
_DECIMAL = re.compile(r"[0-9]+\.[0-9]+")
_ORDINAL = re.compile(r"[0-9]+(?:st|nd|rd|th)")
_NUMBER = re.compile(r"[0-9]+")


@lru_cache(maxsize=8)
def punctuation_table(labels: tuple[str, ...]) -> dict[int, int]:
    """What turns into a space: ASCII punctuation less ``+`` and ``&`` (spelt out later) and
    less any character the labels hold (the apostrophe stays)."""
    removed = "".join(c for c in string.punctuation if c not in "+&" and c not in labels)
    return str.maketrans(removed, " " * len(removed))


@lru_cache(maxsize=1)
def _inflect_engine() -> Any:
    try:
        import inflect
    except ImportError:
        raise DatasetError("normalising LibriSpeech transcripts that hold digits needs inflect, which is not installed",
                           INSTALL_HINT) from None
    return inflect.engine()


def _unidecode() -> Callable[[str], str]:
    try:
        from unidecode import unidecode
    except ImportError:
        raise DatasetError("normalising LibriSpeech transcripts needs unidecode, which is not installed",
                           INSTALL_HINT) from None
    return unidecode


def _dollars(match: re.Match[str]) -> str:
    """``$5`` -> ``5 dollars``, ``$1.01`` -> ``1 dollar, 1 cent``: digits left for the number rules."""
    amount = match.group(1)
    parts = amount.split(".")
    if len(parts) > 2:
        return amount + " dollars"
    dollars = int(parts[0]) if parts[0] else 0  # may raise (``$,5``): the transcript is then dropped
    cents = int(parts[1]) if len(parts) > 1 and parts[1] else 0
    spelt = []
    if dollars:
        spelt.append(f"{dollars} {'dollar' if dollars == 1 else 'dollars'}")
    if cents:
        spelt.append(f"{cents} {'cent' if cents == 1 else 'cents'}")
    return ", ".join(spelt) if spelt else "zero dollars"


def _cardinal(match: re.Match[str]) -> str:
    """A run of digits in words: digit by digit after a leading zero or for long numbers not a
    multiple of 10,000 (phone numbers), years read in pairs between 1001 and 2999."""
    words = _inflect_engine().number_to_words
    digits = match.group(0)
    if digits[0] == "0":
        return words(digits, andword="", group=1)
    value = int(digits)
    if 1000 < value < 3000:
        if value == 2000:
            return "two thousand"
        if 2000 < value < 2010:
            return "two thousand " + words(value % 100)
        if value % 100 == 0:
            return words(value // 100) + " hundred"
        return words(value, andword="", zero="oh", group=2).replace(", ", " ")
    if value > 1_000_000_000 and value % 10_000 != 0:
        return words(value, andword="", group=1)
    return words(value, andword="")


def expand_numbers(text: str) -> str:
    """Numbers spelt out as ``numbers.py`` does (its rules in its order)."""
    if not _DIGIT.search(text):
        return text
    text = _GROUPED_NUMBER.sub(lambda m: m.group(0).replace(",", ""), text)
    text = _DOLLARS.sub(_dollars, text)
    text = _DECIMAL.sub(lambda m: m.group(0).replace(".", " point "), text)
    text = _ORDINAL.sub(lambda m: _inflect_engine().number_to_words(m.group(0)), text)
    return _NUMBER.sub(_cardinal, text)


def english_clean(text: str, labels: Sequence[str]) -> str:
    """``english_cleaners`` with the punctuation table of ``labels``, then stripped."""
    text = _unidecode()(text).lower()
    text = expand_numbers(text)
    if "." in text:  # every abbreviation ends with one
        for pattern, replacement in _ABBREVIATIONS:
            text = pattern.sub(replacement, text)
    text = text.translate(punctuation_table(tuple(labels)))
    text = text.replace("&", " and ").replace("+", " plus ")
    return _WHITESPACE.sub(" ", text).strip()


def normalize_transcript(text: Any, labels: Sequence[str]) -> str | None:
    """The transcript as the reference's ``Manifest(normalize=True)`` keeps it, or None where
    the reference drops the utterance (its normalisation raised, or it is not a string)."""
    if not isinstance(text, str):
        return None
    try:
        cleaned = english_clean(text, labels)
    except DatasetError:
        raise
    except Exception:  # noqa: BLE001 - the reference drops a transcript whatever the failure
        return None
    keep = set(labels)
    return "".join(c for c in cleaned if c in keep)


def label_ids(text: str, labels: Sequence[str]) -> list[int]:
    """``text``'s characters as label ids; characters outside the labels dropped."""
    ids = {label: i for i, label in enumerate(labels)}
    return [ids[c] for c in text if c in ids]
