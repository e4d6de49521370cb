"""OpenVINO's unfaithful configurations (mlpi/backends/_ov_unfaithful.py): each rule refuses a
model built in the configuration OpenVINO answers wrongly, with a ModelError naming the
operator and what in it, while the nearest configuration OpenVINO gets right still runs and
answers like onnxruntime; the repairs make OpenVINO answer ties, empty or infinite sets and
IoUs at the threshold as ONNX does. Skipped where openvino is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from conftest import one_error, run_cli
from onnx import TensorProto, helper, numpy_helper

from mlpi.backends._ov_unfaithful import RULES, unfaithful_nodes
from mlpi.backends.ov import OpenVinoBackend, OvOptions
from mlpi.core.contract.backend import ModelArtifact
from mlpi.core.contract.device import Device
from mlpi.core.contract.errors import ModelError
from mlpi.core.engine.onnx_file import inspect_onnx
from mlpi.testing.onnx_node_tier import compare

ov = pytest.importorskip("openvino")
ort = pytest.importorskip("onnxruntime")

F32, F16, F64, I64 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.INT64
CPU = Device("cpu")


@pytest.fixture(scope="module")
def backend() -> OpenVinoBackend:
    return OpenVinoBackend()


@pytest.fixture
def build(tmp_path: Path):
    """``build(nodes, inputs, outputs, initializers={}, opset=21)``: the model on disk, as an artifact.
    ``inputs``/``outputs``: (name, element type, shape or None)."""
    count = iter(range(1000))

    def make(nodes: Sequence[Any], inputs: Sequence[tuple], outputs: Sequence[tuple],
             initializers: dict[str, np.ndarray] | None = None, opset: int = 21) -> ModelArtifact:
        graph = helper.make_graph(
            list(nodes), "g", [helper.make_tensor_value_info(*spec) for spec in inputs],
            [helper.make_tensor_value_info(*spec) for spec in outputs],
            [numpy_helper.from_array(np.asarray(value), name) for name, value in (initializers or {}).items()],
        )
        path = tmp_path / f"model_{next(count)}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
        return inspect_onnx(path)

    return make


def refusal(backend: OpenVinoBackend, model: ModelArtifact) -> str:
    """The message of check()'s refusal, checked for the operator-naming shape and the fix."""
    with pytest.raises(ModelError) as caught:
        backend.check(model, CPU, OvOptions(), "fp32")
    assert caught.value.hint is not None and caught.value.hint.startswith("use --backend onnxruntime")
    assert caught.value.message.startswith(f"{model.path.name}: ")
    return caught.value.message


def assert_answers_like_onnxruntime(backend: OpenVinoBackend, model: ModelArtifact, feeds: dict[str, np.ndarray]) -> None:
    session = backend.load(model, CPU, OvOptions(), "fp32")
    try:
        got = session.run({name: value.copy() for name, value in feeds.items()})
    finally:
        session.close()
    reference = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    names = [o.name for o in reference.get_outputs()]
    want = dict(zip(names, reference.run(names, feeds)))
    assert compare(got, want, "fp32") is None, (compare(got, want, "fp32"), got, want)


RNG = np.random.default_rng(0)


def rand(*shape: int, dtype: Any = np.float32) -> np.ndarray:
    return RNG.random(shape).astype(dtype)


# --------------------------------------------------------------------------- Attention (opset 25)


def attention(build, q: int, kv: int, past: int = 0, opset: int = 25, **attrs: Any) -> tuple[ModelArtifact, dict[str, np.ndarray]]:
    names = ["Q", "K", "V", "", "past_key", "past_value"] if past else ["Q", "K", "V"]
    inputs = [(n, F32, [1, 2, s, 8]) for n, s in (("Q", q), ("K", kv), ("V", kv))]
    inputs += [(n, F32, [1, 2, past, 8]) for n in ("past_key", "past_value")] if past else []
    outputs = ["Y", "present_key", "present_value"] if past else ["Y"]
    model = build([helper.make_node("Attention", names, outputs, **attrs)], inputs,
                  [(n, F32, None) for n in outputs], opset=opset)
    return model, {name: rand(*shape) for name, _, shape in inputs}


