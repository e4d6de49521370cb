"""BERT on SQuAD v1.1 end to end: features equal to the reference's token by token, accuracy
runs and logs whose exact match and F1 are known by construction, MLCommons'
accuracy-squad.py on mlpi's logs, the feature cache, and the error paths a user meets."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from conftest import one_error, only_run_dir, run_cli

from mlpi.core.contract.dataset import DatasetRequest
from mlpi.core.contract.errors import DatasetError
from mlpi.datasets.squad import Squad11, SquadDataset
from mlpi.datasets.squad_features import read_vocab
from mlpi.models.bert import ARTIFACT, DATA, INPUTS, StartEndLogits, bert_99, bert_99_9
from mlpi.testing.openimages_fixture import write_accuracy_log
from mlpi.testing.squad_fixture import (
    KNOWN_SPAN_SCORES,
    known_answer_graph,
    span_logits,
    write_squad_fixture,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "mlcommons-inference"
BERT_DIR = SHARED / "language" / "bert"
#: Exact match and F1 (percent) of the known-answer graph on the fixture.
KNOWN_EM = 100.0 * sum(em for em, _ in KNOWN_SPAN_SCORES) / len(KNOWN_SPAN_SCORES)
KNOWN_F1 = 100.0 * sum(f1 for _, f1 in KNOWN_SPAN_SCORES) / len(KNOWN_SPAN_SCORES)


def reference_missing() -> str | None:
    """Why MLCommons' BERT scripts cannot run in this interpreter (None: they can)."""
    if not (BERT_DIR / "accuracy-squad.py").is_file():
        return f"MLCommons' accuracy-squad.py is not at {BERT_DIR} (the shared mlcommons-inference folder is absent)"
    for module in ("transformers", "six", "pkg_resources"):
        if importlib.util.find_spec(module) is None:
            return f"accuracy-squad.py needs {module}, which is not installed (CI's second environment has it)"
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        return "transformers 5 has no Python BertTokenizer, the tokenizer the reference's features came from"
    return None


def official_vocab(folder: Path) -> Path | None:
    from mlpi.testing.bert_vocab import vocab_from_blingfire

    return vocab_from_blingfire(folder / "vocab.txt")


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("squad")
    write_squad_fixture(folder)
    known_answer_graph(folder / "known.onnx", read_vocab(folder / "vocab.txt", 30522))
    return folder


def open_squad(folder: Path, inputs: Any = INPUTS, **kwargs: Any) -> SquadDataset:
    dataset = Squad11().open(DatasetRequest(inputs=inputs, params=DATA, path=folder, **kwargs))
    assert isinstance(dataset, SquadDataset)
    return dataset


