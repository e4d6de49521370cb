"""The random-weights 3D-UNet graph (mlpi.models.unet3d_graph): MLPerf's signature at opset 12,
seeded weights, independent batch rows on onnxruntime, the same logits from OpenVINO, and the
MAC and parameter counts, analytic and from the graph.

Runs use the narrow widths (unet3d_graph.NARROW) at the real 128^3 window; the full-size graph
(125 MB) is built and checked, never run. Tolerances come from float32 sums over a window's
2M voxels: each instance norm reduces over all of them, and the order differs between a batch
of 1 and of 2 (onnxruntime: up to ~2e-5 on logits of up to ~12, measured) and more between
runtimes (OpenVINO's instance norm: up to ~2e-2, mean ~8e-4, measured; its first instance norm
alone is ~1.6e-3 from a float64 reference, onnxruntime's ~2e-4).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mlpi.models import unet3d_graph as ug

ort = pytest.importorskip("onnxruntime")

NARROW = ug.NARROW
EDGE = 128


@pytest.fixture(scope="module")
def narrow(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ug.write_unet3d(tmp_path_factory.mktemp("unet3d") / "sub" / "narrow.onnx", 0, NARROW)


@pytest.fixture(scope="module")
def session(narrow: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(narrow), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def windows() -> np.ndarray:
    """Two random windows, [2, 1, 128, 128, 128] (preprocessed CT is roughly zero-mean, unit-std)."""
    return np.random.default_rng(5).standard_normal((2, 1, EDGE, EDGE, EDGE), dtype=np.float32)


@pytest.fixture(scope="module")
def batch2(session: ort.InferenceSession, windows: np.ndarray) -> np.ndarray:
    return _run(session, windows)


@pytest.fixture(scope="module")
def single(session: ort.InferenceSession, windows: np.ndarray) -> np.ndarray:
    return _run(session, windows[:1])


def _run(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    return session.run([ug.OUTPUT], {ug.INPUT: x})[0]


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param if d.dim_param else d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _check_signature(model: onnx.ModelProto, edge: int) -> None:
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 12)]
    assert model.ir_version == 7
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    assert [v.name for v in inputs] == [ug.INPUT] and [v.name for v in graph.output] == [ug.OUTPUT]
    for value, channels in ((inputs[0], 1), (graph.output[0], ug.CLASSES)):
        assert value.type.tensor_type.elem_type == TensorProto.FLOAT
        assert _dims(value) == ["N", channels, edge, edge, edge]
    # shape inference reaches the declared output shape from the input's
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    shapes = {v.name: _dims(v) for v in inferred.graph.value_info}
    assert shapes["input_block/conv2/relu"][2:] == shapes["upsample4/conv2/relu"][2:] == [edge] * 3
    assert shapes["bottleneck/conv2/relu"][2:] == [edge // 32] * 3
    assert [_dims(v) for v in inferred.graph.output] == [["N", ug.CLASSES, edge, edge, edge]]


def _conv_macs(model: onnx.ModelProto) -> int:
    """Multiply-accumulates per sample of the graph's Conv and ConvTranspose nodes, from the
    weights' shapes and the shapes onnx infers (the batch dimension left out)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    shapes = {t.name: list(t.dims) for t in g.initializer}
    for v in [*g.input, *g.value_info, *g.output]:
        shapes[v.name] = _dims(v)
    total = 0
    for node in g.node:
        if node.op_type not in ("Conv", "ConvTranspose"):
            continue
        weight = shapes[node.input[1]]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs.get("group", 1) == 1
        if node.op_type == "Conv":  # W: [out, in, k, k, k]; each output voxel
            total += math.prod(weight) * math.prod(shapes[node.output[0]][2:])
        else:  # W: [in, out, k, k, k]; each input voxel
            total += math.prod(weight) * math.prod(shapes[node.input[0]][2:])
    return total


