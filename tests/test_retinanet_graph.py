"""The random-weights RetinaNet graph (mlpi.models.retinanet_graph): MLPerf's signature, seeded
weights, valid detections on onnxruntime, the same detections from OpenVINO and mlpi's torch
converter, and the converter operators the graph brought in, each against onnxruntime.

Tolerances: OpenVINO and torch sum the convolutions in other orders than onnxruntime, so their
scores differ from onnxruntime's by ~2e-7 and their boxes (in pixels, up to 128 here) by ~5e-5;
rtol = atol = 1e-3 covers that with a wide margin while still catching any real error (a box
off by a pixel, a wrong anchor). Counts, labels and order must be equal: the inputs keep every
score more than 2e-5 from 0.05, every two candidates' scores more than 1e-5 apart and every
IoU more than 1e-4 from 0.5 (a test checks it), so no rounding difference can flip a decision
and a difference there is a bug. (At 800x800, with ~1000 candidates, near-equal scores do
swap places between runtimes: that is why the comparison runs on inputs chosen this way.)
The converter's operators are compared exactly (indices) or to float32 rounding (values).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mlpi.core.contract.errors import ModelError
from mlpi.models import retinanet_graph as rg

ort = pytest.importorskip("onnxruntime")

SIZE = 128
NARROW = {"width": 0.125, "image_size": SIZE}


def _inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(12)  # chosen for test_inputs_keep_clear_of_the_thresholds
    noise = rng.random((1, 3, SIZE, SIZE), dtype=np.float32)
    blocks = rng.random((1, 3, SIZE // 16, SIZE // 16), dtype=np.float32)
    return {
        "noise": noise,
        "blocks": np.repeat(np.repeat(blocks, 16, axis=2), 16, axis=3),
        "zeros": np.zeros((1, 3, SIZE, SIZE), np.float32),
        "constant": np.full((1, 3, SIZE, SIZE), 0.5, np.float32),
    }


@pytest.fixture(scope="module")
def narrow(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rg.write_retinanet(tmp_path_factory.mktemp("retinanet") / "narrow.onnx", 0, **NARROW)


@pytest.fixture(scope="module")
def reference(narrow: Path) -> dict[str, list[np.ndarray]]:
    session = ort.InferenceSession(str(narrow), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == list(rg.OUTPUTS)
    return {name: session.run(None, {rg.INPUT: x}) for name, x in _inputs().items()}


def _check_signature(model: onnx.ModelProto, size: int) -> None:
    onnx.checker.check_model(model)
    onnx.shape_inference.infer_shapes(model, strict_mode=True)
    assert model.opset_import[0].version >= 13
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    assert [v.name for v in inputs] == ["images"]
    t = inputs[0].type.tensor_type
    assert t.elem_type == TensorProto.FLOAT
    assert [d.dim_value for d in t.shape.dim] == [1, 3, size, size]
    assert [v.name for v in graph.output] == ["boxes", "scores", "labels"]
    types = [v.type.tensor_type for v in graph.output]
    assert [t.elem_type for t in types] == [TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.INT64]
    assert [len(t.shape.dim) for t in types] == [2, 1, 1]
    assert types[0].shape.dim[1].dim_value == 4
    assert all(t.shape.dim[0].dim_param for t in types)  # N is dynamic


def test_constants() -> None:
    assert (rg.GRAPH_VERSION, rg.INPUT, rg.OUTPUTS) == (1, "images", ("boxes", "scores", "labels"))
    assert (rg.NUM_CLASSES, rg.IMAGE_SIZE) == (264, 800)


def test_narrow_graph_is_valid_with_mlperf_signature(narrow: Path) -> None:
    _check_signature(onnx.load(narrow), SIZE)


@pytest.mark.slow
def test_full_size_graph_signature(tmp_path: Path) -> None:
    start = time.perf_counter()
    path = rg.write_retinanet(tmp_path / "retinanet.onnx", 0)
    assert time.perf_counter() - start < 60, "building the full graph should take seconds"
    assert path.stat().st_size > 100e6  # ~37M parameters
    _check_signature(onnx.load(path), 800)


def test_macs() -> None:
    assert rg.macs() == sum(rg.macs_by_part().values())
    assert 150e9 < rg.macs() < 250e9
    assert rg.macs(0.125, SIZE) < rg.macs() / 100


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path: Path, narrow: Path) -> None:
    again = rg.write_retinanet(tmp_path / "again.onnx", 0, **NARROW)
    assert again.read_bytes() == narrow.read_bytes()
    other = onnx.load(rg.write_retinanet(tmp_path / "other.onnx", 1, **NARROW))
    first = onnx.load(narrow)
    assert [n.op_type for n in other.graph.node] == [n.op_type for n in first.graph.node]
    a = {t.name: numpy_helper.to_array(t) for t in first.graph.initializer}
    b = {t.name: numpy_helper.to_array(t) for t in other.graph.initializer}
    assert a.keys() == b.keys()
    assert not np.array_equal(a["head/cls_logits/W"], b["head/cls_logits/W"])
    assert np.array_equal(a["post/anchors0"], b["post/anchors0"])  # anchors do not depend on the seed
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def test_onnxruntime_detections_are_valid(reference: dict[str, list[np.ndarray]]) -> None:
    found = 0
    for name, (boxes, scores, labels) in reference.items():
        n = len(scores)
        assert boxes.dtype == np.float32 and scores.dtype == np.float32 and labels.dtype == np.int64, name
        assert boxes.shape == (n, 4) and labels.shape == (n,) and n <= 300, name
        assert np.all(np.diff(scores) <= 0) and np.all(scores > 0.05), name
        assert np.all((boxes >= 0) & (boxes <= SIZE)), name
        assert np.all(boxes[:, 2] >= boxes[:, 0]) and np.all(boxes[:, 3] >= boxes[:, 1]), name
        assert np.all((labels >= 0) & (labels < 264)), name
        for label in np.unique(labels):
            same = boxes[labels == label]
            iou = _iou(same, same)
            np.fill_diagonal(iou, 0)
            assert iou.max() <= 0.5 + 1e-6, f"{name}: label {label} kept boxes overlapping by {iou.max()}"
        found += n > 0
    assert len(reference["noise"][1]) >= 10 and len(reference["blocks"][1]) >= 10
    assert found >= 2


def test_inputs_keep_clear_of_the_thresholds(narrow: Path) -> None:
    """The random weights give candidates above 0.05 that NMS partly suppresses, and the inputs
    here have no per-level top score within 2e-5 of 0.05, no two candidates' scores within
    1e-5 of each other (their order decides NMS and the output order) and no IoU of two
    candidates within 1e-4 of 0.5: 50 times and more what OpenVINO and torch differ from
    onnxruntime by, so the detections they give must be onnxruntime's, in its order."""
    model = onnx.load(narrow)
    nms = next(n for n in model.graph.node if n.op_type == "NonMaxSuppression")
    extra = [nms.input[0], nms.input[1], *(f"post/top_scores{level}" for level in range(5))]
    model.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in extra)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for name, x in _inputs().items():
        _, scores, _, candidate_boxes, candidate_scores, *tops = session.run(None, {rg.INPUT: x})
        if name in ("noise", "blocks"):
            assert candidate_scores.size > len(scores) > 10, name
        assert np.abs(np.concatenate([t.ravel() for t in tops]) - 0.05).min() > 2e-5, name
        if candidate_scores.size > 1:
            assert np.diff(np.sort(candidate_scores.ravel())).min() > 1e-5, name
        iou = _iou(candidate_boxes[0], candidate_boxes[0])  # boxes offset by label: other labels never overlap
        np.fill_diagonal(iou, 0)
        assert np.all(np.abs(iou[iou > 0] - 0.5) > 1e-4), name


