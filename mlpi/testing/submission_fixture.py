"""Test fixtures for submission trees: compliance-audit folders and a relaxed front to MLCommons' checker.

- :func:`add_audit` writes, into a real run directory, what ``mlpi run --audit TEST01|TEST04``
  leaves there: ``<scenario>/<test>/`` holding exactly the submission's compliance folder
  (``verify_performance.txt``, ``performance/run_1/`` LoadGen logs, and for TEST01
  ``verify_accuracy.txt`` and ``accuracy/mlperf_log_accuracy.json``, plus ``accuracy.txt``,
  ``baseline_accuracy.txt`` and ``compliance_accuracy.txt`` where its byte comparison failed),
  the raw audit run under ``run/``, and the audit's entry in result.json's ``audits``.
- :func:`submission_runs` makes, once per pytest run, the real LoadGen runs the tests build
  trees from (ResNet50's signature on a 10-image data set, 1 s per test; an INVALID run; a run
  of a retired benchmark) and the JSON files a user writes for the system and measurements.
- :func:`relaxed_checker` makes a folder shaped like a checkout of MLCommons' inference
  repository whose ``tools/submission/submission_checker/main.py`` loads the real checker from
  a checkout, unchanged, lowers in its own process only the limits a test's short runs cannot
  reach, and calls the checker's ``main``. ``mlpi submission check --mlcommons`` and a plain
  ``python -m submission_checker.main`` both run it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: TEST01 samples responses into its own accuracy log; enough entries that the log is cut.
AUDIT_LOG_ENTRIES = 120


def add_audit(run_dir: Path, scenario: str, test: str, *, passed: bool = True, byte_match: bool = True,
              reference_run: str | None = None) -> dict[str, Any]:
    """Write audit ``test`` of ``scenario`` into ``run_dir`` as the audit would; its
    performance logs are the run's own performance test's. Returns the result.json entry."""
    result_file = run_dir / "result.json"
    result = json.loads(result_file.read_text())
    perf = next(t for t in result["tests"] if t["scenario"] == scenario and t["mode"] == "performance")
    folder = run_dir / scenario / test
    logs = folder / "performance" / "run_1"
    logs.mkdir(parents=True)
    for name in ("mlperf_log_summary.txt", "mlperf_log_detail.txt"):
        shutil.copyfile(run_dir / perf["dir"] / name, logs / name)
    verdict = "TEST PASS" if passed else "TEST FAIL: Test score invalid"
    score = perf["value"]
    (folder / "verify_performance.txt").write_text(
        f"Verifying performance.\nReference score = {score}\nTest score = {score}\n{verdict}\n")
    if test == "TEST01":
        accuracy = folder / "accuracy"
        accuracy.mkdir()
        entries = ",\n".join(
            f'{{ "seq_id" : {i}, "qsl_idx" : {i % 10}, "data" : "{(i % 10) * 100:08X}" }}' for i in range(AUDIT_LOG_ENTRIES))
        (accuracy / "mlperf_log_accuracy.json").write_text(f"[\n{entries}\n]\n")
        matched = byte_match and passed
        (folder / "verify_accuracy.txt").write_text(
            f"num_acc_log_entries = 10\nnum_perf_log_data_mismatch = {0 if matched else 3}\n"
            f"num_perf_log_entries = {AUDIT_LOG_ENTRIES}\n{'TEST PASS' if matched else 'TEST FAIL'}\n\n")
        if not byte_match:
            line = "accuracy=100.000%, good=10, total=10\n"
            for name in ("accuracy.txt", "baseline_accuracy.txt", "compliance_accuracy.txt"):
                (accuracy / name).write_text(line)
    raw = folder / "run"
    raw.mkdir()
    (raw / "mlperf_log_detail.txt").write_text("the raw audit run: not part of a submission\n")
    entry = {**perf, "mode": "performance", "test": test, "dir": f"{scenario}/{test}", "passed": passed,
             "verification": {"passed": passed}, "reference_run": reference_run or result["run_id"]}
    result.setdefault("audits", []).append(entry)
    result_file.write_text(json.dumps(result, indent=2))
    return entry


def relaxed_checker(dest: Path, checkout: Path, *, version: str, benchmark: str, min_duration_ms: int,
                    performance_sample_count: int, dataset_size: int, offline_min_samples: int | None = None) -> Path:
    """A checkout-shaped folder at ``dest`` whose checker is ``checkout``'s with these limits
    lowered for ``benchmark`` in round ``version``; returns ``dest``."""
    real = (Path(checkout) / "tools" / "submission" / "submission_checker").resolve()
    package = dest / "tools" / "submission" / "submission_checker"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        '"""Tests only: this folder first, then MLCommons\' own package, unchanged."""\n'
        f"__path__.append({str(real)!r})\n")
    offline = "" if offline_min_samples is None else textwrap.dedent(f"""\
        # - closed division, Offline: the samples of the one query, at least {offline_min_samples} instead of
        #   the benchmark's minimum (a 1 s run issues only what one second at the expected QPS takes):
        performance_check.OFFLINE_MIN_SPQ_SINCE_V4[BENCHMARK] = {offline_min_samples}
        """)
    (package / "main.py").write_text(textwrap.dedent(f'''\
        """MLCommons' submission checker with the limits short test runs cannot reach lowered.

        For mlpi's tests only. The checker's files in {real} are not changed: this module loads
        them, changes values in this process only, and calls the checker's own main(). What is
        lowered, for {benchmark} in {version} only, and why (everything else is checked as
        MLCommons checks it):
        """
        import importlib.util
        import sys
        from pathlib import Path

        from submission_checker import constants
        from submission_checker.checks import performance_check

        BENCHMARK, VERSION = {benchmark!r}, {version!r}
        # - the minimum duration setting: test runs last {min_duration_ms} ms (mlpi run --duration), not
        #   TEST_DURATION_MS (600,000 ms):
        performance_check.TEST_DURATION_MS = {min_duration_ms}
        # - the performance sample count: the test data set holds {performance_sample_count} samples, so
        #   LoadGen keeps {performance_sample_count} loaded, not the benchmark's count:
        constants.MODEL_CONFIG[VERSION]["performance-sample-count"][BENCHMARK] = {performance_sample_count}
        # - the data set size an accuracy run must cover: the {dataset_size} samples of the test data set,
        #   not the benchmark's whole data set (the check still runs: fewer samples fail it):
        constants.MODEL_CONFIG[VERSION]["dataset-size"][BENCHMARK] = {dataset_size}
        ''') + offline + textwrap.dedent(f'''\

        _spec = importlib.util.spec_from_file_location("submission_checker._mlcommons_main",
                                                       Path({str(real)!r}) / "main.py")
        _main = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(_main)
        sys.exit(_main.main())
        '''))
    return dest


