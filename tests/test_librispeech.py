"""The librispeech dataset (manifest, WAV and FLAC audio, transcripts normalised as the
reference's Manifest does) and the WER scorer, checked against known answers and against
MLCommons' own accuracy_eval.py on the same logs, character for character."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import one_line_error

pytest.importorskip("soundfile")
pytest.importorskip("unidecode")

import soundfile

from mlpi.core.contract.accuracy import read_accuracy_log
from mlpi.core.contract.backend import TensorSpec
from mlpi.core.contract.dataset import DataParams, DatasetRequest
from mlpi.core.contract.errors import DatasetError
from mlpi.datasets import librispeech
from mlpi.datasets.librispeech_text import normalize_transcript
from mlpi.models.librispeech_wer import (
    librispeech_wer,
    wer_line,
    word_distance,
    word_error_rate,
)
from mlpi.testing.librispeech_fixture import (
    DEFAULT_UTTERANCES,
    NUMBER_UTTERANCES,
    FixtureUtterance,
    LibriSpeechFixture,
    write_librispeech,
)

LABELS = (" ", *"abcdefghijklmnopqrstuvwxyz", "'")
INPUT = TensorSpec("waveform", "float32", (None, None))
RNNT_DIR = (Path(__file__).resolve().parents[1].parent / "shared" / "mlcommons-inference" / "retired_benchmarks"
            / "speech_recognition" / "rnnt")
REAL_MANIFEST = RNNT_DIR / "dev-clean-wav.json"


def _open(path: Path, count: int | None = None, for_scoring: bool = False, performance_count: int | None = None,
          **params: object) -> librispeech.LibriSpeechDataset:
    values = {"sample_rate": 16000, "labels": LABELS, "max_duration": 15.0, **params}
    request = DatasetRequest(inputs=[INPUT], params=DataParams(values), path=path, count=count, for_scoring=for_scoring,
                             performance_count=performance_count)
    dataset = librispeech.LibriSpeech().open(request)
    assert isinstance(dataset, librispeech.LibriSpeechDataset)
    return dataset


def _ids(text: str) -> list[int]:
    return [LABELS.index(c) for c in text]


def _responses(texts: Mapping[int, str]) -> dict[int, bytes]:
    return {index: np.asarray(_ids(text), dtype=np.int64).tobytes() for index, text in texts.items()}


def _write_log(path: Path, responses: Mapping[int, bytes]) -> Path:
    """A LoadGen accuracy log: one record per response, in the given order, hex upper-case."""
    path.mkdir(parents=True, exist_ok=True)
    records = [{"seq_id": seq, "qsl_idx": index, "data": data.hex().upper()} for seq, (index, data) in enumerate(responses.items())]
    (path / "mlperf_log_accuracy.json").write_text(json.dumps(records), encoding="utf-8")
    return path / "mlperf_log_accuracy.json"


@pytest.fixture(scope="module")
def fixture(tmp_path_factory: pytest.TempPathFactory) -> LibriSpeechFixture:
    """The default utterances, the second one only as LibriSpeech's FLAC."""
    return write_librispeech(tmp_path_factory.mktemp("librispeech"), flac=[DEFAULT_UTTERANCES[1].id])


KEPT_TEXTS = [
    "mister quilter is the apostle of the middle classes",
    "nor is mister quilter's manner less interesting than his matter",
    "mister quilter and his wife at home",
    "the end",
]


# --------------------------------------------------------------------------- the dataset


