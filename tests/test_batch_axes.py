"""Inputs batched along another dimension, or not at all, through `mlpi run` on every backend.

Models built here the way real ones are exported: a voice-activity detector with a sample-rate
scalar and an LSTM state ``[layers, batch, hidden]``; a sequence-first LSTM whose batch is
dimension 1 of its input and of every output. Each sample's answer must be what onnxruntime
gives that sample alone in the file's own layout, on every installed backend.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mlpi.core.contract.backend import TensorSpec
from mlpi.core.contract.errors import MlpiError, UsageError
from mlpi.core.engine.batch_axes import parse_batch_axes, resolve_batch_axes
from mlpi.core.plugins.config import PluginsConfig
from mlpi.core.plugins.registry import Registry
from tests.conftest import one_error, run_cli

HIDDEN, FEATURES, STEPS = 8, 6, 5
SAMPLES = 12


def save_model(graph: onnx.GraphProto, path: Path, opset: int = 17) -> Path:
    """``graph`` as a checked model file at ``path``."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def vad_model(path: Path) -> Path:
    """``x [batch, 6]``, ``sr []`` (int64), ``state [2, batch, 8]`` -> ``y [batch, 8]``,
    ``state_out [2, batch, 8]``: y = tanh(x W + state[0] + state[1]) * sr / 16000."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((FEATURES, HIDDEN)).astype(np.float32), "W")
    scale = numpy_helper.from_array(np.array(16000.0, np.float32), "scale")
    axes = numpy_helper.from_array(np.array([0], np.int64), "axes")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("ReduceSum", ["state", "axes"], ["summed"], keepdims=0),
        helper.make_node("Add", ["xw", "summed"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["act"]),
        helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["srf", "scale"], ["ratio"]),
        helper.make_node("Mul", ["act", "ratio"], ["y"]),
        helper.make_node("Unsqueeze", ["y", "axes"], ["y1"]),
        helper.make_node("Concat", ["y1", "y1"], ["state_out"], axis=0),
    ]
    graph = helper.make_graph(
        nodes, "vad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, []),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", HIDDEN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", HIDDEN]),
         helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [2, "batch", HIDDEN])],
        [w, scale, axes])
    return save_model(graph, path)


def seq_lstm_model(path: Path) -> Path:
    """A sequence-first LSTM: ``X [5, batch, 6]``, ``h0 [1, batch, 8]`` -> ``Y [5, 1, batch, 8]``,
    ``Y_h [1, batch, 8]``: the batch is dimension 1 of the input and 2 of Y."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)
             for name, shape in (("W", (1, 4 * HIDDEN, FEATURES)), ("R", (1, 4 * HIDDEN, HIDDEN)), ("B", (1, 8 * HIDDEN)))]
    node = helper.make_node("LSTM", ["X", "W", "R", "B", "", "h0"], ["Y", "Y_h"], hidden_size=HIDDEN)
    graph = helper.make_graph(
        [node], "lstm",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [STEPS, "batch", FEATURES]),
         helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, "batch", HIDDEN])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [STEPS, 1, "batch", HIDDEN]),
         helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [1, "batch", HIDDEN])],
        inits)
    return save_model(graph, path)


#: The built-in backends that run on this machine's CPU.
CPU_BACKENDS = ("onnxruntime", "openvino", "pytorch", "null")


def f32_flags(backend: str) -> list[str]:
    """``--precision fp32`` for OpenVINO, whose CPU plugin otherwise picks bf16 on CPUs with
    AVX-512 BF16 or AMX (and says so): these tests check f32's answers."""
    return ["--precision", "fp32"] if backend == "openvino" else []


def needs(backend: str) -> None:
    """Skip, saying why, where ``backend``'s runtime is not installed (the README's environment
    has onnxruntime only; CI runs the skipped files again with every extra)."""
    try:
        Registry(PluginsConfig.load()).backend(backend).version()
    except MlpiError as exc:
        pytest.skip(f"{backend} is not installed: {exc.message}")


def _spec(name: str, shape: tuple) -> TensorSpec:
    return TensorSpec(name, "float32", shape)


def test_axes_come_from_the_files_dimension_names() -> None:
    inputs = [_spec("X", (STEPS, None, FEATURES)), _spec("h0", (1, None, HIDDEN)), TensorSpec("sr", "int64", ())]
    outputs = [_spec("Y", (STEPS, 1, None, HIDDEN)), _spec("Y_h", (1, None, HIDDEN))]
    names = {"X": (None, "batch", None), "h0": (None, "batch", None), "sr": (),
             "Y": (None, None, "batch", None), "Y_h": (None, "batch", None)}
    resolved = resolve_batch_axes(inputs, outputs, names, {})
    assert [s.batch_axis for s in resolved.inputs] == [1, 1, None]
    assert [s.batch_axis for s in resolved.outputs] == [2, 1]
    assert resolved.record()["sr"] == {"axis": None, "why": "a scalar"}
    assert resolved.record()["Y"] == {"axis": 2, "why": "its dimension named 'batch'"}
    # BERT-like [batch, seq] inputs keep dimension 0 (both names are in every input; batch is first)
    bert = [_spec("ids", (None, None)), _spec("mask", (None, None))]
    same = resolve_batch_axes(bert, [], {"ids": ("batch", "seq"), "mask": ("batch", "seq")}, {})
    assert [s.batch_axis for s in same.inputs] == [0, 0] and same.record() == {}
    given = resolve_batch_axes(inputs, outputs, names, parse_batch_axes(["h0=none", "Y=0"]))
    assert given.inputs[1].batch_axis is None and given.outputs[0].batch_axis == 0
    assert given.record()["h0"]["why"] == "--batch-axis"


