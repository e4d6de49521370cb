"""Recording a model's graph feeds through its pipeline for int8 calibration: the memory bound
and the even spacing of what is kept (the end-to-end proof is test_pipelines' two-graph run)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_batch_axes import save_model

from mlpi.core.engine import calibration_record
from mlpi.core.engine.calibration_record import RecordingSession, evenly
from mlpi.core.engine.onnx_file import inspect_onnx


def _identity(path: Path) -> Path:
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])])
    return save_model(graph, path)


def test_a_session_keeps_every_call_then_every_other_and_never_more_than_twice_the_bound(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(calibration_record, "MAX_FEEDS_PER_GRAPH", 4)
    session = RecordingSession(inspect_onnx(_identity(tmp_path / "identity.onnx")))
    held = []
    for call in range(37):
        out = session.run({"x": np.full((1, 2), call, np.float32)})
        np.testing.assert_array_equal(out["y"], np.full((1, 2), call, np.float32))  # it answers as the graph does
        held.append(len(session.recorded))
    assert max(held) < 8 and session.calls == 37
    kept = [int(feed["x"][0, 0]) for feed in session.recorded]
    assert kept == sorted(kept) and kept[0] == 0
    gaps = set(np.diff(kept).tolist())
    assert len(gaps) == 1, kept  # evenly spaced: one stride
    assert int(evenly(session.recorded, 4)[0]["x"][0, 0]) == 0


def test_evenly_keeps_the_first_and_last_and_spaces_the_rest() -> None:
    assert evenly(list(range(10)), 20) == list(range(10))
    assert evenly(list(range(10)), 4) == [0, 3, 6, 9]
    assert evenly(list(range(101)), 5) == [0, 25, 50, 75, 100]
