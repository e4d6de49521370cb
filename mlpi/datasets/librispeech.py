"""``librispeech``: LibriSpeech dev-clean utterances for RNN-T, one LoadGen sample per utterance.

Followed: MLCommons inference ``retired_benchmarks/speech_recognition/rnnt/`` —
``QSL.py`` (``AudioQSL``: the manifest read with ``Manifest(normalize=True,
max_duration=15.0)``, sample ``i`` being the manifest's ``i``-th kept entry, its waveform
read with ``AudioSegment.from_file(..., target_sr=16000)``), ``pytorch/parts/manifest.py``
(entries longer than ``max_duration`` by ``original_duration`` and entries whose transcript
cannot be normalised are dropped; the audio is the entry's file of speed 1;
``fname`` is relative to the dataset folder), ``pytorch/parts/segment.py`` (soundfile reads
float32, integer PCM scaled to [-1, 1); channels averaged) and ``dev-clean-wav.json``
(2,703 entries, 190 of them over 15 s: 2,513 samples).

``--dataset-path`` is the folder holding ``dev-clean-wav.json`` (the manifest MLCommons'
``convert_librispeech.py`` writes), or that manifest file itself; the audio paths in it are
relative to its folder. A ``.wav`` the manifest names that is missing is read from the
original LibriSpeech FLAC when that is there (``dev-clean-wav/S/C/S-C-N.wav`` ->
``LibriSpeech/dev-clean/S/C/S-C-N.flac`` or ``dev-clean/S/C/S-C-N.flac``, or a ``.flac``
beside the ``.wav``): the conversion to WAV keeps every sample, so both give the same
waveform.

By name (``DatasetRequest.names``, int8 calibration on MLPerf's RNN-T list,
``calibration/LibriSpeech/calibration_files.txt``: 500 train-clean-100 utterances under 15 s,
named like ``train-clean-100-wav/103/1240/103-1240-0010.wav``): exactly the named files, in
the list's order, relative to ``--calibration-path`` (the folder holding
``train-clean-100-wav/``, which ``convert_librispeech.py`` writes for that subset as it does
``dev-clean-wav/`` for a run), with the same FLAC fallback
(``LibriSpeech/train-clean-100/S/C/S-C-N.flac`` ...) and the same audio reading. No manifest
or transcript is read, and there is no ground truth. Names that are not there make one error
naming the first ten; a name that would reach outside the folder is refused.

The model declares, in its DataParams: ``sample_rate`` (16000), ``labels`` (the characters a
label id stands for) and ``max_duration`` (15.0 s). A file of another sample rate is refused
(the reference would resample it with librosa; MLPerf's data is 16 kHz throughout).

Channels are averaged per frame. (``AudioSegment`` transposes to channels x frames and then
averages axis 1, over time, which would leave one value per channel; LibriSpeech is mono, so
the reference never meets it.)

``open`` reads the manifest and normalises every transcript (that decides which entries
are samples), then opens each used file's header (sample rate, length): 2,513 files, half of
them FLAC, open in well under a second from the page cache and about 2 s from disk, the
manifest's normalisation included; ``load`` reads the audio.
Utterances differ in length, so samples are fed one at a time: :meth:`LibriSpeechDataset.sample`
hands out the loaded waveform ``(1, samples)`` itself and :meth:`LibriSpeechDataset.gather`
refuses.

Ground truth (:class:`LibriSpeechTruth`): each sample's normalised transcript, as label ids
and as text, for :func:`mlpi.models.librispeech_wer.librispeech_wer` (none when opened by name).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlpi.core.contract.backend import TensorSpec, format_shape
from mlpi.core.contract.dataset import Dataset, DatasetFactory, DatasetRequest
from mlpi.core.contract.errors import DatasetError
from mlpi.datasets.image_cache import escapes_folder, missing_from_list
from mlpi.datasets.librispeech_text import label_ids, normalize_transcript

NAME = "librispeech"
MANIFEST_FILE = "dev-clean-wav.json"
INSTALL_HINT = "pip install 'mlpi[rnnt]'"
#: Seconds a load may take before it reports its progress, and between reports.
PROGRESS_AFTER_S = 2.0
PROGRESS_EVERY_S = 2.0
#: The speed of the unperturbed audio in a manifest entry (``Manifest(filter_speed=1.0)``).
SPEED = 1.0
_EXPECTED = (f"the folder holding {MANIFEST_FILE} and the dev-clean-wav/ folder that MLCommons' "
             "convert_librispeech.py writes (or the manifest .json itself)")
_CONVERT_HINT = "convert LibriSpeech dev-clean again with MLCommons' convert_librispeech.py"


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class SpeechParams:
    """The model's data settings this dataset reads."""

    sample_rate: int
    labels: tuple[str, ...]
    max_duration: float

    @classmethod
    def from_params(cls, request: DatasetRequest) -> SpeechParams:
        params = request.params
        rate = params.require("sample_rate", NAME)
        labels = params.require("labels", NAME)
        longest = params.require("max_duration", NAME)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate != int(rate) or rate < 1:
            raise DatasetError(f"the model declares sample_rate={rate!r} for librispeech; it needs a positive whole number of Hz",
                               "fix the model plugin's 'sample_rate'")
        if (isinstance(labels, str) or not isinstance(labels, Sequence) or not labels
                or not all(isinstance(c, str) and len(c) == 1 for c in labels) or len(set(labels)) != len(labels)):
            raise DatasetError(f"the model declares labels={labels!r} for librispeech; it needs distinct single characters",
                               "fix the model plugin's 'labels'")
        try:
            seconds = float(longest)
        except (TypeError, ValueError):
            seconds = math.nan
        if not seconds > 0:
            raise DatasetError(f"the model declares max_duration={longest!r} for librispeech; it needs a positive number of seconds",
                               "fix the model plugin's 'max_duration'")
        return cls(int(rate), tuple(labels), seconds)


