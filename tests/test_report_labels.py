"""What `mlpi report` says about each run: labels from the batch each test really ran (rows
where samples are groups of rows), labels unique across the report, "submission valid"
derived from the tests (an accuracy test without a score, an INVALID, failed or quick test
all say no, and why), and a latency legend that hides no bar or value label.

The runs are result.json files written here: each is shaped as a run the old report
mislabelled, so every test fails on that behaviour."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from mlpi.core.results.schema import (
    AccuracyRecord,
    BackendInfo,
    ModelInfo,
    RunResult,
    RunSettings,
    TestResult,
)
from mlpi.report import build_report
from mlpi.report.data import Bar, latency_groups, load_runs

pytest.importorskip("matplotlib", reason="mlpi report needs matplotlib: pip install -e '.[report]'")

LATENCY = {"p50": 1.25, "p90": 1.75, "p99": 2.5}


def perf(scenario: str, batch: int | None, *, value: float = 100.0, rows: bool = False, **changes: Any) -> TestResult:
    unit, metric = ("samples/s", "samples_per_second") if scenario in ("Offline", "Server") else ("ms", "p90_latency")
    test = TestResult(
        scenario, "performance", "ok", valid=True, metric=metric, value=value, unit=unit, batch_size=batch, sessions=1,
        slots=1, latency_ms=None if scenario == "Offline" else dict(LATENCY), extra={"batch_unit": "rows"} if rows else {},
    )
    return replace(test, **changes)


def scored(scenario: str = "Offline", batch: int = 1) -> TestResult:
    record = AccuracyRecord("top-1", 76.0, "%", True, 75.695, True, "accuracy=76.000%", ("accuracy=76.000%",))
    return TestResult(scenario, "accuracy", "ok", valid=True, metric="top-1", value=76.0, unit="%", batch_size=batch,
                      accuracy=record)


def unscored(scenario: str = "Offline", batch: int = 1) -> TestResult:
    """What the runner writes for an accuracy test on data without ground truth: the count of
    logged samples, LoadGen's run valid, and no accuracy record."""
    return TestResult(scenario, "accuracy", "ok", valid=True, metric="accuracy_log_samples", value=500, unit="samples",
                      batch_size=batch)


def run(run_id: str, tests: list[TestResult], *, backend: str = "onnxruntime", device: str = "cpu", model: str = "resnet50",
        started: str = "2025-06-01T12:00:00+0000", batch: int | None = None, instances: int = 1,
        submission_valid: bool = True, weights: str = "given", **changes: Any) -> RunResult:
    result = RunResult(
        run_id=run_id, backend=BackendInfo(backend, "1.0"), model=ModelInfo(model, weights=weights), device=device,
        status="ok", started=started, finished=started, precision="fp32",
        settings=RunSettings(batch_size=batch, instances=instances), submission_valid=submission_valid, tests=tuple(tests),
    )
    return replace(result, **changes)


def write(root: Path, *results: RunResult) -> Path:
    for result in results:
        folder = root / result.run_id
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps(result.to_json()), encoding="utf-8")
    return root


def labels(root: Path) -> dict[str, str]:
    return {r.run_id: r.label for r in load_runs([root]).runs}


def report_data(root: Path, out: Path) -> tuple[str, dict[str, Any]]:
    outcome = build_report([root], out)
    text = outcome.html.read_text(encoding="utf-8")
    start = text.index('<script type="application/json" id="report-data">')
    block = text[text.index(">", start) + 1:text.index("</script>", start)]
    return text, json.loads(block)


def table(text: str, table_id: str) -> str:
    start = text.index(f'<table id="{table_id}"')
    return text[start:text.index("</table>", start)]


# ------------------------------------------------------------------ 1. batch as the tests ran it


def test_label_is_the_batch_most_tests_ran_not_the_largest(tmp_path: Path) -> None:
    # Offline and Server ran at batch 1; only MultiStream's queries hold 8 samples. The old
    # report called this run "bs8". A second run on the same backend/device makes the
    # settings part of both labels.
    root = write(
        tmp_path / "results",
        run("a-mixed", [perf("Offline", 1), perf("Server", 1), perf("MultiStream", 8)], started="2025-06-01T12:00:00+0000"),
        run("b-eight", [perf("Offline", 8), perf("Server", 8)], batch=8, started="2025-06-01T13:00:00+0000"),
    )
    assert labels(root) == {"a-mixed": "onnxruntime/cpu bs1 (MultiStream 8)", "b-eight": "onnxruntime/cpu bs8"}


