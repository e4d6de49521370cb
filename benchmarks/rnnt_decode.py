"""RNN-T's greedy decode loop: what mlpi's Python costs per emitted symbol.

The loop (``mlpi.models.rnnt.GreedyDecode``) runs the joint graph once per step and the
prediction graph once per emitted symbol. To see the harness's own cost, both graphs here
are null-like (a few hundred floats through a Gemm/Gather): the joint always prefers label 1,
so every encoder frame emits the cap of 30 symbols, and the prediction passes its state
through. The script times, through mlpi's onnxruntime backend sessions:

- ``bare runs``: the two graphs' ``Session.run`` calls alone, as many as the decode makes;
- ``decode``: ``GreedyDecode`` over the same frames (encoder excluded: its output is given);

and reports the difference per emitted symbol, the loop's Python overhead, for a batch of
one (SingleStream) and a batch of 8 (Offline), with the state copies the loop makes.

    python benchmarks/rnnt_decode.py [--frames 100] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto, helper


def write_null_graphs(folder: Path) -> dict[str, Path]:
    """Prediction: g = embedding row, state through; joint: logits = bias (label 1 wins) + 0 * f[:29]."""
    from mlpi.core.results.rundir import write_bytes_atomic
    from mlpi.models.rnnt_graph import (
        CELL,
        CELL_OUT,
        CONFIG,
        HIDDEN,
        HIDDEN_OUT,
        LOGITS,
        SYMBOL,
        F,
        G,
        GraphWriter,
    )

    folder.mkdir(parents=True, exist_ok=True)
    state = ["N", CONFIG.pred_layers, CONFIG.pred_hidden]
    p = GraphWriter("null_prediction")
    table = np.random.default_rng(0).standard_normal((CONFIG.classes, CONFIG.pred_hidden)).astype(np.float32)
    p.node("Squeeze", [p.one("Gather", [p.const("table", table), SYMBOL], axis=0), p.axes(1)], [G])
    p.node("Identity", [HIDDEN], [HIDDEN_OUT])
    p.node("Identity", [CELL], [CELL_OUT])
    prediction = p.model(
        [helper.make_tensor_value_info(SYMBOL, TensorProto.INT64, ["N", 1]),
         helper.make_tensor_value_info(HIDDEN, TensorProto.FLOAT, state), helper.make_tensor_value_info(CELL, TensorProto.FLOAT, state)],
        [helper.make_tensor_value_info(G, TensorProto.FLOAT, ["N", CONFIG.pred_hidden]),
         helper.make_tensor_value_info(HIDDEN_OUT, TensorProto.FLOAT, state), helper.make_tensor_value_info(CELL_OUT, TensorProto.FLOAT, state)],
        "null prediction")
    j = GraphWriter("null_joint")
    weight = np.zeros((CONFIG.classes, CONFIG.encoder_hidden + CONFIG.pred_hidden), np.float32)
    bias = np.zeros(CONFIG.classes, np.float32)
    bias[1] = 1.0
    j.node("Gemm", [j.one("Concat", [F, G], axis=1), j.const("w", weight), j.const("b", bias)], [LOGITS], transB=1)
    joint = j.model(
        [helper.make_tensor_value_info(F, TensorProto.FLOAT, ["N", CONFIG.encoder_hidden]),
         helper.make_tensor_value_info(G, TensorProto.FLOAT, ["N", CONFIG.pred_hidden])],
        [helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["N", CONFIG.classes])], "null joint")
    paths = {"prediction": folder / "prediction.onnx", "joint": folder / "joint.onnx"}
    write_bytes_atomic(paths["prediction"], prediction.SerializeToString())
    write_bytes_atomic(paths["joint"], joint.SerializeToString())
    return paths


def _best(work: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def measure(sessions: dict[str, Any], batch: int, frames: int, repeats: int) -> tuple[int, float, float]:
    """Symbols emitted, then microseconds per symbol: the decode, and the bare session runs it makes."""
    from mlpi.core.contract.pipeline import PipelineContext
    from mlpi.models.rnnt import MAX_SYMBOLS_PER_FRAME, GreedyDecode
    from mlpi.models.rnnt_graph import CELL, CONFIG, HIDDEN, SYMBOL, F, G

    # the encoder is not run here (its output is given): any session stands in for it
    context = PipelineContext(sessions={"encoder": sessions["joint"], **sessions}, dataset=None,  # type: ignore[arg-type]
                              batch_size=batch, outputs=(), postprocess=None)
    decode = GreedyDecode(context)
    encoded = np.random.default_rng(1).standard_normal((batch, frames, CONFIG.encoder_hidden)).astype(np.float32)
    lengths = np.full(batch, frames, dtype=np.int64)

    def run_decode() -> int:
        if batch == 1:
            return len(decode._decode_one(encoded[0], frames))
        return sum(len(h) for h in decode._decode_batch(encoded, lengths))

    f, g = encoded[:, 0].copy(), np.zeros((batch, CONFIG.pred_hidden), np.float32)
    state = np.zeros((batch, CONFIG.pred_layers, CONFIG.pred_hidden), np.float32)
    feeds = {SYMBOL: np.ones((batch, 1), np.int64), HIDDEN: state, CELL: state}

    def run_bare() -> None:
        for _ in range(frames * MAX_SYMBOLS_PER_FRAME):  # lock step: every step emits for every row
            sessions["joint"].run({F: f, G: g})
            sessions["prediction"].run(feeds)

    symbols = run_decode()
    return symbols, _best(run_decode, repeats) / symbols * 1e6, _best(run_bare, repeats) / symbols * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=100, help="encoder frames per utterance")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from mlpi.core.contract.device import Device
    from mlpi.core.engine.onnx_file import inspect_onnx
    from mlpi.core.plugins.config import PluginsConfig
    from mlpi.core.plugins.options import build_options
    from mlpi.core.plugins.registry import Registry
    from mlpi.models.rnnt import MAX_SYMBOLS_PER_FRAME

    backend = Registry(PluginsConfig.load(None)).backend("onnxruntime")
    options = build_options(backend.Options, [], "onnxruntime")
    with tempfile.TemporaryDirectory(prefix="mlpi-rnnt-decode-") as tmp:
        paths = write_null_graphs(Path(tmp))
        sessions = {role: backend.load(inspect_onnx(path), Device("cpu"), options, "fp32") for role, path in paths.items()}
        print(f"{args.frames} encoder frames per utterance, {MAX_SYMBOLS_PER_FRAME} symbols a frame "
              f"(null-like graphs, onnxruntime {backend.version()}, best of {args.repeats})")
        print(f"{'batch':>5}  {'symbols':>8}  {'decode us/symbol':>17}  {'bare runs us/symbol':>20}  {'python us/symbol':>17}")
        for batch in (1, 8):
            symbols, decode_us, bare_us = measure(sessions, batch, args.frames, args.repeats)
            print(f"{batch:>5}  {symbols:>8,}  {decode_us:>17.2f}  {bare_us:>20.2f}  {decode_us - bare_us:>17.2f}")
        for session in sessions.values():
            session.close()
    print("python us/symbol = decode - bare runs: the loop's own work (arg-max, gathers, the state copy) per emitted symbol")
    return 0


if __name__ == "__main__":
    sys.exit(main())
