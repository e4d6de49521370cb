"""``squad``: SQuAD v1.1 questions as BERT features, one LoadGen sample per feature, cached.

Followed: MLCommons inference ``language/bert`` — ``squad_QSL.py`` (sample ``i`` is feature
``i`` in the order ``convert_examples_to_features`` makes them; 10,570 dev questions give
10,833 features) and ``accuracy-squad.py`` (what scoring needs from the features). The
features themselves are :mod:`mlpi.datasets.squad_features`.

``--dataset-path`` is the SQuAD file itself or the folder holding ``dev-v1.1.json``. The
vocabulary is ``vocab.txt`` beside it when there is one, else the model's (``mlpi fetch
bert-99`` puts it in the cache); it must have as many tokens as the model's embedding table.
``--count N`` takes the first N features.

Calibration (``DatasetRequest.names``): MLCommons' ``calibration/SQuAD-v1.1`` lists either
feature indices (``bert_calibration_features.txt``: indices into the features
``convert_examples_to_features`` makes with 384 / 128 / 64, so only a model with those
parameters may use them) or question ids (``bert_calibration_qas_ids.txt``: every feature
of each question, in list order). The features come from the run's own cache.

The model declares, in its DataParams: ``seq_len``, ``doc_stride``, ``max_query_len``,
``lower_case``, ``vocab_size``, ``vocab`` (``{"name", "filename", "url", "checksum"}`` of
its vocabulary artifact) and ``feeds`` (for each of ``input_ids``, ``input_mask`` and
``segment_ids``, the input names a graph may give it: the int8 BERT calls the mask
``attention_mask``).

Cache: building features tokenizes every paragraph and question (seconds for the dev
set), so it is done once into ``cache_root()/datasets/squad/<key>/``. The key is a sha256
over the SQuAD file's bytes, the vocabulary's bytes, the feature parameters, the
``tokenizers`` version, Python's Unicode version and :data:`FEATURES_VERSION`: a changed
input can never meet an old cache, and a damaged one is rebuilt. A cache is written in a temporary sibling folder and renamed into place complete.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlpi.core.contract.backend import TensorSpec, format_shape
from mlpi.core.contract.dataset import (
    DataParams,
    Dataset,
    DatasetFactory,
    DatasetRequest,
    PreloadedDataset,
)
from mlpi.core.contract.errors import DatasetError
from mlpi.core.engine.artifacts import Artifact, cached, verify
from mlpi.core.engine.cache import cache_root, staged_folder
from mlpi.datasets.squad_features import (
    FeatureParams,
    Features,
    Squad,
    WordPieceTokenizer,
    build_features,
    read_squad,
    read_vocab,
)

NAME = "squad"
DATA_FILE = "dev-v1.1.json"
VOCAB_FILE = "vocab.txt"
#: Bumped whenever the cached features' meaning or layout changes.
FEATURES_VERSION = 1
#: The feature arrays a graph input can be fed from, and the names the model may give them.
FEEDS = ("input_ids", "input_mask", "segment_ids")


@dataclass(frozen=True)
class SquadTruth:
    """What the SQuAD scorer needs: the questions, their paragraphs' words and the features
    of the samples (the first ``count`` features)."""

    squad: Squad
    features: Features
    count: int
    lower_case: bool


class SquadDataset(PreloadedDataset):
    def __init__(self, inputs: Sequence[TensorSpec], sources: Mapping[str, str], truth: SquadTruth,
                 performance_count: int, description: Mapping[str, Any]) -> None:
        super().__init__(inputs)
        self._sources = dict(sources)
        self._truth = truth
        self._performance_count = performance_count
        self._description = dict(description)

    @property
    def count(self) -> int:
        return self._truth.count

    @property
    def performance_count(self) -> int:
        return self._performance_count

    def read(self, indices: np.ndarray) -> Mapping[str, np.ndarray]:
        arrays = {
            "input_ids": self._truth.features.input_ids,
            "input_mask": self._truth.features.input_mask,
            "segment_ids": self._truth.features.segment_ids,
        }
        return {spec.name: arrays[self._sources[spec.name]][indices].astype(spec.dtype) for spec in self.inputs}

    def ground_truth(self) -> SquadTruth | None:
        """The questions and features, when every question has its reference answers."""
        if any(example.answers is None for example in self._truth.squad.examples):
            return None
        return self._truth

    def describe(self) -> dict[str, Any]:
        return {"count": self.count, **self._description}


class Squad11(DatasetFactory):
    name = NAME
    description = "SQuAD v1.1 (dev-v1.1.json + vocab.txt) as BERT features, 384 tokens, stride 128, cached"
    opens_by_name = True

    def open(self, request: DatasetRequest) -> Dataset:
        params = feature_params(request.params)
        sources, inputs = ({}, []) if request.for_scoring else feed_sources(request.inputs, request.params, params)
        data_file = _data_file(request.path)
        vocab_file, official_vocab = _vocab_file(data_file, request.params)
        if not official_vocab and isinstance(request.params.get("vocab"), Mapping):
            print(f"mlpi: warning: {vocab_file} is not the model's own vocabulary (its checksum differs): "
                  "token ids, and so the accuracy, may not be the model's", file=sys.stderr)
        squad = read_squad(data_file)
        if not squad.examples:
            raise DatasetError(f"{data_file} holds no questions", "give SQuAD v1.1's dev-v1.1.json")
        vocab_size = request.params.get("vocab_size")
        features = load_features(data_file, vocab_file, squad, params, None if vocab_size is None else int(vocab_size))
        description = {
            "kind": NAME, "file": str(data_file), "questions": len(squad.examples), "features": features.count,
            "vocab": str(vocab_file), "official_vocab": official_vocab, **params.to_json(),
        }
        if request.names is not None:  # a calibration list: these features, in its order
            rows, selected_by = calibration_rows(request.names, squad, features, params)
            chosen = take_features(features, rows)
            truth = SquadTruth(squad, chosen, chosen.count, params.lower_case)
            description = {**description, "selected_by": selected_by, "names": len(request.names)}
            return SquadDataset(inputs, sources, truth, request.performance_count_of(chosen.count), description)
        count = features.count
        if request.count is not None:
            if request.count < 1:
                raise DatasetError(f"--count {request.count} leaves no samples", "pass --count 1 or more")
            if request.count > count:
                raise DatasetError(
                    f"--count {request.count} is more than the {count} features of {data_file}",
                    f"pass --count {count} or less, or leave --count out to use them all",
                )
            count = request.count
        truth = SquadTruth(squad, features, count, params.lower_case)
        performance = request.performance_count_of(count)
        return SquadDataset(inputs, sources, truth, performance, description)


def feature_params(params: DataParams) -> FeatureParams:
    """The model's feature settings (each one it must declare)."""
    return FeatureParams(
        seq_len=int(params.require("seq_len", NAME)),
        doc_stride=int(params.require("doc_stride", NAME)),
        max_query_len=int(params.require("max_query_len", NAME)),
        lower_case=bool(params.get("lower_case", True)),
    )


