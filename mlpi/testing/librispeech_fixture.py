"""Small LibriSpeech folders in the layout the ``librispeech`` dataset reads, for tests.

:func:`write_librispeech` writes what MLCommons' ``convert_librispeech.py`` leaves behind: a
manifest (``dev-clean-wav.json``) whose entries have the keys of the pinned reference manifest
(``files`` with ``channels, sample_rate, bitrate, duration, num_samples, encoding, silent,
fname, speed``; ``original_duration``, ``original_num_samples``, ``transcript``) and 16 kHz
16-bit PCM WAV files under ``dev-clean-wav/<speaker>/<chapter>/<id>.wav``; chosen utterances
can be written as the original LibriSpeech FLAC instead
(``LibriSpeech/dev-clean/<speaker>/<chapter>/<id>.flac``). MLCommons' own
``accuracy_eval.py`` reads the same manifest, so both can score against one folder.

The audio is synthesised by a function of the utterance (:func:`tone_audio` by default: a
tone and a little noise, different per utterance), so a model's known-answer test can write
the waveforms it needs. What a reader gets back from the files is in
:attr:`LibriSpeechFixture.waveforms`.

:data:`DEFAULT_UTTERANCES` holds one utterance over 15 s, which the dataset must drop, and
no digits (expanding numbers imports inflect, which takes seconds); :data:`NUMBER_UTTERANCES`
holds transcripts that exercise the number, abbreviation and punctuation rules.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MANIFEST_FILE = "dev-clean-wav.json"
WAV_FOLDER = "dev-clean-wav"
FLAC_FOLDER = "LibriSpeech/dev-clean"
SAMPLE_RATE = 16000
MAX_DURATION = 15.0


@dataclass(frozen=True)
class FixtureUtterance:
    """One utterance to write: its LibriSpeech id (``speaker-chapter-number``), its transcript
    as the manifest holds it (before normalisation), and the length of :func:`tone_audio`."""

    id: str
    transcript: str
    seconds: float

    @property
    def speaker(self) -> str:
        return self.id.split("-")[0]

    @property
    def chapter(self) -> str:
        return self.id.split("-")[1]

    def wav(self) -> str:
        """The manifest's ``fname``: relative to the dataset folder."""
        return f"{WAV_FOLDER}/{self.speaker}/{self.chapter}/{self.id}.wav"

    def flac(self, root: str = FLAC_FOLDER) -> str:
        return f"{root}/{self.speaker}/{self.chapter}/{self.id}.flac"


DEFAULT_UTTERANCES: tuple[FixtureUtterance, ...] = (
    FixtureUtterance("1272-128104-0000", "mister quilter is the apostle of the middle classes", 1.25),
    FixtureUtterance("1272-128104-0001", "nor is mister quilter's manner less interesting than his matter", 0.75),
    FixtureUtterance("2277-149896-0000", "he was in a fevered state of mind owing to the blight", 15.5),
    FixtureUtterance("2277-149896-0001", "Mr. Quilter & his WIFE; (at home)!", 1.0),
    FixtureUtterance("3752-4944-0000", "the end", 0.5),
)

NUMBER_UTTERANCES: tuple[FixtureUtterance, ...] = (
    FixtureUtterance("1988-24833-0000", "In 1984, Mr. Smith paid $5 & 3rd-class fares + 2.5%.", 0.5),
    FixtureUtterance("1988-24833-0001", "Dr. Jones's CAFÉ — at St. Paul's — opened in 2005, with 1,000 seats.", 0.5),
    FixtureUtterance("1988-24833-0002", "room 0123 cost $1.01 in 1900", 0.5),
    # inflect refuses numbers this large: the reference drops the utterance, shifting later indices
    FixtureUtterance("1988-24833-0003", "1" + "0" * 75 + " grains of sand", 0.5),
    FixtureUtterance("1988-24833-0004", "the last one", 0.5),
)

#: Utterance -> samples (1-D, or 2-D frames x channels; int16, or float in [-1, 1]).
AudioFunction = Callable[[FixtureUtterance], np.ndarray]


