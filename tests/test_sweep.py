"""`mlpi sweep` with the local executor: matrices from flags and TOML, checks before any cell,
failing cells recorded, interrupted and killed sweeps resumed. Real LoadGen runs on tiny models."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli

from mlpi.core.contract.errors import UsageError
from mlpi.sweep.matrix import build_matrix, spec_from_flags, spec_from_toml
from mlpi.sweep.ray_executor import adopt_run, pack_run

# Two backend plugins, installed as a throwaway distribution on PYTHONPATH the way a third-party
# plugin would be: "faulty" loads fine and fails on its first inference (or later, per
# FAULT_AFTER); "slow" answers after 2 ms, so a short test issues few queries and lasts its
# duration, not longer.
PLUGINS = textwrap.dedent(
    """
    import os, time
    from mlpi.backends.null import NullBackend, NullSession

    class FailingSession(NullSession):
        calls = 0
        def run(self, feeds):
            FailingSession.calls += 1
            if FailingSession.calls > int(os.environ.get("FAULT_AFTER", "0")):
                raise RuntimeError("simulated device error")
            return super().run(feeds)

    class FaultyBackend(NullBackend):
        name = "faulty"
        def load(self, model, device, options, precision, context=None):
            return FailingSession(model, options)

    class SlowSession(NullSession):
        def run(self, feeds):
            time.sleep(0.002)
            return super().run(feeds)

    class SlowBackend(NullBackend):
        name = "slow"
        def load(self, model, device, options, precision, context=None):
            return SlowSession(model, options)
    """
)


@pytest.fixture()
def plugin_env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sweep_test_backends.py").write_text(PLUGINS)
    info = site / "sweep_test_backends-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sweep-test-backends\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[mlpi.backends]\nfaulty = sweep_test_backends:FaultyBackend\nslow = sweep_test_backends:SlowBackend\n"
    )
    return {
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
        "XDG_CACHE_HOME": str(tmp_path / "xdg-cache"),
    }


def sweep_state(root: Path) -> dict[str, Any]:
    states = list((root / "sweeps").glob("*/sweep.json"))
    assert len(states) == 1, states
    return json.loads(states[0].read_text())


def run_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if (p / "result.json").is_file())


def statuses(state: dict[str, Any]) -> list[str]:
    return [c["status"] for c in state["cells"]]


# ------------------------------------------------------------------ the matrix


def test_flags_and_toml_give_the_same_cells_and_requests(model_dir: Path, tmp_path: Path) -> None:
    model = model_dir / "argmax.onnx"
    flags = spec_from_flags(
        {"backend": ("null,ort",), "device": ("cpu",), "batch_size": ("1,auto", "8"), "instances": ("1,2",),
         "scenario": ("Offline,SingleStream",)},
        {"model_path": str(model), "duration_s": 0.5, "seed": 3},
        ("ort.intra_op_threads=2",),
    )
    toml = tmp_path / "sweep.toml"
    toml.write_text(textwrap.dedent(
        f"""
        [matrix]
        backend = ["null", "ort"]
        device = "cpu"
        batch_size = [1, "auto", 8]
        instances = [1, 2]
        scenario = ["Offline", "SingleStream"]

        [run]
        model_path = "{model}"
        duration = 0.5
        seed = 3

        [options.ort]
        intra_op_threads = "2"
        """
    ))
    from_flags = build_matrix(flags)
    from_file = build_matrix(spec_from_toml(toml))
    assert from_flags.cells == from_file.cells
    assert from_flags.requests == from_file.requests
    assert len(from_flags.cells) == 2 * 3 * 2 * 2
    first = from_flags.cells[0]
    assert (first.backend, first.device, first.batch_size, first.instances, first.scenario) == ("null", "cpu", 1, 1, "Offline")
    # The alias resolves to the backend's own name, and only its cells get its option.
    assert {c.backend for c in from_flags.cells} == {"null", "onnxruntime"}
    options = {(r["backend"], json.dumps(r["options"])) for r in from_flags.requests}
    assert options == {("null", "{}"), ("onnxruntime", '{"intra_op_threads": "2"}')}
    assert all(r["scenarios"] in (["Offline"], ["SingleStream"]) and r["seed"] == 3 for r in from_flags.requests)


def test_device_lists_keep_unit_lists_together_and_excludes_drop_cells(tmp_path: Path, model_dir: Path) -> None:
    spec = spec_from_flags({"device": ("cpu,cuda:0,1", "qaic:0-3")}, {}, ())
    assert spec.axes["device"] == ["cpu", "cuda:0,1", "qaic:0-3"]
    toml = tmp_path / "sweep.toml"
    toml.write_text(textwrap.dedent(
        f"""
        [matrix]
        backend = ["null"]
        batch_size = [1, 2, 4]
        scenario = ["all"]
        [run]
        model_path = "{model_dir / 'argmax.onnx'}"
        [[exclude]]
        batch_size = [2, 4]
        scenario = "Server"
        """
    ))
    matrix = build_matrix(spec_from_toml(toml))
    pairs = [(c.batch_size, c.scenario) for c in matrix.cells]
    assert len(pairs) == 3 * 4 - 2
    assert (1, "Server") in pairs and (2, "Server") not in pairs and (4, "Server") not in pairs
    assert (4, "MultiStream") in pairs


@pytest.mark.parametrize(
    ("text", "message", "hint"),
    [
        ('[matrix]\nbackend = ["null"\n', "is not valid TOML", "fix the line"),
        ('[matrix]\nbackends = ["null"]\n', "unknown matrix key 'backends'", "valid keys: backend, device, batch_size, instances, scenario"),
        ("[runs]\nquick = true\n", "unknown table 'runs'", "valid tables: matrix, run, options, exclude"),
        ('[run]\nduration = "long"\n', "[run] duration", "must be a number"),
        ("[run]\nthreads = 4\n", "unknown [run] key 'threads'", "valid keys: model, model_path"),
        ('[matrix]\nscenario = ["Ofline"]\n', "unknown scenario 'Ofline'", "did you mean Offline"),
        ("[matrix]\nbatch_size = [0]\n", "[matrix] batch_size", "auto for the backend's preference"),
        ("[matrix]\ninstances = []\n", "[matrix] instances", "at least one value"),
        ('[[exclude]]\nbackends = "null"\n', "unknown key 'backends' in [[exclude]] #1", "did you mean backend"),
    ],
)
def test_a_bad_matrix_file_names_the_problem_and_what_is_valid(tmp_path: Path, text: str, message: str, hint: str) -> None:
    toml = tmp_path / "sweep.toml"
    toml.write_text(text)
    with pytest.raises(UsageError) as caught:
        spec_from_toml(toml)
    assert message in caught.value.message and str(toml) in caught.value.message
    assert hint in (caught.value.hint or "")


def test_bad_matrix_file_on_the_command_line_exits_2_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "sweep.toml").write_text('[matrix]\nbackend = "null"\nbatch = [1]\n')
    proc = run_cli(["sweep", "--matrix", "sweep.toml", "--output", "r"], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "error: unknown matrix key 'batch' in sweep.toml",
        "hint: did you mean batch_size or backend? valid keys: backend, device, batch_size, instances, scenario",
    ]
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------ checks before any cell


def test_a_misspelt_backend_fails_the_whole_sweep_before_any_cell(model_dir: Path, tmp_path: Path) -> None:
    proc = run_cli(["sweep", "-b", "null,onxruntime", "--model-path", str(model_dir / "argmax.onnx"),
                    "--duration", "0.5", "--output", "r"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "error: unknown backend 'onxruntime'" in proc.stderr and "did you mean onnxruntime?" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()


def test_a_cell_that_cannot_be_planned_fails_the_sweep_before_any_cell_runs(model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "broken.onnx").write_bytes(b"not an onnx file")
    proc = run_cli(["sweep", "-b", "null", "--batch-size", "1,2", "--model-path", "broken.onnx", "--output", "r"], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and error[0].startswith("error: cell 1 (null cpu batch 1 x1 Offline): ") and "broken.onnx" in error[0]
    assert not (tmp_path / "r").exists()


def test_an_option_valid_for_one_backend_only_goes_to_that_backends_cells(model_dir: Path, tmp_path: Path) -> None:
    model = str(model_dir / "argmax.onnx")
    everywhere = run_cli(["sweep", "-b", "null,onnxruntime", "-o", "intra_op_threads=1", "--model-path", model,
                          "--duration", "0.5", "--output", "r"], cwd=tmp_path)
    assert everywhere.returncode == 2
    assert "unknown option 'intra_op_threads' for backend 'null'" in everywhere.stderr
    assert "-o null.KEY=VALUE" in everywhere.stderr  # the hint says how to scope it
    assert not (tmp_path / "r").exists()

    scoped = run_cli(["sweep", "-b", "null,ort", "-o", "ort.intra_op_threads=1", "-s", "SingleStream", "--model-path", model,
                      "--duration", "0.5", "--output", "r"], cwd=tmp_path)
    assert scoped.returncode == 0, scoped.stderr
    state = sweep_state(tmp_path / "r")
    assert statuses(state) == ["done", "done"]
    plans = {c["cell"]["backend"]: json.loads((tmp_path / "r" / c["run_id"] / "plan.json").read_text()) for c in state["cells"]}
    assert plans["onnxruntime"]["backend_options"]["intra_op_threads"] == 1
    assert "intra_op_threads" not in plans["null"]["backend_options"]
    assert all(p["scenarios"] == ["SingleStream"] for p in plans.values())


# ------------------------------------------------------------------ failures and resuming


def test_a_failing_cell_is_recorded_and_the_next_cells_still_run(model_dir: Path, tmp_path: Path, plugin_env: dict[str, str]) -> None:
    args = ["sweep", "-b", "faulty,null", "--batch-size", "1,2", "-s", "SingleStream",
            "--model-path", str(model_dir / "argmax.onnx"), "--duration", "0.5", "--output", "r"]
    proc = run_cli(args, cwd=tmp_path, env=plugin_env)
    assert proc.returncode == 1, proc.stderr
    assert "error: 2 of 4 cells failed (cell 1, 2)" in proc.stderr
    assert "--retry-failed" in proc.stderr
    state = sweep_state(tmp_path / "r")
    assert statuses(state) == ["failed", "failed", "done", "done"]
    assert state["status"] == "failed" and state["owner"] is None
    for cell in state["cells"][:2]:
        assert "simulated device error" in cell["error"]["message"]
        result = json.loads((tmp_path / "r" / cell["run_id"] / "result.json").read_text())
        assert result["status"] == "failed"  # its run directory and logs are kept
    for cell in state["cells"][2:]:
        result = json.loads((tmp_path / "r" / cell["run_id"] / "result.json").read_text())
        assert result["status"] == "ok" and result["backend"]["name"] == "null"
        assert cell["tests"][0]["metric"] in ("early_stopping_p90_latency", "measured_p90_latency") and cell["tests"][0]["value"] > 0
    # The table lists every cell, and why the failed ones failed.
    assert proc.stdout.count("simulated device error") == 2
    done_ids = [c["run_id"] for c in state["cells"][2:]]
    failed_ids = [c["run_id"] for c in state["cells"][:2]]

    # Resuming without --retry-failed keeps them failed and runs nothing.
    again = run_cli(["sweep", "--resume", state["sweep_id"], "--output", "r"], cwd=tmp_path, env=plugin_env)
    assert again.returncode == 1
    assert "0 to run, 2 failed kept" in again.stderr
    assert run_dirs(tmp_path / "r") == sorted(done_ids + failed_ids)

    # With the fault gone, --retry-failed runs only the failed cells; done cells keep their runs.
    fixed = {**plugin_env, "FAULT_AFTER": "1000000000"}
    retried = run_cli(["sweep", "--resume", state["sweep_id"], "--retry-failed", "--output", "r"], cwd=tmp_path, env=fixed)
    assert retried.returncode == 0, retried.stderr
    after = sweep_state(tmp_path / "r")
    assert statuses(after) == ["done"] * 4
    assert [c["run_id"] for c in after["cells"][2:]] == done_ids
    assert [c["previous_runs"] for c in after["cells"][:2]] == [[i] for i in failed_ids]
    assert [c["attempts"] for c in after["cells"]] == [2, 2, 1, 1]
    assert len(run_dirs(tmp_path / "r")) == 6


def start_sweep(model_dir: Path, tmp_path: Path, plugin_env: dict[str, str]) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "MLPI_PLUGINS"}
    env.update(plugin_env)
    return subprocess.Popen(
        [sys.executable, "-m", "mlpi", "sweep", "-b", "slow", "--batch-size", "1,2,3", "-s", "SingleStream",
         "--model-path", str(model_dir / "argmax.onnx"), "--duration", "2", "--output", "r"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for_second_cell(tmp_path: Path) -> dict[str, Any]:
    """Block until the first cell is done and the second one's LoadGen test is running."""
    deadline = time.time() + 120
    while time.time() < deadline:
        confs = list((tmp_path / "r").glob("*/SingleStream/performance/user.conf"))
        states = list((tmp_path / "r").glob("sweeps/*/sweep.json"))
        if len(confs) == 2 and states:
            state = json.loads(states[0].read_text())
            if statuses(state)[:2] == ["done", "running"]:
                return state
        time.sleep(0.05)
    raise AssertionError("the sweep never reached its second cell")


