"""RNN-T on LibriSpeech dev-clean: features, encoder, then a greedy decode loop over two graphs.

Followed: MLCommons inference ``retired_benchmarks/speech_recognition/rnnt`` (tag v4.0):
``pytorch_SUT.py`` (one utterance at a time: features, encoder, greedy decoder),
``pytorch/decoders.py`` (``ScriptGreedyDecoder``), ``pytorch/parts/features.py`` (see
:mod:`mlpi.models.rnnt_features`), ``QSL.py`` and ``accuracy_eval.py`` (see
:mod:`mlpi.models.librispeech_wer`), and the v4.0 ``mlperf.conf`` ``rnnt.*`` lines.

A LoadGen sample is one utterance's 16 kHz samples (``waveform``, float32, any length).
:class:`GreedyDecode` computes the features inside the timed path, as the reference does,
runs the ``encoder`` graph once over the batch (padded at the end; the graph masks the
padding), then for every encoder frame, up to :data:`MAX_SYMBOLS_PER_FRAME` times:
``joint(frame, g)`` -> arg-max; blank moves to the next frame, any other symbol is emitted
and ``prediction(symbol, state)`` gives the next ``g`` and state. The reference runs the
prediction network again at every step with the last symbol and the last committed state;
that is a pure function of what it is given, so here it runs once per emitted symbol and
its output is kept: the same symbols, fewer runs. The response is the emitted label ids,
int64, as ``accuracy_eval.py --output_dtype int64`` reads them.

Batches decode in lock step: each utterance has its own frame and symbol count, and each
step runs the joint over the utterances still going and the prediction over those that
just emitted. A batch of one (SingleStream) keeps its state in two preallocated arrays:
one copy of the LSTM state per emitted symbol and no other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mlpi.core.contract.backend import Session, TensorSpec
from mlpi.core.contract.dataset import DataParams
from mlpi.core.contract.model import GraphSpec, ModelSpec
from mlpi.core.contract.pipeline import Pipeline, PipelineContext
from mlpi.core.contract.postprocess import Responses
from mlpi.core.contract.rules import QualityTarget, Rules
from mlpi.core.engine.artifacts import Artifact
from mlpi.models import calibration_lists
from mlpi.models.rnnt_features import FeatureParams, Featurizer
from mlpi.models.rnnt_graph import (
    BLANK,
    CELL,
    CELL_OUT,
    CONFIG,
    ENCODED,
    FEATURE_LENGTHS,
    FEATURES,
    HIDDEN,
    HIDDEN_OUT,
    LOGITS,
    SOS,
    SYMBOL,
    F,
    G,
    RnntConfig,
)

if TYPE_CHECKING:
    from mlpi.core.contract.accuracy import AccuracyResult
    from mlpi.core.contract.dataset import Dataset

#: The reference decoder's ``max_symbols_per_step``.
MAX_SYMBOLS_PER_FRAME = 30
#: The vocabulary, label id -> character; blank (28) is not in it.
LABELS = (" ", *"abcdefghijklmnopqrstuvwxyz", "'")
#: The reference checkpoint's word error rate (%), which the quality target is held to.
REFERENCE_WER = 7.452
#: dev-clean utterances up to 15 s: what an accuracy run covers.
LIBRISPEECH_SAMPLES = 2513
#: Synthetic utterances last the mean of those 2,513 (6.25 s): use the librispeech dataset
#: for figures that mean something.
SYNTHETIC_SAMPLES = 100_000

WAVEFORM = "waveform"
SAMPLE = (TensorSpec(WAVEFORM, "float32", (None, None)),)

ARTIFACT = Artifact(
    name="rnnt",
    filename="DistributedDataParallel_1576581068.9962234-epoch-100.pt",
    url="https://zenodo.org/record/3662521/files/DistributedDataParallel_1576581068.9962234-epoch-100.pt?download=1",
    checksum=None,  # zenodo publishes none, and no MLCommons script checks one: recorded on first download
    format="checkpoint",
)

_STATE = (None, CONFIG.pred_layers, CONFIG.pred_hidden)
GRAPHS = {
    "encoder": GraphSpec(
        (TensorSpec(FEATURES, "float32", (None, None, CONFIG.features)), TensorSpec(FEATURE_LENGTHS, "int64", (None,))),
        (TensorSpec(ENCODED, "float32", (None, None, CONFIG.encoder_hidden)),),
    ),
    "prediction": GraphSpec(
        (TensorSpec(SYMBOL, "int64", (None, 1)), TensorSpec(HIDDEN, "float32", _STATE), TensorSpec(CELL, "float32", _STATE)),
        (TensorSpec(G, "float32", (None, CONFIG.pred_hidden)), TensorSpec(HIDDEN_OUT, "float32", _STATE),
         TensorSpec(CELL_OUT, "float32", _STATE)),
    ),
    "joint": GraphSpec(
        (TensorSpec(F, "float32", (None, CONFIG.encoder_hidden)), TensorSpec(G, "float32", (None, CONFIG.pred_hidden))),
        (TensorSpec(LOGITS, "float32", (None, CONFIG.classes)),),
    ),
}

DATA = DataParams.of(
    sample_rate=FeatureParams().sample_rate,
    labels=LABELS,
    max_duration=15.0,
    sample_shapes={WAVEFORM: (SYNTHETIC_SAMPLES,)},
)

RULES = Rules(
    loadgen_key="rnnt",
    benchmark="rnnt",
    audits=("TEST01",),
    audit_sampling_target=4096,
    response_dtype="int64",
    round="v4.0",
    quality=QualityTarget("WER", REFERENCE_WER, 0.99, unit="%", higher_is_better=False, complement=100.0),
    server_latency_ms=1000,
    performance_sample_count=LIBRISPEECH_SAMPLES,
    offline_min_samples=LIBRISPEECH_SAMPLES,
    dataset_size=LIBRISPEECH_SAMPLES,
    required_scenarios={"edge": ("SingleStream", "Offline"), "datacenter": ("Server", "Offline")},
    retired=True,
)


class _Padded:
    """A session whose programs take exactly ``max_batch_size`` rows (a compiled engine),
    fed fewer: the rows padded with zeros, the outputs cut back. Others run as they are."""

    def __init__(self, session: Session, rows: int) -> None:
        self.session = session
        self.rows = rows

    @staticmethod
    def around(session: Session) -> Session | _Padded:
        caps = session.capabilities
        return _Padded(session, int(caps.max_batch_size)) if caps.fixed_batch and caps.max_batch_size else session

    def run(self, feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        n = len(next(iter(feeds.values())))
        if n == self.rows:
            return self.session.run(feeds)
        padded = {}
        for name, value in feeds.items():
            full = np.zeros((self.rows, *value.shape[1:]), dtype=value.dtype)
            full[:n] = value
            padded[name] = full
        return {name: np.asarray(value)[:n] for name, value in self.session.run(padded).items()}


class GreedyDecode(Pipeline):
    """Features, the encoder over the batch, then the greedy decode loop (module docstring)."""

    def __init__(self, context: PipelineContext, config: RnntConfig = CONFIG) -> None:
        self.config = config
        self.encoder = _Padded.around(context.sessions["encoder"])
        self.prediction = _Padded.around(context.sessions["prediction"])
        self.joint = _Padded.around(context.sessions["joint"])
        self.dataset = context.dataset
        # Built now, not by the first utterance inside a timed test; a pipeline handed features
        # directly (no dataset) has no waveforms to featurize.
        self.featurize = Featurizer() if self.dataset is not None else None
        rows = max(1, context.batch_size)
        self._symbol = np.full((rows, 1), SOS, dtype=np.int64)
        self._hidden = np.zeros((rows, config.pred_layers, config.pred_hidden), dtype=np.float32)
        self._cell = np.zeros_like(self._hidden)
        self._g = np.zeros((rows, config.pred_hidden), dtype=np.float32)

    @property
    def sample_nbytes(self) -> int | None:
        return None

    def __call__(self, indices: Sequence[int]) -> Responses:
        assert self.featurize is not None, "a pipeline without a dataset decodes features via transcribe()"
        features = [self.featurize(self.dataset.sample(int(i))[WAVEFORM]) for i in indices]
        return Responses.from_arrays([np.asarray(h, dtype=np.int64) for h in self.transcribe(features)])

    def transcribe(self, features: Sequence[np.ndarray]) -> list[list[int]]:
        """The label ids of each utterance's ``[frames, features]`` array (at most the batch size)."""
        c = self.config
        lengths = np.fromiter((f.shape[0] for f in features), dtype=np.int64, count=len(features))
        batch = np.zeros((len(features), int(lengths.max()), c.features), dtype=np.float32)
        for row, f in enumerate(features):
            batch[row, : f.shape[0]] = f
        encoded = np.asarray(self.encoder.run({FEATURES: batch, FEATURE_LENGTHS: lengths})[ENCODED])
        frames = (lengths + c.stack_factor - 1) // c.stack_factor
        if len(features) == 1:
            return [self._decode_one(encoded[0], int(frames[0]))]
        return self._decode_batch(encoded, frames)

    def _start(self, n: int) -> None:
        """Every row's first ``g`` and state: the prediction of "no symbol yet" from zeros."""
        self._symbol[:n] = SOS
        self._hidden[:n] = 0.0
        self._cell[:n] = 0.0
        self._predict(slice(0, n))

    def _predict(self, rows: slice | np.ndarray) -> None:
        """The prediction network on ``self._symbol[rows]`` and the rows' state; the new ``g``
        and state replace theirs. A batch of one (or every row of a batch) is fed in place
        and its new state copied back once; a subset of rows is gathered first."""
        # a slice of a row-major array along its first axis, or the rows gathered by an index
        # array: contiguous either way, as a session's feeds must be
        out = self.prediction.run({SYMBOL: self._symbol[rows], HIDDEN: self._hidden[rows], CELL: self._cell[rows]})
        self._g[rows] = out[G]
        self._hidden[rows] = out[HIDDEN_OUT]
        self._cell[rows] = out[CELL_OUT]

    def _decode_one(self, encoded: np.ndarray, frames: int) -> list[int]:
        """One utterance: the feeds are views of the preallocated state, built once; per
        emitted label the new state is copied in (once) and ``g`` is the output itself (the
        joint reads it before the prediction runs again)."""
        self._start(1)
        joint, predict = self.joint.run, self.prediction.run
        symbol, hidden, cell = self._symbol[:1], self._hidden[:1], self._cell[:1]
        state = {SYMBOL: symbol, HIDDEN: hidden, CELL: cell}
        g: np.ndarray = self._g[:1]
        hypothesis: list[int] = []
        for t in range(frames):
            step = {F: encoded[t : t + 1], G: g}
            for _ in range(MAX_SYMBOLS_PER_FRAME):
                k = int(joint(step)[LOGITS][0].argmax())
                if k == BLANK:
                    break
                hypothesis.append(k)
                symbol[0, 0] = k
                out = predict(state)
                g = step[G] = out[G]
                np.copyto(hidden, out[HIDDEN_OUT])
                np.copyto(cell, out[CELL_OUT])
        return hypothesis

    def _decode_batch(self, encoded: np.ndarray, frames: np.ndarray) -> list[list[int]]:
        n = len(frames)
        self._start(n)
        hypotheses: list[list[int]] = [[] for _ in range(n)]
        t = np.zeros(n, dtype=np.int64)
        emitted = np.zeros(n, dtype=np.int64)  # symbols emitted at the row's current frame
        active = np.flatnonzero(frames > 0)
        while active.size:
            every = active.size == n
            f = encoded[active, t[active]]
            g = self._g[:n] if every else self._g[active]
            k = np.asarray(self.joint.run({F: f, G: g})[LOGITS]).argmax(axis=1)
            speak = k != BLANK
            speakers = active[speak]
            for row, symbol in zip(speakers.tolist(), k[speak].tolist()):
                hypotheses[row].append(symbol)
            emitted[speakers] += 1
            advance = active[~speak | (emitted[active] >= MAX_SYMBOLS_PER_FRAME)]
            t[advance] += 1
            emitted[advance] = 0
            if speakers.size:
                self._symbol[speakers, 0] = k[speak]
                self._predict(slice(0, n) if speakers.size == n else speakers)
            active = active[t[active] < frames[active]]
        return hypotheses