# ------------------------------------------------------------------ runs a test tree is built from


@dataclass(frozen=True)
class SubmissionRuns:
    """Real LoadGen runs under one results root (``root``): ``main`` is ResNet50's signature on
    a 10-image data set it classifies all right, Offline, SingleStream and MultiStream, each in
    performance and accuracy mode, 1 s per test; ``invalid`` an Offline run LoadGen judged
    INVALID; ``retired`` a run of a benchmark the current round no longer has. The two JSON
    files fill what neither the runs nor mlpi can know of the system and measurements."""

    root: Path
    main: str
    invalid: str
    retired: str
    system_file: Path
    measurements_file: Path

    @property
    def main_dir(self) -> Path:
        return self.root / self.main


#: The images of the test data set: one per class id below; the model answers each right.
LABELS = tuple(range(0, 1000, 100))
#: The seconds each test of the runs lasts (``mlpi run --duration``).
DURATION_S = 1


def submission_runs(base: Path) -> SubmissionRuns:
    """The runs, made once under ``base`` (the temporary folder of one pytest run) and reused."""
    done = base / "runs.json"
    if done.is_file():
        return _runs_from(base, json.loads(done.read_text()))
    base.mkdir(parents=True, exist_ok=True)
    import numpy as np

    from mlpi.testing.tiny_models import resnet_signature_classifier

    model = resnet_signature_classifier(base / "classifier.onnx")
    images = np.zeros((len(LABELS), 3, 224, 224), np.float32)
    for i, label in enumerate(LABELS):
        images.reshape(len(LABELS), -1)[i, label + 1] = 1.0  # the model's class k+1 is ImageNet's k
    data = base / "images.npz"
    np.savez(data, input_tensor_0=images, labels=np.array(LABELS, np.int64))
    root = base / "results"
    common = ["--dataset", "numpy", "--dataset-path", str(data), "--duration", str(DURATION_S), "--output", str(root)]
    main = _run(root, ["--model", "resnet50", "--model-path", str(model), "-s", "Offline", "-s", "SingleStream",
                       "-s", "MultiStream", "--mode", "both", *common])
    invalid = _run(root, ["--model", "resnet50", "--model-path", str(model), "-s", "Offline", "--target-qps", "1",
                          *common], expect_invalid=True)
    retired = _run(root, ["--model", "ssd-mobilenet", "--weights", "random", "-s", "Offline", "--count", "8",
                          "--duration", str(DURATION_S), "--output", str(root)])
    facts = {"main": main, "invalid": invalid, "retired": retired}
    _write_user_files(base, root / main)
    done.write_text(json.dumps(facts))
    return _runs_from(base, facts)


