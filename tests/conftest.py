"""Shared fixtures: tiny ONNX models on disk and a way to run the CLI as a user would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mlpi.testing import tiny_models

# A test harness started in the background (nohup, or `&` in a script) ignores SIGINT, and
# every process it starts inherits that: the tests that press Ctrl-C on `mlpi run` would see
# nothing happen. A handler (not SIG_IGN) here is reset to the default in each child.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

#: Where CI asks for the ids of the tests that skipped (one per line), so that a second
#: environment with every runtime installed runs exactly those and nothing twice.
SKIPPED_FILE_ENV = "MLPI_SKIPPED_FILE"
_skipped: list[str] = []


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:  # a whole module skipped (pytest.importorskip at its top)
        _skipped.append(report.nodeid)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and report.when in ("setup", "call"):
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = os.environ.get(SKIPPED_FILE_ENV)
    # Under pytest-xdist each worker sees only its own tests; the controller is given every
    # worker's reports (skipped collections included), so it alone writes the whole list.
    if target and not _is_xdist_worker(session.config):
        Path(target).write_text("".join(f"{nodeid}\n" for nodeid in dict.fromkeys(_skipped)), encoding="utf-8")


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto`` (pyproject.toml) for one test file is no workers: ``--dist loadfile`` would
    give the whole file to a single worker on one CPU, slower than pytest alone on all of them."""
    files = {str(arg).split("::")[0] for arg in config.args}
    if len(files) == 1 and next(iter(files)).endswith(".py"):
        return 0
    return None  # pytest-xdist's own count: one worker per CPU core


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``-n``), each worker and every process its tests start run on one
    CPU of their own. Many tests judge what LoadGen measured (calibration, then a test that
    must not outrun it; latency bounds; watchdog delays): sharing the CPUs with another
    worker's test would make those results depend on what ran beside them."""
    if not _is_xdist_worker(config) or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    workers = int(config.workerinput["workercount"])  # type: ignore[attr-defined]
    index = int(config.workerinput["workerid"].removeprefix("gw"))  # type: ignore[attr-defined]
    if workers <= len(cpus):  # more workers than CPUs: leave the scheduler to it
        os.sched_setaffinity(0, {cpus[index]})


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test (and every mlpi process it starts) uses a fresh cache, never the user's; one
    per xdist worker (its own temp folder), since a random-weights graph is written in place
    and another worker's process must not read it half written."""
    path = tmp_path_factory.mktemp("mlpi-cache")
    old = os.environ.get("MLPI_CACHE")
    os.environ["MLPI_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("MLPI_CACHE", None)
    else:
        os.environ["MLPI_CACHE"] = old


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models")
    tiny_models.matmul_model(path / "matmul.onnx")
    tiny_models.matmul_model(path / "matmul_b4.onnx", batch=4)
    tiny_models.conv_model(path / "conv.onnx")
    tiny_models.two_input_model(path / "two_inputs.onnx")
    tiny_models.argmax_model(path / "argmax.onnx")
    return path


@dataclass
class CliResult:
    """What a CLI process gave back: exit code and both streams."""

    rc: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run ``mlpi ARGS`` in a fresh process, the way a user's shell would."""
    full_env = {k: v for k, v in os.environ.items() if k != "MLPI_PLUGINS"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "mlpi", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
        check=False,
    )


def one_error(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    """The single ``error:`` line of a failed run (no traceback), holding every one of ``words``."""
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for word in words:
        assert word in errors[0], (word, errors[0])
    return errors[0]


def one_line_error(excinfo: pytest.ExceptionInfo[Any], *words: str) -> str:
    """What the CLI would print of a raised MlpiError: one line of message (holding ``words``)
    and a one-line hint; returns the message."""
    error = excinfo.value
    assert "\n" not in error.message and error.hint and "\n" not in error.hint, (error.message, error.hint)
    for word in words:
        assert word in error.message, (word, error.message)
    return error.message


def only_run_dir(root: Path) -> Path:
    runs = [p for p in root.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def read_result(root: Path) -> dict[str, Any]:
    return json.loads((only_run_dir(root) / "result.json").read_text())


class CountingImread:
    """cv2.imread that counts its calls (and fails on demand), for the image datasets' cache tests."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_at: int | None = None, error: type[BaseException] = RuntimeError) -> None:
        import cv2

        self.calls = 0
        self.real = cv2.imread
        self.fail_at = fail_at
        self.error = error
        monkeypatch.setattr(cv2, "imread", self)

    def __call__(self, *args: object, **kwargs: object) -> Any:
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise self.error("imread must not be called here")
        return self.real(*args, **kwargs)
