"""The ONNX-to-torch converter's signal operators (DFT, STFT, the windows, MelWeightMatrix,
ReverseSequence) against onnxruntime and against numpy's float64 FFT.

Tolerance against onnxruntime: its DFT and STFT accumulate in float32, the converter's in
float64, so the two differ by onnxruntime's rounding, which grows with the transform's length
(seen: 6e-4 of the largest value on a 400-point STFT; the converter's is 1e-7 from float64
there). The cases here are short (at most 64 points): rtol 1e-4 with atol 1e-4 of the largest
value. The known answers come from numpy.fft in float64, within float32 rounding.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mlpi.core.contract.errors import ModelError

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from mlpi.backends.onnx_to_torch import convert
from tests.test_torch_lstm import _model


def _torch(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    with torch.inference_mode():
        return [t.numpy() for t in convert(model)(*(torch.from_numpy(v) for v in feeds.values()))]


def _against_onnxruntime(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = _torch(model, feeds)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, g.shape, w.dtype, w.shape)
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(w).max(initial=0))))
    return got


RNG = np.random.default_rng(0)
REAL = RNG.standard_normal((2, 12, 5, 1)).astype(np.float32)
COMPLEX = RNG.standard_normal((2, 12, 5, 2)).astype(np.float32)

DFT_CASES = {
    "real_axis1": (REAL, {"axis": 1}, None),
    "complex_axis2": (COMPLEX, {"axis": 2}, None),
    "negative_axis": (COMPLEX, {"axis": -2}, None),
    "onesided": (REAL, {"axis": 1, "onesided": 1}, None),
    "inverse": (COMPLEX, {"axis": 1, "inverse": 1}, None),
    "padded_to_16": (REAL, {"axis": 1}, 16),
    "cut_to_7": (COMPLEX, {"axis": 1}, 7),
}


@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("case", sorted(DFT_CASES))
def test_dft_matches_onnxruntime_and_numpy(case: str, opset: int) -> None:
    x, attrs, length = DFT_CASES[case]
    consts = {} if length is None else {"n": np.array(length, np.int64)}
    inputs = ["x", "n" if length is not None else ""]
    attrs = dict(attrs)
    if opset >= 20:
        consts["axis"] = np.array(attrs.pop("axis"), np.int64)
        inputs.append("axis")
    node = helper.make_node("DFT", inputs, ["y"], **attrs)
    (got,) = _against_onnxruntime(_model([node], {"x": x}, consts, ["y"], opset), {"x": x})
    signal = x[..., 0].astype(np.float64) if x.shape[-1] == 1 else x[..., 0] + 1j * x[..., 1].astype(np.float64)
    axis = DFT_CASES[case][1]["axis"] % 4
    known = (np.fft.ifft if attrs.get("inverse") else np.fft.fft)(signal, n=length, axis=axis)
    if attrs.get("onesided"):
        known = known.take(range(known.shape[axis] // 2 + 1), axis=axis)
    np.testing.assert_allclose(got[..., 0] + 1j * got[..., 1], known, rtol=1e-5, atol=1e-5)


def test_inverse_onesided_dft_gives_the_real_signal_back() -> None:
    """irfft: the one-sided spectrum of a real signal of even length 12 gives it back."""
    signal = RNG.standard_normal((3, 12)).astype(np.float32)
    half = np.fft.rfft(signal, axis=1)
    x = np.stack([half.real, half.imag], -1).astype(np.float32)
    node = helper.make_node("DFT", ["x", ""], ["y"], axis=1, inverse=1, onesided=1)
    (got,) = _torch(_model([node], {"x": x}, {}, ["y"]), {"x": x})
    assert got.shape == (3, 12, 1)
    np.testing.assert_allclose(got[..., 0], signal, atol=1e-5)


def test_dft_on_the_last_axis_is_a_model_error() -> None:
    node = helper.make_node("DFT", ["x"], ["y"], axis=3)
    with pytest.raises(ModelError, match="DFT node '' has axis 3 for an input of rank 4"):
        _torch(_model([node], {"x": REAL}, {}, ["y"]), {"x": REAL})


def _frontend(signal_shape: tuple[int, ...], onesided: int = 1, window: str | None = "HannWindow",
              frame_length: int | None = None) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A speech front end as exporters write it: a window made in the graph, STFT every 4
    samples, and (onesided) the power spectrum through a mel matrix."""
    consts: dict[str, np.ndarray] = {"step": np.array(4, np.int64), "size": np.array(16, np.int64)}
    nodes = []
    inputs = ["signal", "step", "", ""]
    if window:
        nodes.append(helper.make_node(window, ["size"], ["window"], periodic=1))
        inputs[2] = "window"
    if frame_length is not None:
        consts["frame_length"] = np.array(frame_length, np.int64)
        inputs[3] = "frame_length"
    nodes.append(helper.make_node("STFT", inputs, ["spectrum"], onesided=onesided))
    outputs = ["spectrum"]
    if onesided:
        consts.update({"bins": np.array(5, np.int64), "dft": np.array(16, np.int64), "rate": np.array(8000, np.int64),
                       "low": np.array(20.0, np.float32), "high": np.array(3800.0, np.float32),
                       "axes": np.array([-1], np.int64)})
        nodes += [helper.make_node("Mul", ["spectrum", "spectrum"], ["squares"]),
                  helper.make_node("ReduceSum", ["squares", "axes"], ["power"], keepdims=0),
                  helper.make_node("MelWeightMatrix", ["bins", "dft", "rate", "low", "high"], ["mel"]),
                  helper.make_node("MatMul", ["power", "mel"], ["mels"])]
        outputs.append("mels")
    signal = RNG.standard_normal(signal_shape).astype(np.float32)
    return _model(nodes, {"signal": signal}, consts, outputs), {"signal": signal}


