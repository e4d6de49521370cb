"""A running test says what it is doing: its phase, how long it should take, how much is done."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from mlpi.cli_output import progress_text
from mlpi.core.engine.progress import expected_seconds, read_progress, write_progress


def settings(**values: float) -> SimpleNamespace:
    base = {"min_duration_ms": 10_000, "min_query_count": 100, "max_query_count": 0, "offline_expected_qps": 50.0,
            "server_target_qps": 20.0, "single_stream_expected_latency_ns": 1e7, "multi_stream_expected_latency_ns": 8e7,
            "multi_stream_samples_per_query": 8}
    base.update(values)
    return SimpleNamespace(**base)


def test_expected_seconds_follow_what_loadgen_waits_for() -> None:
    assert expected_seconds(settings(), "Offline", "performance", 500) == 10.0
    assert expected_seconds(settings(min_query_count=24576), "Offline", "performance", 500) == pytest.approx(24576 / 50)
    assert expected_seconds(settings(), "Offline", "accuracy", 500) == pytest.approx(10.0)  # 500 samples at 50/s
    assert expected_seconds(settings(), "SingleStream", "performance", 500) == 10.0  # 100 x 10 ms < 10 s
    slow = settings(single_stream_expected_latency_ns=1e9)
    assert expected_seconds(slow, "SingleStream", "performance", 500) == 100.0  # 100 queries of 1 s
    cut = settings(single_stream_expected_latency_ns=1e9, max_query_count=12)
    assert expected_seconds(cut, "SingleStream", "performance", 500) == 12.0  # a quick run's cut query count
    assert expected_seconds(settings(), "MultiStream", "accuracy", 80) == pytest.approx(10 * 0.08)


def test_progress_round_trips_and_reads_as_a_line(tmp_path: Path) -> None:
    assert read_progress(tmp_path) is None
    write_progress(tmp_path, phase="running", expected_s=600.0, started=1000.0, done=12345)
    progress = read_progress(tmp_path)
    assert progress is not None
    assert progress_text("Offline", "performance", progress, 1042.0) == \
        "      Offline performance: 42 s of about 600 s, 12,345 samples done"
    assert progress_text("Offline", "accuracy", {"phase": "scoring"}, 0) == "      Offline accuracy: scoring the accuracy log"
    assert progress_text("Offline", "performance", {"phase": "bogus"}, 0) is None
    (tmp_path / "progress.json").write_text("{not json", encoding="utf-8")
    assert read_progress(tmp_path) is None


def test_a_run_shows_its_progress_while_it_runs(tmp_path: Path) -> None:
    from mlpi.testing.tiny_models import matmul_model

    model = matmul_model(tmp_path / "mm.onnx")
    done = subprocess.run([sys.executable, "-m", "mlpi", "run", "--backend", "null", "--model-path", str(model),
                           "-s", "Offline", "--duration", "3", "--output", str(tmp_path / "results")],
                          capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Offline performance: " in done.stderr and " s of about " in done.stderr, done.stderr
    (run,) = [p for p in (tmp_path / "results").iterdir() if p.is_dir()]
    log = (run / "Offline" / "performance" / "harness.log").read_text(encoding="utf-8")
    assert "the Offline performance test should take about" in log
    assert "Expectations(" not in log and "samples/s" in log