def tone_audio(utterance: FixtureUtterance) -> np.ndarray:
    """A tone whose pitch depends on the utterance, with a little noise: int16, ``seconds`` long."""
    seed = zlib.crc32(utterance.id.encode())
    rng = np.random.default_rng(seed)
    n = round(utterance.seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    pitch = 200.0 + seed % 600
    wave = 0.3 * np.sin(2 * np.pi * pitch * t) + 0.02 * rng.standard_normal(n)
    return as_pcm16(wave)


def as_pcm16(samples: np.ndarray) -> np.ndarray:
    """``samples`` as 16-bit PCM: integers kept, floats scaled by 32768 and rounded (clipped)."""
    array = np.asarray(samples)
    if array.dtype == np.int16:
        return array
    if array.dtype.kind in "iu":
        return np.clip(array, -32768, 32767).astype(np.int16)
    return np.clip(np.round(array.astype(np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def read_back(pcm: np.ndarray) -> np.ndarray:
    """What soundfile gives for 16-bit PCM as float32 (``x / 32768``), channels averaged."""
    scaled = pcm.astype(np.float32) / np.float32(32768.0)
    return scaled if scaled.ndim == 1 else np.ascontiguousarray(scaled.mean(axis=1, dtype=np.float32))


@dataclass
class LibriSpeechFixture:
    """A written folder: where things are, and what each utterance's audio reads back as."""

    folder: Path
    manifest: Path
    utterances: tuple[FixtureUtterance, ...]
    #: id -> the float32 mono waveform a reader gets from the file.
    waveforms: dict[str, np.ndarray] = field(default_factory=dict)
    #: id -> the audio file written (WAV, or FLAC for those asked for).
    files: dict[str, Path] = field(default_factory=dict)
    max_duration: float = MAX_DURATION
    sample_rate: int = SAMPLE_RATE

    @property
    def kept(self) -> list[FixtureUtterance]:
        """The utterances not over ``max_duration``, in manifest order (transcripts that fail
        normalisation, dropped too, are not accounted for here)."""
        return [u for u in self.utterances if len(self.waveforms[u.id]) / self.sample_rate <= self.max_duration]


def manifest_entry(utterance: FixtureUtterance, pcm: np.ndarray, sample_rate: int) -> dict:
    """One entry as ``convert_librispeech.py`` writes it (keys in the pinned manifest's order)."""
    frames = int(pcm.shape[0])
    channels = 1 if pcm.ndim == 1 else int(pcm.shape[1])
    seconds = frames / sample_rate
    return {
        "files": [{
            "channels": channels, "sample_rate": float(sample_rate), "bitrate": 16, "duration": seconds,
            "num_samples": frames, "encoding": "Signed Integer PCM", "silent": False, "fname": utterance.wav(),
            "speed": 1,
        }],
        "original_duration": seconds,
        "original_num_samples": frames,
        "transcript": utterance.transcript,
    }


def write_librispeech(folder: Path, utterances: Sequence[FixtureUtterance] = DEFAULT_UTTERANCES,
                      audio: AudioFunction = tone_audio, *, sample_rate: int = SAMPLE_RATE,
                      flac: Iterable[str] = (), flac_root: str = FLAC_FOLDER,
                      manifest_name: str = MANIFEST_FILE) -> LibriSpeechFixture:
    """Write ``utterances`` under ``folder``: the manifest and one WAV each, except those whose
    ids are in ``flac``, written only as FLAC under ``flac_root``. Returns what was written."""
    import soundfile

    folder.mkdir(parents=True, exist_ok=True)
    as_flac = set(flac)
    fixture = LibriSpeechFixture(folder, folder / manifest_name, tuple(utterances), sample_rate=sample_rate)
    entries = []
    for utterance in utterances:
        pcm = as_pcm16(audio(utterance))
        if pcm.ndim not in (1, 2) or pcm.shape[0] == 0:
            raise ValueError(f"{utterance.id}: audio must be a non-empty (frames,) or (frames, channels) array, not {pcm.shape}")
        path = folder / (utterance.flac(flac_root) if utterance.id in as_flac else utterance.wav())
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".flac":
            soundfile.write(str(path), pcm, sample_rate, format="FLAC", subtype="PCM_16")
        else:
            soundfile.write(str(path), pcm, sample_rate, format="WAV", subtype="PCM_16")
        fixture.files[utterance.id] = path
        fixture.waveforms[utterance.id] = read_back(pcm)
        entries.append(manifest_entry(utterance, pcm, sample_rate))
    fixture.manifest.write_text(json.dumps(entries, indent=1), encoding="utf-8")
    return fixture
