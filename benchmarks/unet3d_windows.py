"""3D-UNet's windows: one case spread over simulated cards, and where a case's time goes.

Two measurements, in one invocation:

1. **Spread.** One KiTS19-shaped case (``--shape``, default 256 x 320 x 320: 48 windows),
   SingleStream, on one simulated card (``--device qaic:0``, two activations) and on four
   (``qaic:0-3``), through ``mlpi run`` with the kits19 dataset. Each card's device model
   holds a piece of ``n`` windows for ``1 + n * --latency-ms`` ms (a window is all the
   work: the card's time per window is what a piece costs) while the CPU computes
   its outputs: with ``--graph threshold`` (default) a graph of 3D-UNet's signature that
   costs the CPU almost nothing, so the cards' modelled time is what is spread and the
   ratio of the two SingleStream latencies (LoadGen's 90th percentile) shows how the harness
   spreads one case, ideally 4; with ``--graph narrow`` the narrow 3D-UNet, whose CPU time
   (about a second a window on one thread) then competes for this machine's cores.
2. **Split.** One case of ``--split-shape`` (default 128 x 192 x 192: 4 windows) through
   3D-UNet's own pipeline on one ONNX Runtime CPU session (the full graph, random weights):
   the seconds in the network, in blending the windows (Gaussian weighting and sums) and in
   finishing the volume (division and arg-max), and their shares of the case.

    python benchmarks/unet3d_windows.py [--shape 256,320,320] [--latency-ms 1000] [--graph threshold] [--split-shape 128,192,192]

The backend efficiency of the windows (mlpi Offline against ONNX Runtime's own loop over
the same 128³ windows) is ``benchmarks/backend_efficiency.py --model 3d-unet-99``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def shape_arg(text: str) -> tuple[int, int, int]:
    dims = tuple(int(d) for d in text.split(","))
    if len(dims) != 3 or min(dims) < 128:
        raise argparse.ArgumentTypeError("give D,H,W, each at least 128")
    return dims  # type: ignore[return-value]


def single_stream_ms(device: str, graph: Path, data: Path, latency_ms: float, root: Path) -> tuple[float, dict]:
    """SingleStream latency (ms, LoadGen's percentile) of the case on ``device``, and the
    per-unit piece counts."""
    command = [
        sys.executable, "-m", "mlpi", "run", "--model", "3d-unet-99", "--model-path", str(graph), "--dataset", "kits19",
        "--dataset-path", str(data), "--backend", "qaic", "--device", device, "-s", "SingleStream", "--duration", "1",
        "-o", "latency_ms=1", "-o", f"latency_per_sample_ms={latency_ms}", "--output", str(root),
    ]
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    (run_dir,) = [p for p in root.iterdir() if p.is_dir()]
    test = json.loads((run_dir / "result.json").read_text())["tests"][0]
    if test.get("value") is None:
        raise SystemExit(f"the run on {device} failed: see {run_dir}")
    units = {unit["device"]: unit["batches"] for unit in test.get("devices", [])}
    return float(test["value"]), units


def spread(shape: tuple[int, int, int], latency_ms: float, graph_kind: str, work: Path) -> None:
    from mlpi.models.unet3d import window_starts
    from mlpi.models.unet3d_graph import NARROW, write_unet3d
    from mlpi.testing.kits19_fixture import write_preprocessed
    from mlpi.testing.unet3d_known import write_threshold_graph

    rng = np.random.default_rng(0)
    image = rng.standard_normal(shape).astype(np.float32)
    label = (rng.random(shape) < 0.1).astype(np.uint8)
    data = write_preprocessed(work / "kits", {"case_00000": (image, label)})
    if graph_kind == "narrow":
        graph = write_unet3d(work / "narrow.onnx", 0, NARROW)
    else:
        graph = write_threshold_graph(work / "threshold.onnx")
    windows = len(window_starts(shape))
    one, one_units = single_stream_ms("qaic:0", graph, data, latency_ms, work / "one")
    four, four_units = single_stream_ms("qaic:0-3", graph, data, latency_ms, work / "four")
    print(f"spread: one case {list(shape)} = {windows} windows, {graph_kind} graph, simulated cards at {latency_ms:g} ms a window")
    print(f"  qaic:0    SingleStream {one:10,.1f} ms   pieces per card {one_units}")
    print(f"  qaic:0-3  SingleStream {four:10,.1f} ms   pieces per card {four_units}")
    print(f"  speed-up  {one / four:.2f}x  (ideal 4.00x)")


def split(shape: tuple[int, int, int], work: Path) -> None:
    from mlpi.backends.ort import OnnxRuntimeBackend, OrtOptions
    from mlpi.core.contract.device import Device
    from mlpi.core.contract.pipeline import PipelineContext
    from mlpi.core.engine.onnx_file import inspect_onnx
    from mlpi.core.engine.pieces import PieceDispatcher
    from mlpi.models.unet3d import SlidingWindows, window_starts
    from mlpi.models.unet3d_graph import write_unet3d

    graph = write_unet3d(work / "full.onnx", 0)
    session = OnnxRuntimeBackend().load(inspect_onnx(graph), Device("cpu"), OrtOptions(), None)
    volume = np.random.default_rng(1).standard_normal((1, 1, *shape)).astype(np.float32)

    class OneVolume:
        inputs = (session.inputs[0],)

        def sample(self, index: int) -> dict[str, np.ndarray]:
            return {"input": volume}

    dispatcher = PieceDispatcher([("cpu", {"model": session})], batch_size=1)
    dispatcher.start()
    try:
        pipeline = SlidingWindows(PipelineContext({}, OneVolume(), 1, [], None, dispatcher))  # type: ignore[arg-type]
        start = time.perf_counter()
        pipeline([0])
        total = time.perf_counter() - start
    finally:
        dispatcher.stop()
    network = total - pipeline.blend_s - pipeline.finish_s
    windows = len(window_starts(shape))
    print(f"split: one case {list(shape)} = {windows} windows, full graph, onnxruntime CPU, one session")
    print(f"  {'case':<32} {total:9.3f} s")
    parts = (("network and the rest", network), ("blending", pipeline.blend_s),
             ("finishing after the last window", pipeline.finish_s))
    for name, seconds in parts:
        print(f"  {name:<32} {seconds:9.3f} s  {seconds / total:7.2%}")
    print(f"  blending + finishing: {(pipeline.blend_s + pipeline.finish_s) / total:.2%} of the case "
          "(the boxes finished before the last window overlap the network)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=shape_arg, default=(256, 320, 320), help="the spread case, D,H,W")
    parser.add_argument("--latency-ms", type=float, default=1000.0, help="a simulated card's time per window")
    parser.add_argument("--graph", choices=["threshold", "narrow"], default="threshold", help="what the cards compute")
    parser.add_argument("--split-shape", type=shape_arg, default=(128, 192, 192), help="the split case, D,H,W")
    parser.add_argument("--only", choices=["spread", "split"], help="run one of the two")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlpi-unet3d-") as tmp:
        if args.only != "split":
            spread(args.shape, args.latency_ms, args.graph, Path(tmp))
        if args.only != "spread":
            split(args.split_shape, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
