"""``--shape``: a model's dynamic dimensions fixed as users give them (by input, or by the
file's name for a dimension), -1 and 0 read as dynamic, and a scalar input fed as it is."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from conftest import one_error, only_run_dir, run_cli
from onnx import TensorProto, helper

from mlpi.core.contract.backend import TensorSpec
from mlpi.core.contract.errors import UsageError
from mlpi.core.engine.onnx_file import inspect_onnx
from mlpi.core.engine.shapes import apply_shapes, parse_shape_options, symbolic_dims


def _save(path: Path, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
          nodes: list[onnx.NodeProto]) -> Path:
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs), opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def image_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """[batch, 3, h, w] -> mean over the image: [batch, 3]; h and w named, the batch too."""
    folder = tmp_path_factory.mktemp("shapes")
    return _save(folder / "image.onnx", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
                 [helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=0)])


def test_minus_one_and_zero_dimensions_are_dynamic(tmp_path: Path) -> None:
    """A PaddlePaddle export writes its batch as -1: never a batch of -1 for a backend to build."""
    path = _save(tmp_path / "m.onnx", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 0, 4])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 0, 4])], [helper.make_node("Relu", ["x"], ["y"])])
    artifact = inspect_onnx(path)
    assert artifact.inputs[0].shape == (None, None, 4) and artifact.outputs[0].shape == (None, None, 4)


def test_the_files_dimension_names_are_read(image_model: Path) -> None:
    assert symbolic_dims(image_model) == {"x": ("batch", None, "h", "w")}


INPUTS = [TensorSpec("x", "float32", (None, 3, None, None)), TensorSpec("ids", "int64", (None, None))]
NAMES = {"x": ("batch", None, "h", "w"), "ids": ("batch", "seq")}


def test_a_whole_shape_fixes_the_dynamic_dimensions_it_gives() -> None:
    fixed = apply_shapes(INPUTS, NAMES, {"x": "?x3x640x480", "ids": "-1x128"})
    assert [s.shape for s in fixed] == [(None, 3, 640, 480), (None, 128)]


def test_a_dimension_name_fixes_it_in_every_input() -> None:
    fixed = apply_shapes(INPUTS, NAMES, {"batch": "4", "h": "32"})
    assert [s.shape for s in fixed] == [(4, 3, 32, None), (4, None)]


@pytest.mark.parametrize(("shapes", "words"), [
    ({"x": "1x4x8x8"}, ["sets dimension 1 to 4", "fixes it at 3"]),
    ({"x": "1x3x8"}, ["has 3 dimension(s)", "has 4"]),
    ({"x": "1x3x8xfoo"}, ["'foo' is not a size"]),
    ({"h": "0"}, ["'0' is not a size"]),
    ({"seq_len": "5"}, ["no input and no named dimension 'seq_len'"]),
])
def test_a_shape_that_does_not_fit_is_refused(shapes: dict[str, str], words: list[str]) -> None:
    with pytest.raises(UsageError) as caught:
        apply_shapes(INPUTS, NAMES, shapes)
    for word in words:
        assert word in caught.value.message, caught.value.message


def test_an_unknown_name_lists_what_the_model_has() -> None:
    with pytest.raises(UsageError) as caught:
        apply_shapes(INPUTS, NAMES, {"seq_len": "5"})
    assert caught.value.hint == "its inputs: x [?, 3, ?, ?], ids [?, ?]; its named dimensions: batch, h, seq, w"


@pytest.mark.parametrize("value", ["x", "x=", "=1x2", "x 1x2"])
def test_a_malformed_option_is_refused(value: str) -> None:
    with pytest.raises(UsageError, match="is not NAME=DIMS"):
        parse_shape_options([value])


def test_a_name_given_twice_is_refused() -> None:
    with pytest.raises(UsageError, match="gives 'x' twice"):
        parse_shape_options(["x=1", "x=2"])


def test_synthetic_data_cannot_guess_and_names_the_option(image_model: Path, tmp_path: Path) -> None:
    proc = run_cli(["run", "--model-path", str(image_model), "--duration", "1", "--output", "out"], tmp_path)
    one_error(proc, "input 'x' has shape [?, 3, ?, ?]")
    assert "hint: fix them with --shape x=?x3xNxN" in proc.stderr


def test_a_run_with_shapes_feeds_them_and_records_them(image_model: Path, tmp_path: Path) -> None:
    proc = run_cli(["run", "--model-path", str(image_model), "--shape", "h=32", "--shape", "w=48", "--duration", "1",
                    "--output", "out"], tmp_path)
    assert proc.returncode in (0, 3), proc.stderr
    run_dir = only_run_dir(tmp_path / "out")
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["model"]["inputs"][0]["shape"] == [None, 3, 32, 48]
    assert plan["extra"]["shapes"] == {"h": "32", "w": "48"}
    result = json.loads((run_dir / "result.json").read_text())
    assert result["settings"]["shapes"] == {"h": "32", "w": "48"} and result["tests"][0]["status"] == "ok"


def test_a_scalar_input_is_fed_as_it_is_not_batched(tmp_path: Path) -> None:
    """A sample-rate input of shape []: a batch of them fed as [n] would broadcast against
    the other inputs (a wrong answer) or fail in the runtime; mlpi feeds the one value as it is."""
    path = _save(tmp_path / "scalar.onnx",
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
                  helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
                 [helper.make_node("Cast", ["sr"], ["f"], to=TensorProto.FLOAT), helper.make_node("Mul", ["x", "f"], ["y"])])
    proc = run_cli(["run", "--model-path", str(path), "--duration", "0.3", "--output", "out"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    (result,) = (tmp_path / "out").glob("*/result.json")
    assert json.loads(result.read_text())["settings"]["batch_axes"] == {"sr": {"axis": None, "why": "a scalar"}}