_INDEX = re.compile(r"[+-]?[0-9]+")


def calibration_rows(names: Sequence[str], squad: Squad, features: Features, params: FeatureParams) -> tuple[np.ndarray, str]:
    """The feature rows a calibration list names, in its order, and how it named them.

    Integers are indices into the features (MLCommons defines them for the reference's
    parameters only, so other parameters are refused); anything else is a question id,
    standing for all of that question's features. A name that is an integer is an index
    unless the file has a question of that id."""
    if not names:
        raise DatasetError("the calibration list names no samples", "give a list with one feature index or question id per line")
    qas_ids = {example.qas_id for example in squad.examples}
    numeric = [name for name in names if _INDEX.fullmatch(name)]
    if len(numeric) == len(names) and not all(name in qas_ids for name in names):
        return _index_rows(names, features, params), "feature indices"
    mixed = [name for name in numeric if name not in qas_ids]
    if mixed:
        raise DatasetError(
            f"the calibration list mixes feature indices ({', '.join(mixed[:3])}) with question ids "
            f"({next(name for name in names if name not in mixed)})",
            "give one kind of list: bert_calibration_features.txt (indices) or bert_calibration_qas_ids.txt (ids)",
        )
    return _question_rows(names, squad, features), "question ids"


def _index_rows(names: Sequence[str], features: Features, params: FeatureParams) -> np.ndarray:
    """Feature indices, checked against the parameters they are defined for and the count."""
    if params != FeatureParams():
        reference = FeatureParams().to_json()
        differ = ", ".join(f"{key} {value} (not {reference[key]})"
                           for key, value in params.to_json().items() if value != reference[key])
        raise DatasetError(
            f"the calibration list's feature indices are defined for features of seq_len 384, doc_stride 128, "
            f"max_query_len 64, lower case; this model's features have {differ}",
            "calibrate with a list of question ids (bert_calibration_qas_ids.txt), or --calibration dataset",
        )
    rows = np.asarray([int(name) for name in names], dtype=np.int64)
    outside = [name for name, row in zip(names, rows) if not 0 <= row < features.count]
    if outside:
        raise DatasetError(
            f"the calibration list names feature {', '.join(outside[:3])}, but the data has {features.count} "
            f"features (0 to {features.count - 1})",
            "give SQuAD v1.1's full dev-v1.1.json as --calibration-path, the file the list's indices count in",
        )
    return rows


