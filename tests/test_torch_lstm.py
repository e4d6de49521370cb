"""The ONNX-to-torch converter's LSTM (on torch's fused kernel) and the other operators an RNN-T
graph uses (Range, the Less/Cast/Mul length mask, an embedding Gather, Reshape with 0 and -1,
opset-13 Squeeze/Unsqueeze), each against onnxruntime.

Tolerance: float32 rounding. torch and onnxruntime sum the gate matrix products in other orders,
so values differ by a few ulps per step, which the recurrence carries along (seen: ~3e-7 after
17 steps); rtol = 1e-5 with atol = 1e-5 of the output's magnitude covers that and still fails on
any real error (a gate out of order, a wrong direction or step, a missing bias). Range and the
integer operators are compared exactly.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mlpi.core.contract.errors import ModelError

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from mlpi.backends.onnx_to_torch import convert

OPSET = 17


def _model(nodes: list[onnx.NodeProto], inputs: dict[str, np.ndarray], consts: dict[str, np.ndarray],
           outputs: list[str], opset: int = OPSET) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape)) for k, v in inputs.items()],
        [helper.make_empty_tensor_value_info(o) for o in outputs],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _as_layout_0(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with each layout-1 (batch-first) LSTM written as the spec defines it: the
    layout-0 LSTM between transposes. onnxruntime's CPU LSTM refuses layout 1, so this is the
    reference the converter's layout 1 is checked against."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes: list[onnx.NodeProto] = []
    for k, node in enumerate(model.graph.node):
        layout = next((a.i for a in node.attribute if a.name == "layout"), 0)
        if node.op_type != "LSTM" or layout == 0:
            nodes.append(node)
            continue
        inputs, outputs = list(node.input), list(node.output)
        for i in (0, 5, 6):  # X [B, S, I] -> [S, B, I]; initial states [B, D, H] -> [D, B, H]
            if i < len(inputs) and inputs[i]:
                nodes.append(helper.make_node("Transpose", [inputs[i]], [f"{inputs[i]}_l0_{k}"], perm=[1, 0, 2]))
                inputs[i] = f"{inputs[i]}_l0_{k}"
        for i, perm in ((0, [2, 0, 1, 3]), (1, [1, 0, 2]), (2, [1, 0, 2])):  # back to layout 1
            if i < len(outputs) and outputs[i]:
                nodes.append(helper.make_node("Transpose", [f"{outputs[i]}_l0_{k}"], [outputs[i]], perm=perm))
                outputs[i] = f"{outputs[i]}_l0_{k}"
        attrs = [a for a in node.attribute if a.name != "layout"]
        copy = helper.make_node("LSTM", inputs, outputs, name=node.name)
        copy.attribute.extend(attrs)
        nodes.append(copy)
    # Topological order: each Transpose of an output must follow its LSTM.
    ordered, made = [], {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer} | {""}
    pending = nodes
    while pending:
        ready = [n for n in pending if all(i in made for i in n.input)]
        assert ready, "cycle"
        for n in ready:
            ordered.append(n)
            made.update(n.output)
        pending = [n for n in pending if n not in ready]
    del out.graph.node[:]
    out.graph.node.extend(ordered)
    return out


def _both(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    session = ort.InferenceSession(_as_layout_0(model).SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(None, feeds)
    module = convert(model)
    assert module.input_names == list(feeds)
    with torch.inference_mode():
        got = [t.numpy() for t in module(*(torch.from_numpy(v) for v in feeds.values()))]
    return got, want


def _assert_close(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, g.shape, w.dtype, w.shape)
        if g.dtype.kind == "f":
            scale = max(1.0, float(np.abs(w).max(initial=0.0)))
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * scale)
        else:
            np.testing.assert_array_equal(g, w)


# --------------------------------------------------------------------------- LSTM


def _lstm_case(seq: int, batch: int, size: int, hidden: int, direction: str = "forward", layout: int = 0, *,
               bias: bool = True, h0: bool = True, c0: bool = True, lengths: list[int] | None = None,
               outputs: tuple[str, ...] = ("Y", "Y_h", "Y_c"), weights_as_inputs: bool = False,
               peepholes: np.ndarray | None = None, peepholes_as_input: bool = False, seed: int = 0,
               **attrs: object) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """One LSTM node; weights are initializers unless ``weights_as_inputs``; an output named ""
    is not asked for."""
    rng = np.random.default_rng(seed)
    dirs = 2 if direction == "bidirectional" else 1

    def rand(*shape: int, scale: float = 0.5) -> np.ndarray:
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    state = (batch, dirs, hidden) if layout == 1 else (dirs, batch, hidden)
    values = {
        "X": rand(*((batch, seq, size) if layout == 1 else (seq, batch, size)), scale=1.0),
        "W": rand(dirs, 4 * hidden, size),
        "R": rand(dirs, 4 * hidden, hidden),
        "B": rand(dirs, 8 * hidden) if bias else None,
        "sequence_lens": None if lengths is None else np.array(lengths, np.int32),
        "initial_h": rand(*state, scale=1.0) if h0 else None,
        "initial_c": rand(*state, scale=1.0) if c0 else None,
        "P": peepholes,
    }
    weights = {"W", "R", "B"} | ({"P"} if not peepholes_as_input else set())
    consts = {k: v for k, v in values.items() if v is not None and k in weights and not (weights_as_inputs and k != "P")}
    feeds = {k: v for k, v in values.items() if v is not None and k not in consts}
    names = [k if v is not None else "" for k, v in values.items()]
    while names[-1] == "":
        names.pop()
    node = helper.make_node("LSTM", names, list(outputs), name="lstm", hidden_size=hidden, direction=direction,
                            **({"layout": layout} if layout else {}), **attrs)
    return _model([node], feeds, consts, [o for o in outputs if o]), feeds


SHAPES = [(1, 1, 4, 3), (17, 3, 5, 8), (17, 1, 2, 6), (1, 3, 7, 4)]  # seq, batch, input size, hidden
DIRECTIONS = ["forward", "reverse", "bidirectional"]
OPTIONAL = [(True, True, True), (False, False, False), (True, True, False), (False, False, True)]  # B, h0, c0


@pytest.mark.parametrize("optional", OPTIONAL, ids=lambda o: "B{}_h{}_c{}".format(*map(int, o)))
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "s{}b{}i{}h{}".format(*s))
def test_lstm_matches_onnxruntime(shape: tuple[int, int, int, int], direction: str, layout: int,
                                  optional: tuple[bool, bool, bool]) -> None:
    bias, h0, c0 = optional
    model, feeds = _lstm_case(*shape, direction, layout, bias=bias, h0=h0, c0=c0)
    got, want = _both(model, feeds)
    seq, batch, _, hidden = shape
    dirs = 2 if direction == "bidirectional" else 1
    assert want[0].shape == ((batch, seq, dirs, hidden) if layout else (seq, dirs, batch, hidden))
    _assert_close(got, want)


@pytest.mark.parametrize("states", [True, False], ids=["initial_states", "zero_states"])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_layout_1_matches_the_onnx_reference_evaluator(direction: str, states: bool) -> None:
    """Layout 1 checked a second way: against ONNX's own reference implementation, which reads
    layout 1 natively (the other tests' reference is onnxruntime on the transposed graph)."""
    from onnx.reference import ReferenceEvaluator

    model, feeds = _lstm_case(6, 3, 4, 5, direction, 1, h0=states, c0=states)
    want = ReferenceEvaluator(model).run(None, feeds)
    with torch.inference_mode():
        got = [t.numpy() for t in convert(model)(*(torch.from_numpy(v) for v in feeds.values()))]
    assert want[0].shape == (3, 6, 2 if direction == "bidirectional" else 1, 5)
    _assert_close(got, [np.asarray(w, np.float32) for w in want])


@pytest.mark.parametrize("outputs", [("Y",), ("", "Y_h"), ("Y", "", "Y_c"), ("", "", "Y_c"), ("", "Y_h", "Y_c")])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_lstm_with_only_some_outputs(outputs: tuple[str, ...], direction: str) -> None:
    model, feeds = _lstm_case(5, 2, 3, 4, direction, outputs=outputs)
    _assert_close(*_both(model, feeds))


def test_lstm_with_the_default_activations_spelled_out_and_unused_alphas() -> None:
    model, feeds = _lstm_case(6, 2, 3, 4, "bidirectional", activations=["Sigmoid", "Tanh", "Tanh"] * 2)
    _assert_close(*_both(model, feeds))


@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_lstm_with_weights_computed_at_run_time(direction: str, layout: int) -> None:
    """W, R and B as graph inputs: reordered for torch on each call instead of once."""
    model, feeds = _lstm_case(7, 3, 5, 4, direction, layout, weights_as_inputs=True)
    assert {"W", "R", "B"} <= set(feeds)
    _assert_close(*_both(model, feeds))


def test_constant_weights_become_one_reordered_buffer() -> None:
    """The gate reordering is done once, at conversion: the module holds one flat parameter
    tensor for the node, not W, R and B besides it."""
    model, feeds = _lstm_case(3, 2, 5, 4, "bidirectional", h0=False, c0=False)
    module = convert(model)
    buffers = list(module.buffers())
    assert len(buffers) == 1
    assert buffers[0].numel() == 2 * (4 * 4 * 5 + 4 * 4 * 4 + 8 * 4)
    got = module.to(torch.float64)(torch.from_numpy(feeds["X"]).double())  # buffers move as any constant
    assert got[0].dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_lstm_in_the_module_precision(dtype: torch.dtype) -> None:
    """The backend's bf16 precision (and a double module): weights, states and kernel in that type."""
    model, feeds = _lstm_case(9, 2, 4, 6, "bidirectional", lengths=[9, 5])
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    module = convert(model, dtype) if dtype == torch.bfloat16 else convert(model).to(dtype)
    args = [torch.from_numpy(v).to(dtype) if v.dtype.kind == "f" else torch.from_numpy(v) for v in feeds.values()]
    with torch.inference_mode():
        got = module(*args)
    for g, w in zip(got, want):
        assert g.dtype == dtype
        np.testing.assert_allclose(g.double().numpy(), w, atol=5e-2 if dtype == torch.bfloat16 else 1e-5)


LENGTHS = {
    "mixed": (6, [6, 3, 1, 4]),
    "a_zero": (5, [2, 0, 5]),
    "all_full": (4, [4, 4]),
    "all_one": (3, [1, 1, 1]),
    "all_zero": (3, [0, 0]),
    "one_step": (1, [1, 0, 1]),
}


@pytest.mark.parametrize("states", [True, False], ids=["initial_states", "zero_states"])
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("case", sorted(LENGTHS))
def test_lstm_with_sequence_lens(case: str, direction: str, layout: int, states: bool) -> None:
    """Zeros after each sequence's end; Y_h and Y_c at its last step (reverse: at step 0 after
    starting from its own last step); a length-0 sequence all zeros, as onnxruntime does."""
    seq, lengths = LENGTHS[case]
    model, feeds = _lstm_case(seq, len(lengths), 3, 5, direction, layout, h0=states, c0=states, lengths=lengths)
    got, want = _both(model, feeds)
    _assert_close(got, want)
    if case == "mixed" and layout == 0:
        assert not want[0][4:, :, 1].any()  # the reference does zero the padding: the case tests it


@pytest.mark.parametrize("lengths", [[3, 6], [-1, 2]])
def test_lstm_sequence_lens_out_of_range_is_a_model_error(lengths: list[int]) -> None:
    model, feeds = _lstm_case(5, 2, 3, 4, lengths=lengths)
    module = convert(model)
    with pytest.raises(ModelError, match="sequence_lens"):
        module(*(torch.from_numpy(v) for v in feeds.values()))


def test_lstm_with_zero_peepholes() -> None:
    """P all zeros is the peephole-free LSTM: accepted as a constant and as a graph input."""
    zeros = np.zeros((2, 12), np.float32)
    for as_input in (False, True):
        model, feeds = _lstm_case(4, 2, 3, 4, "bidirectional", peepholes=zeros, peepholes_as_input=as_input)
        _assert_close(*_both(model, feeds))


def _stack(direction: str, layout: int, lengths: list[int] | None) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Two LSTM layers as torch exports a 2-layer nn.LSTM: Y [seq, dirs, batch, H] of the first
    is transposed and reshaped (0, 0, -1) to [seq, batch, dirs*H] for the second; layout 1
    reshapes [batch, seq, dirs, H] straight to [batch, seq, dirs*H]."""
    rng = np.random.default_rng(3)
    seq, batch, size, hidden = 9, 3, 6, 5
    dirs = 2 if direction == "bidirectional" else 1
    consts = {
        "W1": rng.standard_normal((dirs, 4 * hidden, size)).astype(np.float32) * 0.5,
        "R1": rng.standard_normal((dirs, 4 * hidden, hidden)).astype(np.float32) * 0.5,
        "B1": rng.standard_normal((dirs, 8 * hidden)).astype(np.float32) * 0.5,
        "W2": rng.standard_normal((dirs, 4 * hidden, dirs * hidden)).astype(np.float32) * 0.5,
        "R2": rng.standard_normal((dirs, 4 * hidden, hidden)).astype(np.float32) * 0.5,
        "B2": rng.standard_normal((dirs, 8 * hidden)).astype(np.float32) * 0.5,
        "shape": np.array([0, 0, -1], np.int64),
    }
    feeds = {"X": rng.standard_normal((batch, seq, size) if layout else (seq, batch, size)).astype(np.float32)}
    if lengths is not None:
        feeds["lens"] = np.array(lengths, np.int32)
    lens = "lens" if lengths is not None else ""
    attrs = {"hidden_size": hidden, "direction": direction, **({"layout": 1} if layout else {})}
    nodes = [helper.make_node("LSTM", ["X", "W1", "R1", "B1", lens], ["Y1", "H1", "C1"], name="l1", **attrs)]
    if layout:
        nodes.append(helper.make_node("Reshape", ["Y1", "shape"], ["X2"]))
    else:
        nodes += [helper.make_node("Transpose", ["Y1"], ["T1"], perm=[0, 2, 1, 3]),
                  helper.make_node("Reshape", ["T1", "shape"], ["X2"])]
    nodes.append(helper.make_node("LSTM", ["X2", "W2", "R2", "B2", lens, "H1", "C1"], ["Y2", "H2", "C2"], name="l2", **attrs))
    return _model(nodes, feeds, consts, ["Y2", "H2", "C2", "Y1"]), feeds


@pytest.mark.parametrize("lengths", [None, [9, 4, 1]], ids=["full", "lengths"])
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_two_stacked_lstm_layers(direction: str, layout: int, lengths: list[int] | None) -> None:
    _assert_close(*_both(*_stack(direction, layout, lengths)))


STEPWISE: dict[str, dict[str, object]] = {
    "relu_cell": {"activations": ["Sigmoid", "Relu", "Tanh"]},
    "hardsigmoid_gates_with_alpha_beta": {"activations": ["HardSigmoid", "Tanh", "Tanh"], "activation_alpha": [0.3],
                                          "activation_beta": [0.4]},
    "alphas_go_to_the_functions_that_take_one": {"activations": ["Tanh", "LeakyRelu", "ScaledTanh"],
                                                 "activation_alpha": [0.05, 0.9], "activation_beta": [1.3]},
    "clip": {"clip": 0.7},
    "input_forget": {"input_forget": 1},
    "peepholes": {},
}


def _stepwise_case(case: str, direction: str, layout: int, lengths: list[int] | None,
                   peepholes_as_input: bool = False) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    attrs = dict(STEPWISE[case])
    dirs = 2 if direction == "bidirectional" else 1
    for key in ("activations", "activation_alpha", "activation_beta"):
        if key in attrs:
            attrs[key] = list(attrs[key]) * dirs  # type: ignore[call-overload]
    hidden = 5
    peepholes = (0.5 * np.random.default_rng(7).standard_normal((dirs, 3 * hidden))).astype(np.float32) \
        if case == "peepholes" else None
    return _lstm_case(6, 3 if lengths is None else len(lengths), 4, hidden, direction, layout, lengths=lengths,
                      peepholes=peepholes, peepholes_as_input=peepholes_as_input, seed=3, **attrs)


@pytest.mark.parametrize("lengths", [None, [6, 2, 0, 4]], ids=["full", "sequence_lens"])
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("case", sorted(STEPWISE))
def test_what_the_fused_kernel_does_not_compute_runs_stepwise(case: str, direction: str, layout: int,
                                                              lengths: list[int] | None) -> None:
    """Other activations (with their alphas and betas), clip, input_forget and peepholes: one
    step at a time, as onnxruntime computes them."""
    model, feeds = _stepwise_case(case, direction, layout, lengths)
    got, want = _both(model, feeds)
    _assert_close(got, want)
    plain, _ = _lstm_case(6, 3 if lengths is None else len(lengths), 4, 5, direction, layout, lengths=lengths, seed=3)
    baseline, _ = _both(plain, feeds if case != "peepholes" else {k: v for k, v in feeds.items() if k != "P"})
    assert not np.allclose(baseline[0], want[0], atol=1e-3)  # the case does change the answer


def test_peepholes_known_only_at_run_time() -> None:
    model, feeds = _stepwise_case("peepholes", "bidirectional", 0, None, peepholes_as_input=True)
    assert "P" in feeds
    _assert_close(*_both(model, feeds))


@pytest.mark.parametrize("case", ["direction", "layout"])
def test_lstm_refuses_a_direction_or_layout_onnx_does_not_define(case: str) -> None:
    model, _ = _lstm_case(3, 2, 3, 4, "forward", **({"layout": 2} if case == "layout" else {}))
    for attr in model.graph.node[0].attribute:
        if attr.name == "direction" and case == "direction":
            attr.s = b"sideways"
    with pytest.raises(ModelError, match=f"LSTM node 'lstm' has {case}.*not supported"):
        convert(model)


def test_lstm_refuses_mismatched_weights() -> None:
    model, _ = _lstm_case(3, 2, 3, 4)
    next(a for a in model.graph.node[0].attribute if a.name == "hidden_size").i = 5  # disagrees with R
    with pytest.raises(ModelError, match="hidden_size=5"):
        convert(model)


# --------------------------------------------------------------------------- Range


RANGES = {
    "int64_up": (np.int64, 0, 10, 3),
    "int64_down": (np.int64, 10, -3, -4),
    "int64_empty": (np.int64, 5, 5, 1),
    "int64_wrong_way": (np.int64, 0, 5, -1),
    "int32": (np.int32, -7, 20, 5),
    "float_fraction": (np.float32, 0.1, 2.35, 0.3),
    "float_down": (np.float32, 1.0, -2.0, -0.7),
    # Counted in double from the float32 inputs: 1033 and 728 elements; (limit - start) taken
    # in float32 first would give 1034 and 729. The values accumulate in float32, as onnxruntime.
    "float_long": (np.float32, -3.3, 100.0, 0.1),
    "float_count": (np.float32, 29.0, -43.8, -0.1),
    "double": (np.float64, 0.5, 3.0, 0.25),
}


@pytest.mark.parametrize("constant", [False, True], ids=["inputs", "folded"])
@pytest.mark.parametrize("case", sorted(RANGES))
def test_range_matches_onnxruntime_exactly(case: str, constant: bool) -> None:
    dtype, *values = RANGES[case]
    arrays = {k: np.array(v, dtype) for k, v in zip(["start", "limit", "delta"], values)}
    node = helper.make_node("Range", ["start", "limit", "delta"], ["y"])
    if constant:  # folded at conversion: the graph reads nothing, so add the range to an input
        model = _model([node, helper.make_node("Add", ["y", "x"], ["z"])], {"x": np.zeros(1, dtype)}, arrays, ["z"])
        got, want = _both(model, {"x": np.zeros(1, dtype)})
    else:
        got, want = _both(_model([node], arrays, {}, ["y"]), arrays)
    assert got[0].dtype == want[0].dtype and got[0].shape == want[0].shape
    np.testing.assert_array_equal(got[0], want[0])


# --------------------------------------------------------------------------- an RNN-T-like graph


def _rnnt_like() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The operators of the RNN-T graphs in one graph: the encoder's length mask (Shape, Gather,
    Range, Unsqueeze, Less, Cast, Mul), its time stacking (Reshape with 0 and -1, Transpose),
    LSTM layers with sequence_lens, the prediction network's embedding (Gather of int64 ids
    into a float table), initial states as inputs, Squeeze of the direction axis, Slice,
    Concat, Pad, and the joint network (Unsqueeze, Add, Relu, MatMul, Gemm)."""
    rng = np.random.default_rng(7)
    batch, frames, feats, hidden, vocab, embed, labels, joint = 3, 12, 4, 6, 11, 5, 4, 7
    f = np.float32

    def w(*shape: int) -> np.ndarray:
        return (0.4 * rng.standard_normal(shape)).astype(f)

    consts = {
        "zero": np.array(0, np.int64), "one": np.array(1, np.int64), "two": np.array(2, np.int64),
        "ax0": np.array([0], np.int64), "ax1": np.array([1], np.int64), "ax2": np.array([2], np.int64),
        "stack": np.array([0, -1, 2 * feats], np.int64),
        "W_enc": w(1, 4 * hidden, 2 * feats), "R_enc": w(1, 4 * hidden, hidden), "B_enc": w(1, 8 * hidden),
        "table": w(vocab, embed),
        "W_pred": w(1, 4 * hidden, embed), "R_pred": w(1, 4 * hidden, hidden),
        "enc_proj": w(hidden, joint), "pred_proj": w(hidden, joint), "pred_bias": w(joint),
        "out_w": w(vocab, joint), "out_b": w(vocab),
        "starts": np.array([0], np.int64), "ends": np.array([np.iinfo(np.int64).max], np.int64),
        "steps": np.array([2], np.int64), "pads": np.array([0, 1, 0, 0, 0, 0], np.int64),
        "flat": np.array([-1, joint], np.int64), "minus1": np.array([-1], np.int64),
    }
    lengths = np.array([12, 7, 2], np.int64)
    feeds = {
        "features": rng.standard_normal((batch, frames, feats)).astype(f),
        "feature_lens": lengths,
        "ids": rng.integers(0, vocab, (batch, labels)).astype(np.int64),
        "h0": rng.standard_normal((1, batch, hidden)).astype(f),
        "c0": rng.standard_normal((1, batch, hidden)).astype(f),
    }
    n = helper.make_node
    nodes = [
        # mask = range(T) < lens, applied to the features
        n("Shape", ["features"], ["fshape"]),
        n("Gather", ["fshape", "one"], ["T"], axis=0),
        n("Range", ["zero", "T", "one"], ["t"]),
        n("Unsqueeze", ["t", "ax0"], ["t_row"]),
        n("Unsqueeze", ["feature_lens", "ax1"], ["lens_col"]),
        n("Less", ["t_row", "lens_col"], ["valid"]),
        n("Cast", ["valid"], ["valid_f"], to=TensorProto.FLOAT),
        n("Unsqueeze", ["valid_f", "ax2"], ["mask"]),
        n("Mul", ["features", "mask"], ["masked"]),
        # stack pairs of frames: [B, T, F] -> [B, T/2, 2F]; lengths halved (ceil)
        n("Reshape", ["masked", "stack"], ["stacked"]),
        n("Add", ["feature_lens", "one"], ["lens_p1"]),
        n("Div", ["lens_p1", "two"], ["half_lens"]),
        n("Cast", ["half_lens"], ["enc_lens"], to=TensorProto.INT32),
        n("Transpose", ["stacked"], ["enc_in"], perm=[1, 0, 2]),
        n("LSTM", ["enc_in", "W_enc", "R_enc", "B_enc", "enc_lens"], ["enc_y", "", ""], hidden_size=hidden),
        n("Squeeze", ["enc_y", "ax1"], ["enc_seq"]),  # [T/2, B, H]
        n("Transpose", ["enc_seq"], ["enc"], perm=[1, 0, 2]),  # [B, T/2, H]
        # prediction network: embedding, a start-of-sequence zero row padded in front, LSTM
        n("Gather", ["table", "ids"], ["emb"]),  # [B, U, E]
        n("Pad", ["emb", "pads"], ["emb_sos"]),  # [B, U+1, E]
        n("Transpose", ["emb_sos"], ["pred_in"], perm=[1, 0, 2]),
        n("LSTM", ["pred_in", "W_pred", "R_pred", "", "", "h0", "c0"], ["pred_y", "pred_h", "pred_c"],
          hidden_size=hidden),
        n("Squeeze", ["pred_y", "ax1"], ["pred_seq"]),
        n("Transpose", ["pred_seq"], ["pred"], perm=[1, 0, 2]),  # [B, U+1, H]
        # joint: every second encoder frame x every label position
        n("Slice", ["enc", "starts", "ends", "ax1", "steps"], ["enc_sub"]),
        n("MatMul", ["enc_sub", "enc_proj"], ["f_proj"]),
        n("MatMul", ["pred", "pred_proj"], ["g_proj0"]),
        n("Add", ["g_proj0", "pred_bias"], ["g_proj"]),
        n("Unsqueeze", ["f_proj", "ax2"], ["f4"]),
        n("Unsqueeze", ["g_proj", "ax1"], ["g4"]),
        n("Add", ["f4", "g4"], ["fg"]),
        n("Relu", ["fg"], ["hid"]),
        n("Reshape", ["hid", "flat"], ["hid2"]),
        n("Gemm", ["hid2", "out_w", "out_b"], ["logits2"], transB=1),
        n("Shape", ["hid"], ["hshape"], end=3),  # [B, T', U+1]
        n("Concat", ["hshape", "minus1"], ["lshape"], axis=0),
        n("Reshape", ["logits2", "lshape"], ["logits"]),
    ]
    outputs = ["logits", "pred_h", "pred_c", "enc", "stacked", "mask"]
    return _model(nodes, feeds, consts, outputs), feeds


def test_an_rnnt_like_graph_matches_onnxruntime() -> None:
    model, feeds = _rnnt_like()
    got, want = _both(model, feeds)
    assert want[0].shape == (3, 3, 5, 11)
    _assert_close(got, want)
    enc = want[3]
    assert not enc[2, 1:].any() and enc[2, 0].any()  # the third sequence (2 frames -> 1 step) is padded


def test_embedding_gather_and_reshape_with_zero_and_minus_one() -> None:
    table = np.random.default_rng(1).standard_normal((9, 4)).astype(np.float32)
    ids = np.array([[0, 8, 3], [5, 5, 1]], np.int64)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["emb"]),
             helper.make_node("Reshape", ["emb", "shape"], ["y"]),
             helper.make_node("Squeeze", ["y", "axes"], ["z"]),
             helper.make_node("Unsqueeze", ["z", "axes2"], ["u"])]
    consts = {"table": table, "shape": np.array([0, -1, 1], np.int64), "axes": np.array([-1], np.int64),
              "axes2": np.array([0, -1], np.int64)}
    got, want = _both(_model(nodes, {"ids": ids}, consts, ["emb", "y", "z", "u"]), {"ids": ids})
    assert [w.shape for w in want] == [(2, 3, 4), (2, 12, 1), (2, 12), (1, 2, 12, 1)]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_every_rnnt_operator_is_supported() -> None:
    from mlpi.backends.onnx_to_torch import SUPPORTED_OPS

    ops = {"LSTM", "Transpose", "Squeeze", "Unsqueeze", "Shape", "Gather", "Range", "Less", "Cast", "Mul",
           "Reshape", "Concat", "MatMul", "Gemm", "Add", "Relu", "Slice", "Pad"}
    assert ops <= SUPPORTED_OPS
