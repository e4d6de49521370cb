"""The official uncased BERT ``vocab.txt``, rebuilt offline from the ``blingfire`` wheel.

Tests of the SQuAD tokenizer against the reference need the real MLPerf BERT vocabulary
(zenodo record 3733868: Google's uncased vocab, 30522 lines, the same as Hugging Face's
bert-base-uncased), which cannot be downloaded here; PyPI can be reached, and blingfire
ships that vocabulary as its ``bert_base_tok.i2w`` id-to-word model.

Each id is decoded after a known word (``a``, id 1037): the i2w model keeps a leading space
on word-initial tokens and none on ``##`` continuation pieces, so ``"a tok"`` gives ``tok``
and ``"atok"`` gives ``##tok``. blingfire stores the special tokens 100-103 lower-cased
(``[unk]``...), so they are restored to ``[UNK] [CLS] [SEP] [MASK]``. The result (one token
a line, ``\\n`` endings, a final newline) is checked against the official MD5.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

OFFICIAL_VOCAB_MD5 = "64800d5d8528ce344256daf115d4965e"
VOCAB_SIZE = 30522
_PREFIX_ID = 1037  # "a"
_SPECIAL = {100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}


def _tokens() -> list[str] | None:
    try:
        import blingfire
        import numpy as np
    except (ImportError, OSError):  # OSError: its native library failed to load
        return None
    model = Path(blingfire.__file__).with_name("bert_base_tok.i2w")
    if not model.is_file():
        return None
    handle = blingfire.load_model(str(model))
    try:
        tokens = []
        for i in range(VOCAB_SIZE):
            ids = np.array([_PREFIX_ID, i], dtype=np.int32)
            text = blingfire.ids_to_text(handle, ids, False, output_buffer_size=1024)
            if not text.startswith("a") or len(text) < 2:
                return None
            tokens.append(_SPECIAL.get(i) or (text[2:] if text[1] == " " else "##" + text[1:]))
        return tokens
    finally:
        blingfire.free_model(handle)


def vocab_from_blingfire(dest: Path) -> Path | None:
    """Write the official uncased BERT vocab.txt to dest (atomically) from the installed blingfire
    package's bert_base_tok model; return dest, or None when blingfire is not importable or the
    result does not hash to OFFICIAL_VOCAB_MD5."""
    tokens = _tokens()
    if tokens is None:
        return None
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes("".join(t + "\n" for t in tokens).encode("utf-8"))
        if hashlib.md5(tmp.read_bytes()).hexdigest() != OFFICIAL_VOCAB_MD5:
            return None
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest
