"""Faults injected by a backend (:mod:`mlpi.testing.faulty`), driven through ``mlpi run`` in
every scenario: what a user sees when a backend raises, crashes, hangs, answers the wrong
rows or shapes, answers NaN or leaks memory.

Each run is a real ``python -m mlpi run`` with the ``faulty`` backend installed the way a
third party's is (a ``*.dist-info`` on PYTHONPATH). A fault fires in one of three phases of a
test, which the tests pick with ``-o after=N`` (batches that succeed first, per process):

- ``first``: the very first batch, which the harness runs to see the outputs' shapes;
- ``calibration``: a batch of the calibration pass (``after=3``: the shape batch and the two
  warm-up batches succeed);
- ``loadgen``: a batch inside LoadGen's test. Offline and Server skip calibration's timed
  batches with ``--target-qps``, so the second batch is LoadGen's; SingleStream and
  MultiStream batches sleep 10 ms, so calibration (0.5 s, two warm-up batches and the shape
  batch) runs at most 54 and LoadGen's 2 s reach the 61st.

A test's ``harness.log`` says which: the line ``expectations from ...`` is written between
calibration and LoadGen.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import one_error, only_run_dir, read_result

from mlpi.core.contract.accuracy import read_accuracy_log
from mlpi.testing import tiny_models

SCENARIOS = ("Offline", "Server", "SingleStream", "MultiStream")
ENTRY_POINTS = "[mlpi.backends]\nfaulty = mlpi.testing.faulty:FaultyBackend\n"
#: A hang must end within this (the watchdog at 3 s, the processes' start-up); past it the
#: watchdog is taken as broken and the run is stopped, so CI never hangs.
HANG_TIMEOUT_S = 120
#: The watchdog's limit in the hang tests.
WATCHDOG_S = "3"
#: The line a test's harness.log holds once calibration is over.
CALIBRATED = "expectations from"


@dataclass(frozen=True)
class Phase:
    """Where in a test the fault fires: the options and flags that put it there."""

    name: str
    options: tuple[str, ...]
    flags: tuple[str, ...] = ()


def phase(name: str, scenario: str) -> Phase:
    if name == "first":
        return Phase(name, ("after=0",))
    if name == "calibration":
        return Phase(name, ("after=3",))
    if scenario in ("Offline", "Server"):
        return Phase(name, ("after=1",), ("--target-qps", "1000"))
    return Phase(name, ("after=60", "delay_ms=10"))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder that, on PYTHONPATH, installs the faulty backend for every mlpi process."""
    folder = tmp_path_factory.mktemp("faulty-site")
    dist = folder / "mlpi_faulty-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mlpi-faulty\nVersion: 0.1\n", encoding="utf-8")
    (dist / "entry_points.txt").write_text(ENTRY_POINTS, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("fault-models")
    return {
        "tiny": tiny_models.argmax_model(folder / "tiny.onnx"),  # one output, label[N]
        "two_outputs": tiny_models.matmul_model(folder / "two_outputs.onnx"),  # logits[N, 10], label[N]
        "one_output": tiny_models.mlp_model(folder / "one_output.onnx"),  # probs[N, 10]
    }


@pytest.fixture
def mlpi(site: Path, tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``mlpi(*args, timeout=..., preexec_fn=...)``: ``python -m mlpi ARGS`` with the faulty
    backend installed, in ``tmp_path``."""

    def run(*args: str, timeout: float = HANG_TIMEOUT_S, preexec_fn: Callable[[], None] | None = None
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mlpi", *args], cwd=tmp_path, env=env_with(site, tmp_path),
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              preexec_fn=preexec_fn, check=False)

    return run


def env_with(site: Path, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLPI_PLUGINS", "MLPI_STORE")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    env.update(XDG_CACHE_HOME=str(tmp_path / "xdg-cache"), PYTHONUNBUFFERED="1", COLUMNS="300")
    return env


def faulty_run(model: Path, scenario: str, fault: str, where: Phase, out: Path, *extra: str) -> list[str]:
    """The arguments of ``mlpi run`` with ``fault`` firing at ``where``."""
    options = [item for option in (f"fault={fault}", *where.options) for item in ("-o", option)]
    return ["run", "--backend", "faulty", *options, "--model-path", str(model), "-s", scenario, "--duration", "2",
            *where.flags, *extra, "--output", str(out)]


def the_test(root: Path) -> tuple[dict[str, Any], Path]:
    """The only test of the only run under ``root``: its result.json entry and its folder."""
    result = read_result(root)
    (test,) = result["tests"]
    assert result["status"] == "failed"
    return test, only_run_dir(root) / test["dir"]


def assert_phase(folder: Path, where: Phase) -> None:
    """The fault fired where the test meant it to (LoadGen's test, or before it)."""
    log = (folder / "harness.log").read_text(encoding="utf-8", errors="replace")
    assert (CALIBRATED in log) == (where.name == "loadgen"), log[-3000:]


# --------------------------------------------------------------------------- the backend itself


def test_the_backend_answers_zeros_until_its_fault_fires(models: dict[str, Path]) -> None:
    """In this process, no mlpi run: ``after`` counts batches over every session; each fault
    answers as documented."""
    from mlpi.core.contract.device import Device
    from mlpi.core.engine.onnx_file import inspect_onnx
    from mlpi.core.plugins.options import build_options, option_help
    from mlpi.testing import faulty

    backend = faulty.FaultyBackend()
    assert backend.probe() == [Device("cpu")] and set(option_help(faulty.FaultyOptions)) >= {
        "fault", "after", "leak_mb", "delay_ms"}
    artifact = inspect_onnx(models["two_outputs"])  # logits[N, 10] float32, label[N] int64
    feeds = {"x": np.ones((4, 16), np.float32)}

    def session(**options: str) -> Any:
        return backend.load(artifact, Device("cpu"), build_options(faulty.FaultyOptions, [("test", options)], "faulty"),
                            None)

    faulty.reset()
    one, two = session(fault="raise", after="3"), session(fault="raise", after="3")
    for s in (one, two, one):
        out = s.run(feeds)
        assert out["logits"].shape == (4, 10) and not out["logits"].any() and out["label"].shape == (4,)
    with pytest.raises(RuntimeError, match="^injected fault after 3 batches$"):
        two.run(feeds)
    assert faulty.batches_seen() == 4

    faulty.reset()
    assert {k: v.shape for k, v in session(fault="short").run(feeds).items()} == {"logits": (3, 10), "label": (3,)}
    assert {k: v.shape for k, v in session(fault="wrong_shape").run(feeds).items()} == {"logits": (4, 11), "label": (4, 2)}
    nan = session(fault="nan").run(feeds)
    assert np.isnan(nan["logits"]).all() and (nan["label"] == 0).all()
    faulty.reset()
    leaky = session(fault="leak", leak_mb="2", after="1")
    leaky.run(feeds)
    assert faulty.leaked_bytes() == 0
    leaky.run(feeds)
    leaky.run(feeds)
    assert faulty.leaked_bytes() == 2 * 2 * (1 << 20)
    faulty.reset()
    with pytest.raises(Exception, match="choose one of: none, raise, hang, crash"):
        session(fault="explode")


# --------------------------------------------------------------------------- raise


RAISE_CASES = [
    *[pytest.param(s, "loadgen", id=f"{s}-loadgen") for s in SCENARIOS],
    *[pytest.param(s, "calibration", id=f"{s}-calibration") for s in SCENARIOS],
    pytest.param("Offline", "first", id="Offline-first"),
]


@pytest.mark.parametrize(("scenario", "when"), RAISE_CASES)
def test_a_backend_exception_is_one_error_naming_the_backend_and_the_test_is_recorded(
    mlpi: Any, models: dict[str, Path], tmp_path: Path, scenario: str, when: str
) -> None:
    where = phase(when, scenario)
    proc = mlpi(*faulty_run(models["tiny"], scenario, "raise", where, tmp_path / "out"))
    test, folder = the_test(tmp_path / "out")
    assert test["scenario"] == scenario and test["status"] == "failed"
    assert "injected fault after" in test["error"]["message"]
    log = folder / "harness.log"
    assert log.is_file() and "RuntimeError: injected fault after" in log.read_text(encoding="utf-8")  # its traceback
    assert_phase(folder, where)
    assert proc.returncode == 1
    one_error(proc, "injected fault after", "'faulty'")
    assert scenario in test["error"]["message"]


# --------------------------------------------------------------------------- crash


@pytest.mark.parametrize(("scenario", "when"), [("Offline", "first"), ("Server", "loadgen"),
                                                ("SingleStream", "calibration"), ("MultiStream", "loadgen")])
def test_a_segfault_is_one_error_saying_the_test_process_crashed(
    mlpi: Any, models: dict[str, Path], tmp_path: Path, scenario: str, when: str
) -> None:
    where = phase(when, scenario)
    proc = mlpi(*faulty_run(models["tiny"], scenario, "crash", where, tmp_path / "out"))
    line = one_error(proc, f"the {scenario} performance test process crashed", "signal SIGSEGV")
    assert proc.returncode == 1, line
    test, folder = the_test(tmp_path / "out")
    assert test["status"] == "failed" and "crashed (signal SIGSEGV)" in test["error"]["message"]
    log = (folder / "harness.log").read_text(encoding="utf-8", errors="replace")
    assert "Fatal Python error: Segmentation fault" in log and "faulty.py" in log  # faulthandler's stack
    assert_phase(folder, where)


# --------------------------------------------------------------------------- hang


def assert_the_watchdog_fired(proc: subprocess.CompletedProcess[str], root: Path, scenario: str) -> Path:
    line = one_error(proc, "'faulty'", "stopped responding", scenario)
    assert proc.returncode == 1, line
    test, folder = the_test(root)
    assert test["status"] == "failed" and "stopped responding" in test["error"]["message"]
    log = (folder / "harness.log").read_text(encoding="utf-8", errors="replace")
    assert "the watchdog fired" in log and "most recent call first" in log
    assert "faulty.py" in log  # the hung thread's stack shows where it hangs
    return folder


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_hang_inside_loadgen_is_ended_by_the_watchdog(
    mlpi: Any, models: dict[str, Path], tmp_path: Path, scenario: str
) -> None:
    where = phase("loadgen", scenario)
    started = time.monotonic()
    proc = mlpi(*faulty_run(models["tiny"], scenario, "hang", where, tmp_path / "out", "--watchdog-s", WATCHDOG_S))
    folder = assert_the_watchdog_fired(proc, tmp_path / "out", scenario)
    assert_phase(folder, where)
    assert time.monotonic() - started < 60


def test_a_hang_in_calibration_is_ended_by_the_watchdog(mlpi: Any, models: dict[str, Path], tmp_path: Path) -> None:
    where = Phase("calibration", ("after=1",))  # the shape batch succeeds; calibration's warm-up hangs
    proc = mlpi(*faulty_run(models["tiny"], "Offline", "hang", where, tmp_path / "out", "--watchdog-s", WATCHDOG_S))
    folder = assert_the_watchdog_fired(proc, tmp_path / "out", "Offline")
    assert_phase(folder, where)



def start(site: Path, tmp_path: Path, args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "mlpi", *args], cwd=tmp_path, env=env_with(site, tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def stop(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    """Stop a run as a user's SIGTERM would (mlpi then stops its test process); kill it if
    that does not end it."""
    proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_hang_in_the_first_batch_is_ended_by_the_watchdog(site: Path, models: dict[str, Path], tmp_path: Path) -> None:
    args = faulty_run(models["tiny"], "Offline", "hang", phase("first", "Offline"), tmp_path / "out",
                      "--watchdog-s", WATCHDOG_S)
    proc = start(site, tmp_path, args)
    try:
        out, err = proc.communicate(timeout=25)  # a watchdog of 3 s ends the other hangs in about 7 s
    except subprocess.TimeoutExpired:
        stopped = stop(proc)
        pytest.fail(f"the run still hung 25 s after it started (watchdog {WATCHDOG_S} s); stderr: {stopped.stderr[-1000:]}")
    assert_the_watchdog_fired(subprocess.CompletedProcess(args, proc.returncode, out, err), tmp_path / "out", "Offline")


def test_watchdog_0_turns_it_off(site: Path, models: dict[str, Path], tmp_path: Path) -> None:
    """The hang the watchdog ends in about 7 s (test_a_hang_in_calibration...) goes on with
    ``--watchdog-s 0`` until this test stops it, 15 s after it started."""
    out = tmp_path / "out"
    proc = start(site, tmp_path, faulty_run(models["tiny"], "Offline", "hang", Phase("calibration", ("after=1",)), out,
                                            "--watchdog-s", "0"))
    try:
        proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        pass
    else:
        pytest.fail(f"the run ended by itself (exit code {proc.returncode}) with the watchdog off")
    log = only_run_dir(out) / "Offline" / "performance" / "harness.log"
    text = log.read_text(encoding="utf-8", errors="replace")
    hung_s = time.time() - log.stat().st_mtime
    stopped = stop(proc)
    assert "session(s)" in text and "watchdog" not in text, text
    assert hung_s > 2 * float(WATCHDOG_S), f"the test had hung for {hung_s:.1f} s only: the machine is too slow to tell"
    # SIGTERM stopped it: recorded as interrupted, and no hung test process is left behind.
    assert stopped.returncode == 130, stopped.stderr
    assert read_result(out)["tests"][0]["status"] == "interrupted"
    found = re.search(r"pid (\d+)", text)
    assert found is not None and not alive(int(found.group(1)))


# --------------------------------------------------------------------------- wrong rows, wrong shapes


ROWS = re.compile(r"the backend answered (\d+) rows of output '(\w+)' for a batch of (\d+)")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_too_few_rows_are_one_error(mlpi: Any, models: dict[str, Path], tmp_path: Path, scenario: str) -> None:
    where = phase("loadgen", scenario)
    proc = mlpi(*faulty_run(models["tiny"], scenario, "short", where, tmp_path / "out"))
    line = one_error(proc, "rows of output 'label'")
    assert proc.returncode == 1, line
    found = ROWS.search(line)
    assert found is not None and int(found.group(1)) == int(found.group(3)) - 1, line
    if scenario == "MultiStream":
        assert found.group(3) == "8"
    test, folder = the_test(tmp_path / "out")
    assert ROWS.search(test["error"]["message"]) is not None
    assert_phase(folder, where)


def test_too_few_rows_in_the_first_batch_blame_the_backend(mlpi: Any, models: dict[str, Path], tmp_path: Path) -> None:
    proc = mlpi(*faulty_run(models["tiny"], "Offline", "short", phase("first", "Offline"), tmp_path / "out"))
    line = one_error(proc, "rows")
    assert "export the model" not in proc.stderr and ROWS.search(line) is not None, proc.stderr


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_outputs_of_the_wrong_shape_are_one_error(mlpi: Any, models: dict[str, Path], tmp_path: Path, scenario: str) -> None:
    """A model of two outputs: the default postprocessor copies each into its place in the
    response and cannot (logits[n, 11] into [n, 10])."""
    where = phase("loadgen", scenario)
    proc = mlpi(*faulty_run(models["two_outputs"], scenario, "wrong_shape", where, tmp_path / "out"))
    line = one_error(proc, "'faulty'", scenario, "shape")
    assert proc.returncode == 1, line
    test, folder = the_test(tmp_path / "out")
    assert "shape" in test["error"]["message"]
    assert_phase(folder, where)


def test_a_single_output_of_the_wrong_shape_is_one_error(mlpi: Any, models: dict[str, Path], tmp_path: Path) -> None:
    where = phase("loadgen", "Offline")
    proc = mlpi(*faulty_run(models["one_output"], "Offline", "wrong_shape", where, tmp_path / "out"))
    one_error(proc, "shape")
    test, _ = the_test(tmp_path / "out")
    assert test["status"] == "failed"


# --------------------------------------------------------------------------- NaN


def test_nan_outputs_pass_a_performance_run_unseen(mlpi: Any, models: dict[str, Path], tmp_path: Path) -> None:
    """A performance run never reads the values: NaN answers measure like any others."""
    where = Phase("first", ("after=0", "delay_ms=1"))  # 64k samples/s: LoadGen holds little
    proc = mlpi(*faulty_run(models["two_outputs"], "Offline", "nan", where, tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert "error:" not in proc.stderr and "nan" not in proc.stderr.lower()
    (test,) = read_result(tmp_path / "out")["tests"]
    assert test["status"] == "ok" and test["valid"] is True and test["value"] > 0


@pytest.fixture(scope="module")
def nan_accuracy_run(site: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """bert-99 on the SQuAD fixture, accuracy mode, the faulty backend answering NaN logits."""
    from mlpi.datasets.squad_features import read_vocab
    from mlpi.testing.squad_fixture import known_answer_graph, write_squad_fixture

    work = tmp_path_factory.mktemp("nan-accuracy")
    data = work / "squad"
    data.mkdir()
    write_squad_fixture(data)
    model = known_answer_graph(data / "known.onnx", read_vocab(data / "vocab.txt", 30522))
    args = ["run", "--backend", "faulty", "-o", "fault=nan", "--model", "bert-99", "--model-path", str(model),
            "--dataset", "squad", "--dataset-path", str(data), "-s", "Offline", "--mode", "accuracy", "--duration", "2",
            "--output", str(work / "out")]
    proc = subprocess.run([sys.executable, "-m", "mlpi", *args], cwd=work, env=env_with(site, work),
                          capture_output=True, text=True, timeout=HANG_TIMEOUT_S, stdin=subprocess.DEVNULL, check=False)
    return proc, work / "out"


def test_nan_outputs_in_an_accuracy_run_score_as_wrong_answers(
    nan_accuracy_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    """What happens today: BERT's scorer reads the logits, finds no answer in NaN, and the
    run reports F1 0 below the target (exit code 3), like a model that answers wrong."""
    proc, out = nan_accuracy_run
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr and "error:" not in proc.stderr
    (test,) = read_result(out)["tests"]
    assert test["status"] == "ok" and test["valid"] is False and test["accuracy"]["passed"] is False
    folder = only_run_dir(out) / "Offline" / "accuracy"
    assert json.loads((folder / "accuracy.txt").read_text(encoding="utf-8")) == {"exact_match": 0.0, "f1": 0.0}
    logged = read_accuracy_log(folder / "mlperf_log_accuracy.json")
    assert logged and all(np.isnan(np.frombuffer(raw, np.float32)).all() for raw in logged.values())


def test_nan_outputs_in_an_accuracy_run_are_named(nan_accuracy_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, out = nan_accuracy_run
    (test,) = read_result(out)["tests"]
    # What the run says of itself: its output (paths taken out) and its test's record.
    said = (proc.stdout + proc.stderr).replace(str(out.parent), "WORK") + json.dumps(test)
    assert re.search(r"\bNaN\b|not finite|non-finite", said, re.IGNORECASE), said[-2000:]


# --------------------------------------------------------------------------- later tests, memory


def test_the_run_stops_at_a_failed_test_and_keeps_it(mlpi: Any, models: dict[str, Path], tmp_path: Path) -> None:
    """A failed test ends the run (a broken backend would fail every later test the same way):
    the failure is recorded with its error, and nothing is said to have run that did not."""
    proc = mlpi("run", "--backend", "faulty", "-o", "fault=raise", "--model-path", str(models["tiny"]),
                "-s", "Offline", "-s", "SingleStream", "--duration", "2", "--output", str(tmp_path / "out"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    result = read_result(tmp_path / "out")
    assert result["status"] == "failed"
    assert [(t["scenario"], t["status"]) for t in result["tests"]] == [("Offline", "failed")]
    assert "injected fault" in result["tests"][0]["error"]["message"]
    assert not (only_run_dir(tmp_path / "out") / "SingleStream").exists()


#: What the leak test lets the mlpi processes map: its test process needs about 0.4 GB.
LEAK_LIMIT_BYTES = 3 << 30


def limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LEAK_LIMIT_BYTES, LEAK_LIMIT_BYTES))


def test_a_leak_meets_the_memory_limit_as_one_error(mlpi: Any, models: dict[str, Path], tmp_path: Path) -> None:
    """Every batch keeps 256 MB; under a 3 GB address-space limit (``ulimit -v``) an
    allocation fails within a few batches: one error, the test recorded, no hang."""
    where = Phase("first", ("after=0", "leak_mb=256", "delay_ms=5"))
    proc = mlpi(*faulty_run(models["tiny"], "SingleStream", "leak", where, tmp_path / "out"), preexec_fn=limit_memory)
    line = one_error(proc, "MemoryError")
    assert proc.returncode == 1, line
    test, folder = the_test(tmp_path / "out")
    assert "MemoryError" in test["error"]["message"]
    assert "MemoryError" in (folder / "harness.log").read_text(encoding="utf-8", errors="replace")


def test_an_accuracy_run_of_a_fast_backend_is_not_refused_for_memory(models: dict[str, Path], tmp_path: Path,
                                                                     site: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "mlpi", "run", "--backend", "null", "--model-path", str(models["tiny"]),
                           "-s", "SingleStream", "--mode", "accuracy", "--count", "64", "--output", str(tmp_path / "out")],
                          cwd=tmp_path, env=env_with(site, tmp_path), capture_output=True, text=True,
                          timeout=HANG_TIMEOUT_S, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, proc.stderr
    (test,) = read_result(tmp_path / "out")["tests"]
    assert test["status"] == "ok" and test["value"] == 64