# --------------------------------------------------------------------------- the manifest


@dataclass(frozen=True)
class Utterance:
    """One kept manifest entry: its audio (relative to the dataset folder, or None when the
    entry has no file of speed 1), the length the manifest gives, and its transcript."""

    fname: str | None
    duration: float
    num_samples: int | None
    text: str
    transcript: tuple[int, ...]

    @property
    def id(self) -> str:
        return Path(self.fname).stem if self.fname else "?"


@dataclass(frozen=True)
class Manifest:
    """The samples of a manifest, and what was dropped from it (as the reference counts it)."""

    path: Path
    utterances: tuple[Utterance, ...]
    too_long: int
    unnormalisable: tuple[str, ...]
    filtered_seconds: float


def locate_manifest(path: Path | None) -> Path:
    """The manifest file ``--dataset-path`` names (a folder holding it, or the file)."""
    if path is None:
        raise DatasetError("dataset 'librispeech' needs --dataset-path", f"point it at {_EXPECTED}")
    path = path.expanduser()
    if path.is_dir():
        manifest = path / MANIFEST_FILE
        if not manifest.is_file():
            raise DatasetError(f"{path} holds no {MANIFEST_FILE}", f"pass --dataset-path pointing at {_EXPECTED}")
        return manifest
    if path.is_file() and path.suffix.lower() == ".json":
        return path
    raise DatasetError(f"there is no LibriSpeech manifest or folder at {path}", f"pass --dataset-path pointing at {_EXPECTED}")