def official_line(log: Path, data: Path, vocab: Path, work: Path) -> str:
    """The result line MLCommons' accuracy-squad.py prints for ``log`` (its features built
    fresh: a features pickle it finds is never reused)."""
    env = {**os.environ, "PYTHONPATH": str(SHARED / "_shims"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    cache = work / "eval_features.pickle"
    cache.unlink(missing_ok=True)
    proc = subprocess.run(
        [sys.executable, str(BERT_DIR / "accuracy-squad.py"), "--vocab_file", str(vocab), "--val_data", str(data),
         "--log_file", str(log), "--out_file", str(work / "predictions.json"), "--features_cache_file", str(cache)],
        cwd=work, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


# -- features ------------------------------------------------------------------------------

REFERENCE_FEATURES = """
import json, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
from create_squad_data import convert_examples_to_features, read_squad_examples
from transformers import BertTokenizer
tokenizer = BertTokenizer(sys.argv[4])
assert not tokenizer.is_fast
examples = read_squad_examples(sys.argv[3], is_training=False, version_2_with_negative=False)
out = []
convert_examples_to_features(examples, tokenizer, 384, 128, 64, False, lambda f: out.append({
    "input_ids": f.input_ids, "input_mask": f.input_mask, "segment_ids": f.segment_ids, "tokens": f.tokens,
    "example": f.example_index, "map": {str(k): v for k, v in f.token_to_orig_map.items()},
    "max_context": {str(k): v for k, v in f.token_is_max_context.items()}}))
print(json.dumps(out))
"""


@pytest.mark.parametrize("vocabulary", ["fixture", "official"])
def test_features_equal_the_references_token_by_token(fixture_dir: Path, tmp_path: Path, vocabulary: str) -> None:
    """Every feature of the fixture (accents, punctuation, CJK, [UNK], control and zero-width
    characters, a 120-character word, a question cut at 64 pieces, a context in several
    windows) equals what create_squad_data.py makes with the reference's BertTokenizer."""
    reason = reference_missing()
    if reason:
        pytest.skip(reason)
    folder = tmp_path / "data"
    write_squad_fixture(folder, vocab=vocabulary == "fixture")
    if vocabulary == "official" and official_vocab(folder) is None:
        pytest.skip("the official vocab.txt cannot be rebuilt here (blingfire is not installed)")
    proc = subprocess.run([sys.executable, "-c", REFERENCE_FEATURES, str(BERT_DIR), str(SHARED / "_shims"),
                           str(folder / "dev-v1.1.json"), str(folder / "vocab.txt")], capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    reference = json.loads(proc.stdout)
    dataset = open_squad(folder)
    features = dataset.ground_truth().features
    squad = dataset.ground_truth().squad
    vocab = read_vocab(folder / "vocab.txt", 30522)
    assert features.count == len(reference) and len(reference) > len(squad.examples)  # one context needs several windows
    assert any("[UNK]" in r["tokens"] for r in reference)
    for f, ref in enumerate(reference):
        tokens = [vocab[i] for i in features.input_ids[f][: int(features.input_mask[f].sum())]]
        assert tokens == ref["tokens"], f
        assert features.input_ids[f].tolist() == ref["input_ids"]
        assert features.input_mask[f].tolist() == ref["input_mask"]
        assert features.segment_ids[f].tolist() == ref["segment_ids"]
        assert int(features.example[f]) == ref["example"]
        first, start = int(features.query_length[f]) + 2, int(features.span_start[f])
        paragraph = squad.examples[ref["example"]].paragraph
        span = range(int(features.span_length[f]))
        assert {str(first + k): features.piece_word[paragraph][start + k] for k in span} == ref["map"]
        assert {str(first + k): bool(features.max_context[f, first + k]) for k in span} == ref["max_context"]
    assert int(features.query_length.max()) == 64  # the long question was cut as the reference cuts it


def test_tokens_equal_the_reference_tokenizers_on_every_character(tmp_path: Path) -> None:
    """Each assigned character up to U+2FFFF, inside a word: the same pieces as the
    reference's BertTokenizer (lower case, accents, punctuation, CJK, control, unassigned)."""
    reason = reference_missing()
    if reason:
        pytest.skip(reason)
    vocab_file = official_vocab(tmp_path)
    if vocab_file is None:
        pytest.skip("the official vocab.txt cannot be rebuilt here (blingfire is not installed)")
    from transformers import BertTokenizer

    from mlpi.datasets.squad_features import WordPieceTokenizer

    reference = BertTokenizer(str(vocab_file))
    ours = WordPieceTokenizer(read_vocab(vocab_file, 30522))
    words = [f"ab{chr(c)}cd" for c in range(0x20, 0x30000) if not 0xD800 <= c < 0xE000]
    words += ["ΣΑΣ", "İstanbul", "straße", "ﬁne", "e\u0301tude", "x[SEP]y", "[CLS]", "[cls]", "a" * 101, "é" * 100]
    mismatched = []
    for start in range(0, len(words), 256):
        text = " ".join(words[start : start + 256])
        if reference.tokenize(text) != ours.tokenize(text):
            mismatched.append(text[:40])
    assert not mismatched, mismatched[:5]


def test_features_are_cached_and_never_stale(fixture_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "data"
    shutil.copytree(fixture_dir, folder)
    first = open_squad(folder).ground_truth().features
    import mlpi.datasets.squad as squad_module

    def no_build(*args: object) -> None:
        raise AssertionError("features were built again")

    monkeypatch.setattr(squad_module, "build_features", no_build)
    again = open_squad(folder).ground_truth().features
    assert np.array_equal(first.input_ids, again.input_ids) and first.pieces == again.pieces
    monkeypatch.undo()
    # A changed question is a changed key: the old features are never read for it.
    document = json.loads((folder / "dev-v1.1.json").read_text(encoding="utf-8"))
    document["data"][0]["paragraphs"][0]["qas"][0]["question"] = "Which code was it, exactly?"
    (folder / "dev-v1.1.json").write_text(json.dumps(document), encoding="utf-8")
    changed = open_squad(folder).ground_truth().features
    assert not np.array_equal(changed.input_ids[0], first.input_ids[0])
    # A damaged cache is rebuilt, not trusted.
    from mlpi.core.engine.cache import cache_root

    for npz in (cache_root() / "datasets" / "squad").glob("*/features.npz"):
        npz.write_bytes(npz.read_bytes()[:200])  # a truncated zip
    rebuilt = open_squad(folder).ground_truth().features
    assert np.array_equal(rebuilt.input_ids, changed.input_ids)
    # Another Python's Unicode tables may tokenize differently: another key.
    monkeypatch.setattr(squad_module, "build_features", no_build)
    open_squad(folder)
    monkeypatch.setattr(squad_module.unicodedata, "unidata_version", "99.0.0")
    with pytest.raises(AssertionError, match="built again"):
        open_squad(folder)


def test_input_names_of_the_int8_model_are_fed(fixture_dir: Path) -> None:
    from mlpi.core.contract.backend import TensorSpec

    inputs = [TensorSpec(n, "int64", (None, 384)) for n in ("input_ids", "attention_mask", "token_type_ids")]
    dataset = open_squad(fixture_dir, inputs=inputs)
    dataset.load([0, 1])
    feeds = dataset.sample(1)
    features = dataset.ground_truth().features
    assert np.array_equal(feeds["attention_mask"][0], features.input_mask[1])
    assert np.array_equal(feeds["token_type_ids"][0], features.segment_ids[1])
    assert feeds["input_ids"].dtype == np.int64
    with pytest.raises(DatasetError, match="'pixels'"):
        open_squad(fixture_dir, inputs=[TensorSpec("pixels", "int64", (None, 384))])
    with pytest.raises(DatasetError, match=r"\[batch, 384\]"):
        open_squad(fixture_dir, inputs=[TensorSpec("input_ids", "int64", (None, 128))])


# -- scoring -------------------------------------------------------------------------------


def _span(dataset: SquadDataset, feature: int, first_word: str, last_word: str) -> tuple[int, int]:
    """Positions of the first piece ``first_word`` and the next ``last_word`` in a feature."""
    vocab = read_vocab(Path(dataset.describe()["vocab"]), 30522)
    tokens = [vocab[i] for i in dataset.ground_truth().features.input_ids[feature]]
    first = int(dataset.ground_truth().features.query_length[feature]) + 2
    start = tokens.index(first_word, first)
    return start, tokens.index(last_word, start)


def test_score_prints_what_accuracy_squad_prints_on_a_log_with_known_answers(fixture_dir: Path, tmp_path: Path) -> None:
    """A hand-written log (out of order, a sample twice, a short response padded, a question
    answered only from its question tokens): exact match 1/3, F1 (1 + 2/3 + 0) / 3."""
    dataset = open_squad(fixture_dir)
    features = dataset.ground_truth().features
    by_example = [np.flatnonzero(features.example == k) for k in range(3)]
    q0, q1 = int(by_example[0][0]), int(by_example[1][0])
    entries: list[tuple[int, bytes]] = [(int(f), span_logits(1, 2).tobytes()) for f in by_example[2]]  # in the question: "empty"
    entries.append((q1, span_logits(1, 2).tobytes()))  # logged twice: the last response counts, as in accuracy-squad.py
    start, end = _span(dataset, q0, "alpha", "omega")
    entries.append((q0, span_logits(start, end)[:200].tobytes()))  # 200 positions: padded to 384 with -10000
    start, end = _span(dataset, q1, "bravo", "omega")  # "bravo omega": F1 2/3 against the first answer
    entries.append((q1, span_logits(start, end).tobytes()))
    log = write_accuracy_log(tmp_path / "mlperf_log_accuracy.json", entries)
    proc = run_cli(["score", "--model", "bert-99", "--dataset", "squad", "--dataset-path", str(fixture_dir), str(log)],
                   cwd=tmp_path)
    assert proc.returncode in (0, 3), proc.stderr
    ours = proc.stdout.splitlines()[0]
    scores = json.loads(ours)
    assert scores["exact_match"] == pytest.approx(100 / 3) and scores["f1"] == pytest.approx(100 * (1 + 2 / 3) / 3)
    reason = reference_missing()
    if reason:
        pytest.skip(reason)
    assert official_line(log, fixture_dir / "dev-v1.1.json", fixture_dir / "vocab.txt", tmp_path) == ours


@pytest.mark.parametrize("logits", ["normal", "ties", "nan-inf"])
def test_score_equals_accuracy_squad_on_random_logits(fixture_dir: Path, tmp_path: Path, logits: str) -> None:
    """Random logits over every feature (in "ties" only three values, so that the n-best
    order, the span ranking and the choice between windows all meet equal scores; in
    "nan-inf" some NaN and infinite logits): the same predictions and the same line as
    MLCommons' script, character for character."""
    reason = reference_missing()
    if reason:
        pytest.skip(reason)
    dataset = open_squad(fixture_dir)
    rng = np.random.default_rng(7)
    entries = []
    for f in range(dataset.count):
        if logits == "ties":
            values = rng.integers(0, 3, size=(384, 2)).astype(np.float32)
        else:
            values = rng.standard_normal((384, 2)).astype(np.float32) * 4
        if logits == "nan-inf":  # NaN ranks where Python's sort leaves it; inf + -inf is NaN
            values[rng.integers(0, 384, 40), rng.integers(0, 2, 40)] = rng.choice([np.nan, np.inf, -np.inf], 40)
        entries.append((f, values.tobytes()))
    log = write_accuracy_log(tmp_path / "mlperf_log_accuracy.json", entries)
    proc = run_cli(["score", "--model", "bert-99", "--dataset", "squad", "--dataset-path", str(fixture_dir), str(log)],
                   cwd=tmp_path)
    assert proc.returncode in (0, 3), proc.stderr
    official = official_line(log, fixture_dir / "dev-v1.1.json", fixture_dir / "vocab.txt", tmp_path)
    assert proc.stdout.splitlines()[0] == official
    # and the predicted text of every question, not only the averages
    from mlpi.core.contract.accuracy import read_accuracy_log
    from mlpi.models.squad_f1 import predict

    theirs = json.loads((tmp_path / "predictions.json").read_text(encoding="utf-8"))
    ours = predict(read_accuracy_log(log, "last"), dataset.ground_truth())
    assert ours == theirs and set(ours.values()) != {"empty"}


@pytest.mark.parametrize("names", ["mlperf", "int8"])
def test_accuracy_run_of_a_graph_answering_from_its_inputs(fixture_dir: Path, tmp_path: Path, names: str) -> None:
    """The known-answer graph points at alpha..omega in every window: its run scores the
    exact match and F1 known by construction, line for line what accuracy-squad.py prints."""
    model = fixture_dir / "known.onnx"
    if names == "int8":
        graph = onnx.load(model)
        renames = {"input_mask": "attention_mask", "segment_ids": "token_type_ids", "output_start_logits": "start_logits"}
        for value in [*graph.graph.input, *graph.graph.output]:
            value.name = renames.get(value.name, value.name)
        for node in graph.graph.node:
            node.input[:] = [renames.get(n, n) for n in node.input]
            node.output[:] = [renames.get(n, n) for n in node.output]
        model = tmp_path / "known_int8_names.onnx"
        onnx.save(graph, model)
    out = tmp_path / "r"
    proc = run_cli(["run", "--model", "bert-99", "--model-path", str(model), "--dataset", "squad", "--dataset-path",
                    str(fixture_dir), "--mode", "accuracy", "-s", "Offline", "--batch-size", "2", "--output", str(out)],
                   cwd=tmp_path)
    assert proc.returncode in (0, 3), proc.stderr  # 3: below BERT's target, as it should be
    test_dir = only_run_dir(out) / "Offline" / "accuracy"
    line = (test_dir / "accuracy.txt").read_text(encoding="utf-8").strip()
    scores = json.loads(line)
    assert scores["exact_match"] == pytest.approx(KNOWN_EM) and scores["f1"] == pytest.approx(KNOWN_F1)
    entries = json.loads((test_dir / "mlperf_log_accuracy.json").read_text())
    assert {len(bytes.fromhex(e["data"])) for e in entries} == {3072}
    scored = run_cli(["score", str(only_run_dir(out))], cwd=tmp_path)
    assert scored.returncode in (0, 3) and scored.stdout.splitlines()[0] == line, scored.stderr
    reason = reference_missing()
    if reason:
        pytest.skip(reason)
    official = official_line(test_dir / "mlperf_log_accuracy.json", fixture_dir / "dev-v1.1.json",
                             fixture_dir / "vocab.txt", tmp_path)
    assert official == line


def test_final_text_keeps_the_original_words_as_the_reference_does() -> None:
    from mlpi.models.squad_f1 import final_text

    assert final_text("steve smith", "Steve Smith's", True) == "Steve Smith"
    assert final_text("1895", "(1895-1943).", True) == "1895"
    assert final_text("cafe", "Café!", True) == "Café"
    assert final_text("zzz", "Steve", True) == "Steve"  # not found: the whole words


def test_start_end_logits_are_interleaved_float32_pairs() -> None:
    from mlpi.core.contract.backend import TensorSpec

    post = StartEndLogits([TensorSpec("start_logits", "float32", (None, 384)),
                           TensorSpec("output_end_logits", "float32", (None, 384))], 4)
    start = np.arange(2 * 384, dtype=np.float32).reshape(2, 384)
    rows = post({"start_logits": start, "output_end_logits": -start}, [7, 9])
    assert post.sample_nbytes == 3072 and rows[:2].reshape(2, -1).nbytes == 2 * 3072
    expected = np.stack([start, -start], axis=-1)
    assert np.array_equal(rows[:2], expected)


# -- models and rules ----------------------------------------------------------------------


def test_bert_models_declare_mlperfs_rules_and_artifacts() -> None:
    low, high = bert_99(), bert_99_9()
    assert low.quality_target == pytest.approx(89.965, abs=5e-4) and high.quality_target == pytest.approx(90.783, abs=5e-4)
    for spec in (low, high):
        assert spec.rules.loadgen_key == "bert" and spec.rules.server_latency_ms == 130
        assert spec.rules.performance_sample_count == 10833 and spec.rules.offline_min_samples == 10833
        assert spec.rules.required_scenarios == {"edge": ("SingleStream", "Offline")}
        assert spec.artifact == ARTIFACT
    assert ARTIFACT.checksum == "md5:819b25b19cd8e59080c10892689750ca"
    assert [c.checksum for c in ARTIFACT.companions] == ["md5:64800d5d8528ce344256daf115d4965e"]
    from mlpi.core.engine.planning import random_weights_path

    assert random_weights_path(low, 0) == random_weights_path(high, 0)  # one random graph for both targets


def test_synthetic_bert_inputs_stay_inside_the_embedding_tables() -> None:
    from mlpi.datasets.synthetic import Synthetic

    dataset = Synthetic().open(DatasetRequest(inputs=INPUTS, params=DATA, count=8))
    dataset.load(range(8))
    out = {s.name: np.zeros((8, 384), np.int64) for s in INPUTS}
    dataset.gather(list(range(8)), out)
    assert 0 <= out["input_ids"].min() and out["input_ids"].max() < 30522 and out["input_ids"].max() > 1000
    assert (out["input_mask"] == 1).all() and set(np.unique(out["segment_ids"])) == {0, 1}


def test_fetch_without_network_names_both_ways_on(tmp_path: Path) -> None:
    proc = run_cli(["fetch", "bert-99"], cwd=tmp_path, env={"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("error: cannot download")
    assert "--model-path" in lines[1] and "--weights random" in lines[1]


# -- bad input -----------------------------------------------------------------------------


def _broken(folder: Path, case: str) -> str:
    data = folder / "dev-v1.1.json"
    document = json.loads(data.read_text(encoding="utf-8"))
    if case == "truncated":
        data.write_text(data.read_text(encoding="utf-8")[:100], encoding="utf-8")
        return "dev-v1.1.json"
    if case == "no-data":
        data.write_text(json.dumps({"version": "1.1"}), encoding="utf-8")
        return "'data'"
    if case == "no-question":
        del document["data"][1]["paragraphs"][0]["qas"][0]["question"]
        data.write_text(json.dumps(document), encoding="utf-8")
        return "data[1].paragraphs[0].qas[0]"
    if case == "small-vocab":
        vocab = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()[:-1]
        (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        return "30521 tokens"
    if case == "no-vocab":
        (folder / "vocab.txt").unlink()
        return "no vocabulary"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["truncated", "no-data", "no-question", "small-vocab", "no-vocab"])
def test_bad_squad_data_is_one_error_line(fixture_dir: Path, tmp_path: Path, case: str) -> None:
    folder = tmp_path / "data"
    shutil.copytree(fixture_dir, folder)
    words = _broken(folder, case)
    out = tmp_path / "r"
    proc = run_cli(["run", "--model", "bert-99", "--model-path", str(fixture_dir / "known.onnx"), "--dataset", "squad",
                    "--dataset-path", str(folder), "--mode", "accuracy", "--output", str(out)], cwd=tmp_path)
    one_error(proc, words)
    assert not out.exists() or not any(out.iterdir())


def test_squad_is_refused_without_its_file(tmp_path: Path, fixture_dir: Path) -> None:
    proc = run_cli(["run", "--model", "bert-99", "--model-path", str(fixture_dir / "known.onnx"), "--dataset", "squad",
                    "--dataset-path", str(tmp_path), "--mode", "accuracy", "--output", str(tmp_path / "r")], cwd=tmp_path)
    one_error(proc, "dev-v1.1.json")


def test_count_takes_the_first_features_and_scores_their_questions(fixture_dir: Path) -> None:
    dataset = open_squad(fixture_dir, count=2)
    assert dataset.count == 2
    with pytest.raises(DatasetError, match="--count 99"):
        open_squad(fixture_dir, count=99)
    from mlpi.models.squad_f1 import evaluate, predict

    features = dataset.ground_truth().features
    responses = {0: span_logits(*_span(dataset, 0, "alpha", "omega")).tobytes()}
    result = evaluate(dataset.ground_truth(), predict(responses, dataset.ground_truth()))
    assert result.details["questions"] == len(set(features.example[:2].tolist()))
    assert result.details["exact_match"] == pytest.approx(100.0 / result.details["questions"])


def test_questions_without_answers_run_but_are_not_scored(fixture_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "data"
    shutil.copytree(fixture_dir, folder)
    document = json.loads((folder / "dev-v1.1.json").read_text(encoding="utf-8"))
    for article in document["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                del qa["answers"]
    (folder / "dev-v1.1.json").write_text(json.dumps(document), encoding="utf-8")
    dataset = open_squad(folder)
    assert dataset.count == open_squad(fixture_dir).count and dataset.ground_truth() is None
    proc = run_cli(["run", "--model", "bert-99", "--model-path", str(fixture_dir / "known.onnx"), "--dataset", "squad",
                    "--dataset-path", str(folder), "--mode", "accuracy", "--output", str(tmp_path / "r")], cwd=tmp_path)
    one_error(proc, "no ground truth")


def test_a_context_with_no_pieces_gets_no_feature_and_the_answer_empty(fixture_dir: Path, tmp_path: Path) -> None:
    """A context of nothing but a zero-width space makes no window (the reference makes no
    feature either, and predicts "empty"): no crash, the other questions unchanged."""
    folder = tmp_path / "data"
    shutil.copytree(fixture_dir, folder)
    document = json.loads((folder / "dev-v1.1.json").read_text(encoding="utf-8"))
    document["data"].insert(1, {"title": "blank", "paragraphs": [{"context": "\u200b", "qas": [
        {"id": "blank", "question": "Anything?", "answers": [{"text": "empty", "answer_start": 0}]}]}]})
    (folder / "dev-v1.1.json").write_text(json.dumps(document), encoding="utf-8")
    dataset = open_squad(folder)
    assert dataset.count == open_squad(fixture_dir).count
    from mlpi.models.squad_f1 import predict

    assert predict({}, dataset.ground_truth())["blank"] == "empty"


def test_without_lower_case_text_is_composed_first_as_the_reference_tokenizer_does() -> None:
    from mlpi.datasets.squad_features import basic_tokens, pre_tokens

    assert pre_tokens("Cafe\u0301!", lower_case=False) == ["Caf\u00e9", "!"]
    assert basic_tokens("Cafe\u0301!", lower_case=False) == ["Cafe\u0301", "!"]  # get_final_text's tokenizer: no NFC
    assert pre_tokens("Cafe\u0301!") == basic_tokens("Cafe\u0301!") == ["cafe", "!"]