def test_fixture_round_trip(fixture: LibriSpeechFixture, capsys: pytest.CaptureFixture[str],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = _open(fixture.folder)
    kept = fixture.kept
    assert [u.id for u in kept] == [u.id for u in DEFAULT_UTTERANCES if u.seconds <= 15]  # the 15.5 s one is dropped
    assert dataset.count == dataset.performance_count == 4 == len(kept)
    assert [spec.to_json() for spec in dataset.inputs] == [INPUT.to_json()]
    assert [dataset.length(i) for i in range(4)] == [20000, 12000, 16000, 8000]
    assert [dataset.duration(i) for i in range(4)] == [1.25, 0.75, 1.0, 0.5]
    assert dataset.file(1) == fixture.folder / "LibriSpeech/dev-clean/1272/128104/1272-128104-0001.flac"
    assert dataset.file(0) == fixture.folder / "dev-clean-wav/1272/128104/1272-128104-0000.wav"
    described = dataset.describe()
    assert described["kind"] == "librispeech" and described["count"] == 4
    assert described["manifest"] == str(fixture.manifest) and described["hours"] == pytest.approx(3.5 / 3600)
    assert described["dropped_too_long"] == 1

    monkeypatch.setattr(librispeech, "PROGRESS_AFTER_S", 0.0)
    dataset.load([3, 1, 0])
    assert "mlpi: loading librispeech utterance 3/3 (1272-128104-0000)" in capsys.readouterr().err
    for index in (0, 1, 3):
        waveform = dataset.sample(index)["waveform"]
        assert waveform.dtype == np.float32 and waveform.shape == (1, dataset.length(index)) and waveform.flags.c_contiguous
        assert np.array_equal(waveform[0], fixture.waveforms[kept[index].id])  # WAV and FLAC alike
        assert dataset.sample(index)["waveform"] is waveform  # no copy
    with pytest.raises(IndexError):
        dataset.sample(2)
    with pytest.raises(ValueError, match="sample()"):
        dataset.gather([0], {"waveform": np.empty((1, 20000), np.float32)})
    dataset.unload([0])
    with pytest.raises(IndexError):
        dataset.sample(0)

    truth = dataset.ground_truth()
    assert dataset.has_ground_truth and truth.labels == LABELS and len(truth) == 4
    assert [truth.text(i) for i in range(4)] == KEPT_TEXTS
    assert truth.transcript(2) == _ids(KEPT_TEXTS[2]) and truth.duration(3) == 0.5
    assert truth.id(1) == "1272-128104-0001"


def test_the_manifest_file_itself_count_and_performance_count(fixture: LibriSpeechFixture) -> None:
    dataset = _open(fixture.manifest, count=2, performance_count=1)
    assert dataset.count == 2 and dataset.performance_count == 1
    assert [dataset.ground_truth().text(i) for i in range(2)] == KEPT_TEXTS[:2]
    assert _open(fixture.folder, max_duration=16.0).count == 5  # the model's max_duration decides
    assert _open(fixture.folder, max_duration=1.0).count == 3  # 1.0 s is kept: only longer ones go
    for count, words in ((5, ("--count 5", "4 LibriSpeech utterances", "15 s", str(fixture.manifest))), (0, ("--count 0",))):
        with pytest.raises(DatasetError) as excinfo:
            _open(fixture.folder, count=count)
        one_line_error(excinfo, *words)


def test_stereo_is_averaged_and_floats_are_written_as_pcm(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    stereo = rng.uniform(-0.5, 0.5, (4000, 2))
    utterances = (FixtureUtterance("84-121123-0000", "go do you hear", 0.25),)
    written = write_librispeech(tmp_path, utterances, lambda u: stereo)
    dataset = _open(tmp_path)
    dataset.load([0])
    pcm = np.clip(np.round(stereo * 32768), -32768, 32767).astype(np.int16)
    expected = (pcm.astype(np.float32) / np.float32(32768)).mean(axis=1, dtype=np.float32)
    assert np.array_equal(dataset.sample(0)["waveform"][0], expected)
    assert np.array_equal(written.waveforms[utterances[0].id], expected)
    assert json.loads(written.manifest.read_text())[0]["files"][0]["channels"] == 2


def test_transcripts_are_normalised_as_the_reference_manifest_does(tmp_path: Path) -> None:
    """Numbers, abbreviations, '&', '+', accents, punctuation; an unnormalisable transcript
    is dropped and later samples move up, as in the reference."""
    written = write_librispeech(tmp_path, NUMBER_UTTERANCES)
    dataset = _open(tmp_path, for_scoring=True)
    truth = dataset.ground_truth()
    assert [truth.text(i) for i in range(len(truth))] == [
        "in nineteen eighty four mister smith paid five dollars and third class fares plus two point five",
        "doctor jones's cafe at saint paul's opened in two thousand five with one thousand seats",
        "room zero one two three cost one dollar one cent in nineteen hundred",
        "the last one",
    ]
    assert dataset.count == 4 and truth.id(3) == NUMBER_UTTERANCES[4].id
    assert dataset.describe()["dropped_unnormalisable"] == 1
    assert normalize_transcript("\x00 tab\there", LABELS) == " tab here"  # stripped before unknown characters go
    assert normalize_transcript(None, LABELS) is None
    assert written.kept == list(NUMBER_UTTERANCES)


def test_scoring_needs_only_the_manifest(tmp_path: Path, fixture: LibriSpeechFixture) -> None:
    (tmp_path / "dev-clean-wav.json").write_text(fixture.manifest.read_text())
    dataset = librispeech.LibriSpeech().open(
        DatasetRequest(inputs=[], params=DataParams.of(sample_rate=16000, labels=LABELS, max_duration=15.0),
                       path=tmp_path, for_scoring=True))
    assert dataset.count == 4 and dataset.length(0) == 20000
    with pytest.raises(DatasetError, match="scoring only"):
        dataset.load([0])


# --------------------------------------------------------------------------- refusals


def _broken(tmp_path: Path, flac: Sequence[str] = ()) -> LibriSpeechFixture:
    return write_librispeech(tmp_path / "data", flac=flac)


def test_a_missing_file_is_named_with_its_flac(tmp_path: Path) -> None:
    written = _broken(tmp_path)
    written.files[DEFAULT_UTTERANCES[3].id].unlink()
    with pytest.raises(DatasetError) as excinfo:
        _open(written.folder)
    message = one_line_error(excinfo, str(written.files[DEFAULT_UTTERANCES[3].id]), "is missing")
    assert "LibriSpeech/dev-clean/2277/149896/2277-149896-0001.flac" in message
    assert _open(written.folder, count=2).count == 2  # the utterances before it are usable


@pytest.mark.parametrize("kind", ["wav", "flac"])
def test_a_corrupt_file_is_refused_at_open(tmp_path: Path, kind: str) -> None:
    target = DEFAULT_UTTERANCES[0].id
    written = _broken(tmp_path, flac=[target] if kind == "flac" else [])
    path = written.files[target]
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(DatasetError) as excinfo:
        _open(written.folder)
    one_line_error(excinfo, str(path), "not a readable audio file")


def test_a_truncated_wav_disagrees_with_the_manifest(tmp_path: Path) -> None:
    written = _broken(tmp_path)
    path = written.files[DEFAULT_UTTERANCES[0].id]
    path.write_bytes(path.read_bytes()[:20000])
    with pytest.raises(DatasetError) as excinfo:
        _open(written.folder)
    one_line_error(excinfo, str(path), "9978 samples", "says 20000")


def test_a_truncated_flac_is_refused_at_load(tmp_path: Path) -> None:
    target = DEFAULT_UTTERANCES[0].id
    written = _broken(tmp_path, flac=[target])
    path = written.files[target]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    dataset = _open(written.folder)  # its header still gives the full length
    with pytest.raises(DatasetError) as excinfo:
        dataset.load([0])
    one_line_error(excinfo, str(path), "not a readable audio file")


def test_another_sample_rate_is_refused(tmp_path: Path) -> None:
    written = _broken(tmp_path)
    path = written.files[DEFAULT_UTTERANCES[1].id]
    soundfile.write(str(path), np.zeros(12000, np.int16), 8000, subtype="PCM_16")
    with pytest.raises(DatasetError) as excinfo:
        _open(written.folder)
    one_line_error(excinfo, str(path), "8000 Hz", "16000 Hz")


def test_a_missing_or_unreadable_manifest_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    cases = [(tmp_path / "empty", (str(tmp_path / "empty"), "dev-clean-wav.json")),
             (tmp_path / "nowhere", (str(tmp_path / "nowhere"),))]
    bad = tmp_path / "bad" / "dev-clean-wav.json"
    bad.parent.mkdir()
    bad.write_text("[{")
    cases.append((bad.parent, (str(bad), "not JSON")))
    odd = tmp_path / "odd" / "dev-clean-wav.json"
    odd.parent.mkdir()
    odd.write_text(json.dumps([{"files": [], "transcript": "x"}]))
    cases.append((odd.parent, ("entry 0", str(odd), "original_duration")))
    for path, words in cases:
        with pytest.raises(DatasetError) as excinfo:
            _open(path)
        one_line_error(excinfo, *words)
    with pytest.raises(DatasetError) as excinfo:
        _open(tmp_path / "empty", labels="abc")
    one_line_error(excinfo, "labels")


# --------------------------------------------------------------------------- the scorer


def test_perfect_hypotheses_score_zero(fixture: LibriSpeechFixture) -> None:
    dataset = _open(fixture.folder, for_scoring=True)
    result = librispeech_wer(_responses(dict(enumerate(KEPT_TEXTS))), dataset, [])
    assert result.lines == ("Word Error Rate: 0.0%, accuracy=100.0%",)
    assert result.metric == "WER" and result.value == 0.0 and result.unit == "%" and not result.higher_is_better
    assert dict(result.details) == {"errors": 0, "words": 28, "samples": 4}


def test_substitution_deletion_insertion_known_answer(fixture: LibriSpeechFixture) -> None:
    """One substitution, one deletion, one insertion over 28 reference words: 3/28."""
    dataset = _open(fixture.folder, for_scoring=True)
    texts = {
        3: "the end end",
        0: "mister quilter is the apostles of the middle classes",
        1: "nor is mister quilter's manner interesting than his matter",
        2: KEPT_TEXTS[2],
    }
    result = librispeech_wer(_responses(texts), dataset, [])
    assert result.lines == ("Word Error Rate: 10.714285714285714%, accuracy=89.28571428571429%",)
    assert result.value == 3 / 28 * 100 and dict(result.details) == {"errors": 3, "words": 28, "samples": 4}
    assert word_distance(["a", "b", "c"], ["a", "x", "c", "d"]) == 2
    assert word_error_rate(["kitten sat"], ["sitting"]) == (2.0, 2, 1)


def test_bad_responses_are_refused_and_no_words_give_inf(fixture: LibriSpeechFixture, tmp_path: Path) -> None:
    dataset = _open(fixture.folder, for_scoring=True)
    for responses, words in (({0: np.asarray([1, 28], np.int64).tobytes()}, ("sample 0", "label id 28")),
                             ({2: np.asarray([-1], np.int64).tobytes()}, ("sample 2", "label id -1")),
                             ({1: b"\x01\x00\x00"}, ("sample 1", "3 bytes")),
                             ({4: b""}, ("sample 4", "4 utterances")),
                             ({}, ("no responses",))):
        with pytest.raises(DatasetError) as excinfo:
            librispeech_wer(responses, dataset, [])
        one_line_error(excinfo, *words)
    # a transcript of punctuation only normalises to no word: the script's WER is then inf
    write_librispeech(tmp_path, [FixtureUtterance("1-1-0000", "...", 0.25)])
    result = librispeech_wer(_responses({0: "a word"}), _open(tmp_path, for_scoring=True), [])
    assert result.lines == ("Word Error Rate: inf%, accuracy=-inf%",) and result.value == float("inf")
    assert result.passed is None and json.dumps(result.to_json())
    assert wer_line(0.25) == "Word Error Rate: 25.0%, accuracy=75.0%"


# --------------------------------------------------------------------------- against MLCommons' script

_DRIVER = """
import json, runpy, string, sys
jobs = json.loads(sys.argv[1])
for argv in jobs["runs"]:
    sys.argv = ["accuracy_eval.py", *argv]
    runpy.run_path("accuracy_eval.py", run_name="__main__")
from parts.manifest import Manifest
labels = [" "] + [chr(c) for c in range(97, 123)] + ["'"]
for path in jobs["manifests"]:
    m = Manifest(".", [path], labels, len(labels), normalize=True, max_duration=15.0)
    print("TRANSCRIPTS " + json.dumps([entry["transcript"] for entry in m]))
"""


def _real_hypotheses(truth: librispeech.LibriSpeechTruth) -> dict[int, str]:
    """Every sample's transcript with some words substituted, dropped or added, some empty;
    in a shuffled order, as LoadGen logs them."""
    order = np.random.default_rng(5).permutation(len(truth)).tolist()
    texts: dict[int, str] = {}
    for index in order:
        words = truth.text(index).split()
        if index % 5 == 0:
            words[len(words) // 2] = "zebra"
        if index % 7 == 0:
            words = words[:-1]
        if index % 11 == 0:
            words.insert(0, "well")
        if index % 97 == 0:
            words = []
        texts[index] = " ".join(words)
    return texts


@pytest.fixture(scope="module", autouse=True)
def official_run(tmp_path_factory: pytest.TempPathFactory, fixture: LibriSpeechFixture) -> Iterator[dict[str, Any]]:
    """accuracy_eval.py run on a log of the fixture, one of the fixture with numbers and one
    of the pinned dev-clean manifest; and the transcripts its Manifest keeps. It runs in one
    interpreter (inflect takes seconds to import), started in the background before the
    module's first test, so that it overlaps them; :func:`official` waits for it."""
    run: dict[str, Any] = {}
    if not (RNNT_DIR / "accuracy_eval.py").is_file() or not REAL_MANIFEST.is_file():
        run["skip"] = (f"MLCommons' accuracy_eval.py and dev-clean-wav.json are not at {RNNT_DIR} "
                       "(the shared mlcommons-inference folder is absent)")
    for module in ("inflect", "unidecode"):
        if "skip" not in run and importlib.util.find_spec(module) is None:
            run["skip"] = f"MLCommons' accuracy_eval.py imports {module} (pip install {module})"
    if "skip" in run:
        yield run
        return
    work = tmp_path_factory.mktemp("wer-official")
    numbers = write_librispeech(work / "numbers", NUMBER_UTTERANCES)
    logs = {
        "fixture": {3: "the end end", 0: "mister quilter is the apostles of the middle classes", 2: "quilter and wife at home"},
        "numbers": {3: "the last one", 0: "in nineteen eighty four mister smith paid five dollars", 1: "", 2: "room zero"},
    }
    real = _open(REAL_MANIFEST, for_scoring=True)
    logs["real"] = _real_hypotheses(real.ground_truth())
    datasets = {"fixture": (fixture.folder, fixture.manifest), "numbers": (numbers.folder, numbers.manifest),
                "real": (REAL_MANIFEST.parent, REAL_MANIFEST)}
    runs = []
    for name, texts in logs.items():
        log = _write_log(work / f"log-{name}", _responses(texts))
        folder, manifest = datasets[name]
        runs.append(["--log_dir", str(log.parent), "--dataset_dir", str(folder), "--manifest", str(manifest),
                     "--output_dtype", "int64"])
    jobs = json.dumps({"runs": runs, "manifests": [str(numbers.manifest)]})
    run.update(process=subprocess.Popen([sys.executable, "-c", _DRIVER, jobs], cwd=RNNT_DIR, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True),
               names=list(logs), logs={name: work / f"log-{name}" / "mlperf_log_accuracy.json" for name in logs},
               folders={name: folder for name, (folder, _) in datasets.items()}, numbers_folder=numbers.folder)
    yield run
    if run["process"].poll() is None:
        run["process"].kill()
        run["process"].wait()


@pytest.fixture()
def official(official_run: dict[str, Any]) -> dict[str, Any]:
    """What accuracy_eval.py printed (waited for once)."""
    if "skip" in official_run:
        pytest.skip(official_run["skip"])
    if "lines" not in official_run:
        try:
            out, err = official_run["process"].communicate(timeout=300)
        except subprocess.TimeoutExpired:
            official_run["process"].kill()
            out, err = official_run["process"].communicate()
        assert official_run["process"].returncode == 0, err[-2000:]
        lines = [line for line in out.splitlines() if line.startswith("Word Error Rate:")]
        transcripts = [json.loads(line[len("TRANSCRIPTS "):]) for line in out.splitlines() if line.startswith("TRANSCRIPTS ")]
        assert len(lines) == 3 and len(transcripts) == 1, out[-2000:]
        official_run.update(lines=dict(zip(official_run["names"], lines)), numbers=transcripts[0])
    return official_run


@pytest.mark.parametrize("name", ["fixture", "numbers", "real"])
def test_the_wer_line_is_accuracy_evals(official: dict[str, Any], name: str) -> None:
    path = official["folders"][name] if name != "real" else REAL_MANIFEST
    dataset = _open(path, for_scoring=True)
    result = librispeech_wer(read_accuracy_log(official["logs"][name]), dataset, [])
    assert result.lines == (official["lines"][name],)
    if name == "real":
        assert dataset.count == 2513 and result.details["samples"] == 2513
        assert 0 < result.value < 100 and round(dataset.describe()["hours"], 2) == 4.36


def test_transcript_ids_are_the_reference_manifests(official: dict[str, Any]) -> None:
    truth = _open(official["numbers_folder"], for_scoring=True).ground_truth()
    assert [truth.transcript(i) for i in range(len(truth))] == official["numbers"]
