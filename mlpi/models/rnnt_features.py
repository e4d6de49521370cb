"""RNN-T's audio features: 16 kHz samples -> 240-dim spliced log-mel frames, 30 ms apart.

Followed: MLCommons inference ``retired_benchmarks/speech_recognition/rnnt``
``pytorch/parts/features.py`` (``FilterbankFeatures``) with ``configs/rnnt.toml``'s
``[input_eval]``, as the reference SUT applies it to one utterance at a time:

1. pre-emphasis: ``y[0] = x[0]``, ``y[t] = x[t] - 0.97 x[t-1]``;
2. STFT, ``n_fft`` 512, hop 160, a 320-sample Hann window (``periodic=False``) centred in
   the 512 points, frames centred (the signal reflect-padded by 256 at both ends), so
   ``1 + L // 160`` frames;
3. power spectrum ``re^2 + im^2``, plus the deterministic dither ``dither^2`` (1e-10);
4. 80 mel filters, ``librosa.filters.mel(sr=16000, n_fft=512, n_mels=80, fmin=0,
   fmax=8000)``; ``log(x + 1e-20)``;
5. frame splicing x3: each frame followed by the next two (zeros past the end), every
   third kept;
6. per-feature normalisation over the utterance's ``ceil(ceil(L / 160) / 3)`` frames: mean
   and unbiased standard deviation, plus 1e-5; frames past that count dropped.

Computed with numpy in float32 where the reference works in float32 (the FFT runs in
float64 and is rounded back); the features match the reference's to float32 rounding
(``tests/test_rnnt.py`` runs MLCommons' ``FilterbankFeatures`` beside it). Returned
time-major, ``[frames, 240]``, as the encoder graph takes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlpi.core.contract.errors import DatasetError


@dataclass(frozen=True)
class FeatureParams:
    """``[input_eval]`` of the reference's ``rnnt.toml``."""

    sample_rate: int = 16000
    window_size: float = 0.02
    window_stride: float = 0.01
    n_fft: int = 512
    mels: int = 80
    preemphasis: float = 0.97
    dither: float = 1e-5
    splicing: int = 3
    log_guard: float = 1e-20
    std_guard: float = 1e-5

    @property
    def window_length(self) -> int:
        return int(self.sample_rate * self.window_size)

    @property
    def hop(self) -> int:
        return int(self.sample_rate * self.window_stride)

    @property
    def dim(self) -> int:
        return self.mels * self.splicing

    def frames(self, samples: int) -> int:
        """The utterance's feature count, as ``get_seq_len`` computes it."""
        stft_frames = (samples + self.hop - 1) // self.hop
        return (stft_frames + self.splicing - 1) // self.splicing


class Featurizer:
    """One utterance's features (thread-safe: holds only constants)."""

    def __init__(self, params: FeatureParams = FeatureParams()) -> None:
        self.params = params
        # Built here, when a pipeline is made, not by the first utterance inside a timed test
        # (librosa's import alone takes a second or more).
        self.window = self._window()
        self.filterbank = self._filterbank()

    def _window(self) -> np.ndarray:
        """The Hann window, zero-padded to ``n_fft`` with the window in the middle."""
        p = self.params
        n = np.arange(p.window_length, dtype=np.float64)
        hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / (p.window_length - 1))
        left = (p.n_fft - p.window_length) // 2
        padded = np.zeros(p.n_fft, dtype=np.float32)
        padded[left : left + p.window_length] = hann
        return padded

    def _filterbank(self) -> np.ndarray:
        """``[mels, n_fft // 2 + 1]`` float32, librosa's Slaney mel filters."""
        try:
            import librosa
        except ImportError:
            raise DatasetError("RNN-T's features need librosa's mel filters, and librosa is not installed",
                               'pip install "mlpi[rnnt]"') from None
        p = self.params
        bank = librosa.filters.mel(sr=p.sample_rate, n_fft=p.n_fft, n_mels=p.mels, fmin=0.0, fmax=p.sample_rate / 2)
        return np.ascontiguousarray(bank, dtype=np.float32)

    def __call__(self, waveform: np.ndarray) -> np.ndarray:
        """``[frames, 240]`` float32 features of a mono float32 ``waveform``."""
        p = self.params
        x = np.asarray(waveform, dtype=np.float32).reshape(-1)
        pad = p.n_fft // 2
        if x.size <= pad:
            raise DatasetError(f"an utterance of {x.size} samples is too short for RNN-T's features "
                               f"(the reference's centred STFT needs more than {pad})",
                               "drop utterances shorter than 20 ms from the manifest")
        emphasised = np.empty_like(x)
        emphasised[0] = x[0]
        np.subtract(x[1:], np.float32(p.preemphasis) * x[:-1], out=emphasised[1:])
        padded = np.pad(emphasised, pad, mode="reflect")
        frames = np.lib.stride_tricks.sliding_window_view(padded, p.n_fft)[:: p.hop]
        spectrum = np.fft.rfft(frames * self.window, axis=1)
        power = (spectrum.real.astype(np.float32) ** 2 + spectrum.imag.astype(np.float32) ** 2)
        if p.dither > 0:
            power += np.float32(p.dither**2)
        mel = np.log(self.filterbank @ power.T + np.float32(p.log_guard))  # [mels, stft frames]
        spliced = self._splice(mel)
        count = p.frames(x.size)
        valid = spliced[:, :count]
        mean = valid.mean(axis=1, keepdims=True, dtype=np.float32)
        std = valid.std(axis=1, ddof=1, keepdims=True, dtype=np.float32) + np.float32(p.std_guard)
        return np.ascontiguousarray(((valid - mean) / std).T, dtype=np.float32)

    def _splice(self, mel: np.ndarray) -> np.ndarray:
        """``[mels * splicing, ceil(frames / splicing)]``: each kept frame with the next ones."""
        k = self.params.splicing
        mels, frames = mel.shape
        kept = range(0, frames, k)
        out = np.zeros((k, mels, len(kept)), dtype=np.float32)
        for shift in range(k):
            source = mel[:, shift::k]
            out[shift, :, : source.shape[1]] = source[:, : len(kept)]
        return out.reshape(k * mels, len(kept))
