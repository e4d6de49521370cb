"""3D-UNet on KiTS19 (``3d-unet-99``, ``3d-unet-99.9``), as MLPerf Inference measures it.

Followed: MLCommons inference ``vision/medical_imaging/3d-unet-kits19`` — ``base_SUT.py``
and ``inference_utils.py`` (sliding-window inference), ``global_vars.py`` (ROI 128³,
overlap 0.5, the preprocessing constants the dataset is given), ``accuracy_kits.py`` (see
:mod:`mlpi.models.kits_dice`); rules from ``loadgen/mlperf.conf`` (``3d-unet.*``) and the
current round's submission rules.

Artifact: ``3dunet_kits19_128x128x128_dynbatch.onnx`` (zenodo record 5597155, opset 12),
input ``input`` float32 ``[N,1,128,128,128]``, output ``output`` float32
``[N,3,128,128,128]`` (background, kidney and tumour logits).

One LoadGen sample is a whole preprocessed volume ``(1, D, H, W)``, each axis at least 128
(the dataset pads). Its response is made as the reference makes it, and is byte for byte
the reference's given the same network outputs:

- windows of 128³ start every 64 voxels on each axis: ``(dim - 128) // 64 + 1`` per axis,
  in (z, y, x) order;
- each window's logits are multiplied by the Gaussian patch (the outer product of a
  128-point Gaussian of standard deviation 0.125·128, cube-rooted, divided by its maximum,
  as float32) and added into the volume's float32 sum, the patch into its weight map —
  in window order, whichever unit finished a window first, so the float32 sums are the
  reference's;
- the sum is divided by the weights and the arg-max over the classes, uint8, is the
  response: D·H·W bytes.

The windows are :class:`~mlpi.core.contract.pipeline.Pieces`: they run on every device
unit and slot of the run, so ``--device qaic:0-3`` speeds up one case. Each piece's input
is copied out of the volume in the worker that runs it; the outputs of windows that finish
ahead of their turn are held until it comes (a few windows, not the volume's all).

int8 calibration (:func:`calibration_feeds`) feeds the graph every window of each of MLPerf's
20 KiTS19 calibration cases, cut by the same code, one window a batch.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlpi.core.contract.backend import TensorSpec
from mlpi.core.contract.dataset import DataParams
from mlpi.core.contract.errors import ModelError
from mlpi.core.contract.model import GraphSpec, ModelSpec
from mlpi.core.contract.pipeline import Pieces, Pipeline, PipelineContext
from mlpi.core.contract.postprocess import Responses
from mlpi.core.contract.rules import QualityTarget, Rules
from mlpi.core.engine.artifacts import Artifact
from mlpi.models import calibration_lists
from mlpi.models.kits_dice import kits_dice

ROI = 128
OVERLAP = 0.5
STRIDE = int(ROI * (1 - OVERLAP))
CLASSES = 3
#: The FP32 reference mean DICE the quality targets are fractions of.
REFERENCE_DICE = 0.86170
#: The volume synthetic data gives (one window): real KiTS19 cases are 1-8 windows per
#: axis, so use the kits19 dataset for figures that mean something.
SYNTHETIC_VOLUME = (1, ROI, ROI, ROI)

#: Volumes in flight at once in Offline and Server: one case is already dozens of windows
#: for every worker; a second keeps them busy while the first is blended (each holds its
#: float32 sums, 3·D·H·W, hundreds of MB for a real case).
SAMPLES_IN_FLIGHT = 2

ARTIFACT = Artifact(
    name="3d-unet",
    filename="3dunet_kits19_128x128x128_dynbatch.onnx",
    url="https://zenodo.org/record/5597155/files/3dunet_kits19_128x128x128_dynbatch.onnx",
    checksum="md5:82f0618fde78f9839e7c712274019b4a",
)

INPUT, OUTPUT = "input", "output"
GRAPH = GraphSpec(
    (TensorSpec(INPUT, "float32", (None, 1, ROI, ROI, ROI)),),
    (TensorSpec(OUTPUT, "float32", (None, CLASSES, ROI, ROI, ROI)),),
)
#: A LoadGen sample: one whole volume, whose size differs from case to case.
SAMPLE = (TensorSpec(INPUT, "float32", (None, 1, None, None, None)),)

#: The reference's preprocessing (``global_vars.py``), for the kits19 dataset.
DATA = DataParams.of(
    roi_shape=(ROI, ROI, ROI),
    overlap=OVERLAP,
    target_spacing=(1.6, 1.2, 1.2),
    clip=(-79.0, 304.0),
    mean=101.0,
    std=76.9,
    padding_value=-2.2,
    sample_shapes={INPUT: SYNTHETIC_VOLUME},
)


def rules(fraction: float) -> Rules:
    """3D-UNet's rules in the current round: mlperf.conf ``3d-unet.*`` (every one of the 43
    cases loaded, equal issue, Offline at least 43) and the submission rules."""
    return Rules(
        loadgen_key="3d-unet",
        benchmark=f"3d-unet-{fraction * 100:g}",
        audits=("TEST01",),
        audit_sampling_target=64,
        response_dtype="byte",
        round="v6.1",
        quality=QualityTarget("mean DICE", REFERENCE_DICE, fraction, unit=""),
        performance_sample_count=43,
        offline_min_samples=43,
        dataset_size=43,
        equal_issue=True,
        required_scenarios={"edge": ("SingleStream", "Offline"), "datacenter": ("Offline",)},
    )


def gaussian_patch(roi: int = ROI) -> np.ndarray:
    """The reference's window weighting: a Gaussian of ``roi`` points (std ``0.125·roi``),
    its 3-D outer product, cube-rooted, divided by its maximum, as float32."""
    std = 0.125 * roi
    n = np.arange(roi, dtype=np.float64) - (roi - 1.0) / 2.0
    line = np.exp(-(n**2) / (2 * std * std))  # scipy.signal.windows.gaussian's own expression
    cube = np.cbrt(np.outer(np.outer(line, line), line).reshape(roi, roi, roi))
    cube /= cube.max()
    return cube.astype(np.float32)


def window_starts(shape: Sequence[int], roi: int = ROI, stride: int = STRIDE) -> list[tuple[int, int, int]]:
    """Where the reference's windows start in a volume of ``shape`` (D, H, W), in its order."""
    counts = [(int(dim) - roi) // stride + 1 for dim in shape]
    if min(counts) < 1:
        raise ModelError(
            f"a volume of shape {list(shape)} is smaller than the {roi}³ window on an axis",
            "preprocess the case as MLPerf does (the kits19 dataset pads every axis to at least 128)",
        )
    return [(z * stride, y * stride, x * stride)
            for z in range(counts[0]) for y in range(counts[1]) for x in range(counts[2])]


class _Slabs:
    """Runs an operation over slabs of a volume on a few threads (numpy lets go of the GIL);
    every voxel is still done by one call, so sums keep their order."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="mlpi-blend") if threads > 1 else None

    def tasks(self, channels: int, start: int, stop: int) -> list[tuple[int, int, int]]:
        """(channel, slab start, slab stop) covering ``[start, stop)`` of every channel."""
        parts = max(1, min(-(-self.threads // channels), stop - start))
        edges = [start + (stop - start) * k // parts for k in range(parts + 1)]
        return [(c, a, b) for c in range(channels) for a, b in itertools.pairwise(edges)]

    def submit(self, work: Callable[[int, int, int], None], channels: int, start: int, stop: int) -> list[Future[None]]:
        """``work(channel, a, b)`` over ``[start, stop)``: futures to wait for (done already
        without a pool)."""
        futures = []
        for task in self.tasks(channels, start, stop):
            if self.pool is None:
                work(*task)
                futures.append(_done())
            else:
                futures.append(self.pool.submit(work, *task))
        return futures

    def run(self, work: Callable[[int, int, int], None], channels: int, start: int, stop: int) -> None:
        """``submit`` and wait for every task (none left writing when one fails)."""
        errors = [future.exception() for future in self.submit(work, channels, start, stop)]
        for error in errors:
            if error is not None:
                raise error


def _done() -> Future[None]:
    future: Future[None] = Future()
    future.set_result(None)
    return future


@dataclass(eq=False)
class _Case:
    """One volume's window sums, weights and labels while its windows come back.

    ``boxes[n]``: the voxels whose last covering window (in the reference's z, y, x order)
    is window ``n``: from its start to the next start on each axis (the volume's end after
    the last). The boxes tile the volume, and box ``n`` can be divided and arg-maxed as soon
    as window ``n`` is blended, while later windows still run.
    """

    volume: np.ndarray  # (1, 1, D, H, W), the dataset's
    windows: list[tuple[int, int, int]]
    result: np.ndarray  # (3, D, H, W) float32
    weights: np.ndarray  # (D, H, W) float32
    weights_known: bool  # the map is already summed (the last volume here had this shape)
    labels: np.ndarray  # (D, H, W) uint8
    boxes: list[tuple[slice, slice, slice]] = field(default_factory=list)
    blended: int = 0

    def __post_init__(self) -> None:
        ends = []
        for axis, size in enumerate(self.result.shape[1:]):
            starts = sorted({w[axis] for w in self.windows})
            ends.append(dict(zip(starts, [*starts[1:], size])))
        self.boxes = [tuple(slice(start, ends[axis][start]) for axis, start in enumerate(w)) for w in self.windows]  # type: ignore[misc]


@dataclass(eq=False)
class _Blend:
    """Adds window outputs into their cases in window order, from whichever worker has them,
    and finishes each voxel as soon as the last window covering it is in."""

    cases: list[_Case]
    pieces: list[list[tuple[int, tuple[int, int, int]]]]  # per piece: (case, window start)
    patch: np.ndarray
    scratch: np.ndarray
    slabs: _Slabs
    output: str
    ready: threading.Event  # the sums are zeroed and the weight maps summed
    next: int = 0
    draining: bool = False
    pending: dict[int, np.ndarray] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    finishing: list[Future[None]] = field(default_factory=list)
    seconds: float = 0.0

    def consume(self, k: int, outputs: Mapping[str, np.ndarray]) -> None:
        logits = outputs[self.output]
        with self.lock:
            direct = not self.draining and k == self.next
            if direct:
                self.draining = True
        if direct:
            self._add(k, logits)
            with self.lock:
                self.next += 1
        else:
            held = np.array(logits, copy=True)
            with self.lock:
                self.pending[k] = held
                if self.draining:
                    return  # the worker draining adds it in its turn
                self.draining = True
        while True:
            with self.lock:
                logits = self.pending.pop(self.next, None)
                if logits is None:
                    self.draining = False
                    return
                k = self.next
            self._add(k, logits)
            with self.lock:
                self.next += 1

    def _add(self, k: int, logits: np.ndarray) -> None:
        self.ready.wait()
        start = time.perf_counter()
        for row, (case_no, (z, y, x)) in enumerate(self.pieces[k]):
            case = self.cases[case_no]
            result = case.result

            def add(c: int, a: int, b: int, row: int = row, result: np.ndarray = result,
                    z: int = z, y: int = y, x: int = x) -> None:
                np.multiply(logits[row, c, a:b], self.patch[a:b], out=self.scratch[c, a:b])
                result[c, z + a : z + b, y : y + ROI, x : x + ROI] += self.scratch[c, a:b]

            self.slabs.run(add, CLASSES, 0, ROI)
            box = case.boxes[case.blended]
            case.blended += 1
            self.finishing += self.slabs.submit(
                lambda _, a, b, case=case, box=box: _finish(case, (slice(box[0].start + a, box[0].start + b), *box[1:])),
                1, 0, box[0].stop - box[0].start,
            )
        self.seconds += time.perf_counter() - start


def _finish(case: _Case, box: tuple[slice, slice, slice]) -> None:
    """The reference's ``finalize`` over ``box``: sums over weights, then the arg-max class as
    uint8. A voxel no window reached is 0/0 there too (NaN, class 0)."""
    sums = case.result[(slice(None), *box)]
    with np.errstate(invalid="ignore", divide="ignore"):
        np.divide(sums, case.weights[box], out=sums)
    case.labels[box] = np.argmax(sums, axis=0)


class _WindowFeeds(Sequence[Mapping[str, np.ndarray]]):
    """Piece ``k``'s input, copied out of the volumes ``(1, 1, D, H, W)`` when a worker asks for it."""

    def __init__(self, volumes: list[np.ndarray], pieces: list[list[tuple[int, tuple[int, int, int]]]], name: str) -> None:
        self.volumes = volumes
        self.pieces = pieces
        self.name = name

    def __len__(self) -> int:
        return len(self.pieces)

    def __getitem__(self, k: int) -> Mapping[str, np.ndarray]:  # type: ignore[override]
        windows = self.pieces[k]
        batch = np.empty((len(windows), 1, ROI, ROI, ROI), dtype=np.float32)
        for row, (case_no, (z, y, x)) in enumerate(windows):
            batch[row] = self.volumes[case_no][0, :, z : z + ROI, y : y + ROI, x : x + ROI]
        return {self.name: batch}


def sample_volume(dataset: Any, index: int, name: str) -> np.ndarray:
    """Loaded sample ``index``'s volume ``(1, 1, D, H, W)``, or the ModelError saying it is not one."""
    volume = np.asarray(dataset.sample(index)[name])
    if volume.ndim != 5 or volume.shape[:2] != (1, 1):
        raise ModelError(f"sample {index} is of shape {list(volume.shape)}, not one volume [1, 1, D, H, W]",
                         "use the kits19 dataset, or data shaped as its volumes are")
    return volume


def calibration_feeds(dataset: Any, index: int) -> Iterator[Mapping[str, np.ndarray]]:
    """int8 calibration's feeds for loaded sample ``index``: each window the pipeline cuts from
    its volume, in its order, as a batch of one ``{INPUT: (1, 1, 128, 128, 128)}`` (the
    pipeline's own window list and copying, one window a piece), so the quantiser sees what
    the graph is fed in a run."""
    volume = sample_volume(dataset, index, dataset.inputs[0].name)
    windows = _WindowFeeds([volume], [[(0, start)] for start in window_starts(volume.shape[2:])], INPUT)
    yield from windows


#: Threads that blend windows and finish volumes, slab by slab.
BLEND_THREADS = max(1, min(8, os.cpu_count() or 1))


class SlidingWindows(Pipeline):
    """Every window of the call's volumes as pieces; blended, divided, arg-maxed per case.

    What does not need the network's outputs is done while the first windows run: the sums
    are zeroed (in buffers kept from call to call: a fresh 300 MB array costs its page faults
    on first touch) and a new shape's weight map is summed, in window order (a volume of the
    shape the last one had reuses its map). Each voxel is divided and arg-maxed as soon as
    the last window covering it is blended, so only the last window's own box is left once
    it is in. ``blend_s`` and ``finish_s`` add up the seconds spent blending windows and, after
    the last window, finishing volumes (``benchmarks/unet3d_windows.py`` reports them).
    """

    def __init__(self, context: PipelineContext) -> None:
        if context.pieces is None:
            raise ModelError("3D-UNet's windows run as pieces, but the run gave the pipeline none",
                             "report this to mlpi's authors")
        self.pieces: Pieces = context.pieces
        self.dataset = context.dataset
        self.sample_input = context.dataset.inputs[0].name
        self.patch = gaussian_patch()
        self.scratch = np.empty((CLASSES, ROI, ROI, ROI), dtype=np.float32)
        self.slabs = _Slabs(BLEND_THREADS)
        self._sums: list[np.ndarray] = []  # per case of a call: a flat float32 buffer
        self._weights: list[tuple[tuple[int, ...], np.ndarray]] = []  # per case of a call: (shape, map)
        self.blend_s = 0.0
        self.finish_s = 0.0

    @property
    def sample_nbytes(self) -> int | None:
        return None

    def __call__(self, indices: Sequence[int]) -> Responses:
        cases: list[_Case] = []
        windows: list[tuple[int, tuple[int, int, int]]] = []
        for case_no, index in enumerate(indices):
            volume = sample_volume(self.dataset, index, self.sample_input)
            shape = tuple(int(d) for d in volume.shape[2:])
            starts = window_starts(shape)
            windows += [(case_no, start) for start in starts]
            weights, known = self._weight_map(case_no, shape)
            cases.append(_Case(volume, starts, self._sums_buffer(case_no, shape), weights, known, np.empty(shape, np.uint8)))
        # Two pieces for every worker (blending the first overlaps the second), none larger
        # than the batch size.
        size = max(1, min(self.pieces.batch_size, math.ceil(len(windows) / (2 * self.pieces.workers))))
        groups = [windows[k : k + size] for k in range(0, len(windows), size)]
        ready = threading.Event()
        blend = _Blend(cases, groups, self.patch, self.scratch, self.slabs, OUTPUT, ready)
        failed: list[BaseException] = []
        preparing = threading.Thread(target=self._prepare, args=(cases, ready, failed), daemon=True, name="mlpi-prepare")
        preparing.start()
        try:
            self.pieces.run(_WindowFeeds([case.volume for case in cases], groups, INPUT), consume=blend.consume)
        finally:
            # Nothing may still write into the buffers the next call reuses.
            preparing.join()
            start = time.perf_counter()
            for future in blend.finishing:
                future.exception()
            self.finish_s += time.perf_counter() - start
        if failed:
            raise failed[0]
        for future in blend.finishing:
            future.result()
        self.blend_s += blend.seconds
        return Responses.from_arrays([case.labels.reshape(-1) for case in cases])

    def _sums_buffer(self, case_no: int, shape: tuple[int, ...]) -> np.ndarray:
        """This case place's sums buffer, grown to ``shape`` if needed (zeroed by _prepare)."""
        size = CLASSES * int(np.prod(shape))
        if case_no == len(self._sums):
            self._sums.append(np.empty(0, np.float32))
        if self._sums[case_no].size < size:
            self._sums[case_no] = np.empty(size, np.float32)
        return self._sums[case_no][:size].reshape(CLASSES, *shape)

    def _weight_map(self, case_no: int, shape: tuple[int, ...]) -> tuple[np.ndarray, bool]:
        """The weight map for a case of ``shape`` at this place in the call, and whether it is
        already summed (the last volume here had the same shape). A new map is recorded with
        no shape, which nothing matches, until ``_prepare`` has summed it."""
        if case_no < len(self._weights) and self._weights[case_no][0] == shape:
            return self._weights[case_no][1], True
        weights = np.empty(shape, np.float32)
        entry = ((), weights)
        if case_no < len(self._weights):
            self._weights[case_no] = entry
        else:
            self._weights.append(entry)
        return weights, False

    def _prepare(self, cases: list[_Case], ready: threading.Event, failed: list[BaseException]) -> None:
        """Zero the sums; sum a new weight map as the reference's ``norm_map``: the patch over
        the windows, in their order. Then let blending start."""
        try:
            for case_no, case in enumerate(cases):
                self.slabs.run(lambda c, a, b, r=case.result: r[c, a:b].fill(0), CLASSES, 0, case.result.shape[1])
                if not case.weights_known:
                    case.weights.fill(0)
                    for z, y, x in case.windows:
                        case.weights[z : z + ROI, y : y + ROI, x : x + ROI] += self.patch
                    self._weights[case_no] = (case.result.shape[1:], case.weights)  # summed: reusable
        except BaseException as exc:  # noqa: BLE001 - raised in the pipeline's thread
            failed.append(exc)
        finally:
            ready.set()


def _build_random(path: Path, seed: int) -> Path:
    from mlpi.models.unet3d_graph import write_unet3d

    return write_unet3d(path, seed)


def _unet(name: str, fraction: float) -> ModelSpec:
    from mlpi.models.unet3d_graph import GRAPH_VERSION

    return ModelSpec(
        calibration=calibration_lists.KITS,
        calibration_feeds=calibration_feeds,
        name=name,
        description=f"3D-UNet, KiTS19 kidney tumour segmentation, mean DICE >= {fraction:.1%} of FP32 (MLPerf Inference)",
        artifact=ARTIFACT,
        graphs={"model": GRAPH},
        data=DATA,
        sample_inputs=SAMPLE,
        rules=rules(fraction),
        datasets=("kits19", "synthetic"),
        pipeline=SlidingWindows,
        pieces=True,
        samples_in_flight=SAMPLES_IN_FLIGHT,
        score=kits_dice,
        build_random=_build_random,
        extra={"random_graph_version": GRAPH_VERSION, "random_graph_name": "3d-unet"},
    )


def unet3d_99() -> ModelSpec:
    return _unet("3d-unet-99", 0.99)


def unet3d_99_9() -> ModelSpec:
    return _unet("3d-unet-99.9", 0.999)