def read_manifest(manifest: Path, params: SpeechParams) -> Manifest:
    """The kept entries of ``manifest`` in file order, as ``Manifest(normalize=True,
    max_duration=...)`` keeps them."""
    try:
        entries = json.loads(manifest.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DatasetError(f"cannot read {manifest}: {exc.strerror or exc}", "check the file and its permissions") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{manifest} is not JSON ({_one_line(exc)})", _CONVERT_HINT) from None
    if not isinstance(entries, list):
        raise DatasetError(f"{manifest} is not a LibriSpeech manifest (a JSON list of utterances)", _CONVERT_HINT)
    kept: list[Utterance] = []
    too_long = 0
    unnormalisable: list[str] = []
    filtered = 0.0
    for number, entry in enumerate(entries):
        duration = _entry_duration(manifest, number, entry)
        if duration > params.max_duration:
            too_long += 1
            filtered += duration
            continue
        fname, num_samples = _entry_audio(manifest, number, entry)
        text = normalize_transcript(_entry_transcript(manifest, number, entry), params.labels)
        if text is None:
            unnormalisable.append(Path(fname).stem if fname else f"entry {number}")
            filtered += duration
            continue
        kept.append(Utterance(fname, duration, num_samples, text, tuple(label_ids(text, params.labels))))
    return Manifest(manifest, tuple(kept), too_long, tuple(unnormalisable), filtered)


def _entry_error(manifest: Path, number: int, what: str) -> DatasetError:
    return DatasetError(f"entry {number} of {manifest} {what}", _CONVERT_HINT)


def _entry_duration(manifest: Path, number: int, entry: Any) -> float:
    value = entry.get("original_duration") if isinstance(entry, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _entry_error(manifest, number, "has no 'original_duration' in seconds")
    return float(value)


def _entry_audio(manifest: Path, number: int, entry: dict[str, Any]) -> tuple[str | None, int | None]:
    """The entry's first file of speed 1 and its ``num_samples`` (None when not given)."""
    files = entry.get("files")
    if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
        raise _entry_error(manifest, number, "has no 'files' list")
    for file in files:
        if file.get("speed") == SPEED:
            fname = file.get("fname")
            if not isinstance(fname, str) or not fname:
                raise _entry_error(manifest, number, "names a file of speed 1 without an 'fname'")
            samples = file.get("num_samples")
            valid = isinstance(samples, int) and not isinstance(samples, bool) and samples >= 0
            return fname, samples if valid else None
    return None, None


def _entry_transcript(manifest: Path, number: int, entry: dict[str, Any]) -> Any:
    """The entry's transcript, or the text of its ``text_filepath`` (relative to the manifest's
    folder; the reference opens it relative to the working directory)."""
    if "transcript" in entry:
        return entry["transcript"]
    source = entry.get("text_filepath")
    if not isinstance(source, str):
        raise _entry_error(manifest, number, "has neither a 'transcript' nor a 'text_filepath'")
    path = manifest.parent / source
    try:
        return path.read_text(encoding="utf-8").replace("\n", "")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read the transcript {path} (entry {number} of {manifest}): {_one_line(exc)}",
                           _CONVERT_HINT) from None


# --------------------------------------------------------------------------- audio files


def flac_candidates(folder: Path, fname: str) -> list[Path]:
    """Where the original LibriSpeech FLAC of a converted ``.wav`` may be: under
    ``LibriSpeech/<subset>/`` or ``<subset>/`` (the manifest's first folder less ``-wav``), or
    beside the ``.wav``."""
    relative = Path(fname)
    if relative.suffix.lower() != ".wav":
        return []
    beside = folder / relative.with_suffix(".flac")
    parts = relative.parts
    if len(parts) < 2 or relative.is_absolute():
        return [beside]
    subset = parts[0].removesuffix("-wav")
    rest = Path(*parts[1:]).with_suffix(".flac")
    return list(dict.fromkeys([folder / "LibriSpeech" / subset / rest, folder / subset / rest, beside]))


def find_audio(folder: Path, fname: str) -> Path | None:
    """The file to read for ``fname``: the named one, else its FLAC; None when neither is there."""
    named = folder / fname
    if named.is_file():
        return named
    return next((c for c in flac_candidates(folder, fname) if c.is_file()), None)


def locate_audio(folder: Path, fname: str) -> Path:
    """The file to read for ``fname`` (:func:`find_audio`); a DatasetError naming every place
    looked at when there is none."""
    found = find_audio(folder, fname)
    if found is not None:
        return found
    named = folder / fname
    candidates = flac_candidates(folder, fname)
    also = f" (nor its FLAC: {', '.join(str(c) for c in candidates)})" if candidates else ""
    raise DatasetError(f"{named} is missing{also}",
                       "copy the whole dev-clean-wav folder convert_librispeech.py wrote (or LibriSpeech/dev-clean), "
                       "or pass --count to use the utterances before it")


def _soundfile() -> Any:
    try:
        import soundfile
    except (ImportError, OSError):
        raise DatasetError("reading LibriSpeech audio needs soundfile (and its libsndfile), which is not installed",
                           INSTALL_HINT) from None
    return soundfile


def audio_header(path: Path) -> tuple[int, int, int]:
    """``(sample rate, channels, frames)`` from the file's header; a DatasetError naming it
    when it is not audio soundfile can read."""
    soundfile = _soundfile()
    try:
        with soundfile.SoundFile(str(path)) as handle:
            return int(handle.samplerate), int(handle.channels), int(handle.frames)
    except Exception as exc:  # noqa: BLE001 - libsndfile reports a bad file in several ways
        raise DatasetError(f"{path} is not a readable audio file ({_one_line(exc)})", _fetch_again(path)) from None


def read_waveform(path: Path, sample_rate: int) -> np.ndarray:
    """The float32 mono waveform of ``path`` (integer PCM scaled to [-1, 1) as soundfile
    does, channels averaged)."""
    soundfile = _soundfile()
    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # noqa: BLE001 - a truncated or garbled file fails in several ways
        raise DatasetError(f"{path} is not a readable audio file ({_one_line(exc)})", _fetch_again(path)) from None
    _check_rate(path, int(rate), sample_rate)
    if samples.shape[1] == 1:
        return np.ascontiguousarray(samples[:, 0])
    return np.ascontiguousarray(samples.mean(axis=1, dtype=np.float32))


def checked_length(path: Path, sample_rate: int) -> int:
    """Frames in ``path`` from its header, once its sample rate is checked to be ``sample_rate``."""
    rate, _, frames = audio_header(path)
    _check_rate(path, rate, sample_rate)
    return frames


def _check_rate(path: Path, rate: int, wanted: int) -> None:
    if rate != wanted:
        raise DatasetError(f"{path} is sampled at {rate} Hz, but the model takes {wanted} Hz audio",
                           f"convert it to {wanted} Hz (MLCommons' convert_librispeech.py does), or use a model for {rate} Hz")


def _fetch_again(path: Path) -> str:
    return f"{path.name} is damaged: copy it again, or convert its LibriSpeech subset again with convert_librispeech.py"


# --------------------------------------------------------------------------- ground truth


class LibriSpeechTruth:
    """What the WER scorer needs: each sample's normalised transcript, as label ids and text."""

    def __init__(self, labels: Sequence[str], utterances: Sequence[Utterance]) -> None:
        self.labels: tuple[str, ...] = tuple(labels)
        self._utterances = tuple(utterances)

    def __len__(self) -> int:
        return len(self._utterances)

    def transcript(self, index: int) -> list[int]:
        """Sample ``index``'s transcript as label ids."""
        return list(self._utterances[index].transcript)

    def text(self, index: int) -> str:
        """Sample ``index``'s normalised transcript."""
        return self._utterances[index].text

    def duration(self, index: int) -> float:
        """Sample ``index``'s length in seconds, as the manifest gives it."""
        return self._utterances[index].duration

    def id(self, index: int) -> str:
        """Sample ``index``'s LibriSpeech id (``speaker-chapter-utterance``)."""
        return self._utterances[index].id


# --------------------------------------------------------------------------- the dataset


class LibriSpeechDataset(Dataset):
    """Waveforms of differing lengths, one per sample, fed one at a time through :meth:`sample`."""

    def __init__(self, inputs: Sequence[TensorSpec], utterances: Sequence[Utterance], files: Sequence[Path | None],
                 lengths: Sequence[int], sample_rate: int, truth: LibriSpeechTruth | None, performance_count: int,
                 description: Mapping[str, Any]) -> None:
        self.inputs = list(inputs)
        self._utterances = tuple(utterances)
        self._files = tuple(files)
        self._lengths = tuple(int(n) for n in lengths)
        self._sample_rate = sample_rate
        self._truth = truth
        self._performance_count = performance_count
        self._description = dict(description)
        self._loaded: dict[int, dict[str, np.ndarray]] = {}

    @property
    def count(self) -> int:
        return len(self._utterances)

    @property
    def performance_count(self) -> int:
        return self._performance_count

    def length(self, index: int) -> int:
        """Samples in utterance ``index``, loaded or not (from its header, or the manifest)."""
        return self._lengths[index]

    def duration(self, index: int) -> float:
        """Seconds of utterance ``index``, as the manifest gives them (from its header when opened by name)."""
        return self._utterances[index].duration

    def file(self, index: int) -> Path | None:
        """The audio file utterance ``index`` is read from (None when opened for scoring)."""
        return self._files[index]

    def load(self, indices: Sequence[int]) -> None:
        wanted = [i for i in dict.fromkeys(int(i) for i in indices) if i not in self._loaded]
        began = last = time.perf_counter()
        reported = False
        for k, index in enumerate(wanted, 1):
            if not 0 <= index < self.count:
                raise IndexError(f"sample {index} is not one of the {self.count} librispeech utterances")
            path = self._files[index]
            if path is None:
                raise DatasetError("librispeech was opened for scoring only: its audio is not read", "open it for a run")
            waveform = read_waveform(path, self._sample_rate)
            if waveform.shape[0] != self._lengths[index]:
                raise DatasetError(f"{path} holds {waveform.shape[0]} samples, but its header says {self._lengths[index]}",
                                   _fetch_again(path))
            feed = waveform.reshape(1, -1)
            self._loaded[index] = {spec.name: feed for spec in self.inputs}
            now = time.perf_counter()
            if (now - began > PROGRESS_AFTER_S and (not reported or now - last > PROGRESS_EVERY_S)) or (reported and k == len(wanted)):
                reported, last = True, now
                print(f"mlpi: loading librispeech utterance {k}/{len(wanted)} ({self._utterances[index].id})",
                      file=sys.stderr, flush=True)

    def unload(self, indices: Sequence[int]) -> None:
        for index in indices:
            self._loaded.pop(int(index), None)

    def sample(self, index: int) -> Mapping[str, np.ndarray]:
        """The loaded float32 waveform ``(1, samples)`` itself, not a copy."""
        feeds = self._loaded.get(index)
        if feeds is None:
            raise IndexError(f"librispeech sample {index} is not loaded")
        return feeds

    def gather(self, indices: Sequence[int], out: Mapping[str, np.ndarray]) -> None:
        """Refused: utterances differ in length, so no buffer fits a batch of them."""
        raise ValueError("librispeech utterances differ in length and cannot be gathered into a batch: "
                         "the model's pipeline must feed them one at a time with sample()")

    def ground_truth(self) -> LibriSpeechTruth | None:
        """The transcripts; None when opened by name (a calibration list needs none)."""
        return self._truth

    def describe(self) -> dict[str, Any]:
        return {"kind": NAME, "count": self.count, **self._description}


class LibriSpeech(DatasetFactory):
    name = NAME
    needs_path = True
    description = "LibriSpeech dev-clean for RNN-T: MLCommons' dev-clean-wav.json manifest and its WAV (or FLAC) files"
    opens_by_name = True

    def open(self, request: DatasetRequest) -> Dataset:
        params = SpeechParams.from_params(request)
        inputs = [] if request.for_scoring else _inputs(request.inputs)
        if request.names is not None:
            return _open_by_name(request, request.names, params, inputs)
        manifest_path = locate_manifest(request.path)
        manifest = read_manifest(manifest_path, params)
        _report_dropped(manifest)
        count = _count(len(manifest.utterances), request.count, manifest_path, params.max_duration)
        utterances = manifest.utterances[:count]
        folder = manifest_path.parent
        if request.for_scoring:
            files: list[Path | None] = [None] * count
            lengths = [u.num_samples if u.num_samples is not None else round(u.duration * params.sample_rate)
                       for u in utterances]
        else:
            files, lengths = _check_audio(folder, manifest_path, utterances, params)  # type: ignore[assignment]
        description = {"manifest": str(manifest_path), "hours": sum(u.duration for u in utterances) / 3600,
                       "dropped_too_long": manifest.too_long, "dropped_unnormalisable": len(manifest.unnormalisable),
                       "sample_rate": params.sample_rate, "max_duration": params.max_duration}
        truth = LibriSpeechTruth(params.labels, utterances)
        return LibriSpeechDataset(inputs, utterances, files, lengths, params.sample_rate, truth,
                                  request.performance_count_of(count), description)


def _inputs(inputs: Sequence[TensorSpec]) -> list[TensorSpec]:
    if len(inputs) != 1:
        names = ", ".join(spec.name for spec in inputs) or "none"
        raise DatasetError(f"librispeech feeds one input, a waveform; the model has {len(inputs)} ({names})",
                           "use a speech model with one (batch, samples) float input")
    spec = inputs[0]
    if len(spec.shape) != 2 or np.dtype(spec.dtype).kind != "f":
        raise DatasetError(f"the model's input '{spec.name}' is {spec.dtype} {format_shape(spec.shape)}, "
                           "not a float (batch, samples) waveform", "use a speech model with one (batch, samples) float input")
    return [TensorSpec(spec.name, "float32", (None, None))]


def _check_audio(folder: Path, manifest: Path, utterances: Sequence[Utterance],
                 params: SpeechParams) -> tuple[list[Path], list[int]]:
    """Each utterance's file and length, from its header: missing, unreadable, wrongly
    sampled files and files shorter or longer than the manifest says are refused here,
    before any test starts."""
    files: list[Path] = []
    lengths: list[int] = []
    for number, utterance in enumerate(utterances):
        if utterance.fname is None:
            raise DatasetError(f"sample {number} of {manifest} has no audio file of speed 1", _CONVERT_HINT)
        path = locate_audio(folder, utterance.fname)
        frames = checked_length(path, params.sample_rate)
        if utterance.num_samples is not None and frames != utterance.num_samples:
            raise DatasetError(f"{path} holds {frames} samples, but {manifest.name} says {utterance.num_samples}",
                               _fetch_again(path))
        files.append(path)
        lengths.append(frames)
    return files, lengths


def _open_by_name(request: DatasetRequest, names: Sequence[str], params: SpeechParams,
                  inputs: list[TensorSpec]) -> LibriSpeechDataset:
    """The files a calibration list names, in its order, relative to ``request.path``: no
    manifest, no transcripts, no ground truth; each file's header checked as a run's are."""
    folder = _calibration_folder(request.path, names)
    files = _named_files(folder, names)
    lengths = [checked_length(file, params.sample_rate) for file in files]
    utterances = [Utterance(name, frames / params.sample_rate, frames, "", ()) for name, frames in zip(names, lengths)]
    description = {"path": str(folder), "selected_by": "names", "hours": sum(u.duration for u in utterances) / 3600,
                   "sample_rate": params.sample_rate}
    return LibriSpeechDataset(inputs, utterances, files, lengths, params.sample_rate, None,
                              request.performance_count_of(len(files)), description)


def _calibration_folder(path: Path | None, names: Sequence[str]) -> Path:
    """The folder the list's names are relative to, with a non-empty list to read from it."""
    expected = f"the folder holding {_listed_folders(names)}"
    if path is None:
        raise DatasetError("reading LibriSpeech by name needs a folder", f"pass --calibration-path pointing at {expected}")
    folder = path.expanduser()
    if not folder.is_dir():
        raise DatasetError(f"there is no folder at {folder}", f"pass --calibration-path pointing at {expected}")
    if not names:
        raise DatasetError("the calibration list names no LibriSpeech files",
                           "use the benchmark's calibration list as published, one file per line")
    return folder


def _named_files(folder: Path, names: Sequence[str]) -> list[Path]:
    """Each named file (or its FLAC) inside ``folder``; one DatasetError naming the first ten
    that are not there, before any is opened."""
    for name in names:
        problem = escapes_folder(name)
        if problem:
            raise DatasetError(f"the calibration list names {name!r}, {problem}: every file must be inside {folder}",
                               "use the benchmark's calibration list as published")
    found = [find_audio(folder, name) for name in names]
    missing = [name for name, file in zip(names, found) if file is None]
    if missing:
        raise DatasetError(missing_from_list(missing, len(names), "LibriSpeech files the calibration list names",
                                             f"{folder} (nor as LibriSpeech's FLAC)"),
                           f"convert them with MLCommons' convert_librispeech.py (or copy LibriSpeech's FLAC) and point "
                           f"--calibration-path at the folder holding {_listed_folders(names)}")
    return [file for file in found if file is not None]


def _listed_folders(names: Sequence[str]) -> str:
    """What a list's names start in (``train-clean-100-wav/``), for hints."""
    tops = dict.fromkeys(Path(name).parts[0] + "/" for name in names
                         if len(Path(name).parts) > 1 and not escapes_folder(name))
    return " and ".join(list(tops)[:3]) or "the files the calibration list names"


def _report_dropped(manifest: Manifest) -> None:
    """Say which transcripts were dropped for failing normalisation (the reference prints a warning too)."""
    if manifest.unnormalisable:
        shown = ", ".join(manifest.unnormalisable[:5]) + (" ..." if len(manifest.unnormalisable) > 5 else "")
        print(f"mlpi: librispeech: dropped {len(manifest.unnormalisable)} utterance(s) whose transcript cannot be "
              f"normalised, as MLCommons' Manifest does: {shown}", file=sys.stderr, flush=True)


def _count(total: int, count: int | None, where: Path, longest: float) -> int:
    if count is None:
        if total == 0:
            raise DatasetError(f"{where} holds no utterance of {longest:g} s or less with a transcript that can be normalised",
                               "give the dev-clean-wav.json manifest")
        return total
    if count < 1:
        raise DatasetError(f"--count {count} leaves no samples", "pass --count 1 or more")
    if count > total:
        raise DatasetError(f"--count {count} is more than the {total} LibriSpeech utterances of {longest:g} s or less in {where}",
                           f"pass --count {total} or less, or leave --count out to use them all")
    return count


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