def test_attention_with_a_window_is_refused_and_without_one_runs(backend, build):
    model, _ = attention(build, 4, 6, is_causal=1, left_window_size=2)
    message = refusal(backend, model)
    assert "Attention node #0 with left_window_size=2: OpenVINO ignores the window" in message
    assert "right_window_size=3" in refusal(backend, attention(build, 4, 4, right_window_size=3)[0])
    assert_answers_like_onnxruntime(backend, *attention(build, 4, 6, is_causal=1, left_window_size=-1))


def test_causal_attention_over_past_keys_is_refused_where_the_diagonals_differ(backend, build):
    model, _ = attention(build, 2, 4, past=2, opset=23, is_causal=1)
    assert "is_causal=1 and past_key, where the query length is not 1" in refusal(backend, model)
    decoding, feeds = attention(build, 1, 4, past=2, opset=23, is_causal=1)
    assert_answers_like_onnxruntime(backend, decoding, feeds)  # one query sees every key, up to opset 24
    assert "is_causal=1 and past_key" in refusal(backend, attention(build, 1, 4, past=2, is_causal=1)[0])  # opset 25
    assert_answers_like_onnxruntime(backend, *attention(build, 4, 4, past=2, is_causal=1))  # query = new keys
    assert_answers_like_onnxruntime(backend, *attention(build, 2, 4, is_causal=1))  # no past


# --------------------------------------------------------------------------- Cast, CastLike


def cast(build, source: int, target: int, **attrs: Any) -> ModelArtifact:
    return build([helper.make_node("Cast", ["x"], ["y"], to=target, **attrs)], [("x", source, [6])], [("y", target, [6])])


INFINITIES = np.array([1.5, np.inf, -np.inf, np.nan, 0.25, -3], np.float64)


def test_casts_between_float64_inputs_or_outputs_and_float32_are_refused(backend, build):
    message = refusal(backend, cast(build, F32, F64))
    assert "Cast node #0 with a float32 input cast to float64, a model output: OpenVINO's CPU plugin runs float64" in message
    assert "a float64 model input cast to float32" in refusal(backend, cast(build, F64, F32))
    assert "a float16 input cast to float64, a model output" in refusal(backend, cast(build, F16, F64))
    like = build([helper.make_node("CastLike", ["x", "t"], ["y"])], [("x", F32, [6]), ("t", F64, [1])], [("y", F64, [6])])
    assert "CastLike node #0 with a float32 input cast to float64, a model output" in refusal(backend, like)
    assert_answers_like_onnxruntime(backend, cast(build, F64, F16), {"x": INFINITIES})
    assert_answers_like_onnxruntime(backend, cast(build, F32, F16), {"x": INFINITIES.astype(np.float32)})
    inside = build([helper.make_node("Cast", ["x"], ["wide"], to=F64), helper.make_node("Neg", ["wide"], ["negated"]),
                    helper.make_node("Cast", ["negated"], ["y"], to=F32)], [("x", F32, [6])], [("y", F32, [6])])
    assert_answers_like_onnxruntime(backend, inside, {"x": INFINITIES.astype(np.float32)})  # float64 inside the model


def test_saturating_casts_to_float8_are_refused_and_plain_ones_run(backend, build):
    e4m3 = TensorProto.FLOAT8E4M3FN
    assert "saturate=1 (the default) to float8e4m3fn" in refusal(backend, cast(build, F32, e4m3))
    assert "to float8e5m2" in refusal(backend, cast(build, F32, TensorProto.FLOAT8E5M2, saturate=1))
    values = np.array([0.5, 1e6, -1e6, 300, 1e-7, 2], np.float32)
    assert_answers_like_onnxruntime(backend, cast(build, F32, e4m3, saturate=0), {"x": values})


# --------------------------------------------------------------------------- BitShift