def wait_for_orphaned_child(root: Path, done_id: str) -> None:
    """A killed sweep's LoadGen child finishes its short test on its own; wait for it."""
    log = next(p for p in root.glob("*/SingleStream/performance/harness.log") if p.parts[-4] != done_id)
    pid = int(log.read_text().split("pid ")[1].split()[0])
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError(f"the orphaned test process {pid} did not end")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_a_stopped_sweep_resumes_with_only_the_missing_cells(
    model_dir: Path, tmp_path: Path, plugin_env: dict[str, str], sig: signal.Signals
) -> None:
    proc = start_sweep(model_dir, tmp_path, plugin_env)
    first = wait_for_second_cell(tmp_path)
    done_id = first["cells"][0]["run_id"]
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    state = sweep_state(tmp_path / "r")
    if sig == signal.SIGINT:
        assert proc.returncode == 130, stderr
        assert "error: interrupted" in stderr and f"--resume {tmp_path / 'r' / 'sweeps'}" in stderr.replace("\n", "")
        assert statuses(state) == ["done", "interrupted", "pending"]
        interrupted_id = state["cells"][1]["run_id"]
        result = json.loads((tmp_path / "r" / interrupted_id / "result.json").read_text())
        assert result["status"] == "interrupted"  # what it had is kept
        assert state["status"] == "interrupted" and state["owner"] is None
    else:
        # Killed outright: the state still says the second cell is running, in a process that is gone.
        assert statuses(state) == ["done", "running", "pending"]
        assert state["owner"]["pid"] == proc.pid
        interrupted_id = None
        wait_for_orphaned_child(tmp_path / "r", done_id)

    resumed = run_cli(["sweep", "--resume", str(tmp_path / "r" / "sweeps" / state["sweep_id"])], cwd=tmp_path, env=plugin_env)
    assert resumed.returncode == 0, resumed.stderr
    assert "1 cells done, 2 to run" in resumed.stderr
    after = sweep_state(tmp_path / "r")
    assert statuses(after) == ["done"] * 3
    assert after["cells"][0]["run_id"] == done_id and after["cells"][0]["attempts"] == 1
    assert after["cells"][1]["attempts"] == 2 and after["cells"][2]["attempts"] == 1
    if interrupted_id is not None:
        assert after["cells"][1]["previous_runs"] == [interrupted_id]
    for cell in after["cells"]:
        result = json.loads((tmp_path / "r" / cell["run_id"] / "result.json").read_text())
        assert result["status"] == "ok" and result["settings"]["batch_size"] == cell["cell"]["batch_size"]


