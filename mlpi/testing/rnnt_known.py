"""RNN-T graphs whose transcript is known by construction, and audio to match.

The three graphs have RNN-T's signatures (:mod:`mlpi.models.rnnt_graph`) and answer a
"tone alphabet": each character of :data:`ALPHABET` is a tone at the centre frequency of mel
filter :func:`mel_bin`, far from the others'. An utterance written by :func:`tone_audio`
plays one tone per character of a text, each :data:`TONE_S` long, with :data:`GAP_S` of
silence between. The features are normalised per filter over the utterance, which makes any
filter that only ever sees another tone's leakage look loud: so a text must use every
character of the alphabet (:func:`tone_audio` checks), and then each filter's own tone is
what stands out.

- ``encoder``: the length mask and time stacking of the real encoder, then a fixed matrix:
  ``encoded[n, t, k]`` is the normalised log-mel value of filter ``mel_bin(k)`` in the first
  of the frame's two stacked feature frames (0 for ``k >= 28``).
- ``prediction``: ``g`` is the one-hot vector of the last symbol (zeros before the first);
  the state passes through unchanged.
- ``joint``: ``logits[k] = f[k] - 100 g[k]`` for the 28 labels, ``logits[28] = THRESHOLD``:
  a label is emitted when its tone is loud in the frame and it is not the last label
  emitted; then blank wins and the frame ends.

So the transcript is the text with repeated consecutive characters collapsed: what
:func:`expected_transcript` returns. Every backend must give exactly that.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from mlpi.core.results.rundir import write_bytes_atomic
from mlpi.models.rnnt import LABELS
from mlpi.models.rnnt_features import FeatureParams
from mlpi.models.rnnt_graph import (
    CELL,
    CELL_OUT,
    CONFIG,
    ENCODED,
    FEATURE_LENGTHS,
    FEATURES,
    HIDDEN,
    HIDDEN_OUT,
    LOGITS,
    SYMBOL,
    F,
    G,
    GraphWriter,
)

SAMPLE_RATE = 16000
TONE_S = 0.3
GAP_S = 0.2
#: The blank logit: a label's normalised log-mel value must exceed it to be emitted.
THRESHOLD = 1.5
#: The characters the known graphs hear, and their mel filters (8 apart from filter 30).
ALPHABET = " abcde"
FIRST_BIN, BIN_STEP = 30, 8


def mel_bin(char: str) -> int:
    return FIRST_BIN + BIN_STEP * ALPHABET.index(char)


def tone_frequency(char: str) -> float:
    """The centre frequency (Hz) of ``char``'s mel filter."""
    import librosa

    p = FeatureParams()
    centres = librosa.mel_frequencies(n_mels=p.mels + 2, fmin=0.0, fmax=p.sample_rate / 2)
    return float(centres[mel_bin(char) + 1])


def tone_audio(text: str, seed: int = 0) -> np.ndarray:
    """float32 samples: a tone per character of ``text``, silence between (``seed`` sets
    each tone's phase)."""
    if set(text) != set(ALPHABET):
        raise ValueError(f"a known-answer text uses every character of {ALPHABET!r} and no other, not {text!r}")
    rng = np.random.default_rng(seed)
    tone, gap = round(TONE_S * SAMPLE_RATE), round(GAP_S * SAMPLE_RATE)
    # Faded in and out over 40 ms: an abrupt start is a click that reaches every filter.
    fade = round(0.04 * SAMPLE_RATE)
    envelope = np.ones(tone)
    envelope[:fade] = envelope[-fade:][::-1] = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)
    parts = [np.zeros(gap)]
    for char in text:
        t = np.arange(tone) / SAMPLE_RATE
        phase = rng.uniform(0, 2 * np.pi)
        parts += [0.5 * envelope * np.sin(2 * np.pi * tone_frequency(char) * t + phase), np.zeros(gap)]
    return np.concatenate(parts).astype(np.float32)