def bitshift(build, dtype: Any, direction: str) -> ModelArtifact:
    kind = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    return build([helper.make_node("BitShift", ["x", "y"], ["z"], direction=direction)],
                 [("x", kind, [6]), ("y", kind, [6])], [("z", kind, [6])], opset=28)


def test_bitshift_is_refused_but_for_the_types_openvino_shifts_right(backend, build):
    assert "BitShift node #0 with direction=LEFT on uint8" in refusal(backend, bitshift(build, np.uint8, "LEFT"))
    assert "direction=RIGHT on int32" in refusal(backend, bitshift(build, np.int32, "RIGHT"))
    assert "direction=RIGHT on int16" in refusal(backend, bitshift(build, np.int16, "RIGHT"))
    edges = {"x": np.array([65535, 32768, 1, 3, 255, 4096], np.uint16), "y": np.array([1, 1, 15, 16, 100, 3], np.uint16)}
    for direction in ("LEFT", "RIGHT"):
        assert_answers_like_onnxruntime(backend, bitshift(build, np.uint16, direction), edges)
    signed = {"x": np.array([-8, -1, 16384, 1, 32767, -32768], np.int16), "y": np.array([1, 15, 1, 16, 1, 1], np.int16)}
    assert_answers_like_onnxruntime(backend, bitshift(build, np.int16, "LEFT"), signed)


# --------------------------------------------------------------------------- DFT


def dft(build, opset: int, axis: int | None = None, runtime_axis: bool = False, **attrs: Any) -> tuple[ModelArtifact, dict]:
    names, inputs, initializers = ["x"], [("x", F32, [2, 8, 6, 1])], {}
    feeds = {"x": rand(2, 8, 6, 1)}
    if opset < 20 and axis is not None:
        attrs["axis"] = axis
    elif axis is not None:
        names += ["", "axis"]
        if runtime_axis:
            inputs.append(("axis", I64, []))
            feeds["axis"] = np.array(axis, np.int64)
        else:
            initializers["axis"] = np.array(axis, np.int64)
    model = build([helper.make_node("DFT", names, ["y"], **attrs)], inputs, [("y", F32, None)], initializers, opset=opset)
    return model, feeds


def test_dft_on_another_axis_than_1_or_one_sided_is_refused(backend, build):
    assert "DFT node #0 with onesided=1" in refusal(backend, dft(build, 20, 1, onesided=1)[0])
    assert "axis=2" in refusal(backend, dft(build, 20, 2)[0])
    assert "axis=-2 (the default)" in refusal(backend, dft(build, 20)[0])
    assert "axis given at run time (input 'axis')" in refusal(backend, dft(build, 20, 1, runtime_axis=True)[0])
    assert "axis=-2" in refusal(backend, dft(build, 19, -2)[0])
    assert_answers_like_onnxruntime(backend, *dft(build, 20, 1))
    assert_answers_like_onnxruntime(backend, *dft(build, 20, -3))  # axis 1, counted from the back
    assert_answers_like_onnxruntime(backend, *dft(build, 19, 2))


# --------------------------------------------------------------------------- quantization


def test_quantizing_with_a_scale_from_the_data_is_refused_and_with_a_constant_one_runs(backend, build):
    dynamic = build([helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])], [("x", F32, [6])],
                    [("y", TensorProto.UINT8, [6]), ("s", F32, []), ("z", TensorProto.UINT8, [])], opset=13)
    assert "DynamicQuantizeLinear node #0 with a scale computed from the data" in refusal(backend, dynamic)
    runtime = build([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])], [("x", F32, [6]), ("s", F32, [])],
                    [("y", TensorProto.UINT8, [6])], {"z": np.uint8(128)}, opset=13)
    assert "QuantizeLinear node #0 with y_scale computed at run time (input 's')" in refusal(backend, runtime)
    constant = build([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])], [("x", F32, [6])],
                     [("y", TensorProto.UINT8, [6])], {"s": np.float32(0.02), "z": np.uint8(128)}, opset=13)
    # values away from the midpoints between steps, where OpenVINO's reciprocal may round either way
    assert_answers_like_onnxruntime(backend, constant, {"x": np.array([0.113, -1.307, 1.234, 0, -2.017, 0.351], np.float32)})