def _build_random(folder: Path, seed: int) -> dict[str, Path]:
    from mlpi.models.rnnt_graph import write_random

    return write_random(folder, seed)


def _convert(checkpoint: Path, folder: Path) -> dict[str, Path]:
    from mlpi.models.rnnt_graph import convert_checkpoint

    return convert_checkpoint(checkpoint, folder)


def _score(responses: Mapping[int, bytes], dataset: Dataset, outputs: Sequence[TensorSpec]) -> AccuracyResult:
    from mlpi.models.librispeech_wer import librispeech_wer

    return librispeech_wer(responses, dataset, outputs)


def rnnt() -> ModelSpec:
    from mlpi.models.rnnt_graph import GRAPH_VERSION

    return ModelSpec(
        calibration=calibration_lists.LIBRISPEECH,
        name="rnnt",
        description="RNN-T, LibriSpeech dev-clean speech recognition, WER (MLPerf Inference, retired after v4.0)",
        artifact=ARTIFACT,
        graphs=GRAPHS,
        data=DATA,
        sample_inputs=SAMPLE,
        rules=RULES,
        datasets=("librispeech", "synthetic"),
        pipeline=GreedyDecode,
        score=_score,
        build_random=_build_random,
        convert=_convert,
        extra={"random_graph_version": GRAPH_VERSION},
    )
