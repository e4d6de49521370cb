"""A small SQuAD v1.1 file whose right answers are known by construction, for tests.

``write_squad_fixture(folder)`` writes ``dev-v1.1.json`` (and, unless told otherwise, a
``vocab.txt`` of BERT's size covering every word in it) where:

- every context holds the words ``alpha ... omega``, and the questions' reference answers
  are chosen so that the span from ``alpha`` to ``omega`` scores a known exact match and
  F1 (:data:`KNOWN_SPAN_SCORES`);
- one context is long enough to need several 384-token windows, one question is longer
  than 64 pieces (the reference cuts it), and the text holds accents, punctuation, CJK,
  control and zero-width characters, non-breaking spaces and a word longer than 100
  characters, which the tokenizer must treat as BERT's does.

``known_answer_graph(path, vocab)`` writes an ONNX graph with BERT's signature whose
logits point at ``alpha`` (start) and ``omega`` (end) in the context, computed from its
inputs, so a full accuracy run of it has a known score.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SEQ_LEN = 384
VOCAB_SIZE = 30522
START_WORD, END_WORD = "alpha", "omega"

_FILLER = (
    "The committee met in Zürich (1895–1943), naïve résumé café; U.S. don't «quoted» $1,000 — ok? "
    "東京 ☃ 😀 10\u00a0km e\u0301tude \u200bzero\u00adsoft [UNK] İstanbul straße ﬁne ＡＢＣ Ⅻ tab\tnew\nline "
)
_LONG_WORD = "x" * 120
#: Characters the fixture vocabulary leaves out, so they become [UNK].
_UNKNOWN = frozenset(("😀", "☃"))
#: (question, context, reference answers): the alpha..omega span's text is "alpha bravo omega".
QUESTIONS = (
    ("What was the code?", "Before it all, the code was alpha bravo omega in 1999. " + _FILLER,
     ("alpha bravo omega",)),
    ("Which words were said?", _FILLER + "They said alpha bravo omega, twice. " + _LONG_WORD,
     ("the alpha bravo omega twice", "charlie")),
    ("Where did it happen" + " and why" * 30 + "?", "Nobody knew. " + _FILLER * 12 + " At last: alpha bravo omega. "
     + _FILLER * 4, ("delta",)),
)
#: Exact match and F1 (fractions) of the prediction "alpha bravo omega" for each question.
KNOWN_SPAN_SCORES = ((1.0, 1.0), (0.0, 2 * 1.0 * 0.75 / (1.0 + 0.75)), (0.0, 0.0))


def squad_document() -> dict[str, object]:
    """The fixture as SQuAD v1.1 JSON: one article per question."""
    data = []
    for number, (question, context, answers) in enumerate(QUESTIONS):
        qas = [{"id": f"q{number}", "question": question,
                "answers": [{"text": a, "answer_start": max(context.find(a), 0)} for a in answers]}]
        data.append({"title": f"article {number}", "paragraphs": [{"context": context, "qas": qas}]})
    return {"version": "1.1", "data": data}


def fixture_vocab() -> list[str]:
    """A vocabulary of BERT's size holding the specials at BERT's ids and every word, piece
    and character the fixture needs (as lower-case, accent-free pieces)."""
    from mlpi.datasets.squad_features import basic_tokens

    words: list[str] = []
    for question, context, answers in QUESTIONS:
        for text in (question, context, *answers):
            for token in basic_tokens(text, True):
                if len(token) <= 100 and token not in words and token not in _UNKNOWN:
                    words.append(token)
    vocab = [f"[unused{i}]" for i in range(VOCAB_SIZE)]
    vocab[0] = "[PAD]"
    for i, special in zip(range(100, 104), ("[UNK]", "[CLS]", "[SEP]", "[MASK]")):
        vocab[i] = special
    for i, word in enumerate(words):
        vocab[1000 + i] = word
    # a few pieces, so some words split: "committee" -> "commit" "##tee"
    vocab[1000 + len(words)] = "commit"
    vocab[1001 + len(words)] = "##tee"
    if "committee" in words:
        vocab[1000 + words.index("committee")] = "[unused-committee]"
    return vocab


def write_squad_fixture(folder: Path, *, vocab: bool = True) -> Path:
    """``folder/dev-v1.1.json`` (and ``folder/vocab.txt``); returns the JSON's path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "dev-v1.1.json"
    path.write_text(json.dumps(squad_document(), ensure_ascii=False), encoding="utf-8")
    if vocab:
        (folder / "vocab.txt").write_text("\n".join(fixture_vocab()) + "\n", encoding="utf-8")
    return path


def known_answer_graph(path: Path, vocab: list[str]) -> Path:
    """A graph with BERT's signature: start logit 10 where the context holds ``alpha``, end
    logit 10 where it holds ``omega``, 0 elsewhere (the question's tokens never count)."""
    import onnx
    from onnx import TensorProto, helper

    start_id, end_id = vocab.index(START_WORD), vocab.index(END_WORD)
    names = ("input_ids", "input_mask", "segment_ids")
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", SEQ_LEN]) for n in names]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", SEQ_LEN])
               for n in ("output_start_logits", "output_end_logits")]
    constants = [
        helper.make_tensor("start_id", TensorProto.INT64, [], [start_id]),
        helper.make_tensor("end_id", TensorProto.INT64, [], [end_id]),
        helper.make_tensor("ten", TensorProto.FLOAT, [], [10.0]),
    ]
    nodes = [
        helper.make_node("Cast", ["segment_ids"], ["context"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["input_mask"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["context", "mask"], ["in_context"]),
    ]
    for word, output in (("start_id", "output_start_logits"), ("end_id", "output_end_logits")):
        nodes += [
            helper.make_node("Equal", ["input_ids", word], [f"{word}_hit"]),
            helper.make_node("Cast", [f"{word}_hit"], [f"{word}_float"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{word}_float", "in_context"], [f"{word}_where"]),
            helper.make_node("Mul", [f"{word}_where", "ten"], [output]),
        ]
    graph = helper.make_graph(nodes, "known_answer_bert", inputs, outputs, constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def span_logits(start: int, end: int) -> np.ndarray:
    """A response (float32 ``[384, 2]``) whose best span is ``start..end``."""
    logits = np.zeros((SEQ_LEN, 2), dtype=np.float32)
    logits[start, 0] = 10.0
    logits[end, 1] = 10.0
    return logits
