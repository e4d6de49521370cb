"""Backend efficiency: mlpi Offline throughput versus the runtime's own tight loop.

Same model, same session options, same batch size, same data, same invocation; each side
runs at least ``--duration`` seconds and :data:`MIN_BATCHES` batches (mlpi at least as long
as the loop took), so a model of seconds per batch is not timed on its first few batches. The tight
loop feeds preloaded batches of the samples mlpi's run uses (``--dataset synthetic``, seed 0:
for a detector, the data decides how much NMS work there is) to ``InferenceSession.run`` as
fast as it can; mlpi runs a full LoadGen Offline test (gathering each batch from the
preloaded samples, postprocessing, completing).

    python benchmarks/backend_efficiency.py --backend all --model resnet50 [--batch-size 8] [--duration 10]
    python benchmarks/backend_efficiency.py --backend onnxruntime --model retinanet --duration 30   # batch 1, as the file
    python benchmarks/backend_efficiency.py --backend openvino --model conv [--size 64 --width 64]
    python benchmarks/backend_efficiency.py --backend deepsparse --model conv   # in DeepSparse's own environment
    python benchmarks/backend_efficiency.py --backend onnxruntime --model bert-99 --batch-size 4 --duration 60
    python benchmarks/backend_efficiency.py --backend onnxruntime --model rnnt --batch-size 1 --duration 60
    python benchmarks/backend_efficiency.py --backend all --model dlrm-v2 --batch-size 2048 --duration 30   # rows/s
    python benchmarks/backend_efficiency.py --backend onnxruntime --model resnet50 --precision int8 [--batch-size 8]
    python benchmarks/backend_efficiency.py --backend openvino --model resnet50 --precision int8 --duration 20
    python benchmarks/backend_efficiency.py --backend deepsparse --model resnet50 --precision int8   # its own environment
    python benchmarks/backend_efficiency.py --backend all --model conv --precision fp16

Own loops: ONNX Runtime ``InferenceSession.run``; OpenVINO an ``AsyncInferQueue`` kept full
(its recommended throughput pattern); PyTorch the converted module under ``inference_mode``;
DeepSparse its compiled engine called on one full batch. ``--backend all`` covers the backends
of the main environment; DeepSparse (onnx<1.15) runs from its own, so it is asked for by name.

A registered model (``resnet50``, ``retinanet``, ``ssd-mobilenet``, ``ssd-resnet34``,
``bert-99``: synthetic token ids in the vocabulary, a full mask; ``3d-unet-99``: synthetic
volumes are one 128³ window each, so both sides run the same windows, and mlpi's side also
blends and arg-maxes each one) uses
the official file when ``mlpi fetch`` has downloaded it, else the seeded random-weights graph
(same layers, same work). ``rnnt`` (onnxruntime only) compares with a hand-written loop over
its three graphs: the same features (mlpi's featurizer), the encoder over the batch padded,
then per utterance the greedy decode with the prediction run once per emitted symbol (the
synthetic utterances are 6.25 s of noise; on the random graphs every frame is one joint run
and no symbol). A file that fixes its batch (RetinaNet's and SSD-ResNet34's: 1)
runs at that batch on both sides; for the detectors the script also times the model's
postprocessor on the graph's real outputs and reports its share of the time per sample.
``dlrm-v2`` counts rows, not samples: the own loop runs the rows of the groups mlpi's run
loads (the criteo dataset's fake groups, seed 0) in batches of ``--batch-size`` rows; mlpi's
figure is its samples/s times the mean rows of the samples it ran (from the run's per-unit
figures). Its graph is the random-weights one, tables capped at 10,000 rows.

``--precision int8|fp16`` compares the two sides on the file mlpi's precision transform derives
(:mod:`mlpi.core.engine.precision`), not on the fp32 one: the script first derives it with
``mlpi quantize --precision P --json`` (int8: static Q/DQ calibrated on the first
``--calibration-count`` samples of the benchmark's synthetic data, ``--calibration dataset``),
the own loop loads that file, and mlpi's run asks for the same precision with the same
calibration settings, so it finds the same file in the cache. The script checks that the run
really ran it (``result.json`` ``model.sha256`` is the derived file's, ``model.precision.method``
is ``transform``) and stops with an error where it did not. Both sides then run the graph's own
precision: no OpenVINO precision hint, and on ONNX Runtime no
``session.qdq_matmulnbits_accuracy_level`` for int8 (mlpi sets it to 0 for every other
precision, and so does the own loop). ``--backend all`` covers onnxruntime and openvino there
(the pytorch backend runs no Q/DQ graph, and makes fp16 its own way); rnnt (three graphs) and
dlrm-v2 are compared in fp32 only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np

Feeds = dict[str, np.ndarray]


def tight_loop(backend: str, model: Path, batches: list[Feeds], seconds: float, threads: int,
               derived: str | None = None) -> float:
    """The runtime's own fastest loop over preloaded batches, with the knobs mlpi uses;
    ``derived``: the precision ``model`` was derived for (it then runs the graph's own types)."""
    loops = {"onnxruntime": ort_loop, "openvino": openvino_loop, "pytorch": torch_loop, "deepsparse": deepsparse_loop}
    return loops[backend](model, batches, seconds, threads, derived)


def run_batches(model_name: str | None, model: Path, batch: int, count: int = 8) -> list[Feeds]:
    """``count`` batches of the samples ``mlpi run --dataset synthetic`` (seed 0) feeds."""
    from mlpi.core.contract.model import ModelSpec
    from mlpi.core.engine.onnx_file import inspect_onnx
    from mlpi.core.engine.planning import open_dataset
    from mlpi.core.plugins.config import PluginsConfig
    from mlpi.core.plugins.registry import Registry

    registry = Registry(PluginsConfig.load(None))
    spec = registry.model(model_name) if model_name else ModelSpec.for_file(model)
    inputs = list(inspect_onnx(model).inputs)
    dataset = open_dataset(registry, spec, inputs, "synthetic", None, batch * count, seed=0)
    indices = list(range(dataset.count))
    dataset.load(indices)
    batches = []
    for start in range(0, len(indices) - batch + 1, batch):
        feeds = {s.name: np.zeros((batch, *s.sample_shape), dtype=s.dtype) for s in dataset.inputs}
        dataset.gather(indices[start : start + batch], feeds)
        batches.append(feeds)
    return batches


#: Batches each side runs at the least, however long that takes: a model that needs seconds
#: a batch (BERT-large, RetinaNet on a CPU) timed over a handful of batches is timed mostly
#: on its first, slower ones (BERT on onnxruntime, batch 4: 0.90 over 60 s, 0.97 over 180 s).
MIN_BATCHES = 20


def _timed(step: object, batches: list[object], batch: int, seconds: float) -> float:
    for k in range(3):
        step(batches[k % len(batches)])  # type: ignore[operator]
    done, k, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds or k < MIN_BATCHES:
        step(batches[k % len(batches)])  # type: ignore[operator]
        done += batch
        k += 1
    return done / (time.perf_counter() - start)


def _rows(batches: list[Feeds]) -> int:
    return len(next(iter(batches[0].values())))


def openvino_loop(model: Path, batches: list[Feeds], seconds: float, threads: int, derived: str | None = None) -> float:
    """OpenVINO's recommended throughput pattern: an AsyncInferQueue kept full; f32, or for a
    derived file no precision hint, as mlpi compiles one."""
    import openvino as ov

    core = ov.Core()
    config: dict[str, object] = {"PERFORMANCE_HINT": "THROUGHPUT"}
    if derived is None:
        config["INFERENCE_PRECISION_HINT"] = "f32"
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(core.read_model(str(model)), "CPU", config)
    batch = _rows(batches)
    queue = ov.AsyncInferQueue(compiled, compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    for k in range(3):
        queue.start_async(batches[k % len(batches)])
    queue.wait_all()
    done, k, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        queue.start_async(batches[k % len(batches)])
        done += batch
        k += 1
    queue.wait_all()
    return done / (time.perf_counter() - start)


def torch_loop(model: Path, batches: list[Feeds], seconds: float, threads: int, derived: str | None = None) -> float:
    """The converted torch module called directly under inference_mode."""
    import torch

    from mlpi.backends.torch_backend import TorchBackend, TorchOptions
    from mlpi.core.contract.device import Device
    from mlpi.core.engine.onnx_file import inspect_onnx

    artifact = inspect_onnx(model)
    session = TorchBackend().load(artifact, Device("cpu"), TorchOptions(threads=threads), "fp32")
    names = [spec.name for spec in artifact.inputs]
    tensors = [[torch.from_numpy(feeds[name]) for name in names] for feeds in batches]

    def step(args: list[object]) -> None:
        with torch.inference_mode():
            session.module(*args)

    return _timed(step, tensors, _rows(batches), seconds)


def deepsparse_loop(model: Path, batches: list[Feeds], seconds: float, threads: int, derived: str | None = None) -> float:
    """The engine compiled as mlpi compiles it (batch, cores, default scheduler), called
    on preloaded full batches."""
    import deepsparse

    from mlpi.backends.deepsparse_backend import DeepSparseOptions, engine_source
    from mlpi.core.engine.onnx_file import inspect_onnx

    artifact = inspect_onnx(model)
    path = engine_source(artifact)  # the file itself, or the copy mlpi's session compiles
    defaults = DeepSparseOptions()
    batch = _rows(batches)
    engine = deepsparse.compile_model(
        str(path), batch_size=batch, num_cores=threads or None, num_streams=defaults.num_streams or None,
        scheduler=defaults.scheduler,
    )
    inputs = [[feeds[spec.name] for spec in artifact.inputs] for feeds in batches]
    return _timed(lambda args: engine.run(args, val_inp=False), inputs, batch, seconds)


def rnnt_utterances(count: int) -> list[np.ndarray]:
    """The waveforms ``mlpi run --model rnnt --dataset synthetic`` (seed 0) feeds."""
    from mlpi.core.engine.planning import open_dataset
    from mlpi.core.plugins.config import PluginsConfig
    from mlpi.core.plugins.registry import Registry

    registry = Registry(PluginsConfig.load(None))
    dataset = open_dataset(registry, registry.model("rnnt"), [], "synthetic", None, count, seed=0)
    dataset.load(list(range(count)))
    return [np.array(dataset.sample(i)["waveform"][0]) for i in range(count)]


def rnnt_ort_loop(folder: Path, utterances: list[np.ndarray], batch: int, seconds: float, threads: int) -> float:
    """RNN-T by hand on ONNX Runtime: features, the encoder over a padded batch, then each
    utterance's greedy decode (prediction once per emitted symbol, up to 30 a frame)."""
    import onnxruntime as ort

    from mlpi.models.rnnt_features import Featurizer

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    encoder, prediction, joint = (
        ort.InferenceSession(str(folder / f"{role}.onnx"), sess_options=options, providers=["CPUExecutionProvider"])
        for role in ("encoder", "prediction", "joint")
    )
    featurize = Featurizer()

    def decode(encoded: np.ndarray, frames: int) -> list[int]:
        state = np.zeros((1, 2, 320), np.float32)
        g, hidden, cell = prediction.run(None, {"symbol": np.array([[28]]), "hidden": state, "cell": state})
        labels: list[int] = []
        for t in range(frames):
            for _ in range(30):
                k = int(np.argmax(joint.run(None, {"f": encoded[t : t + 1], "g": g})[0][0]))
                if k == 28:
                    break
                labels.append(k)
                g, hidden, cell = prediction.run(None, {"symbol": np.array([[k]]), "hidden": hidden, "cell": cell})
        return labels

    def step(group: list[np.ndarray]) -> None:
        features = [featurize(w) for w in group]
        lengths = np.array([len(f) for f in features], dtype=np.int64)
        padded = np.zeros((len(features), int(lengths.max()), 240), np.float32)
        for row, f in enumerate(features):
            padded[row, : len(f)] = f
        encoded = encoder.run(None, {"features": padded, "feature_lengths": lengths})[0]
        for row, length in enumerate(lengths):
            decode(encoded[row], int(length + 1) // 2)

    groups = [utterances[k : k + batch] for k in range(0, len(utterances) - batch + 1, batch)]
    return _timed(step, groups, batch, seconds)  # type: ignore[arg-type]


def dlrm_batches(batch: int, groups: int = 256) -> tuple[list[Feeds], float]:
    """Batches of ``batch`` rows of the criteo dataset's fake groups (seed 0), as mlpi's run
    loads them, and the groups' mean rows."""
    from mlpi.core.engine.planning import open_dataset
    from mlpi.core.plugins.config import PluginsConfig
    from mlpi.core.plugins.registry import Registry
    from mlpi.models.dlrm_config import DENSE_INPUT, SPARSE_INPUT

    registry = Registry(PluginsConfig.load(None))
    spec = registry.model("dlrm-v2-99")
    dataset = open_dataset(registry, spec, [], "criteo", None, groups, seed=0)
    dataset.load(list(range(dataset.count)))
    dense = np.concatenate([dataset.sample(i)[DENSE_INPUT] for i in range(dataset.count)])
    sparse = np.concatenate([dataset.sample(i)[SPARSE_INPUT] for i in range(dataset.count)])
    batches = [{DENSE_INPUT: dense[k : k + batch], SPARSE_INPUT: sparse[k : k + batch]}
               for k in range(0, len(dense) - batch + 1, batch)]
    return batches, len(dense) / dataset.count


def mlpi_rows_per_s(backend: str, batch: int, seconds: float, threads: int, root: Path) -> tuple[float, bool]:
    """mlpi's Offline rows/s on dlrm-v2-99 (random weights): samples/s times rows per sample."""
    samples_per_s, valid = mlpi_offline(backend, ["--model", "dlrm-v2-99", "--weights", "random"], batch, seconds,
                                        threads, root)
    (run_dir,) = [p for p in root.iterdir() if p.is_dir()]
    units = json.loads((run_dir / "result.json").read_text())["tests"][0]["devices"]
    rows, samples = sum(u["rows"] for u in units), sum(u["samples"] for u in units)
    return samples_per_s * rows / samples, valid


def ort_loop(model: Path, batches: list[Feeds], seconds: float, threads: int, derived: str | None = None) -> float:
    """``InferenceSession.run`` with mlpi's session options (mlpi.backends.ort)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if derived != "int8":  # as mlpi's session: float activations for any DQ+MatMul it fuses
        options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    session = ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return _timed(lambda feeds: session.run(names, feeds), batches, _rows(batches), seconds)


#: Registered models this script measures; the detectors also get their postprocessing timed.
REGISTERED = ("resnet50", "retinanet", "ssd-mobilenet", "ssd-resnet34", "bert-99", "bert-99.9", "3d-unet-99", "rnnt")
DETECTORS = ("retinanet", "ssd-mobilenet", "ssd-resnet34")

THREAD_OPTION = {
    "onnxruntime": "intra_op_threads", "openvino": "num_threads", "pytorch": "threads", "deepsparse": "num_cores",
}


#: ``mlpi run``'s exit code when its tests ran and LoadGen judged one INVALID: a measurement
#: still (the table says INVALID), not a failure.
INVALID_EXIT = 3

#: Calibration samples (the benchmark's synthetic data) a derived int8 file is calibrated on:
#: enough for the activation ranges of a performance measurement, quick to run.
CALIBRATION_COUNT = 32


@dataclass(frozen=True)
class DerivedFile:
    """The file mlpi's precision transform derived, and the ``mlpi run`` flags that find it again."""

    precision: str
    path: Path
    sha256: str
    run_args: tuple[str, ...]


def precision_flags(precision: str, calibration_count: int) -> list[str]:
    """``--precision`` and, for int8, the calibration settings, the same for quantize and run."""
    if precision != "int8":
        return ["--precision", precision]
    return ["--precision", "int8", "--calibration", "dataset", "-P", f"calibration_count={calibration_count}"]


def derive_file(model_args: list[str], precision: str, calibration_count: int) -> DerivedFile:
    """``mlpi quantize ... --json``: the derived file (built once into mlpi's cache)."""
    flags = precision_flags(precision, calibration_count)
    command = [sys.executable, "-m", "mlpi", "quantize", *model_args, *flags, "--json"]
    print(f"deriving the {precision} file: mlpi quantize {' '.join([*model_args, *flags])} --json", file=sys.stderr, flush=True)
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)  # its progress and errors show
    if done.returncode != 0:
        _fail(f"mlpi quantize could not derive the {precision} file (its error is above)",
              f"run it by hand: python {' '.join(command[1:])}")
    answer = json.loads(done.stdout)
    return DerivedFile(precision, Path(answer["path"]), str(answer["sha256"]), tuple(flags))


def mlpi_offline(backend: str, model_args: list[str], batch: int, seconds: float, threads: int, root: Path,
                 derived: DerivedFile | None = None) -> tuple[float, bool]:
    """mlpi's Offline samples/s and validity: fp32, or the derived file, checked to be what ran."""
    command = [
        sys.executable, "-m", "mlpi", "run", "--backend", backend, *model_args, "-s", "Offline",
        *(derived.run_args if derived else ("--precision", "fp32")),
        "--batch-size", str(batch), "--duration", str(seconds), "--output", str(root), "-o", f"{THREAD_OPTION[backend]}={threads}",
    ]
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    runs = [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []  # the root also holds the results index
    if done.returncode not in (0, INVALID_EXIT) or len(runs) != 1:
        _fail(f"mlpi run on {backend} failed: {_error_line(done.stderr)}", f"run it by hand to see why: python {' '.join(command[1:])}")
    result = json.loads((runs[0] / "result.json").read_text())
    if derived is not None:
        check_ran_derived(result["model"], derived, backend)
    test = result["tests"][0]
    return float(test["value"]), bool(test["valid"])


def check_ran_derived(model: dict[str, object], derived: DerivedFile, backend: str) -> None:
    """Stop unless mlpi's run loaded the very file the own loop runs, made by the transform."""
    record = model.get("precision") or {}
    method = record.get("method") if isinstance(record, dict) else None
    if model.get("sha256") != derived.sha256 or method != "transform":
        _fail(f"mlpi's {backend} run ran {model.get('path')} (sha256 {str(model.get('sha256'))[:12]}, precision method "
              f"{method}), not the derived {derived.precision} file {derived.path} (sha256 {derived.sha256[:12]})",
              "the cached file changed between the two steps: run the benchmark again")


def _error_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["no output"])[-1].removeprefix("error:").strip()


def _fail(error: str, hint: str) -> NoReturn:
    print(f"error: {error}\nhint: {hint}", file=sys.stderr)
    raise SystemExit(2)


def registered_file(name: str) -> tuple[Path, str]:
    """The file ``mlpi run --model NAME`` would use: official if downloaded, else random."""
    from mlpi.core.engine.artifacts import cached
    from mlpi.core.engine.planning import random_weights_path
    from mlpi.core.plugins.config import PluginsConfig
    from mlpi.core.plugins.registry import Registry

    spec = Registry(PluginsConfig.load(None)).model(name)
    official = cached(spec.artifact) if spec.artifact else None
    if official is not None:
        return official, "official"
    path = random_weights_path(spec, 0)
    if not path.exists():
        spec.build_random(path, 0)  # type: ignore[misc]
    return path, "random"


def postprocess_share(name: str, model: Path, feeds: Feeds, own_loop_samples_per_s: float, repeats: int = 200) -> tuple[float, float]:
    """Seconds per sample of the model's postprocessor on the graph's real outputs, and its
    share of the time per sample of the runtime's own loop."""
    import onnxruntime as ort

    from mlpi.core.plugins.config import PluginsConfig
    from mlpi.core.plugins.registry import Registry

    spec = Registry(PluginsConfig.load(None)).model(name)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(names, feeds)))
    post = spec.postprocess(list(spec.outputs), 1)
    post(outputs, [0])
    start = time.perf_counter()
    for k in range(repeats):
        post(outputs, [k])
    per_sample = (time.perf_counter() - start) / repeats
    return per_sample, per_sample * own_loop_samples_per_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "openvino", "pytorch", "deepsparse", "all"])
    parser.add_argument("--model", default="resnet50", choices=[*REGISTERED, "dlrm-v2", "conv"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument(
        "--threads", type=int, default=0, help="intra-op threads (DeepSparse: cores) on both sides (0: runtime default)"
    )
    parser.add_argument("--size", type=int, default=64, help="image side of the generated conv model")
    parser.add_argument("--width", type=int, default=64, help="channels of the generated conv model")
    parser.add_argument("--json", dest="json_path", type=Path, help="also write the measurements here (mlpi report --efficiency)")
    parser.add_argument("--precision", choices=["int8", "fp16"],
                        help="compare on the file mlpi derives for this precision (default: the fp32 file)")
    parser.add_argument("--calibration-count", type=int, default=CALIBRATION_COUNT,
                        help="int8: synthetic samples the derived file is calibrated on")
    args = parser.parse_args()
    if args.precision and args.model in ("rnnt", "dlrm-v2"):
        parser.error(f"--model {args.model} is compared in fp32 only: drop --precision")
    if args.precision and args.backend == "pytorch":
        parser.error("the pytorch backend runs no file derived for int8 or fp16: use --backend onnxruntime or openvino")
    if args.calibration_count < 1:
        parser.error("--calibration-count must be 1 or more")
    precision = args.precision or "fp32"

    from mlpi.testing.tiny_models import conv_model

    with tempfile.TemporaryDirectory(prefix="mlpi-efficiency-") as tmp:
        work = Path(tmp)
        model_name: str | None = None
        if args.model == "rnnt":
            if args.backend != "onnxruntime":
                parser.error("--model rnnt compares with a hand-written onnxruntime loop: use --backend onnxruntime")
            folder, weights = registered_file("rnnt")
            loop = rnnt_ort_loop(folder, rnnt_utterances(8 * args.batch_size), args.batch_size, args.duration, args.threads)
            seconds = max(args.duration, MIN_BATCHES * args.batch_size / loop)
            mine, valid = mlpi_offline("onnxruntime", ["--model", "rnnt", "--weights", weights], args.batch_size, seconds,
                                       args.threads, work / "results-rnnt")
            print(f"model: rnnt ({weights} weights), batch {args.batch_size}, at least {args.duration}s and "
                  f"{MIN_BATCHES} batches per side, fp32, threads {args.threads or 'default'}")
            print(f"{'backend':<13}{'own loop':>12}{'mlpi Offline':>14}{'ratio':>8}  validity  seconds")
            print(f"{'onnxruntime':<13}{loop:>12,.3f}{mine:>14,.3f}{mine / loop:>8.3f}  {'VALID' if valid else 'INVALID':<8}  {seconds:,.0f}")
            return 0
        if args.model == "dlrm-v2":
            model, _ = registered_file("dlrm-v2-99")
            batches, mean_rows = dlrm_batches(args.batch_size)
            table = []
            for number, backend in enumerate(["onnxruntime", "openvino", "pytorch"] if args.backend == "all" else [args.backend]):
                loop = tight_loop(backend, model, batches, args.duration, args.threads)
                seconds = max(args.duration, MIN_BATCHES * args.batch_size / loop)
                mine, valid = mlpi_rows_per_s(backend, args.batch_size, seconds, args.threads, work / f"results-{number}")
                table.append((backend, loop, mine, valid, seconds))
            print(f"model: dlrm-v2-99 (random weights, tables of at most 10,000 rows), batch {args.batch_size} rows, "
                  f"groups of {mean_rows:.0f} rows on average, at least {args.duration}s and {MIN_BATCHES} batches per side, "
                  f"fp32, threads {args.threads or 'default'}; figures in rows/s")
            print(f"{'backend':<13}{'own loop':>12}{'mlpi Offline':>14}{'ratio':>8}  validity  seconds")
            for backend, loop, mine, valid, seconds in table:
                print(f"{backend:<13}{loop:>12,.1f}{mine:>14,.1f}{mine / loop:>8.3f}  {'VALID' if valid else 'INVALID':<8}  {seconds:,.0f}")
            return 0
        if args.model in REGISTERED:
            from mlpi.core.contract.backend import fixed_batch_size
            from mlpi.core.engine.onnx_file import inspect_onnx

            model_name = args.model
            model, weights = registered_file(args.model)
            model_args = ["--model", args.model, "--weights", weights]
            label = f"{args.model} ({weights} weights)"
            args.batch_size = fixed_batch_size(inspect_onnx(model).inputs) or args.batch_size  # a file's fixed batch
        else:
            model = conv_model(work / "conv.onnx", size=args.size, width=args.width)
            model_args = ["--model-path", str(model)]
            label = f"conv {args.size}x{args.size}x{args.width}"
        derived = derive_file(model_args, args.precision, args.calibration_count) if args.precision else None
        if derived is not None:
            model = derived.path  # what both sides run from here on
            label += f", {derived.precision} file derived by mlpi"
        main_env = ["onnxruntime", "openvino"] if derived else ["onnxruntime", "openvino", "pytorch"]
        backends = main_env if args.backend == "all" else [args.backend]
        batches = run_batches(model_name, model, args.batch_size)
        rows = []
        for number, backend in enumerate(backends):
            loop = tight_loop(backend, model, batches, args.duration, args.threads, args.precision)
            # mlpi runs at least as long as the loop's MIN_BATCHES took
            seconds = max(args.duration, MIN_BATCHES * args.batch_size / loop)
            mine, valid = mlpi_offline(backend, model_args, args.batch_size, seconds, args.threads,
                                       work / f"results-{number}", derived)
            rows.append((backend, loop, mine, valid, seconds))
        share = postprocess_share(args.model, model, batches[0], rows[0][1]) if args.model in DETECTORS else None
    print(f"model: {label}, batch {args.batch_size}, at least {args.duration}s and {MIN_BATCHES} batches per side, "
          f"{precision}, threads {args.threads or 'default'}")
    if derived is not None:
        how = f", calibrated on the first {args.calibration_count} synthetic samples" if derived.precision == "int8" else ""
        print(f"file: {derived.path} (sha256 {derived.sha256}{how}); both sides ran it")
    print(f"{'backend':<13}{'precision':<11}{'own loop':>12}{'mlpi Offline':>14}{'ratio':>8}  validity  seconds")
    for backend, loop, mine, valid, seconds in rows:
        print(f"{backend:<13}{precision:<11}{loop:>12,.3f}{mine:>14,.3f}{mine / loop:>8.3f}  "
              f"{'VALID' if valid else 'INVALID':<8}  {seconds:,.0f}")
    if share is not None:
        print(f"postprocess: {share[0] * 1e6:,.1f} us per sample = {share[1] * 100:.3f}% of the time per sample of {rows[0][0]}'s own loop")
    if args.json_path:
        args.json_path.write_text(json.dumps({
            "format": "mlpi-backend-efficiency/1", "model": label, "batch_size": args.batch_size,
            "duration_s": args.duration, "precision": precision, "threads": args.threads,
            **({"model_file": str(derived.path), "model_sha256": derived.sha256} if derived else {}),
            "rows": [{"backend": b, "own_loop_samples_per_s": loop, "mlpi_offline_samples_per_s": mine, "valid": valid,
                      "mlpi_duration_s": seconds}
                     for b, loop, mine, valid, seconds in rows],
        }, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