def test_asked_batch_is_not_the_batch_that_ran(tmp_path: Path) -> None:
    # --batch-size 32 was asked, every test ran at 4: the label says what ran.
    root = write(
        tmp_path / "results",
        run("a", [perf("Offline", 4), perf("Server", 4)], batch=32, started="2025-06-01T12:00:00+0000"),
        run("b", [perf("Offline", 16)], batch=16, instances=2, started="2025-06-01T12:30:00+0000"),
    )
    assert labels(root) == {"a": "onnxruntime/cpu bs4", "b": "onnxruntime/cpu bs16 x2"}
    loaded = {r.run_id: r for r in load_runs([root]).runs}
    assert loaded["a"].asked_batch == 32 and loaded["a"].setting == "bs4"


def test_rows_batches_say_rows(tmp_path: Path) -> None:
    root = write(
        tmp_path / "results",
        run("a", [perf("Offline", 2048, rows=True), perf("Server", 2048, rows=True), perf("SingleStream", 1)],
            model="dlrm-v2-99", started="2025-06-01T12:00:00+0000"),
        run("b", [perf("Offline", 4096, rows=True)], model="dlrm-v2-99", started="2025-06-01T12:10:00+0000"),
    )
    assert labels(root) == {"a": "onnxruntime/cpu bs2048 rows (SingleStream 1)", "b": "onnxruntime/cpu bs4096 rows"}
    text, data = report_data(root, tmp_path / "out")
    tests = table(text, "table-tests")
    assert "<td>Offline</td><td>performance</td><td>bs2048 rows</td>" in tests
    assert "<td>SingleStream</td><td>performance</td><td>bs1</td>" in tests
    runs = {r["run_id"]: r for r in data["runs"]}
    assert [(t["scenario"], t["batch_size"], t["batch_unit"]) for t in runs["b"]["tests"]] == [("Offline", 4096, "rows")]


def test_every_table_row_shows_its_own_tests_batch(tmp_path: Path) -> None:
    root = write(tmp_path / "results", run("only", [perf("Offline", 1), perf("Server", 1), perf("MultiStream", 8)], batch=8))
    text, data = report_data(root, tmp_path / "out")
    (record,) = data["runs"]
    assert record["label"] == "onnxruntime/cpu" and record["setting"] == "bs1 (MultiStream 8)"
    assert "<td>bs1 (MultiStream 8)</td>" in table(text, "table-runs")
    assert "<td>MultiStream</td><td>performance</td><td>bs8</td>" in table(text, "table-tests")
    assert "<td>Offline</td><td>performance</td><td>bs1</td>" in table(text, "table-tests")
    assert "bs8" not in table(text, "table-throughput")  # Offline and Server ran at 1
    latency = table(text, "table-latency")
    assert latency.count("<tr>") == 3 and "<td>bs1</td></tr><tr><td>MultiStream</td>" in latency
    assert latency.endswith("<td>bs8</td></tr></tbody>")


# ------------------------------------------------------------------ 2. unique labels


def test_labels_are_unique_across_models(tmp_path: Path) -> None:
    # One backend/device, two models: the old labels were unique per model only, so both
    # runs were "onnxruntime/cpu" in the runs table.
    root = write(
        tmp_path / "results",
        run("a", [perf("Offline", 1)], model="resnet50", started="2025-06-01T12:00:00+0000"),
        run("b", [perf("Offline", 1)], model="bert-99", started="2025-06-01T12:05:00+0000"),
    )
    assert labels(root) == {"a": "onnxruntime/cpu resnet50", "b": "onnxruntime/cpu bert-99"}


def test_equal_settings_are_told_apart_by_start_time_then_run_id(tmp_path: Path) -> None:
    same = [perf("Offline", 1), perf("Server", 1)]
    root = write(
        tmp_path / "results",
        run("20250601-120000-resnet50-onnxruntime-cpu", same, started="2025-06-01T12:00:00+0000"),
        run("20250601-120000-resnet50-onnxruntime-cpu-2", same, started="2025-06-01T12:00:00+0000"),
        run("20250602-090000-resnet50-onnxruntime-cpu", same, started="2025-06-02T09:00:00+0000"),
        run("20250602-093000-resnet50-onnxruntime-cpu", same, started="2025-06-02T09:30:00+0000"),
        run("other", [perf("Offline", 1)], backend="null", started="2025-06-03T09:00:00+0000"),
    )
    found = labels(root)
    assert len(set(found.values())) == len(found)
    assert found == {
        "20250601-120000-resnet50-onnxruntime-cpu": "onnxruntime/cpu 2025-06-01 12:00 [20250601-120000-resnet50-onnxruntime-cpu]",
        "20250601-120000-resnet50-onnxruntime-cpu-2":
            "onnxruntime/cpu 2025-06-01 12:00 [20250601-120000-resnet50-onnxruntime-cpu-2]",
        "20250602-090000-resnet50-onnxruntime-cpu": "onnxruntime/cpu 2025-06-02 09:00",
        "20250602-093000-resnet50-onnxruntime-cpu": "onnxruntime/cpu 2025-06-02 09:30",
        "other": "null/cpu",
    }