def _agree(name: str, got: list[np.ndarray], want: list[np.ndarray]) -> None:
    boxes, scores, labels = got
    assert labels.dtype == np.int64 and boxes.dtype == np.float32 and scores.dtype == np.float32, name
    assert len(scores) == len(want[1]), f"{name}: {len(scores)} detections, onnxruntime has {len(want[1])}"
    assert np.array_equal(labels, want[2]), name
    np.testing.assert_allclose(scores, want[1], rtol=1e-3, atol=1e-3, err_msg=name)
    np.testing.assert_allclose(boxes, want[0], rtol=1e-3, atol=1e-3, err_msg=name)


def test_openvino_gives_the_same_detections(narrow: Path, reference: dict[str, list[np.ndarray]]) -> None:
    ov = pytest.importorskip("openvino", reason="OpenVINO is not installed")
    core = ov.Core()
    # f32 explicitly: on CPUs with bf16 units OpenVINO would otherwise run in bf16.
    compiled = core.compile_model(core.read_model(str(narrow)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    for name, x in _inputs().items():
        result = compiled({rg.INPUT: x})
        _agree(name, [np.asarray(result[compiled.output(o)]) for o in rg.OUTPUTS], reference[name])


def test_torch_converter_gives_the_same_detections(narrow: Path, reference: dict[str, list[np.ndarray]]) -> None:
    torch = pytest.importorskip("torch", reason="torch is not installed")
    from mlpi.backends.onnx_to_torch import convert

    module = convert(onnx.load(narrow))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # these convolutions are tiny: on a busy machine threads only wait on each other
    try:
        with torch.inference_mode():
            for name, x in _inputs().items():
                _agree(name, [t.numpy() for t in module(torch.from_numpy(x))], reference[name])
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------- converter operators


def _tensor_type(array: np.ndarray) -> int:
    return helper.np_dtype_to_tensor_dtype(array.dtype)


def _single(op: str, inputs: dict[str, np.ndarray | None], outputs: list[str], opset: int = 13,
            consts: tuple[str, ...] = (), **attrs: object) -> onnx.ModelProto:
    """One ``op`` node; ``None`` inputs are left out (empty names), ``consts`` become initializers."""
    names = [name if value is not None else "" for name, value in inputs.items()]
    graph_inputs = [helper.make_tensor_value_info(k, _tensor_type(v), list(v.shape))
                    for k, v in inputs.items() if v is not None and k not in consts]
    initializers = [numpy_helper.from_array(v, k) for k, v in inputs.items() if v is not None and k in consts]
    graph = helper.make_graph([helper.make_node(op, names, outputs, name=op.lower(), **attrs)], op.lower(),
                              graph_inputs, [helper.make_empty_tensor_value_info(o) for o in outputs], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _both(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    torch = pytest.importorskip("torch", reason="torch is not installed")
    from mlpi.backends.onnx_to_torch import convert

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    initializers = {t.name for t in model.graph.initializer}
    names = [v.name for v in model.graph.input if v.name not in initializers]
    want = session.run(None, {k: feeds[k] for k in names})
    module = convert(model)
    with torch.inference_mode():
        got = [t.numpy() for t in module(*(torch.from_numpy(feeds[k]) for k in names))]
    return got, want


def _assert_same(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, g.shape, w.dtype, w.shape)
        if g.dtype.kind == "f":
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=0)
        else:
            np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize(
    ("shape", "axis", "k", "largest", "dtype"),
    [
        ((7,), 0, 4, 1, np.float32),
        ((7,), -1, 3, 0, np.float32),
        ((3, 9), 1, 9, 1, np.float32),
        ((3, 9), 0, 2, 0, np.float32),
        ((2, 5, 4), 1, 0, 1, np.float32),
        ((2, 6000), 1, 700, 1, np.float32),  # the torch.topk path, ties at the k-th value
        ((2, 6000), -1, 50, 0, np.float32),
        ((5000, 3), 0, 10, 1, np.int64),
        ((4, 5), -1, 5, 0, np.int64),
    ],
)
@pytest.mark.parametrize("k_const", [True, False])
def test_topk_matches_onnxruntime(shape, axis, k, largest, dtype, k_const) -> None:
    rng = np.random.default_rng(sum(shape) + k)
    x = rng.integers(0, 6, shape).astype(dtype)  # few distinct values: many ties
    model = _single("TopK", {"x": x, "k": np.array([k], np.int64)}, ["values", "indices"],
                    consts=("k",) if k_const else (), axis=axis, largest=largest)
    _assert_same(*_both(model, {"x": x, "k": np.array([k], np.int64)}))


def test_topk_distinct_values_and_opsets() -> None:
    x = np.random.default_rng(1).standard_normal((3, 40)).astype(np.float32)
    k = np.array([7], np.int64)
    for opset in (10, 11, 13):
        _assert_same(*_both(_single("TopK", {"x": x, "k": k}, ["v", "i"], opset=opset), {"x": x, "k": k}))
    _assert_same(*_both(_single("TopK", {"x": x}, ["v", "i"], opset=1, k=7), {"x": x}))


def test_topk_unsorted_gives_the_same_set() -> None:
    x = np.random.default_rng(2).standard_normal((4, 30)).astype(np.float32)
    k = np.array([6], np.int64)
    (gv, gi), (wv, wi) = _both(_single("TopK", {"x": x, "k": k}, ["v", "i"], sorted=0, largest=1), {"x": x, "k": k})
    assert np.array_equal(np.sort(gi, axis=1), np.sort(wi, axis=1))
    np.testing.assert_array_equal(np.take_along_axis(x, gi, 1), gv)


@pytest.mark.parametrize(
    "x",
    [
        np.array([[0, 1.5, 0], [2, 0, -1]], np.float32),
        np.zeros((2, 3, 4), np.float32),
        np.array([True, False, True]),
        np.array([[0, 3], [4, 0]], np.int64),
        np.array(2.0, np.float32),
    ],
)
def test_nonzero_matches_onnxruntime(x: np.ndarray) -> None:
    _assert_same(*_both(_single("NonZero", {"x": x}, ["y"]), {"x": x}))


@pytest.mark.parametrize(
    ("a", "b", "fmod"),
    [
        (np.array([-7, -3, 0, 3, 7, 9], np.int64), np.array([3, -3, 5, -2, 2, 4], np.int64), 0),
        (np.array([-7, -3, 0, 3, 7, 9], np.int64), np.array([3, -3, 5, -2, 2, 4], np.int64), 1),
        (np.array([[-7.5, 3.25], [6.0, -1.0]], np.float32), np.array([2.0, -1.5], np.float32), 1),
        (np.arange(20, dtype=np.int64).reshape(4, 5), np.array(264, np.int64), 0),
    ],
)
def test_mod_matches_onnxruntime(a: np.ndarray, b: np.ndarray, fmod: int) -> None:
    _assert_same(*_both(_single("Mod", {"a": a, "b": b}, ["y"], fmod=fmod), {"a": a, "b": b}))


def test_mod_fmod0_on_floats_takes_the_divisors_sign() -> None:
    """Mod with fmod=0 on floats, as ONNX defines it (opset 28): the remainder has the sign of
    the divisor, like numpy's mod, not C's fmod."""
    torch = pytest.importorskip("torch")
    from mlpi.backends.onnx_to_torch import convert

    a = np.array([-7.5, 7.5, -7.5, 3.0], np.float32)
    b = np.array([2.0, -2.0, -2.0, 1.5], np.float32)
    module = convert(_single("Mod", {"a": a, "b": b}, ["y"], fmod=0))
    got = module(torch.from_numpy(a), torch.from_numpy(b))
    got = got[0] if isinstance(got, (list, tuple)) else got
    np.testing.assert_array_equal(got.numpy(), np.mod(a, b))


_RESIZE_CASES = [
    # input shape, sizes or scales (one of them), coordinate mode, nearest mode
    ((1, 2, 4, 5), [1, 2, 8, 10], None, "asymmetric", "floor"),
    ((1, 2, 4, 5), [1, 2, 7, 9], None, "asymmetric", "floor"),
    ((1, 2, 7, 5), [1, 2, 3, 4], None, "half_pixel", "round_prefer_floor"),
    ((1, 2, 4, 5), [1, 2, 9, 11], None, "half_pixel", "round_prefer_ceil"),
    ((1, 1, 5, 6), [1, 1, 7, 13], None, "align_corners", "round_prefer_floor"),
    ((1, 1, 5, 6), [1, 1, 1, 13], None, "align_corners", "ceil"),
    ((1, 3, 6, 4), [1, 3, 5, 10], None, "pytorch_half_pixel", "floor"),
    ((1, 3, 6, 4), [1, 3, 1, 10], None, "pytorch_half_pixel", "round_prefer_floor"),
    ((1, 3, 6, 4), [1, 3, 9, 3], None, "tf_half_pixel_for_nn", "ceil"),
    ((2, 2, 3, 3), None, [1.0, 1.0, 2.0, 2.0], "asymmetric", "floor"),
    ((2, 2, 3, 5), None, [1.0, 1.0, 1.5, 0.6], "half_pixel", "round_prefer_floor"),
    ((2, 2, 3, 5), None, [1.0, 1.0, 2.5, 1.7], "half_pixel", "ceil"),
    ((1, 4, 6), None, [1.0, 0.5, 1.34], "asymmetric", "round_prefer_ceil"),
]


@pytest.mark.parametrize(("shape", "sizes", "scales", "coordinate", "nearest"), _RESIZE_CASES)
def test_resize_nearest_matches_onnxruntime(shape, sizes, scales, coordinate, nearest) -> None:
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    inputs: dict[str, np.ndarray | None] = {
        "x": x,
        "roi": None,
        "scales": np.array(scales, np.float32) if scales is not None else None,
        "sizes": np.array(sizes, np.int64) if sizes is not None else None,
    }
    model = _single("Resize", inputs, ["y"], consts=("scales", "sizes"), mode="nearest",
                    coordinate_transformation_mode=coordinate, nearest_mode=nearest)
    _assert_same(*_both(model, {"x": x}))


def test_resize_defaults_dynamic_sizes_and_axes() -> None:
    x = np.random.default_rng(4).standard_normal((1, 2, 5, 3)).astype(np.float32)
    sizes = np.array([1, 2, 8, 7], np.int64)
    # default modes (half_pixel, round_prefer_floor), sizes as a graph input
    model = _single("Resize", {"x": x, "roi": None, "scales": None, "sizes": sizes}, ["y"])
    _assert_same(*_both(model, {"x": x, "sizes": sizes}))
    # opset 18: sizes for the listed axes only
    hw = np.array([9, 2], np.int64)
    model = _single("Resize", {"x": x, "roi": None, "scales": None, "sizes": hw}, ["y"], opset=18,
                    consts=("sizes",), axes=[2, 3], coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    _assert_same(*_both(model, {"x": x}))


@pytest.mark.parametrize(
    ("attrs", "opset", "match"),
    [
        ({"coordinate_transformation_mode": "tf_crop_and_resize"}, 13, "tf_crop_and_resize"),
        ({"nearest_mode": "nearest"}, 13, "nearest_mode"),
    ],
)
def test_unsupported_resize_modes_are_model_errors(attrs: dict, opset: int, match: str) -> None:
    pytest.importorskip("torch")
    from mlpi.backends.onnx_to_torch import convert

    x = np.zeros((1, 1, 2, 2), np.float32)
    model = _single("Resize", {"x": x, "roi": None, "scales": None, "sizes": np.array([1, 1, 4, 4], np.int64)},
                    ["y"], opset=opset, consts=("sizes",), **attrs)
    with pytest.raises(ModelError, match=match):
        convert(model)


def _nms_data(seed: int, batches: int, classes: int, n: int, center: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    """Boxes in clusters (so they overlap), some with their corners swapped; scores with or without ties."""
    rng = np.random.default_rng(seed)
    clusters = rng.uniform(0, 60, (batches, 5, 2))
    ctr = clusters[:, rng.integers(0, 5, n)] + rng.normal(0, 3, (batches, n, 2))
    wh = rng.uniform(4, 16, (batches, n, 2))
    if center:
        boxes = np.concatenate([ctr, wh], axis=2)
    else:
        lo, hi = ctr - wh / 2, ctr + wh / 2
        boxes = np.concatenate([lo, hi], axis=2)
        swap = rng.random((batches, n)) < 0.3
        boxes[swap] = boxes[swap][:, [2, 3, 0, 1]]
    scores = rng.random((batches, classes, n))
    if ties:
        scores = np.round(scores * 6) / 6
    return boxes.astype(np.float32), scores.astype(np.float32)


@pytest.mark.parametrize("center", [0, 1])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize(
    ("max_out", "iou", "score"),
    [(100, 0.5, None), (3, 0.5, 0.4), (0, 0.5, None), (1, 0.3, 0.2), (100, 0.0, 0.5), (7, 1.0, None), (-2, 0.5, None)],
)
def test_nms_matches_onnxruntime(center: int, ties: bool, max_out: int, iou: float, score: float | None) -> None:
    boxes, scores = _nms_data(max_out + int(iou * 10) + center, batches=2, classes=3, n=60, center=center, ties=ties)
    inputs: dict[str, np.ndarray | None] = {
        "boxes": boxes, "scores": scores, "max_out": np.array([max_out], np.int64),
        "iou": np.array([iou], np.float32), "score": np.array([score], np.float32) if score is not None else None,
    }
    model = _single("NonMaxSuppression", inputs, ["selected"], consts=("max_out", "iou", "score"),
                    center_point_box=center)
    got, want = _both(model, {"boxes": boxes, "scores": scores})
    _assert_same(got, want)
    if max_out > 0:
        assert len(want[0]) > 0


@pytest.mark.parametrize(("center", "iou"), [(0, 0.3), (1, 0.6)])
def test_nms_across_blocks_matches_onnxruntime(center: int, iou: float) -> None:
    """Hundreds of clustered candidates with tied scores: boxes kept in one block of the greedy
    selection suppress boxes in later blocks, and ties keep onnxruntime's order across blocks."""
    pytest.importorskip("torch", reason="torch is not installed")
    from mlpi.backends.onnx_to_torch.ops_detection import BLOCK

    boxes, scores = _nms_data(11 + center, batches=2, classes=2, n=7 * BLOCK + 5, center=center, ties=True)
    inputs = {"boxes": boxes, "scores": scores, "max_out": np.array([400], np.int64),
              "iou": np.array([iou], np.float32), "score": None}
    model = _single("NonMaxSuppression", inputs, ["selected"], consts=("max_out", "iou"), center_point_box=center)
    got, want = _both(model, {"boxes": boxes, "scores": scores})
    _assert_same(got, want)
    assert 2 * BLOCK < len(want[0]) < 2 * 2 * 7 * BLOCK  # several blocks kept from, and some suppressed


def test_nms_optional_inputs_and_dynamic_thresholds() -> None:
    boxes, scores = _nms_data(5, batches=1, classes=4, n=40, center=0, ties=False)
    # only boxes and scores: max_output_boxes_per_class defaults to 0, so nothing is selected
    got, want = _both(_single("NonMaxSuppression", {"boxes": boxes, "scores": scores}, ["s"]),
                      {"boxes": boxes, "scores": scores})
    _assert_same(got, want)
    assert want[0].shape == (0, 3)
    # iou_threshold absent (0: any overlap suppresses), score_threshold given, all as graph inputs
    feeds = {"boxes": boxes, "scores": scores, "max_out": np.array(10, np.int64), "iou": None,
             "score": np.array(0.3, np.float32)}
    model = _single("NonMaxSuppression", feeds, ["s"])
    got, want = _both(model, {k: v for k, v in feeds.items() if v is not None})
    _assert_same(got, want)
    assert len(want[0]) > 0
    # one class, many boxes, scalar threshold inputs, as the RetinaNet graph feeds it
    boxes, scores = _nms_data(6, batches=1, classes=1, n=3000, center=0, ties=False)
    feeds = {"boxes": boxes, "scores": scores, "max_out": np.array([5000], np.int64),
             "iou": np.array([0.5], np.float32)}
    got, want = _both(_single("NonMaxSuppression", feeds, ["s"]), feeds)
    _assert_same(got, want)


def test_nms_unsupported_center_point_box_is_a_model_error() -> None:
    pytest.importorskip("torch")
    from mlpi.backends.onnx_to_torch import convert

    boxes, scores = _nms_data(0, 1, 1, 4, 0, False)
    with pytest.raises(ModelError, match="center_point_box=2"):
        convert(_single("NonMaxSuppression", {"boxes": boxes, "scores": scores}, ["s"], center_point_box=2))


def test_nms_iou_threshold_outside_0_1_is_a_model_error() -> None:
    torch = pytest.importorskip("torch")
    from mlpi.backends.onnx_to_torch import convert

    boxes, scores = _nms_data(0, 1, 1, 4, 0, False)
    inputs = {"boxes": boxes, "scores": scores, "max_out": np.array([3], np.int64), "iou": np.array([1.5], np.float32)}
    module = convert(_single("NonMaxSuppression", inputs, ["s"], consts=("max_out", "iou")))
    with pytest.raises(ModelError, match="iou_threshold"):
        module(torch.from_numpy(boxes), torch.from_numpy(scores))