def test_constants_and_config() -> None:
    assert (ug.GRAPH_VERSION, ug.OPSET, ug.INPUT, ug.OUTPUT, ug.ROI, ug.CLASSES) == (1, 12, "input", "output", 128, 3)
    c = ug.UNetConfig()
    assert (c.filters, c.roi) == ((32, 64, 128, 256, 320), 128)
    assert c.levels == (32, 64, 128, 256, 320, 320)
    assert [c.edge(i) for i in range(6)] == [128, 64, 32, 16, 8, 4]
    assert NARROW.roi == 128 and len(NARROW.filters) == len(c.filters)
    with pytest.raises(ValueError, match="multiple"):
        ug.UNetConfig(roi=100)
    with pytest.raises(ValueError, match="multiple"):
        ug.UNetConfig(filters=(4, 8, 8, 16, 16, 16), roi=32)
    with pytest.raises(ValueError, match="positive"):
        ug.UNetConfig(filters=(4, 0, 8, 16, 16))
    with pytest.raises(ValueError, match="at least 2"):
        ug.UNetConfig(filters=(4,))


def test_narrow_signature_and_ops(narrow: Path) -> None:
    model = onnx.load(str(narrow))
    onnx.checker.check_model(model, full_check=True)
    _check_signature(model, EDGE)
    ops = [n.op_type for n in model.graph.node]
    # 2 input + 2 * 4 downsample + 2 bottleneck + 2 * 5 upsample conv blocks, and the output conv
    assert ops.count("Conv") == 22 + 1
    assert ops.count("InstanceNormalization") == ops.count("Relu") == 22
    assert ops.count("ConvTranspose") == ops.count("Concat") == 5
    assert set(ops) == {"Conv", "InstanceNormalization", "Relu", "ConvTranspose", "Concat"}
    # the skips join deepest first, the upsampled tensor first
    concats = [n.input for n in model.graph.node if n.op_type == "Concat"]
    assert [list(i) for i in concats] == [
        ["upsample0/upsample", "downsample3/conv2/relu"],
        ["upsample1/upsample", "downsample2/conv2/relu"],
        ["upsample2/upsample", "downsample1/conv2/relu"],
        ["upsample3/upsample", "downsample0/conv2/relu"],
        ["upsample4/upsample", "input_block/conv2/relu"],
    ]
    strides = {n.name: helper.get_attribute_value(n.attribute[[a.name for a in n.attribute].index("strides")])
               for n in model.graph.node if n.op_type == "Conv"}
    assert sorted(name for name, s in strides.items() if s == [2, 2, 2]) == [
        "bottleneck/conv1/conv", *(f"downsample{i}/conv1/conv" for i in range(4))]
    assert [p.name for p in narrow.parent.iterdir()] == ["narrow.onnx"]  # no temporary file left


def test_full_graph_structure() -> None:
    """The full-size graph, built and checked but not run."""
    start = time.monotonic()
    model = ug.build_unet3d(0)
    onnx.checker.check_model(model)
    _check_signature(model, EDGE)
    weights = sum(math.prod(t.dims) for t in model.graph.initializer)
    assert weights == ug.parameters() == 31_190_243
    assert _conv_macs(model) == ug.macs() == 477_298_688_000
    widths = {t.name: list(t.dims) for t in model.graph.initializer}
    assert widths["input_block/conv1/conv/W"] == [32, 1, 3, 3, 3]
    assert widths["bottleneck/conv1/conv/W"] == [320, 320, 3, 3, 3]
    assert widths["upsample0/upsample/W"] == [320, 320, 2, 2, 2]
    assert widths["upsample1/conv1/conv/W"] == [256, 512, 3, 3, 3]
    assert widths["output/conv/W"] == [3, 32, 1, 1, 1]
    assert time.monotonic() - start < 60


