"""A run on a disk that fills up, in a folder it may not write, interrupted at any moment, or
whose process is killed: one clear ``error:`` line, what was written kept, result.json left in
a final state whenever it can still be written, the run indexed, and a run whose process is
gone shown as abandoned.

Full disks are simulated by making the write functions raise ``OSError(ENOSPC)`` at chosen
points: in this process with monkeypatch, or in a ``python -m mlpi`` process (or its test
child) through a ``sitecustomize`` put first on its PYTHONPATH. Interrupts are real signals,
sent by such a hook at a chosen point, or from outside while a test runs.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import CliResult

from mlpi.core.results.rundir import owner_gone, process_owner, process_start
from mlpi.core.results.store import STORE_FILE, Store
from mlpi.testing.tiny_models import argmax_model

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
TWO_TESTS = ("-s", "SingleStream", "-s", "Offline")


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return argmax_model(tmp_path / "tiny.onnx")


def _env(tmp_path: Path, hook: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLPI_PLUGINS", "MLPI_STORE")}
    env.update(XDG_CACHE_HOME=str(tmp_path / "xdg-cache"), PYTHONUNBUFFERED="1", COLUMNS="300")
    if hook is not None:
        folder = tmp_path / f"hook-{uuid.uuid4().hex[:6]}"
        folder.mkdir()
        (folder / "sitecustomize.py").write_text(textwrap.dedent(hook), encoding="utf-8")
        env["PYTHONPATH"] = os.pathsep.join([str(folder), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    return env


def cli(tmp_path: Path, *args: str, hook: str | None = None, timeout: float = 120) -> CliResult:
    """``python -m mlpi ARGS`` in ``tmp_path``; ``hook``: a sitecustomize for it and its children."""
    proc = subprocess.run([sys.executable, "-m", "mlpi", *args], check=False, cwd=tmp_path, env=_env(tmp_path, hook),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def in_process(capsys: pytest.CaptureFixture[str], *args: str) -> CliResult:
    """``mlpi ARGS`` in this process, so monkeypatch reaches the run's own writes (its test
    children are still processes of their own)."""
    from mlpi.cli import main

    with pytest.raises(SystemExit) as ended:
        main([*args])
    captured = capsys.readouterr()
    code = ended.value.code
    return CliResult(code if isinstance(code, int) else 0, captured.out, captured.err)


def run_args(model: Path, root: Path, *scenarios: str) -> list[str]:
    return ["run", "-b", "null", "--model-path", str(model), *(scenarios or ("-s", "SingleStream")),
            "--duration", "0.2", "--output", str(root)]


def one_error(result: CliResult, *words: str) -> tuple[str, str]:
    """The run's single ``error:`` line (holding ``words``) and its ``hint:``; no traceback."""
    assert "Traceback" not in result.output, result.output
    assert "internal error" not in result.output, result.output
    lines = result.err_lines
    errors = [n for n, line in enumerate(lines) if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    error = lines[errors[0]]
    hint = lines[errors[0] + 1] if errors[0] + 1 < len(lines) else ""
    assert hint.startswith("hint: "), result.stderr
    for word in words:
        assert word in error, (word, error)
    return error, hint


def the_run(root: Path) -> Path:
    runs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(runs) == 1, runs
    return runs[0]


def result_of(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "result.json").read_text(encoding="utf-8"))


def indexed(root: Path) -> dict[str, str | None]:
    """Run name -> status as the store holds it, read without re-indexing anything."""
    if not (root / STORE_FILE).exists():
        return {}
    with Store(root / STORE_FILE) as store:
        return {record.name: record.status for record in store.runs()}


# ---------------------------------------------------------------- a results root that cannot be written


def _unwritable_root(tmp_path: Path, kind: str) -> Path:
    if kind in ("read-only folder", "read-only parent"):
        if os.geteuid() == 0:
            pytest.skip("root writes into a folder whatever its mode (the /proc and file cases cover it)")
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(0o555)
        return folder if kind == "read-only folder" else folder / "results"
    if kind == "under /proc":
        if not os.path.isdir("/proc/self"):
            pytest.skip("no /proc here")
        return Path(f"/proc/mlpi-results-{uuid.uuid4().hex[:8]}")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    return blocker / "results"


