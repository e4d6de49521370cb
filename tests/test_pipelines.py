"""Models of several graphs, samples run in pieces over every unit, artifacts of several files.

The two demo plugins of :mod:`mlpi.testing.pipeline_models` are installed the way a third
party's are (a ``*.dist-info`` on PYTHONPATH) and run end to end; their accuracy logs are
checked against answers known by construction.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import only_run_dir, read_result, run_cli
from onnx import TensorProto, helper, numpy_helper

from mlpi.core.contract.accuracy import read_accuracy_log
from mlpi.core.contract.backend import Capabilities, Session, TensorSpec
from mlpi.core.contract.dataset import DataParams, DatasetRequest
from mlpi.core.contract.errors import ModelError
from mlpi.core.contract.model import GraphSpec, ModelSpec
from mlpi.core.engine.artifacts import Artifact, cached, fetch
from mlpi.core.engine.onnx_file import inspect_onnx, sha256_of
from mlpi.core.engine.pieces import PieceDispatcher
from mlpi.core.engine.planning import official_graphs
from mlpi.datasets.synthetic import Synthetic
from mlpi.testing.pipeline_models import (
    FEATURES,
    MAX_STEPS,
    SIGNAL,
    loop_reference,
    loop_weights,
    write_loop_graphs,
    write_window_graph,
)

ENTRY_POINTS = (
    "[mlpi.models]\n"
    "loop-demo = mlpi.testing.pipeline_models:loop_demo\n"
    "window-demo = mlpi.testing.pipeline_models:window_demo\n"
)


@pytest.fixture(scope="module")
def demo_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    site = tmp_path_factory.mktemp("site")
    dist = site / "demo_models-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: demo-models\nVersion: 0.1\n", encoding="utf-8")
    (dist / "entry_points.txt").write_text(ENTRY_POINTS, encoding="utf-8")
    return {"PYTHONPATH": str(site)}


def synthetic_samples(name: str, width: int, count: int, seed: int = 0) -> np.ndarray:
    """The samples ``--dataset synthetic`` gives a run with this seed."""
    spec = TensorSpec(name, "float32", (None, width))
    data = Synthetic().open(DatasetRequest(inputs=[spec], params=DataParams(), path=None, count=count, seed=seed))
    data.load(list(range(count)))
    return np.stack([data.sample(i)[name][0] for i in range(count)])


# -- several graphs and a loop ---------------------------------------------------------------


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_loop_demo_runs_two_graphs_and_answers_ragged_responses(tmp_path: Path, demo_env: dict[str, str], backend: str) -> None:
    pytest.importorskip({"onnxruntime": "onnxruntime", "openvino": "openvino"}[backend])
    graphs = tmp_path / "loop"
    write_loop_graphs(graphs, seed=0)
    count = 24
    result = run_cli(
        ["run", "--model", "loop-demo", "--model-path", str(graphs), "--backend", backend, "--count", str(count),
         "-s", "SingleStream,Offline", "--mode", "accuracy", "--quick", "--output", str(tmp_path / "out"),
         "--precision", "fp32"],  # OpenVINO's own default is bf16 on CPUs with AVX-512 BF16 or AMX
        tmp_path, demo_env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = only_run_dir(tmp_path / "out")
    plan = json.loads((run_dir / "plan.json").read_text())
    assert list(plan["model"]["graphs"]) == ["encoder", "step"]
    assert plan["model"]["main_role"] == "encoder"
    x = synthetic_samples("x", FEATURES, count)
    for scenario in ("SingleStream", "Offline"):
        responses = read_accuracy_log(run_dir / scenario / "accuracy" / "mlperf_log_accuracy.json")
        assert sorted(responses) == list(range(count))
        lengths = set()
        for index, raw in responses.items():
            got = np.frombuffer(raw, dtype=np.float32).reshape(-1, 8)
            want = loop_reference(x[index], seed=0)
            lengths.add(len(want))
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert len(lengths) > 1, "the fixture should give responses of different sizes"


def _loop_demo_derived(tmp_path: Path, env: dict[str, str], graphs: Path, precision: str, count: int) -> tuple[Path, dict]:
    """A loop-demo accuracy run at ``precision``: its run folder and result record."""
    out = tmp_path / f"out-{precision}"
    result = run_cli(["run", "--model", "loop-demo", "--model-path", str(graphs), "--precision", precision, "--count",
                      str(count), "-s", "Offline", "--mode", "accuracy", "--quick", "--output", str(out)], tmp_path, env)
    assert result.returncode == 0, result.stderr[-3000:]
    return only_run_dir(out), read_result(out)


def _near_fp32(run_dir: Path, count: int, tolerance: float) -> int:
    """How many of the run's responses have the fp32 reference's length and values."""
    x = synthetic_samples("x", FEATURES, count)
    responses = read_accuracy_log(run_dir / "Offline" / "accuracy" / "mlperf_log_accuracy.json")
    close = 0
    for index, raw in responses.items():
        got, want = np.frombuffer(raw, dtype=np.float32).reshape(-1, 8), loop_reference(x[index], seed=0)
        close += got.shape == want.shape and bool(np.allclose(got, want, rtol=tolerance, atol=tolerance))
    return close


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_every_graph_of_a_model_is_derived(tmp_path: Path, demo_env: dict[str, str], precision: str) -> None:
    """--precision on a model of two graphs: each graph is derived (fp16 weights; int8 Q/DQ),
    the plan runs the derived pair and records each transform, and the loop's answers stay
    near fp32's. int8 calibrates each graph on what the pipeline fed it while it answered the
    calibration samples with the fp32 graphs: the step graph, which no sample feeds directly,
    included."""
    from mlpi.core.engine.precision_convert import graph_precision

    graphs = tmp_path / "loop"
    write_loop_graphs(graphs, seed=0)
    env = {**demo_env, "MLPI_CACHE": str(tmp_path / "cache")}
    count = 12
    run_dir, result = _loop_demo_derived(tmp_path, env, graphs, precision, count)
    plan = json.loads((run_dir / "plan.json").read_text())
    for role in ("encoder", "step"):
        derived = Path(plan["model"]["graphs"][role]["path"])
        assert derived.is_relative_to(tmp_path / "cache" / "precision") and graph_precision(derived) == precision
        assert plan["model"]["graphs"][role]["sha256"] != sha256_of(graphs / f"{role}.onnx")
    record = result["model"]["precision"]
    assert record["method"] == "transform" and set(record["transform"]["graphs"]) == {"encoder", "step"}
    if precision == "fp16":
        close = _near_fp32(run_dir, count, 2e-2)
        assert close >= count * 3 // 4, f"{close} of {count} fp16 answers near fp32's"
        return
    assert record["transform"]["calibration"]["kind"] == "dataset" and record["closed_division"] is False
    assert "pipeline" in record["transform"]["calibrated_through"]
    # The step graph was calibrated on what the loop fed it: every state but each sample's
    # last (symmetric min-max: the input's scale is the largest magnitude / 127)
    x = synthetic_samples("x", FEATURES, count)
    fed = [np.tanh(x[i] @ loop_weights(0)[0]) for i in range(count)]
    fed += [state for i in range(count) for state in loop_reference(x[i], seed=0)[:-1]]
    step = onnx.load(plan["model"]["graphs"]["step"]["path"])
    values = {t.name: numpy_helper.to_array(t) for t in step.graph.initializer}
    quantize = next(n for n in step.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "state")
    assert float(values[quantize.input[1]]) == pytest.approx(float(np.abs(np.stack(fed)).max()) / 127, rel=1e-5)
    # and the run's answers are the derived pair's, run as the loop runs them (int8 rounding
    # flips the loop's stopping test on states near zero: fp32's are no yardstick here)
    import onnxruntime as ort

    encoder, stepper = (ort.InferenceSession(plan["model"]["graphs"][role]["path"]) for role in ("encoder", "step"))
    responses = read_accuracy_log(run_dir / "Offline" / "accuracy" / "mlperf_log_accuracy.json")
    for index, raw in responses.items():
        state, states = encoder.run(None, {"x": x[index:index + 1]})[0], []
        for _ in range(MAX_STEPS):
            state = stepper.run(None, {"state": state})[0]
            states.append(state[0])
            if state[0, 0] > 0:
                break
        np.testing.assert_allclose(np.frombuffer(raw, dtype=np.float32).reshape(-1, 8), np.stack(states), atol=1e-6)


def test_a_model_with_several_graphs_needs_every_file(tmp_path: Path, demo_env: dict[str, str]) -> None:
    graphs = tmp_path / "loop"
    write_loop_graphs(graphs, seed=0)
    (graphs / "step.onnx").unlink()
    result = run_cli(["run", "--model", "loop-demo", "--model-path", str(graphs), "--quick"], tmp_path, demo_env)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.count("error:") == 1 and "step.onnx" in result.stderr

    file_only = run_cli(["run", "--model", "loop-demo", "--model-path", str(tmp_path / "x.onnx"), "--quick"], tmp_path, demo_env)
    assert file_only.returncode != 0 and "must be a folder" in file_only.stderr

    write_loop_graphs(graphs, seed=0)
    write_window_graph(graphs / "step.onnx")  # a graph with the wrong signature in the step role
    wrong = run_cli(["run", "--model", "loop-demo", "--model-path", str(graphs), "--quick"], tmp_path, demo_env)
    assert wrong.returncode != 0 and "loop-demo step" in wrong.stderr and "state" in wrong.stderr


def test_random_weights_build_every_graph_once(tmp_path: Path, demo_env: dict[str, str]) -> None:
    args = ["run", "--model", "loop-demo", "--weights", "random", "--count", "8", "-s", "SingleStream", "--duration", "1"]
    env = {**demo_env, "MLPI_CACHE": str(tmp_path / "cache")}
    first = run_cli([*args, "--output", str(tmp_path / "a")], tmp_path, env)
    assert first.returncode == 0, first.stderr[-2000:]
    folder = tmp_path / "cache" / "models" / "loop-demo" / "loop-demo-random-seed0-v1"
    assert sorted(p.name for p in folder.iterdir()) == ["encoder.onnx", "step.onnx"]
    stamp = (folder / "encoder.onnx").stat().st_mtime_ns
    second = run_cli([*args, "--output", str(tmp_path / "b")], tmp_path, env)
    assert second.returncode == 0 and (folder / "encoder.onnx").stat().st_mtime_ns == stamp
    plan = json.loads((only_run_dir(tmp_path / "b") / "plan.json").read_text())
    assert plan["model"]["random_weights"] is True and len(plan["model"]["sha256"]) == 64


# -- one sample in pieces over every unit ------------------------------------------------------


def test_window_demo_spreads_one_sample_over_four_cards(tmp_path: Path, demo_env: dict[str, str]) -> None:
    model = write_window_graph(tmp_path / "window.onnx")
    count = 12
    result = run_cli(
        ["run", "--model", "window-demo", "--model-path", str(model), "--backend", "qaic", "--device", "qaic:0-3",
         "--count", str(count), "-s", "SingleStream", "--mode", "both", "--quick", "--output", str(tmp_path / "out")],
        tmp_path, demo_env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rows in" in result.stdout and "pieces" in result.stdout
    run_dir = only_run_dir(tmp_path / "out")
    signal = synthetic_samples("x", SIGNAL, count)
    responses = read_accuracy_log(run_dir / "SingleStream" / "accuracy" / "mlperf_log_accuracy.json")
    assert sorted(responses) == list(range(count))
    for index, raw in responses.items():
        np.testing.assert_array_equal(np.frombuffer(raw, dtype=np.float32), 2 * signal[index] + 1)
    test = next(t for t in read_result(tmp_path / "out")["tests"] if t["mode"] == "performance")
    units = {unit["device"]: unit for unit in test["devices"]}
    assert sorted(units) == ["qaic:0", "qaic:1", "qaic:2", "qaic:3"]
    # SingleStream has one sample in flight at a time, yet every card ran pieces of it.
    assert all(unit["work"] == "pieces" and unit["batches"] > 0 for unit in units.values())


class SlowDouble(Session):
    """A session that doubles its input after a pause (to overlap pieces), optionally fixed-batch."""

    def __init__(self, fixed: int | None = None, fail_on: float | None = None) -> None:
        self.inputs = [TensorSpec("x", "float32", (fixed, 4))]
        self.outputs = [TensorSpec("y", "float32", (fixed, 4))]
        self.capabilities = Capabilities(max_batch_size=fixed, fixed_batch=fixed is not None)
        self.precision = "fp32"
        self.out = np.zeros((fixed or 16, 4), dtype=np.float32)  # reused: outputs must be copied
        self.rows_seen: list[int] = []
        self.threads: set[str] = set()
        self.fail_on = fail_on

    def run(self, feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        x = feeds["x"]
        self.rows_seen.append(len(x))
        self.threads.add(threading.current_thread().name)
        if self.fail_on is not None and (x == self.fail_on).any():
            raise RuntimeError("bad piece")
        time.sleep(0.01)
        self.out[: len(x)] = 2 * x
        return {"y": self.out[: len(x)]}


def test_piece_dispatcher_keeps_order_copies_pads_and_raises() -> None:
    fixed = SlowDouble(fixed=4)
    sessions = [SlowDouble(), SlowDouble(), fixed]
    dispatcher = PieceDispatcher([(f"u:{k}", {"model": s}) for k, s in enumerate(sessions)], batch_size=4)
    dispatcher.start()
    try:
        pieces = [{"x": np.full((1 + k % 3, 4), k, dtype=np.float32)} for k in range(30)]
        outputs = dispatcher.run(pieces)
        assert outputs is not None
        for k, out in enumerate(outputs):
            np.testing.assert_array_equal(out["y"], np.full((1 + k % 3, 4), 2 * k, dtype=np.float32))
        assert all(s.rows_seen for s in sessions), "every worker should have taken pieces"
        assert set(fixed.rows_seen) == {4}, "a fixed-batch session gets padded pieces"

        seen: dict[int, float] = {}
        dispatcher.run(pieces[:5], consume=lambda k, out: seen.__setitem__(k, float(out["y"][0, 0])))
        assert seen == {k: 2.0 * k for k in range(5)}

        for s in sessions:
            s.fail_on = 7.0
        with pytest.raises(RuntimeError, match="bad piece"):
            dispatcher.run(pieces[:10])
        for s in sessions:
            s.fail_on = None
        assert len(dispatcher.run(pieces[:3]) or []) == 3, "the workers survive a failed piece"
        with pytest.raises(KeyError):
            dispatcher.run(pieces[:1], role="joint")
        stats = {unit["device"]: unit for unit in dispatcher.stats(1.0)}
        # the failed call ran its pieces up to the failing one (7), and maybe the two after it
        assert 30 + 5 + 8 + 3 <= sum(unit["batches"] for unit in stats.values()) <= 30 + 5 + 10 + 3
    finally:
        dispatcher.stop()


def test_pieces_after_a_failed_one_are_not_run() -> None:
    """One worker: piece 2 fails, so pieces 3 to 9 of that call never run (a 3D-UNet case's
    later windows would otherwise all run, and wait, for nothing)."""
    session = SlowDouble(fail_on=2.0)
    dispatcher = PieceDispatcher([("u:0", {"model": session})], batch_size=4)
    dispatcher.start()
    try:
        pieces = [{"x": np.full((1, 4), k, dtype=np.float32)} for k in range(10)]
        with pytest.raises(RuntimeError, match="bad piece"):
            dispatcher.run(pieces)
        assert session.rows_seen == [1, 1, 1]
        session.fail_on = None
        assert len(dispatcher.run(pieces) or []) == 10, "the next call runs all of its pieces"
    finally:
        dispatcher.stop()


# -- model files ---------------------------------------------------------------------------------


def external_data_model(folder: Path, weights: np.ndarray, location: str = "model.onnx.data") -> Path:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "ext",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location=location, size_threshold=0)
    return path


def test_a_models_hash_covers_its_external_data(tmp_path: Path) -> None:
    weights = np.eye(4, dtype=np.float32)
    path = external_data_model(tmp_path / "m", weights)
    first = inspect_onnx(path).sha256
    assert first == inspect_onnx(path).sha256
    external_data_model(tmp_path / "m", weights * 2)  # same graph file, new weights beside it
    assert inspect_onnx(path).sha256 != first

    (tmp_path / "m" / "model.onnx.data").unlink()
    with pytest.raises(ModelError, match="missing"):
        inspect_onnx(path)

    proto = onnx.load(str(path), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../../etc/hostname"
    onnx.save(proto, str(path))
    with pytest.raises(ModelError, match="outside its folder"):
        inspect_onnx(path)


def test_external_data_model_runs_and_its_engine_cache_key_follows_the_weights(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    path = external_data_model(tmp_path / "m", np.eye(4, dtype=np.float32) * 3)
    result = run_cli(["run", "--model-path", str(path), "-s", "SingleStream", "--duration", "1", "--count", "4",
                      "--output", str(tmp_path / "out")], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    recorded = read_result(tmp_path / "out")["model"]["sha256"]
    assert recorded == inspect_onnx(path).sha256 != sha256_of(path), "the run's hash covers the weights file"


def test_artifact_of_several_files_and_a_checkpoint_converted_once(tmp_path: Path) -> None:
    import hashlib

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "ckpt.bin").write_bytes(b"weights" * 100)
    (mirror / "vocab.txt").write_bytes(b"a\nb\n")

    def sha(path: Path) -> str:
        return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()

    vocab = Artifact("conv-demo", "vocab.txt", (mirror / "vocab.txt").as_uri(), sha(mirror / "vocab.txt"))
    artifact = Artifact("conv-demo", "ckpt.bin", (mirror / "ckpt.bin").as_uri(), sha(mirror / "ckpt.bin"),
                        format="checkpoint", companions=(vocab,))
    calls: list[Path] = []

    def convert(checkpoint: Path, folder: Path) -> dict[str, Path]:
        calls.append(checkpoint)
        assert (checkpoint.parent / "vocab.txt").read_bytes() == b"a\nb\n"  # companions sit beside it
        return write_loop_graphs(folder, seed=1)

    spec = ModelSpec(
        name="conv-demo",
        graphs={"encoder": GraphSpec(), "step": GraphSpec()},
        artifact=artifact,
        convert=convert,
        pipeline=lambda context: None,  # type: ignore[arg-type,return-value]
    )
    assert cached(artifact) is None
    fetched = fetch(artifact, progress=False)
    assert cached(artifact) == fetched
    graphs = official_graphs(spec, fetched)
    assert sorted(graphs) == ["encoder", "step"] and all(p.is_file() for p in graphs.values())
    assert official_graphs(spec, fetched) == graphs and len(calls) == 1, "converted once, then reused"

    # A companion gone from the cache makes the whole artifact not cached.
    (fetched.parent / "vocab.txt").unlink()
    assert cached(artifact) is None

    with pytest.raises(ValueError, match="convert"):
        ModelSpec(name="no-convert", artifact=artifact)
    with pytest.raises(ValueError, match="pipeline"):
        ModelSpec(name="two", graphs={"a": GraphSpec(), "b": GraphSpec()})
    with pytest.raises(ValueError, match="same cache folder"):
        Artifact("x", "a.onnx", (mirror / "ckpt.bin").as_uri(), sha(mirror / "ckpt.bin"), companions=(vocab,))


def test_checkpoint_without_published_checksum_is_converted_under_its_recorded_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import hashlib

    from mlpi.core.engine.artifacts import recorded_checksum, recorded_fingerprint

    monkeypatch.setenv("MLPI_CACHE", str(tmp_path / "cache"))
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "ckpt.pt").write_bytes(b"epoch-100" * 100)
    (mirror / "vocab.txt").write_bytes(b"a\nb\n")
    vocab = Artifact("tofu-demo", "vocab.txt", (mirror / "vocab.txt").as_uri(), None)
    artifact = Artifact("tofu-demo", "ckpt.pt", (mirror / "ckpt.pt").as_uri(), None,
                        format="checkpoint", companions=(vocab,))
    calls: list[bytes] = []

    def convert(checkpoint: Path, folder: Path) -> dict[str, Path]:
        calls.append(checkpoint.read_bytes())
        return write_loop_graphs(folder, seed=len(calls))

    spec = ModelSpec(
        name="tofu-demo",
        graphs={"encoder": GraphSpec(), "step": GraphSpec()},
        artifact=artifact,
        convert=convert,
        pipeline=lambda context: None,  # type: ignore[arg-type,return-value]
    )
    with pytest.raises(ModelError, match="not downloaded"):
        official_graphs(spec, tmp_path / "cache" / "models" / "tofu-demo" / "ckpt.pt")

    fetched = fetch(artifact, progress=False)
    first_hash = "sha256:" + hashlib.sha256(b"epoch-100" * 100).hexdigest()
    assert recorded_checksum(artifact) == first_hash
    assert f"mlpi: ckpt.pt has no published checksum; recorded {first_hash} (compare it with another download)" \
        in capsys.readouterr().err
    first = official_graphs(spec, fetched)
    assert official_graphs(spec, fetched) == first and len(calls) == 1, "converted once, then reused"
    folder = first["encoder"].parent
    assert folder.name == f"converted-{recorded_fingerprint(artifact)[:16]}"  # type: ignore[index]
    assert folder.name != f"converted-{artifact.fingerprint[:16]}"

    # Upstream serves another file; a re-download records its hash and converts it afresh.
    (mirror / "ckpt.pt").write_bytes(b"epoch-101" * 100)
    fetched.unlink()
    assert cached(artifact) is None
    assert fetch(artifact, progress=False) == fetched
    assert recorded_checksum(artifact) == "sha256:" + hashlib.sha256(b"epoch-101" * 100).hexdigest()
    second = official_graphs(spec, fetched)
    assert second["encoder"].parent != folder and len(calls) == 2 and calls[-1] == b"epoch-101" * 100
    assert inspect_onnx(second["encoder"]).sha256 != inspect_onnx(first["encoder"]).sha256
    assert official_graphs(spec, fetched) == second and len(calls) == 2


TOFU_PLUGIN = '''
import os
from pathlib import Path

from mlpi.core.engine.artifacts import Artifact
from mlpi.testing.pipeline_models import loop_demo, write_loop_graphs


def tofu_demo():
    spec = loop_demo()
    mirror = Path(os.environ["TOFU_MIRROR"])
    artifact = Artifact("tofu-demo", "ckpt.pt", (mirror / "ckpt.pt").as_uri(), None, format="checkpoint")
    return type(spec)(name="tofu-demo", graphs=spec.graphs, pipeline=spec.pipeline, score=None, artifact=artifact,
                      convert=lambda checkpoint, folder: write_loop_graphs(folder, seed=len(checkpoint.read_bytes())))
'''


def test_fetch_and_run_a_checkpoint_without_published_checksum(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    import hashlib

    site = tmp_path / "site"
    dist = site / "tofu_models-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tofu-models\nVersion: 0.1\n", encoding="utf-8")
    (dist / "entry_points.txt").write_text("[mlpi.models]\ntofu-demo = tofu_models:tofu_demo\n", encoding="utf-8")
    (site / "tofu_models.py").write_text(TOFU_PLUGIN, encoding="utf-8")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "ckpt.pt").write_bytes(b"epoch-100" * 100)
    env = {"PYTHONPATH": str(site), "TOFU_MIRROR": str(mirror), "MLPI_CACHE": str(tmp_path / "cache")}

    fetched = run_cli(["fetch", "tofu-demo"], tmp_path, env)
    assert fetched.returncode == 0, fetched.stderr[-2000:]
    recorded = "sha256:" + hashlib.sha256(b"epoch-100" * 100).hexdigest()
    line = f"mlpi: ckpt.pt has no published checksum; recorded {recorded} (compare it with another download)"
    assert fetched.stderr.count(line) == 1, fetched.stderr
    graphs = dict(row.split(": ", 1) for row in fetched.stdout.splitlines())
    assert sorted(graphs) == ["encoder", "step"]

    result = run_cli(["run", "--model", "tofu-demo", "--count", "8", "-s", "SingleStream", "--duration", "1",
                      "--output", str(tmp_path / "out")], tmp_path, env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "no published checksum" not in result.stderr  # recorded once, by the fetch
    model = read_result(tmp_path / "out")["model"]
    assert model["path"] == graphs["encoder"] and model["weights"] == "given"
    plan = json.loads((only_run_dir(tmp_path / "out") / "plan.json").read_text())
    assert {role: g["path"] for role, g in plan["model"]["graphs"].items()} == graphs
    assert {role: g["sha256"] for role, g in plan["model"]["graphs"].items()} == {
        role: inspect_onnx(Path(path)).sha256 for role, path in graphs.items()
    }
    assert len(model["sha256"]) == 64 and model["sha256"] == plan["model"]["sha256"]