def test_macs_and_parameters_match_the_graph() -> None:
    for config in (NARROW, ug.UNetConfig(filters=(2, 4, 8), roi=32), ug.UNetConfig(filters=(2, 4), roi=8)):
        model = ug.build_unet3d(3, config)
        assert _conv_macs(model) == ug.macs(config)
        assert sum(math.prod(t.dims) for t in model.graph.initializer) == ug.parameters(config)
    assert ug.macs(NARROW) == 6_432_325_632
    assert ug.parameters(NARROW) == 104_175
    # by hand, filters (2, 4) at 8^3 (levels 8^3, 4^3 and the bottleneck's 2^3):
    # input 1->2, 2->2; down 2->4, 4->4; bottleneck 4->4, 4->4; up 4->4 (transposed at 2^3),
    # 8->4, 4->4; up 4->2 (transposed at 4^3), 4->2, 2->2; output 2->3
    tiny = ug.UNetConfig(filters=(2, 4), roi=8)
    assert ug.macs(tiny) == (27 * 512 * (2 + 4) + 27 * 64 * (8 + 16) + 27 * 8 * (16 + 16) + 8 * 8 * 16
                             + 27 * 64 * (32 + 16) + 8 * 64 * 8 + 27 * 512 * (8 + 4) + 512 * 6) == 388_352
    assert ug.parameters(tiny) == (58 + 112) + (224 + 440) + (440 + 440) + (132 + 872 + 440) + (66 + 220 + 112) + 9


def test_other_window_sizes_for_the_builder() -> None:
    config = ug.UNetConfig(filters=(2, 4, 8), roi=16)
    model = ug.build_unet3d(0, config)
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, 1, 16, 16, 16), dtype=np.float32)
    assert _run(session, x).shape == (3, 3, 16, 16, 16)


def test_outputs(single: np.ndarray, batch2: np.ndarray) -> None:
    for y, batch in ((single, 1), (batch2, 2)):
        assert y.shape == (batch, ug.CLASSES, EDGE, EDGE, EDGE) and y.dtype == np.float32
        assert np.isfinite(y).all()
        assert 0 < float(y.std()) < 100
    # not degenerate: every class wins somewhere, and the logits vary with the input
    winners = np.bincount(single.argmax(axis=1).ravel(), minlength=ug.CLASSES)
    assert (winners > 0.05 * EDGE**3).all()
    assert np.abs(batch2[0] - batch2[1]).mean() > 0.1


def test_batch_rows_equal_single_runs(session: ort.InferenceSession, windows: np.ndarray, single: np.ndarray,
                                      batch2: np.ndarray) -> None:
    np.testing.assert_allclose(batch2[:1], single, rtol=0, atol=1e-4)
    np.testing.assert_allclose(batch2[1:], _run(session, windows[1:]), rtol=0, atol=1e-4)


def test_seed_decides_the_weights(tmp_path: Path, narrow: Path, session: ort.InferenceSession,
                                  windows: np.ndarray, single: np.ndarray) -> None:
    again = ug.write_unet3d(tmp_path / "again.onnx", 0, NARROW)
    assert again.read_bytes() == narrow.read_bytes() == ug.build_unet3d(0, NARROW).SerializeToString()
    np.testing.assert_array_equal(_run(session, windows[:1]), single)  # and the runs repeat exactly
    other = ug.write_unet3d(tmp_path / "other.onnx", 1, NARROW)
    assert other.read_bytes() != narrow.read_bytes()
    theirs = _run(ort.InferenceSession(str(other), providers=["CPUExecutionProvider"]), windows[:1])
    assert np.abs(theirs - single).mean() > 0.1


def test_openvino_gives_the_same_logits(narrow: Path, windows: np.ndarray, batch2: np.ndarray) -> None:
    ov = pytest.importorskip("openvino", reason="OpenVINO is not installed")
    core = ov.Core()
    # f32 explicitly: on CPUs with bf16 units OpenVINO would otherwise run in bf16.
    compiled = core.compile_model(core.read_model(str(narrow)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    theirs = compiled({ug.INPUT: windows})[compiled.output(ug.OUTPUT)]
    assert theirs.shape == batch2.shape and theirs.dtype == np.float32
    diff = np.abs(theirs - batch2)
    assert float(diff.max()) < 0.1 and float(diff.mean()) < 5e-3
    assert (theirs.argmax(axis=1) == batch2.argmax(axis=1)).mean() > 0.999