def test_resume_refuses_a_sweep_another_live_process_is_running(model_dir: Path, tmp_path: Path) -> None:
    proc = run_cli(["sweep", "-b", "null", "--model-path", str(model_dir / "argmax.onnx"), "--duration", "0.5",
                    "--output", "r"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    path = next((tmp_path / "r" / "sweeps").glob("*/sweep.json"))
    state = json.loads(path.read_text())
    state["owner"] = {"pid": os.getpid(), "host": socket.gethostname()}  # this test process is alive
    state["cells"][0]["status"] = "pending"
    path.write_text(json.dumps(state))
    again = run_cli(["sweep", "--resume", state["sweep_id"], "--output", "r"], cwd=tmp_path)
    assert again.returncode == 2
    assert f"error: sweep {state['sweep_id']} is being run by process {os.getpid()}" in again.stderr
    assert json.loads(path.read_text())["cells"][0]["status"] == "pending"


def test_resume_of_an_unknown_sweep_says_what_there_is(tmp_path: Path) -> None:
    proc = run_cli(["sweep", "--resume", "20990101-000000-sweep-x", "--output", "r"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "error: no sweep '20990101-000000-sweep-x' found" in proc.stderr


# ------------------------------------------------------------------ runs brought back from a node


def test_a_run_brought_back_never_overwrites_one_of_the_same_name(tmp_path: Path) -> None:
    made = tmp_path / "node" / "20990101-000000-m-null-cpu"
    (made / "Offline" / "performance").mkdir(parents=True)
    (made / "result.json").write_text('{"run_id": "20990101-000000-m-null-cpu", "status": "ok"}')
    (made / "Offline" / "performance" / "mlperf_log_summary.txt").write_text("summary")
    archive = pack_run(made)
    root = tmp_path / "results"
    first = adopt_run(archive, root, made.name)
    second = adopt_run(archive, root, made.name)
    assert (first.name, second.name) == (made.name, made.name + "-2")
    for run in (first, second):
        assert json.loads((run / "result.json").read_text())["run_id"] == made.name
        assert (run / "Offline" / "performance" / "mlperf_log_summary.txt").read_text() == "summary"
    assert sorted(p.name for p in root.iterdir()) == [first.name, second.name]  # no leftovers


def test_the_ray_executor_without_ray_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlpi.core.contract.errors import PluginError
    from mlpi.sweep.ray_executor import RayExecutor

    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where Ray is not installed
    with pytest.raises(PluginError) as caught:
        RayExecutor("127.0.0.1:6379").prepare([])
    assert caught.value.message == "the ray executor needs Ray, which is not installed"
    assert "pip install 'mlpi[ray]'" in (caught.value.hint or "")
