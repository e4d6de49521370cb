"""int8 calibration for RNN-T: the librispeech dataset opened by the file names of MLPerf's
list (``train-clean-100-wav/S/C/S-C-N.wav``, relative to --calibration-path), read as a run
reads its audio, with the same FLAC fallback and refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error

pytest.importorskip("soundfile")
pytest.importorskip("unidecode")

import soundfile

from mlpi.core.contract.backend import TensorSpec
from mlpi.core.contract.dataset import DataParams, DatasetRequest
from mlpi.core.contract.errors import DatasetError
from mlpi.datasets import librispeech
from mlpi.models.calibration_lists import LIBRISPEECH
from mlpi.testing.librispeech_fixture import (
    DEFAULT_UTTERANCES,
    FixtureUtterance,
    LibriSpeechFixture,
    as_pcm16,
    read_back,
    tone_audio,
    write_librispeech,
)

LABELS = (" ", *"abcdefghijklmnopqrstuvwxyz", "'")
INPUT = TensorSpec("waveform", "float32", (None, None))
PARAMS = DataParams.of(sample_rate=16000, labels=LABELS, max_duration=15.0)
#: The first names of MLPerf's list, as it gives them.
OFFICIAL = LIBRISPEECH.names()


def _by_name(path: Path | None, names: tuple[str, ...]) -> librispeech.LibriSpeechDataset:
    dataset = librispeech.LibriSpeech().open(DatasetRequest(inputs=[INPUT], params=PARAMS, path=path, names=names))
    assert isinstance(dataset, librispeech.LibriSpeechDataset)
    return dataset


def _run(folder: Path) -> librispeech.LibriSpeechDataset:
    dataset = librispeech.LibriSpeech().open(DatasetRequest(inputs=[INPUT], params=PARAMS, path=folder))
    assert isinstance(dataset, librispeech.LibriSpeechDataset)
    return dataset


def _waveforms(dataset: librispeech.LibriSpeechDataset) -> list[np.ndarray]:
    dataset.load(range(dataset.count))
    out = []
    for index in range(dataset.count):
        feed = dataset.sample(index)["waveform"]
        assert feed.dtype == np.float32 and feed.shape == (1, dataset.length(index)) and feed.flags.c_contiguous
        out.append(feed[0])
    return out


def _utterance(name: str) -> FixtureUtterance:
    """The fixture utterance of a list name (``.../S-C-N.wav``), half a second long."""
    return FixtureUtterance(Path(name).stem, "", 0.5)


def _write(path: Path, pcm: np.ndarray, rate: int = 16000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), pcm, rate, format="FLAC" if path.suffix == ".flac" else "WAV", subtype="PCM_16")


def test_the_factory_reads_names_and_the_shipped_list_is_train_clean_100_wav() -> None:
    assert librispeech.LibriSpeech.opens_by_name
    assert len(OFFICIAL) == 500 and len(set(OFFICIAL)) == 500
    for name in OFFICIAL:
        parts = Path(name).parts
        assert parts[0] == "train-clean-100-wav" and len(parts) == 4 and name.endswith(".wav"), name
        assert Path(name).stem.split("-")[:2] == list(parts[1:3]), name


def test_names_open_those_files_in_list_order_as_a_run_reads_them(tmp_path: Path) -> None:
    """Any order, a FLAC among them, the 15.5 s utterance a run drops included; no manifest."""
    written: LibriSpeechFixture = write_librispeech(tmp_path, flac=[DEFAULT_UTTERANCES[1].id])
    run = _run(tmp_path)
    by_id = {run.ground_truth().id(i): wave for i, wave in enumerate(_waveforms(run))}
    order = [DEFAULT_UTTERANCES[i] for i in (4, 2, 0, 1)]
    written.manifest.unlink()  # no manifest, no transcripts needed

    dataset = _by_name(tmp_path, tuple(u.wav() for u in order))
    assert dataset.count == dataset.performance_count == 4
    assert not dataset.has_ground_truth and dataset.ground_truth() is None
    assert [spec.to_json() for spec in dataset.inputs] == [INPUT.to_json()]
    assert [dataset.file(i) for i in range(4)] == [written.files[u.id] for u in order]
    assert dataset.file(3) == tmp_path / "LibriSpeech/dev-clean/1272/128104/1272-128104-0001.flac"
    assert [dataset.length(i) for i in range(4)] == [8000, 248000, 20000, 12000]
    assert dataset.duration(1) == 15.5
    described = dataset.describe()
    assert described["kind"] == "librispeech" and described["selected_by"] == "names" and described["count"] == 4
    for index, (utterance, wave) in enumerate(zip(order, _waveforms(dataset))):
        assert np.array_equal(wave, written.waveforms[utterance.id]), utterance.id
        if utterance.id in by_id:
            assert np.array_equal(wave, by_id[utterance.id]), utterance.id  # exactly what the run path gives


def test_official_names_fall_back_to_librispeech_flac_and_average_channels(tmp_path: Path) -> None:
    names = OFFICIAL[:5]
    utterances = [_utterance(name) for name in names]
    pcm = [as_pcm16(tone_audio(u)) for u in utterances]
    stereo = np.stack([pcm[0], pcm[1]], axis=1)
    speaker, chapter = Path(names[1]).parts[1:3]
    flac_ids = [Path(name).stem for name in names[1:4]]
    places = [
        tmp_path / names[0],  # the converted WAV, stereo
        tmp_path / "LibriSpeech/train-clean-100" / speaker / chapter / f"{flac_ids[0]}.flac",
        tmp_path / "train-clean-100" / Path(*Path(names[2]).parts[1:3]) / f"{flac_ids[1]}.flac",
        (tmp_path / names[3]).with_suffix(".flac"),  # beside where the WAV would be
        tmp_path / names[4],
    ]
    for index, place in enumerate(places):
        _write(place, stereo if index == 0 else pcm[index])

    dataset = _by_name(tmp_path, names)
    assert [dataset.file(i) for i in range(5)] == places
    expected = [read_back(stereo), *(read_back(p) for p in pcm[1:])]
    assert expected[0].shape == (8000,)
    for index, wave in enumerate(_waveforms(dataset)):
        assert np.array_equal(wave, expected[index]), names[index]
    # the WAV wins over its FLAC when both are there
    _write(tmp_path / names[1], pcm[2])
    again = _by_name(tmp_path, names[1:2])
    assert again.file(0) == tmp_path / names[1]
    assert np.array_equal(_waveforms(again)[0], read_back(pcm[2]))


def test_missing_files_are_named_first_ten_and_how_many_more(tmp_path: Path) -> None:
    names = OFFICIAL[:13]
    _write(tmp_path / names[4], as_pcm16(tone_audio(_utterance(names[4]))))
    with pytest.raises(DatasetError) as excinfo:
        _by_name(tmp_path, names)
    missing = [name for name in names if name != names[4]]
    message = one_line_error(excinfo, "12 of the 13", str(tmp_path), *missing[:10], "and 2 more")
    assert missing[10] not in message and names[4] not in message
    assert "train-clean-100-wav/" in excinfo.value.hint
    with pytest.raises(DatasetError) as excinfo:
        _by_name(tmp_path, (names[4], names[0]))
    one_line_error(excinfo, "1 of the 2", "is not in", names[0])


@pytest.mark.parametrize("name", ["../outside.wav", "train-clean-100-wav/../../outside.wav", "ABSOLUTE"])
def test_a_name_reaching_outside_the_folder_is_refused(tmp_path: Path, name: str) -> None:
    outside = tmp_path / "outside.wav"
    _write(outside, np.zeros(1600, np.int16))  # there, so only the name can be the reason
    folder = tmp_path / "calibration" / "train-clean-100-wav"
    folder.mkdir(parents=True)
    name = str(outside) if name == "ABSOLUTE" else name
    with pytest.raises(DatasetError) as excinfo:
        _by_name(folder.parent, (name,))
    one_line_error(excinfo, repr(name), "inside")


def test_another_sample_rate_is_refused_as_a_run_refuses_it(tmp_path: Path) -> None:
    written = write_librispeech(tmp_path)
    path = written.files[DEFAULT_UTTERANCES[1].id]
    soundfile.write(str(path), np.zeros(12000, np.int16), 8000, subtype="PCM_16")
    with pytest.raises(DatasetError) as run_error:
        _run(tmp_path)
    with pytest.raises(DatasetError) as excinfo:
        _by_name(tmp_path, (DEFAULT_UTTERANCES[0].wav(), DEFAULT_UTTERANCES[1].wav()))
    one_line_error(excinfo, str(path), "8000 Hz", "16000 Hz")
    assert (excinfo.value.message, excinfo.value.hint) == (run_error.value.message, run_error.value.hint)


def test_no_folder_or_an_empty_list_is_refused(tmp_path: Path) -> None:
    for path, names, words in ((None, OFFICIAL[:1], ("needs a folder",)),
                               (tmp_path / "nowhere", OFFICIAL[:1], ("no folder", "nowhere")),
                               (tmp_path, (), ("names no",))):
        with pytest.raises(DatasetError) as excinfo:
            _by_name(path, names)
        one_line_error(excinfo, *words)