@pytest.mark.parametrize(("given", "words"), [
    (["hx=1"], "'hx', which is not an input or output"),
    (["h0=3"], "so its batch cannot be dimension 3"),
    (["X=none", "h0=none"], "no input of this model is batched"),
])
def test_axes_that_cannot_be_are_refused(given: list[str], words: str) -> None:
    inputs = [_spec("X", (STEPS, None, FEATURES)), _spec("h0", (1, None, HIDDEN))]
    with pytest.raises(UsageError, match=words):
        resolve_batch_axes(inputs, [], {}, parse_batch_axes(given))


@pytest.mark.parametrize("text", ["h0", "h0=", "h0=first", "=1"])
def test_a_batch_axis_that_does_not_parse_is_refused(text: str) -> None:
    with pytest.raises(UsageError, match="--batch-axis"):
        parse_batch_axes([text])


def _reference(model: Path, feeds: dict[str, np.ndarray], axes: dict[str, int | None],
               out_axes: dict[str, int | None]) -> list[bytes]:
    """Each sample alone through onnxruntime in the file's layout, as the accuracy log holds it."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model))
    names = [o.name for o in session.get_outputs()]
    answers = []
    for i in range(SAMPLES):
        alone = {name: (array[i] if axes[name] is None else np.moveaxis(array[i : i + 1], 0, axes[name]))
                 for name, array in feeds.items()}
        got = session.run(names, {k: np.ascontiguousarray(v) for k, v in alone.items()})
        answers.append(b"".join(np.ascontiguousarray(np.moveaxis(a, out_axes[n], 0)).tobytes()
                                for n, a in zip(names, got)))
    return answers


def _logged(run_dir: Path) -> list[bytes]:
    (log,) = run_dir.glob("**/accuracy/mlperf_log_accuracy.json")
    entries = sorted(json.loads(log.read_text()), key=lambda e: e["qsl_idx"])
    return [bytes.fromhex(e["data"]) for e in entries]


CASES = {
    "vad": (vad_model, {"x": (FEATURES,), "state": (2, HIDDEN), "sr": ()},
            {"x": 0, "state": 1, "sr": None}, {"y": 0, "state_out": 1}),
    "lstm": (seq_lstm_model, {"X": (STEPS, FEATURES), "h0": (1, HIDDEN)}, {"X": 1, "h0": 1}, {"Y": 2, "Y_h": 1}),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, dict]]:
    """Each model, a numpy data file of batch-first samples (sr: 8000 in every sample), and
    what onnxruntime answers each sample alone."""
    base = tmp_path_factory.mktemp("axes")
    rng = np.random.default_rng(5)
    made = {}
    for name, (build, samples, axes, out_axes) in CASES.items():
        model = build(base / f"{name}.onnx")
        feeds = {k: (np.full((SAMPLES,), 8000, np.int64) if not shape else
                     rng.standard_normal((SAMPLES, *shape)).astype(np.float32)) for k, shape in samples.items()}
        data = base / f"{name}.npz"
        np.savez(data, **feeds)
        made[name] = (model, data, {"want": _reference(model, feeds, axes, out_axes), "feeds": feeds})
    return made


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_each_sample_gets_its_own_answer_on_every_backend(models: dict, backend: str, case: str,
                                                          tmp_path: Path) -> None:
    needs(backend)
    model, data, known = models[case]
    proc = run_cli(["run", "--backend", backend, "--model-path", str(model), "--dataset", "numpy", "--dataset-path",
                    str(data), "--mode", "accuracy", "--batch-size", "4", *f32_flags(backend), "--output",
                    str(tmp_path / "r")], tmp_path)
    if backend == "pytorch" and proc.returncode != 0 and "error:" in proc.stderr and "Traceback" not in proc.stderr:
        pytest.skip(f"pytorch refuses it: {proc.stderr.strip().splitlines()[-2]}")
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = [p for p in (tmp_path / "r").iterdir() if p.is_dir()]
    result = json.loads((run_dir / "result.json").read_text())
    axes = result["settings"]["batch_axes"]
    assert {k: v["axis"] for k, v in axes.items()} == {k: v for k, v in {**CASES[case][2], **CASES[case][3]}.items() if v != 0}
    got = _logged(run_dir)
    assert len(got) == SAMPLES
    if backend == "null":
        return  # zeros of the right shapes: the layout is what is checked
    for i, (answer, want) in enumerate(zip(got, known["want"])):
        np.testing.assert_allclose(np.frombuffer(answer, np.float32), np.frombuffer(want, np.float32),
                                   rtol=1e-4, atol=1e-5, err_msg=f"{backend} {case} sample {i}")


def test_synthetic_data_feeds_one_value_to_every_batch(models: dict, tmp_path: Path) -> None:
    model, _, _ = models["vad"]
    proc = run_cli(["run", "--backend", "onnxruntime", "--model-path", str(model), "--duration", "0.3",
                    "--output", str(tmp_path / "r")], tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_samples_that_disagree_on_an_unbatched_input_are_refused(models: dict, tmp_path: Path) -> None:
    model, _, known = models["vad"]
    feeds = dict(known["feeds"])
    feeds["sr"] = np.arange(SAMPLES, dtype=np.int64) + 8000
    np.savez(tmp_path / "bad.npz", **feeds)
    proc = run_cli(["run", "--backend", "onnxruntime", "--model-path", str(model), "--dataset", "numpy",
                    "--dataset-path", str(tmp_path / "bad.npz"), "--mode", "accuracy", "--output", str(tmp_path / "r")],
                   tmp_path)
    assert proc.returncode != 0
    assert "input 'sr' is not batched" in proc.stderr and "different values" in proc.stderr


def test_an_engine_building_backend_refuses_other_axes(tmp_path: Path) -> None:
    from mlpi.core.contract.backend import ModelArtifact, require_batch_first

    artifact = ModelArtifact(tmp_path / "m.onnx", "0", (TensorSpec("h0", "float32", (1, None, 8), 1),), ())
    with pytest.raises(UsageError, match="'h0' \\(batched along dimension 1\\)"):
        require_batch_first(artifact, "tensorrt", "builds optimisation profiles for batches")


def test_a_batch_axis_for_a_name_the_model_lacks_is_one_error(models: dict, tmp_path: Path) -> None:
    model, _, _ = models["lstm"]
    proc = run_cli(["run", "--model-path", str(model), "--batch-axis", "h1=1", "--quick"], tmp_path)
    one_error(proc, "--batch-axis names 'h1'")


def test_a_dimension_fixed_by_shape_is_not_the_batch(tmp_path: Path) -> None:
    """An OCR recogniser exported as ``[1, 1, 64, image_width]`` (its only named dimension is the
    width): with ``--shape image_width=32`` the samples are batched (of 1) along dimension 0, as
    the array's first axis holds them, not along the width."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2], keepdims=0)], "ocr",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 64, "image_width"])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, [1, "image_width"])],
    )
    model = save_model(graph, tmp_path / "ocr.onnx", opset=17)
    images = np.random.default_rng(0).random((3, 1, 64, 32), dtype=np.float32)
    np.savez(tmp_path / "images.npz", image=images)
    proc = run_cli(["run", "--model-path", str(model), "--shape", "image_width=32", "--dataset", "numpy",
                    "--dataset-path", str(tmp_path / "images.npz"), "--mode", "accuracy", "--output", str(tmp_path / "r")],
                   tmp_path)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = [p for p in (tmp_path / "r").iterdir() if p.is_dir()]
    assert "batch_axes" not in json.loads((run_dir / "result.json").read_text())["settings"]
    got = _logged(run_dir)
    for answer, image in zip(got, images):
        np.testing.assert_allclose(np.frombuffer(answer, np.float32), image.mean(axis=(0, 1)), rtol=1e-5)