# --------------------------------------------------------------------------- LSTM, MaxPool


def lstm(build, peepholes: np.ndarray | None) -> ModelArtifact:
    initializers = {"W": rand(1, 12, 4), "R": rand(1, 12, 3), "B": rand(1, 24)}
    names = ["X", "W", "R", "B"]
    if peepholes is not None:
        names += ["", "", "", "P"]
        initializers["P"] = peepholes
    return build([helper.make_node("LSTM", names, ["", "Y_h"], hidden_size=3)], [("X", F32, [2, 2, 4])],
                 [("Y_h", F32, None)], initializers, opset=14)


def test_lstm_with_peepholes_is_refused_and_with_zero_ones_runs(backend, build):
    assert "LSTM node #0 with peephole weights (input P, 'P')" in refusal(backend, lstm(build, rand(1, 9)))
    feeds = {"X": rand(2, 2, 4)}
    assert_answers_like_onnxruntime(backend, lstm(build, np.zeros((1, 9), np.float32)), feeds)
    assert_answers_like_onnxruntime(backend, lstm(build, None), feeds)


def maxpool(build, size: Any, kernel: int, stride: int, pads: int) -> ModelArtifact:
    return build([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[kernel, kernel], strides=[stride, stride],
                                   pads=[pads] * 4, ceil_mode=1)], [("x", F32, [1, 1, size, size])], [("y", F32, None)])


def test_ceil_mode_maxpool_is_refused_only_where_a_last_window_starts_past_the_input(backend, build):
    assert "whose last window along spatial axis 0 starts past the input" in refusal(backend, maxpool(build, 2, 1, 2, 0))
    assert "a stride (2) past the kernel's reach" in refusal(backend, maxpool(build, "n", 1, 2, 0))
    assert_answers_like_onnxruntime(backend, maxpool(build, 3, 1, 2, 0), {"x": rand(1, 1, 3, 3)})  # last window inside
    assert_answers_like_onnxruntime(backend, maxpool(build, 112, 3, 2, 1), {"x": rand(1, 1, 112, 112)})  # ResNet's
    assert unfaithful_nodes(onnx.load(str(maxpool(build, "n", 3, 2, 1).path))) == []  # any size is safe


# --------------------------------------------------------------------------- ReduceMax, ReduceMin


def reduce(build, op: str, kind: int, shape: Sequence[Any], compared: bool = False) -> ModelArtifact:
    """``op`` over axis 1; ``compared``: also whether each answer equals its infinity, as an
    attention graph finds its fully masked rows (in float16, OpenVINO computes both in float32)."""
    nodes = [helper.make_node(op, ["x", "axes"], ["y"], keepdims=0)]
    outputs = [("y", kind, None)]
    initializers: dict[str, np.ndarray] = {"axes": np.array([1], np.int64)}
    if compared:
        dtype = helper.tensor_dtype_to_np_dtype(kind)
        initializers["infinity"] = np.array(-np.inf if op == "ReduceMax" else np.inf, dtype)
        nodes.append(helper.make_node("Equal", ["y", "infinity"], ["all_infinite"]))
        outputs.append(("all_infinite", TensorProto.BOOL, None))
    return build(nodes, [("x", kind, list(shape))], outputs, initializers, opset=20)