def expected_transcript(text: str) -> list[int]:
    """Label ids of ``text`` with runs of one character collapsed."""
    ids = [LABELS.index(c) for c in text]
    return [k for i, k in enumerate(ids) if i == 0 or k != ids[i - 1]]


def _encoder() -> bytes:
    g = GraphWriter("known_encoder")
    x = g.stack_time(g.mask_lengths(g.one("Transpose", [FEATURES], perm=[1, 0, 2])), CONFIG.stack_factor,
                     CONFIG.stack_factor * CONFIG.features)
    pick = np.zeros((CONFIG.stack_factor * CONFIG.features, CONFIG.encoder_hidden), np.float32)
    for char in ALPHABET:
        pick[mel_bin(char), LABELS.index(char)] = 1.0
    g.node("MatMul", [g.one("Transpose", [x], perm=[1, 0, 2]), g.const("pick", pick)], [ENCODED])
    return g.model(
        [helper.make_tensor_value_info(FEATURES, TensorProto.FLOAT, ["N", "T", CONFIG.features]),
         helper.make_tensor_value_info(FEATURE_LENGTHS, TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info(ENCODED, TensorProto.FLOAT, ["N", "T_stacked", CONFIG.encoder_hidden])],
        "RNN-T tone-alphabet encoder (a known answer, not a model)",
    ).SerializeToString()


def _prediction() -> bytes:
    g = GraphWriter("known_prediction")
    table = np.zeros((CONFIG.classes, CONFIG.pred_hidden), np.float32)
    table[np.arange(CONFIG.labels), np.arange(CONFIG.labels)] = 1.0  # row 28 (no symbol yet) stays zero
    g.node("Squeeze", [g.one("Gather", [g.const("one_hot", table), SYMBOL], axis=0), g.axes(1)], [G])
    g.node("Identity", [HIDDEN], [HIDDEN_OUT])
    g.node("Identity", [CELL], [CELL_OUT])
    state = ["N", CONFIG.pred_layers, CONFIG.pred_hidden]
    return g.model(
        [helper.make_tensor_value_info(SYMBOL, TensorProto.INT64, ["N", 1]),
         helper.make_tensor_value_info(HIDDEN, TensorProto.FLOAT, state),
         helper.make_tensor_value_info(CELL, TensorProto.FLOAT, state)],
        [helper.make_tensor_value_info(G, TensorProto.FLOAT, ["N", CONFIG.pred_hidden]),
         helper.make_tensor_value_info(HIDDEN_OUT, TensorProto.FLOAT, state),
         helper.make_tensor_value_info(CELL_OUT, TensorProto.FLOAT, state)],
        "RNN-T one-hot prediction (a known answer, not a model)",
    ).SerializeToString()


def _joint() -> bytes:
    g = GraphWriter("known_joint")
    weight = np.zeros((CONFIG.classes, CONFIG.encoder_hidden + CONFIG.pred_hidden), np.float32)
    for label in range(CONFIG.labels):
        weight[label, label] = 1.0
        weight[label, CONFIG.encoder_hidden + label] = -100.0
    bias = np.zeros(CONFIG.classes, np.float32)
    bias[CONFIG.labels] = THRESHOLD
    g.node("Gemm", [g.one("Concat", [F, G], axis=1), g.const("w", weight), g.const("b", bias)], [LOGITS], transB=1)
    return g.model(
        [helper.make_tensor_value_info(F, TensorProto.FLOAT, ["N", CONFIG.encoder_hidden]),
         helper.make_tensor_value_info(G, TensorProto.FLOAT, ["N", CONFIG.pred_hidden])],
        [helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["N", CONFIG.classes])],
        "RNN-T suppress-the-last-label joint (a known answer, not a model)",
    ).SerializeToString()


def write_known_graphs(folder: Path) -> dict[str, Path]:
    """``encoder.onnx``, ``prediction.onnx``, ``joint.onnx`` in ``folder`` (a ``--model-path``)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for role, build in (("encoder", _encoder), ("prediction", _prediction), ("joint", _joint)):
        paths[role] = folder / f"{role}.onnx"
        write_bytes_atomic(paths[role], build())
    return paths