@pytest.mark.parametrize("kind", ["read-only folder", "read-only parent", "under /proc", "a file in place of a folder"])
def test_an_unwritable_results_root_is_refused_before_anything_starts(tmp_path: Path, model: Path, kind: str) -> None:
    root = _unwritable_root(tmp_path, kind)
    try:
        result = cli(tmp_path, *run_args(model, root))
    finally:
        for folder in (root, root.parent):
            if folder.is_dir() and str(folder).startswith(str(tmp_path)):
                folder.chmod(0o755)
    assert result.rc == 2, result.output
    error, hint = one_error(result, str(root))
    assert "--output" in hint
    assert result.err_lines == [error, hint], "refused before the plan is even shown"
    assert result.stdout.strip() == ""
    assert not os.path.lexists(root)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mlpi")], "the write check leaves nothing"


def test_a_results_root_on_a_full_disk_is_refused_before_anything_starts(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import tempfile

    def full(*args: Any, **kwargs: Any) -> str:
        raise ENOSPC

    root = tmp_path / "r"
    root.mkdir()
    monkeypatch.setattr(tempfile, "mkdtemp", full)
    result = in_process(capsys, *run_args(model, root))
    assert result.rc == 2, result.output
    error, hint = one_error(result, str(root), "no space left on device")
    assert hint == "hint: free some disk space, or pass --output DIR on another disk"
    assert result.err_lines == [error, hint] and list(root.iterdir()) == []


# ---------------------------------------------------------------- a disk that fills up mid-run


def _failing_result_writes(monkeypatch: pytest.MonkeyPatch, fail: set[int]) -> list[str]:
    """result.json writes numbered from 1; those in ``fail`` raise ENOSPC. Returns the statuses written."""
    from mlpi.core.engine import runner

    real = runner.write_json_atomic
    written: list[str] = []
    count = [0]

    def write(path: Path, data: Any) -> None:
        if Path(path).name == "result.json":
            count[0] += 1
            if count[0] in fail:
                raise ENOSPC
            written.append(data["status"])
        real(path, data)

    monkeypatch.setattr(runner, "write_json_atomic", write)
    return written


def test_a_full_disk_before_any_test_is_one_error_and_starts_nothing(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _failing_result_writes(monkeypatch, fail={1, 2})
    root = tmp_path / "r"
    result = in_process(capsys, *run_args(model, root, *TWO_TESTS))
    assert result.rc == 1, result.output
    _, hint = one_error(result, "cannot write", "result.json", "no space left on device")
    assert "free some disk space" in hint and "nothing was measured" in hint
    run_dir = the_run(root)
    assert sorted(p.name for p in run_dir.iterdir()) == ["plan.json"]  # kept; no test was started
    assert indexed(root) == {}


def test_a_full_disk_after_a_test_ends_the_run_failed_with_what_it_measured(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    written = _failing_result_writes(monkeypatch, fail={2})  # the write after the first test; then space again
    root = tmp_path / "r"
    result = in_process(capsys, *run_args(model, root, *TWO_TESTS))
    assert result.rc == 1, result.output
    error, hint = one_error(result, "cannot write", "result.json", "no space left on device")
    assert "the 1 finished test(s) are kept in" in hint
    run_dir = the_run(root)
    data = result_of(run_dir)
    assert data["status"] == "failed" and data["finished"]
    assert [(t["scenario"], t["status"]) for t in data["tests"]] == [("SingleStream", "ok")]
    assert data["error"]["message"] == error.removeprefix("error: ")
    assert not (run_dir / "Offline").exists(), "the run stops at the failed write"
    assert written == ["running", "failed"]
    assert indexed(root) == {run_dir.name: "failed"}


def test_a_full_disk_for_the_test_log_fails_the_run_cleanly(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = Path.open

    def open_(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self.name == "harness.log" and self.parent.parent.name == "Offline":
            raise ENOSPC
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_)
    root = tmp_path / "r"
    result = in_process(capsys, *run_args(model, root, *TWO_TESTS))
    assert result.rc == 1, result.output
    one_error(result, "cannot write", str(Path("Offline") / "performance" / "harness.log"), "no space left on device")
    data = result_of(the_run(root))
    assert data["status"] == "failed" and [t["scenario"] for t in data["tests"]] == ["SingleStream"]
    assert indexed(root) == {the_run(root).name: "failed"}


class _FullDiskConnection:
    """A real SQLite connection whose writes fail as on a full disk."""

    def __init__(self, real: sqlite3.Connection) -> None:
        object.__setattr__(self, "_real", real)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._real, name, value)

    def execute(self, sql: str, *args: Any) -> Any:
        if sql.lstrip().upper().startswith(("BEGIN", "INSERT", "CREATE", "ALTER")):
            error = sqlite3.OperationalError("database or disk is full")
            error.sqlite_errorcode, error.sqlite_errorname = 13, "SQLITE_FULL"
            raise error
        return self._real.execute(sql, *args)


def test_a_full_disk_for_the_store_warns_and_keeps_the_finished_run(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlpi.core.results import store

    real = sqlite3.connect
    monkeypatch.setattr(store.sqlite3, "connect", lambda *a, **k: _FullDiskConnection(real(*a, **k)))
    root = tmp_path / "r"
    result = in_process(capsys, *run_args(model, root))
    monkeypatch.setattr(store.sqlite3, "connect", real)
    assert result.rc in (0, 3), result.output  # the measurement is complete; only the index is missing
    assert "Traceback" not in result.output and "error:" not in result.stderr
    warnings = [line for line in result.err_lines if "results store" in line]
    assert len(warnings) == 1, result.stderr
    assert warnings[0].startswith("mlpi: warning: ") and "cannot write the results store" in warnings[0]
    assert "database or disk is full" in warnings[0] and "not a usable" not in warnings[0]
    assert result_of(the_run(root))["status"] == "ok"


def test_when_not_even_the_end_can_be_written_the_run_reads_as_abandoned(tmp_path: Path, model: Path) -> None:
    hook = """
        import errno, sys
        if sys.argv[1:2] == ["run"]:
            from mlpi.core.results import rundir
            real, count = rundir.write_json_atomic, [0]
            def write(path, data):
                if path.name == "result.json":
                    count[0] += 1
                    if count[0] > 1:
                        raise OSError(errno.ENOSPC, "No space left on device")
                real(path, data)
            rundir.write_json_atomic = write
    """
    root = tmp_path / "r"
    result = cli(tmp_path, *run_args(model, root), hook=hook)
    assert result.rc == 1, result.output
    _, hint = one_error(result, "result.json", "no space left on device")
    assert "abandoned" in hint
    run_dir = the_run(root)
    before = (run_dir / "result.json").read_bytes()
    data = json.loads(before)
    assert data["status"] == "running" and data["owner"]["hostname"] == socket.gethostname()
    listed = json.loads(cli(tmp_path, "results", "list", "--results", str(root), "--json").stdout)
    assert [line["run_status"] for line in listed] == ["abandoned"]
    shown = cli(tmp_path, "results", "show", run_dir.name, "--results", str(root))
    assert f"abandoned: its process {data['owner']['pid']} on {socket.gethostname()} is gone" in shown.stdout
    assert (run_dir / "result.json").read_bytes() == before, "reading never rewrites the run's file"


@pytest.mark.parametrize("where", ["outcome.json", "user.conf"])
def test_a_full_disk_in_the_test_process_is_the_tests_clear_failure(tmp_path: Path, model: Path, where: str) -> None:
    hook = f"""
        import errno, sys
        from pathlib import Path
        if sys.argv[1:2] != ["run"]:  # the test's child process
            from mlpi.core.results import rundir
            real_json, real_text = rundir.write_json_atomic, Path.write_text
            def write_json(path, data):
                if Path(path).name == {where!r}:
                    raise OSError(errno.ENOSPC, "No space left on device", str(path))
                real_json(path, data)
            def write_text(self, *args, **kwargs):
                if self.name == {where!r}:
                    raise OSError(errno.ENOSPC, "No space left on device", str(self))
                return real_text(self, *args, **kwargs)
            rundir.write_json_atomic = write_json
            Path.write_text = write_text
    """
    root = tmp_path / "r"
    result = cli(tmp_path, *run_args(model, root), hook=hook)
    assert result.rc == 1, result.output
    error, hint = one_error(result, "the SingleStream performance test", where, "no space left on device")
    assert "crashed" not in error and "free some disk space" in hint
    data = result_of(the_run(root))
    assert data["status"] == "failed" and data["tests"][0]["status"] == "failed"
    assert where in data["tests"][0]["error"]["message"]


# ---------------------------------------------------------------- runs whose process is gone


def _gone_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _running_run(root: Path, name: str, owner: dict[str, Any] | None) -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    data: dict[str, Any] = {
        "run_id": name, "status": "running", "started": "2025-01-01T00:00:00+0000", "device": "cpu",
        "model": {"name": "m", "sha256": "ab"}, "backend": {"name": "null"},
        "system": {"hostname": socket.gethostname(), "host_processor_model_name": "cpu"},
        "tests": [{"scenario": "Offline", "mode": "performance", "status": "ok", "dir": "Offline/performance",
                   "metric": "samples_per_second", "value": 100.0, "unit": "samples/s", "valid": True}],
    }
    if owner is not None:
        data["owner"] = owner
    (run_dir / "result.json").write_text(json.dumps(data), encoding="utf-8")
    return run_dir


def test_a_running_run_whose_process_is_gone_is_abandoned_in_list_show_and_compare(tmp_path: Path) -> None:
    me = process_owner()
    assert me["pid"] == os.getpid() and me["hostname"] == socket.gethostname()
    owners = {
        "alive": me,
        "gone": {**me, "pid": _gone_pid()},
        "reused": {**me, "process_start": "linux:1" if me.get("process_start", "").startswith("linux:") else "psutil:1.00"},
        "restarted": {**me, "boot_id": "another-boot"} if "boot_id" in me else None,
        "elsewhere": {**me, "hostname": "another-host.example", "pid": _gone_pid()},
        "older-mlpi": None,
    }
    root = tmp_path / "r"
    files = {name: _running_run(root, f"2025010{n}-000000-{name}", owner) for n, (name, owner) in enumerate(owners.items())}
    before = {name: (path / "result.json").read_bytes() for name, path in files.items()}

    listed = json.loads(cli(tmp_path, "results", "list", "--results", str(root), "--json").stdout)
    status = {line["run"].split("-", 2)[2]: (line["status"], line["run_status"]) for line in listed}
    assert status["alive"] == ("running", "running")
    assert status["gone"] == ("abandoned", "abandoned")
    assert status["elsewhere"] == ("running", "running"), "another host's processes cannot be seen"
    assert status["older-mlpi"] == ("running", "running")
    if me.get("process_start"):
        assert status["reused"] == ("abandoned", "abandoned"), "the pid is alive, but another process now"
    if owners["restarted"] is not None:
        assert status["restarted"] == ("abandoned", "abandoned")

    table = cli(tmp_path, "results", "list", "--results", str(root)).stdout
    assert "ABANDONED" in table and "RUNNING" in table
    shown = cli(tmp_path, "results", "show", files["gone"].name, "--results", str(root)).stdout
    assert f"abandoned: its process {owners['gone']['pid']} on {socket.gethostname()} is gone" in shown
    assert "1 finished test(s) kept" in shown
    as_json = json.loads(cli(tmp_path, "results", "show", files["gone"].name, "--results", str(root), "--json").stdout)
    assert as_json["status"] == "abandoned" and as_json["abandoned"].startswith(f"its process {owners['gone']['pid']} ")
    rows = json.loads(cli(tmp_path, "compare", "--results", str(root), "--format", "json").stdout)["rows"]
    by_run = {row["run"].split("-", 2)[2]: row["status"] for row in rows}
    assert by_run["gone"] == "abandoned" and by_run["alive"] == "running" and by_run["elsewhere"] == "running"
    assert {name: (path / "result.json").read_bytes() for name, path in files.items()} == before


def test_a_run_whose_process_was_killed_reads_as_abandoned(tmp_path: Path, model: Path) -> None:
    root = tmp_path / "r"
    args = ["run", "-b", "null", "--model-path", str(model), "-s", "SingleStream", "--duration", "60", "--output", str(root)]
    proc = subprocess.Popen([sys.executable, "-m", "mlpi", *args], cwd=tmp_path, env=_env(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not list(root.glob("*/SingleStream/performance/user.conf")):
        time.sleep(0.1)
    proc.kill()  # no chance to write anything: its test child goes with it
    proc.wait(timeout=30)
    run_dir = the_run(root)
    assert result_of(run_dir)["owner"]["pid"] == proc.pid
    listed = json.loads(cli(tmp_path, "results", "list", "--results", str(root), "--json").stdout)
    assert [(line["run"], line["status"]) for line in listed] == [(run_dir.name, "abandoned")]
    assert result_of(run_dir)["status"] == "running", "shown as abandoned, never rewritten"


def test_owner_rules() -> None:
    me = process_owner()
    assert owner_gone(me) is None
    assert owner_gone(None) is None and owner_gone({"pid": "1"}) is None and owner_gone({**me, "pid": True}) is None
    assert "is gone" in str(owner_gone({**me, "pid": _gone_pid()}))
    if me.get("process_start"):
        assert process_start(os.getpid()) == me["process_start"]
        assert "another process now" in str(owner_gone({**me, "process_start": me["process_start"].split(":")[0] + ":1"}))
    if me.get("pid_namespace"):  # another container's pids are not ours to judge
        assert owner_gone({**me, "pid": _gone_pid(), "pid_namespace": "pid:[1]"}) is None


# ---------------------------------------------------------------- Ctrl-C (and SIGTERM) at any moment

#: Hooks that signal the run's own process at a chosen point (only in `mlpi run`, never its children).
_SIGNAL_AT = {
    "after the last test is reported": """
        from mlpi.cli_output import RunPrinter
        real, seen = RunPrinter.test_finished, [0]
        def test_finished(self, test):
            real(self, test)
            seen[0] += 1
            if seen[0] == AT_TEST:
                os.kill(os.getpid(), SIG)
                time.sleep(0.2)
        RunPrinter.test_finished = test_finished
    """,
    "while the end is written": """
        from mlpi.core.results import rundir
        real = rundir.write_json_atomic
        def write(path, data):
            if path.name == "result.json" and data["status"] != "running":
                os.kill(os.getpid(), SIG)
                time.sleep(0.2)
            real(path, data)
        rundir.write_json_atomic = write
    """,
    "while the run is indexed": """
        from mlpi.core.results.store import Store
        real = Store.index_run
        def index_run(self, run_dir):
            os.kill(os.getpid(), SIG)
            time.sleep(0.2)
            return real(self, run_dir)
        Store.index_run = index_run
    """,
}


def _signal_hook(point: str, sig: signal.Signals, at_test: int = 2) -> str:
    body = textwrap.indent(textwrap.dedent(_SIGNAL_AT[point]), "    ")
    return f"import os, sys, time\nif sys.argv[1:2] == ['run']:\n    SIG, AT_TEST = {int(sig)}, {at_test}\n{body}"


@pytest.mark.parametrize(("point", "sig"), [
    ("after the last test is reported", signal.SIGINT),
    ("after the last test is reported", signal.SIGTERM),
    ("while the end is written", signal.SIGINT),
    ("while the run is indexed", signal.SIGINT),
])
def test_an_interrupt_after_the_last_test_says_the_run_is_complete_and_indexes_it(
    tmp_path: Path, model: Path, point: str, sig: signal.Signals
) -> None:
    root = tmp_path / "r"
    result = cli(tmp_path, *run_args(model, root, *TWO_TESTS), hook=_signal_hook(point, sig))
    assert result.rc == 130, result.output
    _, hint = one_error(result, "interrupted after every test had finished (2 of 2)")
    assert "nothing was being measured" not in result.output and "no results were written" not in result.output
    run_dir = the_run(root)
    assert hint == f"hint: the run is complete: its results are kept in {run_dir} and indexed"
    data = result_of(run_dir)
    assert data["status"] == "ok" and data["finished"]
    assert [(t["scenario"], t["status"]) for t in data["tests"]] == [("SingleStream", "ok"), ("Offline", "ok")]
    assert indexed(root) == {run_dir.name: "ok"}


def test_an_interrupt_between_tests_says_what_was_kept_and_what_never_ran(tmp_path: Path, model: Path) -> None:
    root = tmp_path / "r"
    hook = _signal_hook("after the last test is reported", signal.SIGINT, at_test=1)
    result = cli(tmp_path, *run_args(model, root, *TWO_TESTS), hook=hook)
    assert result.rc == 130, result.output
    _, hint = one_error(result, "interrupted after 1 of 2 tests; the Offline performance test was not started")
    run_dir = the_run(root)
    assert hint == f"hint: the 1 finished test(s) are kept in {run_dir} and indexed"
    data = result_of(run_dir)
    assert data["status"] == "interrupted" and [t["status"] for t in data["tests"]] == ["ok"]
    assert not (run_dir / "Offline").exists()
    assert indexed(root) == {run_dir.name: "interrupted"}


def test_ctrl_c_during_a_test_names_the_test_and_what_was_kept(tmp_path: Path, model: Path) -> None:
    root = tmp_path / "r"
    args = ["run", "-b", "null", "--model-path", str(model), "-s", "SingleStream", "--duration", "60", "--output", str(root)]
    proc = subprocess.Popen([sys.executable, "-m", "mlpi", *args], cwd=tmp_path, env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not list(root.glob("*/SingleStream/performance/user.conf")):
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    result = CliResult(proc.returncode, out, err)
    assert result.rc == 130, result.output
    _, hint = one_error(result, "interrupted during the SingleStream performance test (1 of 1)")
    run_dir = the_run(root)
    assert hint == f"hint: the interrupted test's logs are kept in {run_dir} and indexed"
    data = result_of(run_dir)
    assert data["status"] == "interrupted" and data["tests"][0]["status"] == "interrupted"
    assert (run_dir / "SingleStream" / "performance" / "harness.log").is_file()
    assert indexed(root) == {run_dir.name: "interrupted"}
