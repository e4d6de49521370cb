"""Models shaped like the ones people export, through `mlpi run` on every installed backend.

Each is built here with onnx.helper the way exporters write them: a sequence length left
dynamic (fixed with ``--shape``), a batch written as ``-1`` (a PaddlePaddle export), an ``If``
on a scalar flag, a bfloat16 output, onnxruntime's int8 LSTM. Every backend must answer each sample as onnxruntime
answers it alone, or refuse the model with one ``error:`` line; never answer wrongly.
(Scalar inputs, LSTM states batched along dimension 1 and sequence-first LSTMs are in
tests/test_batch_axes.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import run_cli
from tests.test_batch_axes import CPU_BACKENDS, SAMPLES, f32_flags, needs
from tests.test_batch_axes import save_model as _save

SEQ = 7


def dynamic_seq_model(path: Path) -> Path:
    """``tokens [batch, seq]`` float -> ``pooled [batch, 4]``: a dynamic sequence length."""
    w = numpy_helper.from_array(np.random.default_rng(2).standard_normal((1, 4)).astype(np.float32), "w")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [helper.make_node("ReduceMean", ["tokens", "axes"], ["mean"], keepdims=1),
             helper.make_node("MatMul", ["mean", "w"], ["pooled"])]
    graph = helper.make_graph(nodes, "seq", [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["batch", "seq"])],
                              [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", 4])], [w, axes])
    return _save(graph, path, opset=18)


def minus_one_batch_model(path: Path) -> Path:
    """``x [-1, 5]`` -> ``y [-1, 5]`` = relu(x) * 2: the batch written as -1, as Paddle exports do."""
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "two"], ["y"])]
    graph = helper.make_graph(nodes, "paddle", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 5])], [two])
    return _save(graph, path)


def if_model(path: Path) -> Path:
    """``x [batch, 3]``, ``flag []`` bool -> ``y [batch, 3]``: x * 3 where flag, else x - 1."""
    then_graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "three"], ["t"])], "then", [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(np.array(3.0, np.float32), "three")])
    else_graph = helper.make_graph(
        [helper.make_node("Sub", ["x", "one"], ["e"])], "else", [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(np.array(1.0, np.float32), "one")])
    node = helper.make_node("If", ["flag"], ["y"], then_branch=then_graph, else_branch=else_graph)
    graph = helper.make_graph([node], "if",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3]),
                               helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])])
    return _save(graph, path)


def bf16_output_model(path: Path) -> Path:
    """``x [batch, 4]`` -> ``y [batch, 4]`` bfloat16: a Cast at the end."""
    graph = helper.make_graph([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.BFLOAT16)], "bf16",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, ["batch", 4])])
    return _save(graph, path)


def int8_lstm_model(path: Path) -> Path:
    """``x [batch, seq, 6]`` -> ``y [batch, seq, 8]``: onnxruntime's dynamically quantised
    bidirectional LSTM (``com.microsoft::DynamicQuantizeLSTM``, int8 weights, hidden 4) between
    the transposes a batch-first CRNN has, as ``quantize_dynamic`` writes an int8 OCR model."""
    rng = np.random.default_rng(4)
    hidden, dirs = 4, 2
    consts = {
        "W": rng.integers(-127, 128, (dirs, 6, 4 * hidden)).astype(np.int8),
        "R": rng.integers(-127, 128, (dirs, hidden, 4 * hidden)).astype(np.int8),
        "B": (0.2 * rng.standard_normal((dirs, 8 * hidden))).astype(np.float32),
        "W_scale": np.array([0.011, 0.009], np.float32), "W_zero_point": np.zeros(dirs, np.int8),
        "R_scale": np.array([0.013, 0.008], np.float32), "R_zero_point": np.zeros(dirs, np.int8),
        "shape": np.array([0, 0, 2 * hidden], np.int64),
    }
    nodes = [
        helper.make_node("Transpose", ["x"], ["seq_first"], perm=[1, 0, 2]),
        helper.make_node("DynamicQuantizeLSTM", ["seq_first", "W", "R", "B", "", "", "", "", "W_scale", "W_zero_point",
                                                 "R_scale", "R_zero_point"], ["Y"],
                         domain="com.microsoft", hidden_size=hidden, direction="bidirectional"),
        helper.make_node("Transpose", ["Y"], ["batch_first"], perm=[2, 0, 1, 3]),
        helper.make_node("Reshape", ["batch_first", "shape"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "int8_lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", SEQ, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", SEQ, 2 * hidden])],
                              [numpy_helper.from_array(v, k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


#: name -> (builder, per-sample input shapes (a scalar input: every sample the same), extra run flags)
CASES = {
    "dynamic-seq": (dynamic_seq_model, {"tokens": (SEQ,)}, ["--shape", f"seq={SEQ}"]),
    "minus-one-batch": (minus_one_batch_model, {"x": (5,)}, []),
    "if": (if_model, {"x": (3,), "flag": ()}, []),
    "bf16-output": (bf16_output_model, {"x": (4,)}, []),
    # Batches of 1: dynamic quantisation takes its scale from the whole batch, so in
    # onnxruntime too a sample's answer depends on the others batched with it.
    "int8-lstm": (int8_lstm_model, {"x": (SEQ, 6)}, ["--batch-size", "1"]),
}


def _reference(model: Path, feeds: dict[str, np.ndarray]) -> list[bytes]:
    """Each sample alone through onnxruntime, as the accuracy log holds it (bfloat16 as its bits)."""
    import onnxruntime as ort

    if model.stem == "bf16-output":  # onnxruntime's Python API has no bfloat16 arrays: Cast rounds to nearest even
        from mlpi.core.engine.precision_convert import bfloat16_bits

        return [bfloat16_bits(feeds["x"][i]).tobytes() for i in range(SAMPLES)]
    session = ort.InferenceSession(str(model))
    out = []
    for i in range(SAMPLES):
        alone = {name: (np.array(array[i]) if array.ndim == 1 and name == "flag" else array[i : i + 1])
                 for name, array in feeds.items()}
        out.append(b"".join(np.ascontiguousarray(a).tobytes() for a in session.run(None, alone)))
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(9)
    made = {}
    for name, (build, samples, flags) in CASES.items():
        model = build(base / f"{name}.onnx")
        feeds = {k: (np.ones(SAMPLES, bool) if not shape else rng.standard_normal((SAMPLES, *shape)).astype(np.float32))
                 for k, shape in samples.items()}
        np.savez(base / f"{name}.npz", **feeds)
        made[name] = (model, base / f"{name}.npz", flags, _reference(model, feeds))
    return made


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "null"])
@pytest.mark.parametrize("case", list(CASES))
def test_every_backend_answers_as_onnxruntime_or_refuses(models: dict, case: str, backend: str, tmp_path: Path) -> None:
    needs(backend)
    model, data, flags, want = models[case]
    proc = run_cli(["run", "--backend", backend, "--model-path", str(model), "--dataset", "numpy", "--dataset-path",
                    str(data), "--mode", "accuracy", "--batch-size", "4", *flags, *f32_flags(backend), "--output",
                    str(tmp_path / "r")], tmp_path)
    if proc.returncode != 0:  # a refusal: one error line, no traceback, before or during the test
        assert "Traceback" not in proc.stderr, proc.stderr
        assert [line for line in proc.stderr.splitlines() if line.startswith("error:")], proc.stderr
        refusable = case == "bf16-output" or backend == "pytorch" or (case == "int8-lstm" and backend == "openvino")
        assert refusable, f"{backend} refused {case}: {proc.stderr}"
        return
    (run_dir,) = [p for p in (tmp_path / "r").iterdir() if p.is_dir()]
    (log,) = run_dir.glob("**/accuracy/mlperf_log_accuracy.json")
    got = [bytes.fromhex(e["data"]) for e in sorted(json.loads(log.read_text()), key=lambda e: e["qsl_idx"])]
    if case == "bf16-output":  # bit patterns: exactly onnxruntime's rounding
        assert got == want, f"{backend} answers {case} unlike onnxruntime"
        return
    assert len(got) == len(want)
    for i, (answer, expected) in enumerate(zip(got, want)):  # float32 outputs; batches of 4 may round otherwise
        np.testing.assert_allclose(np.frombuffer(answer, np.float32), np.frombuffer(expected, np.float32),
                                   rtol=1e-5, atol=1e-6, err_msg=f"{backend} {case} sample {i}")