def _question_rows(names: Sequence[str], squad: Squad, features: Features) -> np.ndarray:
    """Every feature of each named question, question by question in the list's order."""
    number = {example.qas_id: n for n, example in enumerate(squad.examples)}
    unknown = [name for name in names if name not in number]
    if unknown:
        raise DatasetError(
            f"the calibration list names {len(unknown)} question(s) the SQuAD file does not hold: "
            f"{', '.join(unknown[:3])}{', ...' if len(unknown) > 3 else ''}",
            "give SQuAD v1.1's dev-v1.1.json as --calibration-path, the file whose question ids the list names",
        )
    by_question: dict[int, list[int]] = {}
    for row, example in enumerate(features.example.tolist()):
        by_question.setdefault(example, []).append(row)
    rows = [row for name in names for row in by_question.get(number[name], [])]
    if not rows:
        raise DatasetError("the questions the calibration list names have no features (their contexts are empty)",
                           "give a list naming questions that have context")
    return np.asarray(rows, dtype=np.int64)


def take_features(features: Features, rows: np.ndarray) -> Features:
    """The features ``rows``, in that order, as features of their own (the paragraphs' pieces,
    which rows point into through their questions, are kept whole)."""
    return Features(
        input_ids=features.input_ids[rows], input_mask=features.input_mask[rows],
        segment_ids=features.segment_ids[rows], example=features.example[rows],
        span_start=features.span_start[rows], span_length=features.span_length[rows],
        query_length=features.query_length[rows], max_context=features.max_context[rows],
        pieces=features.pieces, piece_word=features.piece_word,
    )


def feed_sources(inputs: Sequence[TensorSpec], params: DataParams, features: FeatureParams) -> tuple[dict[str, str], list[TensorSpec]]:
    """For each graph input, the feature array that feeds it, and the inputs with their
    sequence length fixed; a DatasetError naming an input nothing here can feed."""
    declared = params.get("feeds") or {feed: (feed,) for feed in FEEDS}
    by_name = {name: feed for feed, names in declared.items() for name in names}
    sources: dict[str, str] = {}
    concrete: list[TensorSpec] = []
    for spec in inputs:
        feed = by_name.get(spec.name)
        if feed not in FEEDS:
            raise DatasetError(
                f"the model's input '{spec.name}' is not one squad can feed (it feeds: {', '.join(sorted(by_name))})",
                "use a BERT graph with MLPerf's signature (input_ids, input_mask, segment_ids)",
            )
        if len(spec.sample_shape) != 1 or spec.sample_shape[0] not in (None, features.seq_len):
            raise DatasetError(
                f"the model's input '{spec.name}' has shape {format_shape(spec.shape)}, not [batch, {features.seq_len}]",
                f"export the model for sequence length {features.seq_len}",
            )
        if np.dtype(spec.dtype).kind not in "iu":
            raise DatasetError(f"the model's input '{spec.name}' is {spec.dtype}; token ids need an integer type",
                               "use a BERT graph with int64 (or int32) inputs")
        sources[spec.name] = feed
        concrete.append(TensorSpec(spec.name, spec.dtype, (spec.shape[0], features.seq_len)))
    return sources, concrete


