"""Two small model plugins for what an image classifier never needs, with answers known by
construction (tests and the README's "Write a model plugin" use them).

- ``loop-demo``: two graphs (``encoder`` and ``step``) and a decode loop, as RNN-T has:
  the encoder runs once, then ``step`` runs until the state's first value is positive or
  :data:`MAX_STEPS` steps; the response is every state the loop produced, so responses
  differ in size from sample to sample.
- ``window-demo``: one sample is a signal of :data:`SIGNAL` values, cut into overlapping
  windows of :data:`WINDOW` (stride :data:`STRIDE`) that run as pieces on every unit and
  slot, then blended back by averaging overlaps, as 3D-UNet's sliding windows are. Its
  graph computes ``2x + 1``, so the right response is ``2 * signal + 1`` exactly.

Neither is an MLPerf benchmark: they have no rules and no scorer; a test compares their
accuracy logs with :func:`loop_reference` and ``2x + 1``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mlpi.core.contract.backend import TensorSpec
from mlpi.core.contract.model import GraphSpec, ModelSpec
from mlpi.core.contract.pipeline import Pipeline, PipelineContext
from mlpi.core.contract.postprocess import Responses

OPSET = 17
FEATURES, STATE, MAX_STEPS = 16, 8, 5
SIGNAL, WINDOW, STRIDE = 64, 16, 8


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


# -- loop-demo: two graphs and a decode loop -----------------------------------------------


def loop_weights(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w_enc = (rng.standard_normal((FEATURES, STATE)) * 0.5).astype(np.float32)
    w_step = (rng.standard_normal((STATE, STATE)) * 0.8).astype(np.float32)
    b_step = (rng.standard_normal(STATE) * 0.3).astype(np.float32)
    return w_enc, w_step, b_step


def write_loop_graphs(folder: Path, seed: int) -> dict[str, Path]:
    """``encoder``: x[N,16] -> h = tanh(x W); ``step``: h[N,8] -> tanh(h W + b)."""
    w_enc, w_step, b_step = loop_weights(seed)
    encoder = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Tanh", ["xw"], ["h"])],
        "encoder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", FEATURES])],
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", STATE])],
        [numpy_helper.from_array(w_enc, "W")],
    )
    step = helper.make_graph(
        [
            helper.make_node("MatMul", ["state", "W"], ["sw"]),
            helper.make_node("Add", ["sw", "B"], ["swb"]),
            helper.make_node("Tanh", ["swb"], ["next"]),
        ],
        "step",
        [helper.make_tensor_value_info("state", TensorProto.FLOAT, ["N", STATE])],
        [helper.make_tensor_value_info("next", TensorProto.FLOAT, ["N", STATE])],
        [numpy_helper.from_array(w_step, "W"), numpy_helper.from_array(b_step, "B")],
    )
    return {"encoder": _save(encoder, folder / "encoder.onnx"), "step": _save(step, folder / "step.onnx")}


def loop_reference(x: np.ndarray, seed: int) -> np.ndarray:
    """What loop-demo answers for one sample ``x[16]``: its states, one row per step."""
    w_enc, w_step, b_step = loop_weights(seed)
    state = np.tanh(x.astype(np.float32) @ w_enc)
    states = []
    for _ in range(MAX_STEPS):
        state = np.tanh(state @ w_step + b_step)
        states.append(state)
        if state[0] > 0:
            break
    return np.stack(states).astype(np.float32)


class LoopPipeline(Pipeline):
    """Encoder once per batch, then ``step`` over the samples still running, until done."""

    def __init__(self, context: PipelineContext) -> None:
        self.encoder = context.sessions["encoder"]
        self.step = context.sessions["step"]
        self.dataset = context.dataset
        self.feeds = {s.name: np.zeros((context.batch_size, *s.sample_shape), dtype=s.dtype) for s in context.dataset.inputs}

    @property
    def sample_nbytes(self) -> int | None:
        return None

    def __call__(self, indices: Sequence[int]) -> Responses:
        n = len(indices)
        self.dataset.gather(indices, self.feeds)
        state = np.asarray(self.encoder.run({"x": self.feeds["x"][:n]})["h"])
        running = np.arange(n)
        states: list[list[np.ndarray]] = [[] for _ in range(n)]
        for _ in range(MAX_STEPS):
            state = np.array(self.step.run({"state": np.ascontiguousarray(state)})["next"])
            for row, sample in enumerate(running):
                states[sample].append(state[row])
            keep = state[:, 0] <= 0
            running, state = running[keep], state[keep]
            if not len(running):
                break
        return Responses.from_arrays([np.stack(s) for s in states])


def loop_demo() -> ModelSpec:
    return ModelSpec(
        name="loop-demo",
        description="two graphs and a decode loop (a worked example, not a benchmark)",
        graphs={
            "encoder": GraphSpec((TensorSpec("x", "float32", (None, FEATURES)),), (TensorSpec("h", "float32", (None, STATE)),)),
            "step": GraphSpec((TensorSpec("state", "float32", (None, STATE)),), (TensorSpec("next", "float32", (None, STATE)),)),
        },
        pipeline=LoopPipeline,
        score=None,
        build_random=write_loop_graphs,
    )


# -- window-demo: one sample, many windows, spread over every unit ----------------------------


def write_window_graph(path: Path, seed: int = 0) -> Path:
    """x[N,16] -> y = 2x + 1 (the seed is unused: the answer must be known)."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["x2"]), helper.make_node("Add", ["x2", "one"], ["y"])],
        "window",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WINDOW])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", WINDOW])],
        [numpy_helper.from_array(np.float32(2.0), "two"), numpy_helper.from_array(np.float32(1.0), "one")],
    )
    return _save(graph, path)