@pytest.mark.parametrize("window", ["HannWindow", "HammingWindow", "BlackmanWindow"])
@pytest.mark.parametrize("shape", [(2, 64), (2, 64, 1)], ids=["batch_length", "batch_length_1"])
def test_a_speech_front_end_matches_onnxruntime_and_numpy(shape: tuple[int, ...], window: str) -> None:
    model, feeds = _frontend(shape, window=window)
    spectrum, _ = _against_onnxruntime(model, feeds)
    n = np.arange(16)
    taper = {"HannWindow": np.sin(np.pi * n / 16) ** 2,
             "HammingWindow": 25 / 46 - 21 / 46 * np.cos(2 * np.pi * n / 16),
             "BlackmanWindow": 0.42 - 0.5 * np.cos(2 * np.pi * n / 16) + 0.08 * np.cos(4 * np.pi * n / 16)}[window]
    signal = feeds["signal"].reshape(2, 64).astype(np.float64)
    frames = np.stack([signal[:, t * 4 : t * 4 + 16] for t in range(13)], 1) * taper
    known = np.fft.rfft(frames, axis=-1)
    assert spectrum.shape == (2, 13, 9, 2)
    np.testing.assert_allclose(spectrum[..., 0] + 1j * spectrum[..., 1], known, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["complex_two_sided", "frame_length_without_window"])
def test_stft_variants_match_onnxruntime(case: str) -> None:
    if case == "complex_two_sided":
        model, feeds = _frontend((1, 40, 2), onesided=0)
    else:
        model, feeds = _frontend((2, 40, 1), onesided=0, window=None, frame_length=10)
    (spectrum,) = _against_onnxruntime(model, feeds)
    assert spectrum.shape[1:] == ((7, 16, 2) if case == "complex_two_sided" else (8, 10, 2))


def test_a_window_longer_than_the_signal_is_a_model_error() -> None:
    model, feeds = _frontend((1, 12), onesided=0)
    with pytest.raises(ModelError, match="frame_length 16 for a signal of length 12"):
        _torch(model, feeds)


@pytest.mark.parametrize("axes", [(1, 0), (0, 1)], ids=["time_first", "batch_first"])
def test_reverse_sequence_matches_onnxruntime(axes: tuple[int, int]) -> None:
    batch_axis, time_axis = axes
    x = RNG.standard_normal((5, 4, 3) if time_axis == 0 else (4, 5, 3)).astype(np.float32)
    lengths = np.array([5, 1, 0, 3], np.int64)
    node = helper.make_node("ReverseSequence", ["x", "lengths"], ["y"], batch_axis=batch_axis, time_axis=time_axis)
    (got,) = _against_onnxruntime(_model([node], {"x": x, "lengths": lengths}, {}, ["y"]), {"x": x, "lengths": lengths})
    seq_first = x if time_axis == 0 else x.transpose(1, 0, 2)
    known = seq_first.copy()
    for b, n in enumerate(lengths):
        known[:n, b] = seq_first[:n, b][::-1]
    np.testing.assert_array_equal(got if time_axis == 0 else got.transpose(1, 0, 2), known)


def test_reverse_sequence_past_the_time_axis_is_a_model_error() -> None:
    x = np.zeros((3, 2), np.float32)
    lengths = np.array([4, 1], np.int64)
    node = helper.make_node("ReverseSequence", ["x", "lengths"], ["y"], batch_axis=1, time_axis=0)
    with pytest.raises(ModelError, match="got sequence_lens \\[4, 1\\] for batch 2 and time 3"):
        _torch(_model([node], {"x": x, "lengths": lengths}, {}, ["y"]), {"x": x, "lengths": lengths})


def test_mel_weight_matrix_has_the_references_triangles() -> None:
    """Known answer from the spec's arithmetic: 3 bands over a 16-point DFT at 8 kHz."""
    consts = {"bins": np.array(3, np.int64), "dft": np.array(16, np.int64), "rate": np.array(8000, np.int64),
              "low": np.array(0.0, np.float32), "high": np.array(4000.0, np.float32)}
    node = helper.make_node("MelWeightMatrix", ["bins", "dft", "rate", "low", "high"], ["mel"],
                            output_datatype=TensorProto.DOUBLE)
    (got,) = _against_onnxruntime(_model([node], {}, consts, ["mel"]), {})
    high_mel = 2595 * np.log10(1 + 4000 / 700)
    edges = [int((17 * 700 * (10 ** (i * high_mel / 5 / 2595) - 1)) // 8000) for i in range(5)]
    assert got.shape == (9, 3) and got.dtype == np.float64
    for band in range(3):
        left, centre, right = edges[band : band + 3]
        assert got[centre, band] == 1.0
        assert got[:left, band].sum() == 0 and got[right:, band].sum() == 0
