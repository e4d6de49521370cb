"""int8 calibration feeds for every graph of a model with several, recorded from its pipeline.

A model of several graphs (RNN-T: an encoder, then a decode loop over a prediction network
and a joint network) feeds its later graphs from its own loop, so no calibration list reaches
them directly. The list reaches the pipeline, though: run on the official calibration samples
with the fp32 graphs (onnxruntime on the CPU, the reference mlpi's transforms already use),
the pipeline feeds each graph exactly what it feeds it in a run. Each session records those
feeds; each graph is then quantised on its own record. A graph called many times per sample
(a decode step) keeps an evenly spaced subset of its calls: every call while they are few,
then every second, fourth... (never more than twice :data:`MAX_FEEDS_PER_GRAPH` held), and
at most :data:`MAX_FEEDS_PER_GRAPH` in the end.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mlpi.core.contract.backend import Capabilities, ModelArtifact, Session
from mlpi.core.contract.errors import ModelError
from mlpi.core.contract.model import ModelSpec
from mlpi.core.contract.pipeline import PipelineContext

#: Calls of one graph kept for its calibration: a decode loop calls its step graphs hundreds
#: of times per sample, and their activation ranges settle long before 500 samples' worth.
MAX_FEEDS_PER_GRAPH = 4096


class RecordingSession(Session):
    """An fp32 onnxruntime session that keeps a copy of every feed it is given."""

    def __init__(self, artifact: ModelArtifact) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(artifact.path), options, providers=["CPUExecutionProvider"])
        self.inputs = list(artifact.inputs)
        self.outputs = list(artifact.outputs)
        self.capabilities = Capabilities()
        self.precision = "fp32"
        self.calls = 0
        self.recorded: list[dict[str, np.ndarray]] = []
        self._stride = 1  # every stride-th call is kept; doubled to bound the memory

    def run(self, feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        if self.calls % self._stride == 0:
            self.recorded.append({name: np.array(value) for name, value in feeds.items()})
            if len(self.recorded) >= 2 * MAX_FEEDS_PER_GRAPH:
                self.recorded, self._stride = self.recorded[::2], self._stride * 2
        self.calls += 1
        names = [spec.name for spec in self.outputs]
        return dict(zip(names, self._session.run(names, dict(feeds))))

    def close(self) -> None:
        self._session = None


def record_graph_feeds(spec: ModelSpec, artifacts: Mapping[str, ModelArtifact], data: Any, count: int,
                       main_role: str) -> dict[str, list[dict[str, np.ndarray]]]:
    """Every graph's feeds, by role, as ``spec``'s pipeline gives them while it answers the
    first ``count`` samples of ``data`` one at a time; a progress line every tenth."""
    if spec.pipeline is None or spec.pieces:
        raise ModelError(f"{spec.name} has several graphs but no pipeline that runs them on one slot's sessions",
                         "pass graphs quantised to int8 with --model-path DIR")
    sessions = {role: RecordingSession(artifact) for role, artifact in artifacts.items()}
    main = artifacts[main_role]
    postprocess = spec.postprocess(list(main.outputs), 1) if spec.postprocess is not None else None
    pipeline = spec.pipeline(PipelineContext(sessions, data, 1, list(main.outputs), postprocess, None, main_role, "cpu"))
    step = max(1, count // 10)
    indices = list(range(count))
    data.load(indices)
    try:
        for done, index in enumerate(indices, start=1):
            pipeline([index])
            if done % step == 0 or done == count:
                calls = ", ".join(f"{role} {session.calls:,}" for role, session in sessions.items())
                print(f"mlpi: calibrating: {done}/{count} samples through the pipeline (calls: {calls})",
                      file=sys.stderr, flush=True)
    finally:
        data.unload(indices)
        for session in sessions.values():
            session.close()
    return {role: evenly(session.recorded, MAX_FEEDS_PER_GRAPH) for role, session in sessions.items()}


def evenly(items: Sequence[Any], most: int) -> list[Any]:
    """At most ``most`` of ``items``, evenly spaced, first and last included."""
    if len(items) <= most:
        return list(items)
    picks = np.linspace(0, len(items) - 1, most).round().astype(int)
    return [items[int(k)] for k in picks]