def window_starts() -> list[int]:
    return list(range(0, SIGNAL - WINDOW + 1, STRIDE))


class WindowPipeline(Pipeline):
    """Each sample's windows go out as pieces; their outputs are summed back in place."""

    def __init__(self, context: PipelineContext) -> None:
        assert context.pieces is not None, "window-demo runs in pieces"
        self.pieces = context.pieces
        self.dataset = context.dataset
        self.batch_size = context.batch_size
        self.feeds = {"x": np.zeros((context.batch_size, SIGNAL), dtype=np.float32)}
        self.sum = np.zeros((context.batch_size, SIGNAL), dtype=np.float32)
        self.out = np.zeros((context.batch_size, SIGNAL), dtype=np.float32)
        self.count = np.zeros(SIGNAL, dtype=np.float32)
        for start in window_starts():
            self.count[start : start + WINDOW] += 1
        self.lock = threading.Lock()

    @property
    def sample_nbytes(self) -> int | None:
        return SIGNAL * 4

    def __call__(self, indices: Sequence[int]) -> np.ndarray:
        n = len(indices)
        self.dataset.gather(indices, self.feeds)
        windows = [(row, start) for row in range(n) for start in window_starts()]
        # Enough pieces for every worker, none larger than the batch size.
        size = max(1, min(self.pieces.batch_size, -(-len(windows) // self.pieces.workers)))
        groups = [windows[k : k + size] for k in range(0, len(windows), size)]
        signal = self.feeds["x"]
        feeds = [{"x": np.stack([signal[row, start : start + WINDOW] for row, start in group])} for group in groups]
        self.sum[:n] = 0

        def blend(k: int, outputs: Mapping[str, np.ndarray]) -> None:
            y = outputs["y"]
            with self.lock:
                for j, (row, start) in enumerate(groups[k]):
                    self.sum[row, start : start + WINDOW] += y[j]

        self.pieces.run(feeds, consume=blend)
        return np.divide(self.sum[:n], self.count, out=self.out[:n])


def window_demo() -> ModelSpec:
    return ModelSpec(
        name="window-demo",
        description="one sample cut into windows run on every unit (a worked example, not a benchmark)",
        graphs={"model": GraphSpec((TensorSpec("x", "float32", (None, WINDOW)),), (TensorSpec("y", "float32", (None, WINDOW)),))},
        sample_inputs=(TensorSpec("x", "float32", (None, SIGNAL)),),
        pipeline=WindowPipeline,
        pieces=True,
        score=None,
        build_random=write_window_graph,
    )