def test_int64_reductions_over_an_empty_set_are_refused(backend, build):
    message = refusal(backend, reduce(build, "ReduceMax", I64, [2, 0, 3]))
    assert "ReduceMax node #0 with an int64 input and a reduced axis of size 0" in message
    assert "int32's largest" in refusal(backend, reduce(build, "ReduceMin", I64, [2, 0, 3]))
    assert_answers_like_onnxruntime(backend, reduce(build, "ReduceMax", I64, [2, 3, 3]), {"x": np.arange(18).reshape(2, 3, 3)})
    empty32 = reduce(build, "ReduceMax", TensorProto.INT32, [2, 0, 3])
    assert_answers_like_onnxruntime(backend, empty32, {"x": np.zeros((2, 0, 3), np.int32)})


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_float_reductions_answer_infinity_over_infinite_or_empty_sets(backend, build, op, dtype):
    kind = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    lowest, largest = np.finfo(dtype).min, np.finfo(dtype).max  # answers that are one of the values stay
    rows = np.array([[1, -np.inf, 2], [-np.inf] * 3, [np.inf] * 3, [lowest, -np.inf, -np.inf], [largest, np.inf, np.inf]],
                    dtype).reshape(5, 3, 1)
    assert_answers_like_onnxruntime(backend, reduce(build, op, kind, [5, 3, 1], compared=True), {"x": rows})
    assert_answers_like_onnxruntime(backend, reduce(build, op, kind, [2, 0, 3], compared=True), {"x": np.zeros((2, 0, 3), dtype)})


# --------------------------------------------------------------------------- Resize


def resize(build, mode: str = "linear", scales: Sequence[float] | None = None, sizes: Sequence[int] | None = None,
           **attrs: Any) -> ModelArtifact:
    names, initializers = ["X", "", ""], {}
    if scales is not None:
        names[2] = "scales"
        initializers["scales"] = np.array(scales, np.float32)
    else:
        names.append("sizes")
        initializers["sizes"] = np.array(sizes, np.int64)
    return build([helper.make_node("Resize", names, ["Y"], mode=mode, **attrs)], [("X", F32, [1, 2, 8, 8])],
                 [("Y", F32, None)], initializers, opset=19)


def test_resize_configurations_openvino_gets_wrong_are_refused_and_their_neighbours_run(backend, build):
    feeds = {"X": rand(1, 2, 8, 8)}
    assert "antialias=1 while downsampling" in refusal(backend, resize(build, scales=[1, 1, 1, 0.5], antialias=1))
    assert_answers_like_onnxruntime(backend, resize(build, scales=[1, 1, 2, 1.5], antialias=1), feeds)  # upsampling
    assert "mode=cubic and exclude_outside=1" in refusal(backend, resize(build, "cubic", [1, 1, 2, 2], exclude_outside=1))
    assert_answers_like_onnxruntime(backend, resize(build, "cubic", [1, 1, 2, 2], cubic_coeff_a=-0.5), feeds)
    stretch = {"axes": [2, 3], "mode": "nearest"}
    policy = resize(build, sizes=[4, 6], keep_aspect_ratio_policy="not_larger", **stretch)
    assert "keep_aspect_ratio_policy=not_larger" in refusal(backend, policy)
    assert_answers_like_onnxruntime(backend, resize(build, sizes=[4, 4], keep_aspect_ratio_policy="not_smaller", **stretch),
                                    feeds)  # sizes that keep the aspect ratio already
    assert_answers_like_onnxruntime(backend, resize(build, sizes=[4, 6], **stretch), feeds)


# --------------------------------------------------------------------------- SpaceToDepth, Tile


def space_to_depth(build, channels: int, mode: str) -> ModelArtifact:
    return build([helper.make_node("SpaceToDepth", ["x"], ["y"], blocksize=2, mode=mode)],
                 [("x", F32, [1, channels, 4, 6])], [("y", F32, None)], opset=28)


def test_crd_space_to_depth_is_refused_over_several_channels(backend, build):
    assert "SpaceToDepth node #0 with mode=CRD" in refusal(backend, space_to_depth(build, 2, "CRD"))
    assert_answers_like_onnxruntime(backend, space_to_depth(build, 2, "DCR"), {"x": rand(1, 2, 4, 6)})
    assert_answers_like_onnxruntime(backend, space_to_depth(build, 1, "CRD"), {"x": rand(1, 1, 4, 6)})


def tile(build, rank: int, constant: Sequence[int] | None = None) -> ModelArtifact:
    inputs = [("x", F32, [2, 3, 4, 5][:rank])] + ([] if constant else [("r", I64, [rank])])
    initializers = {"r": np.array(constant, np.int64)} if constant else {}
    return build([helper.make_node("Tile", ["x", "r"], ["y"])], inputs, [("y", F32, None)], initializers, opset=13)