def _data_file(path: Path | None) -> Path:
    if path is None:
        raise DatasetError("dataset 'squad' needs --dataset-path", f"point it at {DATA_FILE} or the folder holding it")
    path = path.expanduser()
    if path.is_dir():
        path = path / DATA_FILE
    if not path.is_file():
        raise DatasetError(f"there is no SQuAD file at {path}", f"pass --dataset-path pointing at {DATA_FILE} or its folder")
    return path


def _vocab_file(data_file: Path, params: DataParams) -> tuple[Path, bool]:
    """``vocab.txt`` beside the data, else the model's vocabulary from the cache; and whether
    it is byte for byte the model's own."""
    declared = params.get("vocab")
    artifact = Artifact(**declared) if isinstance(declared, Mapping) else None
    beside = data_file.parent / (artifact.filename if artifact else VOCAB_FILE)
    if beside.is_file():
        return beside, artifact is not None and verify(beside, artifact.checksum)
    fetched = cached(artifact) if artifact is not None else None
    if fetched is not None:
        return fetched, True
    raise DatasetError(
        f"no vocabulary: there is no {beside.name} beside {data_file}, and the model's is not downloaded",
        f"put the model's {beside.name} in {data_file.parent}, or run `mlpi fetch` for the model",
    )


def load_features(data_file: Path, vocab_file: Path, squad: Squad, params: FeatureParams, vocab_size: int | None) -> Features:
    """The features of ``data_file`` with ``vocab_file``: from the cache, or built and cached."""
    vocab = read_vocab(vocab_file, vocab_size)
    folder = cache_root() / "datasets" / NAME / _cache_key(data_file, vocab_file, params)
    features = _read_cache(folder)
    if features is not None:
        return features
    began = time.perf_counter()
    print(f"mlpi: building BERT features of {data_file.name} (once)...", file=sys.stderr, flush=True)
    features = build_features(squad, WordPieceTokenizer(vocab, params.lower_case), params)
    print(f"mlpi: {len(squad.examples)} questions -> {features.count} features in {time.perf_counter() - began:.1f} s",
          file=sys.stderr, flush=True)
    _write_cache(folder, features)
    return features


def _cache_key(data_file: Path, vocab_file: Path, params: FeatureParams) -> str:
    import tokenizers

    digest = hashlib.sha256()
    for file in (data_file, vocab_file):
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    # the basic tokenization judges characters by this Python's Unicode tables
    digest.update(json.dumps({"params": params.to_json(), "version": FEATURES_VERSION,
                              "tokenizers": tokenizers.__version__, "unicode": unicodedata.unidata_version,
                              "python": list(sys.version_info[:2])}, sort_keys=True).encode())
    return digest.hexdigest()[:32]


_ARRAYS = ("input_ids", "input_mask", "segment_ids", "example", "span_start", "span_length", "query_length", "max_context")


def _read_cache(folder: Path) -> Features | None:
    try:
        with np.load(folder / "features.npz", allow_pickle=False) as data:
            arrays = {name: data[name] for name in _ARRAYS}
        pieces = json.loads((folder / "pieces.json").read_text(encoding="utf-8"))
        features = Features(**arrays, pieces=pieces["pieces"], piece_word=pieces["piece_word"])
    except Exception:  # noqa: BLE001 - a damaged cache (a bad zip, a short file...) is rebuilt, never trusted
        return None
    if len({len(arrays[name]) for name in _ARRAYS}) != 1:
        return None
    return features


def _write_cache(folder: Path, features: Features) -> None:
    try:
        with staged_folder(folder) as staging:
            np.savez(staging / "features.npz", **{name: getattr(features, name) for name in _ARRAYS})
            (staging / "pieces.json").write_text(
                json.dumps({"pieces": features.pieces, "piece_word": features.piece_word}), encoding="utf-8"
            )
    except OSError as exc:  # a read-only cache costs a rebuild next time, not this run
        print(f"mlpi: warning: cannot cache the features in {folder}: {exc.strerror or exc}", file=sys.stderr)