def test_labels_stay_unique_in_every_output(tmp_path: Path) -> None:
    root = write(
        tmp_path / "results",
        *(run(f"r{n}", [perf("Offline", 1), perf("SingleStream", 1)], model=model, started=f"2025-06-01T12:00:0{n}+0000")
          for n, model in enumerate(("resnet50", "resnet50", "bert-99", "bert-99"))),
    )
    text, data = report_data(root, tmp_path / "out")
    run_labels = [r["label"] for r in data["runs"]]
    assert len(set(run_labels)) == 4
    rows = table(text, "table-runs")
    assert all(rows.count(f"<td>{label}</td>") == 1 for label in run_labels)
    for key in ("throughput", "latency"):
        per_group: dict[Any, list[str]] = {}
        for row in data[key]:
            per_group.setdefault((row.get("model"), row["scenario"]), []).append(row["label"])
        assert all(len(set(group)) == len(group) for group in per_group.values())


# ------------------------------------------------------------------ 3. submission validity


def runs_table_cell(text: str, run_id: str) -> str:
    rows = table(text, "table-runs")
    row = rows[rows.index(f"<td>{run_id}</td>"):]
    row = row[:row.index("</tr>")]
    return row.rsplit("<td>", 1)[1].removesuffix("</td>")


def test_accuracy_without_a_score_is_not_submission_valid(tmp_path: Path) -> None:
    # Synthetic data: the accuracy test ran (LoadGen valid) but nothing could score it. The
    # runner's flag only knows the run was not quick, so the file says submission_valid: true.
    root = write(
        tmp_path / "results",
        run("synthetic", [perf("Offline", 1), unscored("Offline")], started="2025-06-01T12:00:00+0000"),
        run("scored", [perf("Offline", 1), scored("Offline")], started="2025-06-01T13:00:00+0000"),
    )
    text, data = report_data(root, tmp_path / "out")
    runs = {r["run_id"]: r for r in data["runs"]}
    assert runs["synthetic"]["submission_valid"] is False
    assert runs["synthetic"]["submission_reasons"] == ["Offline accuracy has no score"]
    assert runs_table_cell(text, "synthetic") == "no: Offline accuracy has no score"
    assert runs["scored"]["submission_valid"] is True and runs_table_cell(text, "scored") == "yes"
    tests = table(text, "table-tests")
    assert "<td>Offline</td><td>accuracy</td><td>bs1</td><td class=\"num\">500 samples</td><td>accuracy_log_samples</td>" \
           "<td>NOT SCORED (no accuracy figure)</td>" in tests
    assert 'id="notice-unscored"' in text


@pytest.mark.parametrize(
    ("tests", "changes", "why"),
    [
        ([perf("Offline", 1, valid=False)], {}, "Offline performance INVALID"),
        ([perf("Offline", 1), TestResult("Server", "performance", "failed")], {"status": "failed"},
         "run failed; Server performance failed"),
        ([perf("Offline", 1, quick=True)], {}, "quick or shortened run"),
        ([perf("Offline", 1)], {"settings": RunSettings(duration_s=1.0)}, "quick or shortened run"),
        ([perf("Offline", 1), replace(scored("Offline"), valid=False)], {}, "Offline accuracy INVALID"),
        ([perf("Offline", 1, simulated=True)], {}, "simulated"),
        ([perf("Offline", 1)], {"weights": "random"}, "random weights"),
        ([perf("Offline", 1), TestResult("Offline", "accuracy", "interrupted")], {}, "Offline accuracy interrupted"),
    ],
    ids=["invalid", "failed", "quick-test", "shortened", "accuracy-below-target", "simulated", "random-weights", "interrupted"],
)
def test_a_test_that_is_not_valid_makes_the_run_not_submission_valid(
        tmp_path: Path, tests: list[TestResult], changes: dict[str, Any], why: str) -> None:
    # Each file says submission_valid: true (as a hand-edited or older file may): the report
    # reads the tests, not the flag alone.
    root = write(tmp_path / "results", run("r", tests, **changes))
    text, data = report_data(root, tmp_path / "out")
    (record,) = data["runs"]
    assert record["submission_valid"] is False
    assert runs_table_cell(text, "r") == f"no: {why}"


def test_the_files_own_no_is_kept(tmp_path: Path) -> None:
    root = write(
        tmp_path / "results",
        run("flag", [perf("Offline", 1), scored()], submission_valid=False),
        run("quick", [perf("Offline", 1), scored()], submission_valid=False, settings=RunSettings(quick=True)),
    )
    found = {r.run_id: r for r in load_runs([root]).runs}
    assert not found["flag"].submission_valid and found["flag"].submission_reasons == ["recorded as not valid for submission"]
    assert found["quick"].submission_reasons == ["quick or shortened run"]