def test_tile_with_repeats_given_at_run_time_is_refused_from_rank_4(backend, build):
    assert "Tile node #0 with repeats given at run time (input 'r') for an input of rank 4" in refusal(backend, tile(build, 4))
    assert_answers_like_onnxruntime(backend, tile(build, 4, [2, 2, 2, 2]), {"x": rand(2, 3, 4, 5)})
    assert_answers_like_onnxruntime(backend, tile(build, 3), {"x": rand(2, 3, 4), "r": np.array([2, 2, 2], np.int64)})


# --------------------------------------------------------------------------- repairs: TopK, NonMaxSuppression


@pytest.mark.parametrize("k", [1, 8])
@pytest.mark.parametrize("largest", [1, 0])
def test_topk_returns_the_lower_index_first_among_ties(backend, build, k, largest):
    model = build([helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=-1, largest=largest)], [("x", I64, [4, 16])],
                  [("v", I64, None), ("i", I64, None)], {"k": np.array([k], np.int64)}, opset=24)
    assert_answers_like_onnxruntime(backend, model, {"x": RNG.integers(0, 3, (4, 16))})


def nms(build, threshold: float | None) -> ModelArtifact:
    names = ["boxes", "scores", "m", "iou", "st"]
    inputs = [("boxes", F32, [1, 2, 4]), ("scores", F32, [1, 1, 2])] + ([("iou", F32, [1])] if threshold is None else [])
    initializers = {"m": np.array([3], np.int64), "st": np.array([0.0], np.float32)}
    if threshold is not None:
        initializers["iou"] = np.array([threshold], np.float32)
    return build([helper.make_node("NonMaxSuppression", names, ["selected"])], inputs, [("selected", I64, None)],
                 initializers, opset=11)


#: Two boxes whose IoU is 1/7 in float32, to the last bit; and two that do not overlap.
TOUCHING = np.array([[[0, 0, 1, 1], [0.5, 0.5, 1.5, 1.5]]], np.float32)
APART = np.array([[[0, 0, 1, 1], [2, 2, 3, 3]]], np.float32)
SCORES = np.array([[[0.9, 0.8]]], np.float32)


def test_nms_keeps_a_box_whose_iou_equals_the_threshold(backend, build):
    seventh = np.float32(1 / 7)
    assert_answers_like_onnxruntime(backend, nms(build, None), {"boxes": TOUCHING, "scores": SCORES, "iou": np.array([seventh])})
    assert_answers_like_onnxruntime(backend, nms(build, float(seventh)), {"boxes": TOUCHING, "scores": SCORES})
    assert_answers_like_onnxruntime(backend, nms(build, 0.0), {"boxes": APART, "scores": SCORES})  # IoU 0 > 0 is false
    assert_answers_like_onnxruntime(backend, nms(build, None), {"boxes": APART, "scores": SCORES, "iou": np.zeros(1, np.float32)})


# --------------------------------------------------------------------------- subgraphs, the message, the command line


def test_a_node_inside_an_if_branch_is_refused_and_repaired(backend, build):
    def branch(name: str, op: str) -> Any:
        node = helper.make_node(op, ["x", "y"], [name], direction="LEFT") if op == "BitShift" else \
            helper.make_node("TopK", ["x", "k"], ["v", name], axis=-1)
        kind = TensorProto.UINT8 if op == "BitShift" else I64
        return helper.make_graph([node], name, [], [helper.make_tensor_value_info(name, kind, None)])

    shifted = build([helper.make_node("If", ["c"], ["z"], then_branch=branch("a", "BitShift"), else_branch=branch("b", "BitShift"))],
                    [("c", TensorProto.BOOL, []), ("x", TensorProto.UINT8, [3]), ("y", TensorProto.UINT8, [3])],
                    [("z", TensorProto.UINT8, None)])
    message = refusal(backend, shifted)  # the else branch comes first: attributes are kept sorted by name
    assert "BitShift node #0 in subgraph 'b' with direction=LEFT on uint8" in message
    assert message.endswith("; and 1 more node OpenVINO would answer wrongly")  # the then branch's
    ties = build([helper.make_node("If", ["c"], ["i"], then_branch=branch("a", "TopK"), else_branch=branch("b", "TopK"))],
                 [("c", TensorProto.BOOL, []), ("x", I64, [4, 16])], [("i", I64, None)], {"k": np.array([8], np.int64)}, opset=13)
    for condition in (True, False):
        assert_answers_like_onnxruntime(backend, ties, {"c": np.array(condition), "x": RNG.integers(0, 3, (4, 16))})