def test_an_output_batched_along_another_dimension_is_named_in_the_hint(tmp_path: Path) -> None:
    """A CRNN's output is [time, batch, classes], though its file declares [1, seqlen] (ddddocr's
    does): the error names the dimension where the batch is, and --batch-axis it runs."""
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["image"], ["scores"], perm=[2, 0, 1])], "crnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 4, 6])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, "seqlen"])],
    )
    model = save_model(graph, tmp_path / "crnn.onnx")
    images = np.random.default_rng(0).random((2, 4, 6), dtype=np.float32)
    np.savez(tmp_path / "images.npz", image=images)
    args = ["run", "--model-path", str(model), "--dataset", "numpy", "--dataset-path", str(tmp_path / "images.npz"),
            "--mode", "accuracy", "--output", str(tmp_path / "r")]
    refused = run_cli(args, tmp_path)
    one_error(refused, "output 'scores' has shape (6, 1, 4), with no batch dimension of 1 first")
    assert "hint: if its batch is dimension 1, say so: --batch-axis scores=1" in refused.stderr
    proc = run_cli([*args, "--batch-axis", "scores=1"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    run_dir = max((p for p in (tmp_path / "r").iterdir() if p.is_dir()), key=lambda p: p.name)
    for answer, image in zip(_logged(run_dir), images):
        np.testing.assert_array_equal(np.frombuffer(answer, np.float32), image.T.reshape(-1))