def _runs_from(base: Path, facts: dict[str, str]) -> SubmissionRuns:
    return SubmissionRuns(base / "results", facts["main"], facts["invalid"], facts["retired"],
                          base / "system.json", base / "measurements.json")


def _run(root: Path, args: list[str], expect_invalid: bool = False) -> str:
    """The run directory ``mlpi run ARGS`` made. A run meant to be VALID that LoadGen judged
    INVALID (a 1 s test calibrated while the machine was busy can end before its second) is
    made again once; the INVALID one is removed, and the results store with it (the next
    listing indexes the run directories again)."""
    expected = 3 if expect_invalid else 0
    for attempt in (1, 2):
        before = {p.name for p in root.iterdir()} if root.is_dir() else set()
        proc = subprocess.run([sys.executable, "-m", "mlpi", "run", *args], check=False, capture_output=True, text=True,
                              timeout=600, env={k: v for k, v in os.environ.items() if k != "MLPI_PLUGINS"})
        made = sorted({p.name for p in root.iterdir() if p.is_dir()} - before)
        if proc.returncode == expected and len(made) == 1:
            return made[0]
        if proc.returncode == 3 and not expect_invalid and attempt == 1 and len(made) == 1:
            shutil.rmtree(root / made[0])
            for store in root.glob("mlpi.sqlite*"):
                store.unlink()
            continue
        raise RuntimeError(f"mlpi run {' '.join(args)} exited {proc.returncode} (made {made}):\n{proc.stdout}\n{proc.stderr}")
    raise AssertionError("unreachable")


def _write_user_files(base: Path, run_dir: Path) -> None:
    """What a user writes: every system field a submission needs that the run could not
    detect (a machine without accelerators), and the model file's retraining facts."""
    from mlpi.submission.system import FILLED_FIELDS

    recorded = json.loads((run_dir / "result.json").read_text())["system"]
    given: dict[str, Any] = {
        "system_name": "mlpi test machine", "status": "available", "host_storage_type": "SSD",
        "host_storage_capacity": "64 GB", "host_memory_configuration": "unknown", "host_networking": "N/A",
        "host_network_card_count": "1", "host_networking_topology": "N/A", "accelerators_per_node": 0,
        "accelerator_model_name": "N/A", "accelerator_memory_capacity": "N/A", "accelerator_host_interconnect": "N/A",
        "accelerator_memory_configuration": "N/A", "accelerator_interconnect": "N/A", "cooling": "air",
    }
    for key in FILLED_FIELDS:  # what this machine's detection left empty, so the test runs anywhere
        if key not in given and key not in ("division", "submitter", "system_type") and recorded.get(key) in ("", None):
            given[key] = "unknown"
    (base / "system.json").write_text(json.dumps(given, indent=2))
    (base / "measurements.json").write_text(json.dumps({"retraining": "No", "weight_transformations": "No"}))