def test_a_topk_inside_a_loop_body_is_repaired(backend, build):
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond"], ["cond_out"]), helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=-1)],
        "body", [helper.make_tensor_value_info("n", I64, []), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("i", I64, None)],
    )
    looped = build([helper.make_node("Loop", ["trips", ""], ["indices"], body=body)], [("x", I64, [4, 16])],
                   [("indices", I64, None)], {"trips": np.array(2, np.int64), "k": np.array([8], np.int64)}, opset=13)
    assert_answers_like_onnxruntime(backend, looped, {"x": RNG.integers(0, 3, (4, 16))})


def test_the_message_names_the_node_counts_the_others_and_the_rules_name_their_operators(backend, build):
    two = build([helper.make_node("BitShift", ["x", "y"], ["a"], direction="LEFT", name="shift"),
                 helper.make_node("BitShift", ["a", "y"], ["z"], direction="RIGHT")],
                [("x", TensorProto.UINT8, [3]), ("y", TensorProto.UINT8, [3])], [("z", TensorProto.UINT8, [3])])
    message = refusal(backend, two)
    assert message.startswith(f"{two.path.name}: BitShift node 'shift' with direction=LEFT on uint8: OpenVINO ")
    assert message.endswith("(OpenVINO 2026.4); and 1 more node OpenVINO would answer wrongly")
    assert {rule.op for rule in RULES} >= {"Attention", "BitShift", "Cast", "DFT", "LSTM", "MaxPool", "Resize", "Tile"}


def test_mlpi_run_refuses_the_model_before_any_test_in_one_error(tmp_path, build):
    model = build([helper.make_node("BitShift", ["x", "y"], ["z"], direction="LEFT")],
                  [("x", TensorProto.UINT8, ["N", 4])], [("z", TensorProto.UINT8, ["N", 4])],
                  {"y": np.full(4, 1, np.uint8)}, opset=11)
    proc = run_cli(["run", "--backend", "openvino", "--model-path", str(model.path), "--quick", "--output",
                    str(tmp_path / "results")], cwd=tmp_path)
    one_error(proc, "BitShift node #0 with direction=LEFT on uint8")
    assert "hint: use --backend onnxruntime" in proc.stderr
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").rglob("result.json"))


# --------------------------------------------------------------------------- 64-bit integer inputs