# ------------------------------------------------------------------ 4. latency legend


def latency_figure_for(tmp_path: Path, *results: RunResult) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from mlpi.report.charts import latency_figure

    groups = latency_groups(load_runs([write(tmp_path / "results", *results)]).runs)
    fig = latency_figure(groups)
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    return fig, groups


def test_latency_legend_hides_no_value_label(tmp_path: Path) -> None:
    from matplotlib.text import Annotation

    # The tallest bars first, with long value labels: the old legend, in each panel's upper
    # left corner, sat over the first run's p50 label. A quick run adds the marker note below.
    results = [
        run("a", [perf("SingleStream", 1, quick=True, latency_ms={"p50": 2210.0, "p90": 2250.0, "p99": 2300.0}),
                  perf("MultiStream", 8, latency_ms={"p50": 0.0456, "p90": 0.0512, "p99": 0.0598})],
            started="2025-06-01T12:00:00+0000"),
        *(run(f"b{n}", [perf("SingleStream", 1, latency_ms={"p50": 1125.0, "p90": 1150.0, "p99": 1175.0}),
                        perf("MultiStream", 8, latency_ms={"p50": 0.0436, "p90": 0.0492, "p99": 0.0578})],
              started=f"2025-06-01T12:0{n + 1}:00+0000") for n in range(2)),
    ]
    fig, groups = latency_figure_for(tmp_path, *results)
    renderer = fig.canvas.get_renderer()
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert legends, "the chart has a legend"
    value_labels = [t for ax in fig.axes for t in ax.texts if isinstance(t, Annotation)]
    assert len(value_labels) == 3 * sum(len(bars) for bars in groups.values()) == 18
    figure_texts = [fig._suptitle, fig._supxlabel]
    assert all(t is not None for t in figure_texts)
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for text in value_labels:
            assert not box.overlaps(text.get_window_extent(renderer)), f"the legend hides the value label {text.get_text()}"
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), "the legend sits over a panel"
            for patch in ax.patches:
                assert not box.overlaps(patch.get_window_extent(renderer))
        for text in figure_texts:
            assert not box.overlaps(text.get_window_extent(renderer)), text.get_text()
        whole = fig.bbox
        assert whole.x0 <= box.x0 and box.x1 <= whole.x1 and whole.y0 <= box.y0 and box.y1 <= whole.y1, "cut off"
    (legend,) = legends  # one for the whole chart
    assert [t.get_text() for t in legend.get_texts()] == ["p50", "p90", "p99"]
    assert "2,210" in [t.get_text() for t in value_labels]  # not 2.21e+03
    for ax in fig.axes:  # and no value label runs out of its panel (into the title)
        inside = ax.get_window_extent(renderer)
        for text in (t for t in ax.texts if isinstance(t, Annotation)):
            extent = text.get_window_extent(renderer)
            assert extent.y1 <= inside.y1 and inside.x0 <= extent.x0 and extent.x1 <= inside.x1, text.get_text()


def test_latency_ticks_carry_the_unique_labels(tmp_path: Path) -> None:
    results = [
        run("a", [perf("SingleStream", 1)], model="resnet50", started="2025-06-01T12:00:00+0000"),
        run("b", [perf("SingleStream", 1)], model="bert-99", started="2025-06-01T12:01:00+0000"),
    ]
    fig, groups = latency_figure_for(tmp_path, *results)
    (ax,) = fig.axes
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == ["onnxruntime/cpu\nresnet50", "onnxruntime/cpu\nbert-99"]  # the model once, not twice
    assert [b.run.label for b in groups["SingleStream"]] == ["onnxruntime/cpu resnet50", "onnxruntime/cpu bert-99"]
    assert isinstance(groups["SingleStream"][0], Bar)


def test_long_labels_do_not_run_into_each_other(tmp_path: Path) -> None:
    results = [
        run(f"r{n}", [perf("Offline", 1), perf("Server", 1), perf("MultiStream", 8 * (n + 1))],
            started=f"2025-06-01T12:0{n}:00+0000")
        for n in range(4)
    ]
    fig, groups = latency_figure_for(tmp_path, *results)
    assert {b.run.label for b in groups["MultiStream"]} == {f"onnxruntime/cpu bs1 (MultiStream {8 * (n + 1)})" for n in range(4)}
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
        assert len(boxes) == 4
        assert not any(a.overlaps(b) for n, a in enumerate(boxes) for b in boxes[n + 1:]), "tick labels overlap"
