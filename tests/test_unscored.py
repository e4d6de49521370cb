"""An accuracy run on data without ground truth has no score: it is never called VALID, nor
valid for submission."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_an_unscored_accuracy_run_says_so(tmp_path: Path) -> None:
    from mlpi.testing.tiny_models import matmul_model

    model = matmul_model(tmp_path / "mm.onnx")
    done = subprocess.run([sys.executable, "-m", "mlpi", "run", "--backend", "null", "--model-path", str(model),
                           "--mode", "accuracy", "--count", "32", "--output", str(tmp_path / "results")],
                          capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "NOT SCORED" in done.stdout + done.stderr and " VALID" not in done.stdout.replace("NOT SCORED", "")
    assert "not valid for submission: an accuracy test has no score" in done.stdout
    (run,) = [p for p in (tmp_path / "results").iterdir() if p.is_dir()]
    result = json.loads((run / "result.json").read_text())
    (test,) = result["tests"]
    assert test["valid"] is None and test["value"] == 32 and test["accuracy"] is None
    assert result["submission_valid"] is False