@pytest.mark.parametrize(("dtype", "element"), [(np.int64, I64), (np.uint64, TensorProto.UINT64)])
def test_a_64_bit_input_past_int32_is_refused_at_run(backend: OpenVinoBackend, build, dtype: Any, element: int) -> None:
    """OpenVINO narrows 64-bit integers to 32 bits: 3,000,000,000 through an Add would come back
    wrapped. Values that fit int32 run, and answer as onnxruntime does."""
    model = build([helper.make_node("Add", ["x", "x"], ["y"])], [("x", element, [3])], [("y", element, [3])])
    assert_answers_like_onnxruntime(backend, model, {"x": np.array([2**31 - 1, 5, 0], dtype) // 2})
    session = backend.load(model, CPU, OvOptions(), "fp32")
    try:
        with pytest.raises(ModelError) as caught:
            session.run({"x": np.array([3_000_000_000, 5, 0], dtype)})
    finally:
        session.close()
    message = caught.value.message
    assert "input 'x' holds 3,000,000,000, past int32" in message and "\n" not in message
    assert caught.value.hint.startswith("use --backend onnxruntime")


# --------------------------------------------------------------------------- com.microsoft int8 operators

QOPERATOR_CASES = {  # op -> (inputs after x and its scale and zero point, attributes)
    "QLinearAdd": (["y", "s2", "z2", "s3", "z3"], {}),
    "QLinearMul": (["y", "s2", "z2", "s3", "z3"], {}),
    "QLinearSigmoid": (["s3", "z3"], {}),
    "QLinearLeakyRelu": (["s3", "z3"], {"alpha": 0.1}),
    "QLinearAveragePool": (["s3", "z3"], {"kernel_shape": [2, 2]}),
}


def qoperator(tmp_path: Path, op: str) -> tuple[ModelArtifact, dict[str, np.ndarray]]:
    """One com.microsoft QOperator node on uint8 data, scales that saturate nothing."""
    rest, attrs = QOPERATOR_CASES[op]
    consts = {"s1": np.array(0.03, np.float32), "z1": np.array(120, np.uint8), "s2": np.array(0.05, np.float32),
              "z2": np.array(10, np.uint8), "s3": np.array(0.2, np.float32), "z3": np.array(128, np.uint8)}
    feeds = {"x": RNG.integers(0, 256, (2, 8, 6, 6)).astype(np.uint8), "y": RNG.integers(0, 256, (2, 8, 6, 6)).astype(np.uint8)}
    names = ["x", "s1", "z1", *rest]
    feeds = {k: v for k, v in feeds.items() if k in names}
    graph = helper.make_graph(
        [helper.make_node(op, names, ["out"], domain="com.microsoft", **attrs)], "g",
        [helper.make_tensor_value_info(k, TensorProto.UINT8, list(v.shape)) for k, v in feeds.items()],
        [helper.make_tensor_value_info("out", TensorProto.UINT8, None)],
        [numpy_helper.from_array(v, k) for k, v in consts.items() if k in names])
    path = tmp_path / f"{op}.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return inspect_onnx(path), feeds


@pytest.mark.parametrize("op", sorted(QOPERATOR_CASES))
def test_onnxruntimes_int8_operators_are_refused_where_openvino_answers_otherwise(backend, tmp_path, op):
    model, feeds = qoperator(tmp_path, op)
    assert f"{op} node #0 with 8-bit operands: OpenVINO" in refusal(backend, model)
    core = ov.Core()  # and OpenVINO does answer otherwise (none of these values saturates)
    got = core.compile_model(core.read_model(str(model.path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(feeds)[0]
    (want,) = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"]).run(None, feeds)
    assert (got != want).mean() > 0.2, (got, want)


def test_dynamic_quantize_matmul_is_refused_and_openvino_does_answer_otherwise(backend, tmp_path):
    feeds = {"x": RNG.standard_normal((2, 8, 16)).astype(np.float32)}
    consts = {"w": RNG.integers(-127, 128, (16, 6)).astype(np.int8), "ws": np.array(0.01, np.float32),
              "wz": np.array(0, np.int8)}
    graph = helper.make_graph(
        [helper.make_node("DynamicQuantizeMatMul", ["x", "w", "ws", "wz"], ["y"], domain="com.microsoft")], "g",
        [helper.make_tensor_value_info("x", F32, [2, 8, 16])], [helper.make_tensor_value_info("y", F32, None)],
        [numpy_helper.from_array(v, k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "dqmm.onnx"))
    artifact = inspect_onnx(tmp_path / "dqmm.onnx")
    assert "DynamicQuantizeMatMul node #0 with int8 weights: OpenVINO multiplies" in refusal(backend, artifact)
    core = ov.Core()
    got = core.compile_model(core.read_model(str(artifact.path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(feeds)[0]
    (want,) = ort.InferenceSession(str(artifact.path), providers=["CPUExecutionProvider"]).run(None, feeds)
    assert np.abs(got - want).max() > 1e-3 * np.abs(want).max()
