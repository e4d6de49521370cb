"""`mlpi sweep --executor ray` against a real Ray cluster this test starts (and always stops)
on 127.0.0.1: cells go to nodes by resources, runs come back into the local results root."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_cli

from mlpi.core.results.store import Store, store_path

ray = pytest.importorskip("ray")

#: The custom resource the test cluster's node has one of, standing for an accelerator kind.
ACCEL = "mlpitestaccel"

# The null backend, declared able to use the ACCEL kind too, so cells can ask the cluster for it.
ACCEL_PLUGIN = textwrap.dedent(
    f"""
    from mlpi.backends.null import NullBackend
    from mlpi.core.contract.device import Device

    class AccelNull(NullBackend):
        name = "accelnull"
        device_kinds = ("cpu", "{ACCEL}")
        def probe(self):
            return [Device("cpu"), Device("{ACCEL}", (0,))]
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def session_pids(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
            except (ProcessLookupError, PermissionError):
                pass
    return pids


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    site = tmp_path_factory.mktemp("site")
    (site / "accel_null.py").write_text(ACCEL_PLUGIN)
    info = site / "accel_null-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: accel-null\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mlpi.backends]\naccelnull = accel_null:AccelNull\n")
    return {
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
        "XDG_CACHE_HOME": str(site / "xdg-cache"),
        "RAY_USAGE_STATS_ENABLED": "0",
    }


@pytest.fixture(scope="module")
def ray_address(isolated_cache: Path, plugin_env: dict[str, str]) -> Iterator[str]:
    """A one-node Ray cluster on 127.0.0.1 with 2 CPUs and one ACCEL; stopped (every process of
    its session) however the tests end."""
    port = free_port()
    temp = tempfile.mkdtemp(prefix="mlpi-ray-", dir="/tmp")  # Ray's socket paths must stay short
    env = {k: v for k, v in os.environ.items() if k not in ("MLPI_PLUGINS", "RAY_ADDRESS")}
    env.update(plugin_env)
    log = open(Path(temp) / "ray-start.log", "wb")  # noqa: SIM115 - closed in teardown
    head = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={port}", "--num-cpus=2", f"--resources={json.dumps({ACCEL: 1})}", "--include-dashboard=false",
         f"--dashboard-agent-listen-port={free_port()}",
         f"--temp-dir={temp}", "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    address = f"127.0.0.1:{port}"
    try:
        _wait_ready(address, head, Path(temp) / "ray-start.log")
        yield address
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        for pid in session_pids(head.pid):  # whatever is left of this cluster, by its session
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if head.poll() is None:
            head.wait(timeout=10)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _wait_ready(address: str, head: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        if head.poll() is not None:
            raise AssertionError(f"ray start exited with {head.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", int(address.rpartition(":")[2])), timeout=1).close()
        except OSError:
            time.sleep(0.3)
            continue
        try:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
            alive = [n for n in ray.nodes() if n.get("Alive")]
        finally:
            ray.shutdown()
        if alive:
            return
        time.sleep(0.3)
    raise AssertionError(f"the Ray cluster at {address} did not come up: {log.read_text(errors='replace')[-2000:]}")


def test_cells_run_on_the_cluster_and_their_runs_come_back(
    ray_address: str, plugin_env: dict[str, str], model_dir: Path, tmp_path: Path
) -> None:
    args = ["sweep", "--executor", "ray", "--address", ray_address, "-b", "accelnull",
            "-d", f"cpu,{ACCEL}:0,{ACCEL}:0-1", "-s", "SingleStream", "--model-path", str(model_dir / "argmax.onnx"),
            "--duration", "0.5", "--output", "r"]
    proc = run_cli(args, cwd=tmp_path, env=plugin_env, timeout=120)
    assert proc.returncode == 1, proc.stderr  # the cell asking for two accelerators cannot run anywhere
    root = tmp_path / "r"
    state = json.loads(next((root / "sweeps").glob("*/sweep.json")).read_text())
    assert state["executor"] == {"name": "ray", "address": ray_address, "cpus_per_cell": 1.0}
    cells = state["cells"]
    assert [c["cell"]["device"] for c in cells] == ["cpu", f"{ACCEL}:0", f"{ACCEL}:0,1"]
    assert [c["status"] for c in cells] == ["done", "done", "failed"]

    # The runs made on the node are now in the local results root, whole.
    runs = sorted(p.name for p in root.iterdir() if (p / "result.json").is_file())
    assert runs == sorted(c["run_id"] for c in cells[:2])
    for cell in cells[:2]:
        run = root / cell["run_id"]
        result = json.loads((run / "result.json").read_text())
        assert result["status"] == "ok" and result["device"] == cell["cell"]["device"]
        assert result["backend"]["name"] == "accelnull"
        assert result["tests"][0]["value"] > 0 and cell["tests"][0]["value"] == result["tests"][0]["value"]
        assert (run / "SingleStream" / "performance" / "mlperf_log_detail.txt").stat().st_size > 0
        assert json.loads((run / "plan.json").read_text())["extra"]["sweep"] == {"id": state["sweep_id"], "cell": cell["index"]}
        assert cell["node"] == socket.gethostname()
    assert not [p for p in root.iterdir() if p.name.startswith(".incoming")]
    with Store(store_path(root)) as store:
        assert sorted(r.name for r in store.runs()) == runs

    # The infeasible cell failed at once, saying what it asked for and how to add such a node.
    error = cells[2]["error"]
    assert error["message"].startswith(f"no node of the Ray cluster has CPU 1, {ACCEL} 2")
    assert f"{ACCEL} 1" in error["message"]  # what the nodes do have
    assert f"--resources '{{\"{ACCEL}\": 2}}'" in error["hint"]
    assert cells[2]["run_id"] is None

    # Resuming uses the recorded executor and address; the done cells keep their runs.
    again = run_cli(["sweep", "--resume", state["sweep_id"], "--retry-failed", "--output", "r"],
                    cwd=tmp_path, env=plugin_env, timeout=120)
    assert again.returncode == 1
    after = json.loads(next((root / "sweeps").glob("*/sweep.json")).read_text())
    assert [c["run_id"] for c in after["cells"][:2]] == [c["run_id"] for c in cells[:2]]
    assert after["cells"][2]["attempts"] == 2 and after["cells"][2]["error"]["message"].startswith("no node of the Ray cluster")


def test_a_cell_that_fails_on_its_node_is_recorded_with_the_nodes_error(
    ray_address: str, plugin_env: dict[str, str], tmp_path: Path
) -> None:
    missing = tmp_path / "not-here.onnx"  # the node cannot open it: the plan fails there, not on the driver
    proc = run_cli(["sweep", "--executor", "ray", "--address", ray_address, "-b", "accelnull", "--model-path", str(missing),
                    "--duration", "0.5", "--output", "r"], cwd=tmp_path, env=plugin_env, timeout=120)
    assert proc.returncode == 1, proc.stderr
    cell = json.loads(next((tmp_path / "r" / "sweeps").glob("*/sweep.json")).read_text())["cells"][0]
    assert cell["status"] == "failed" and str(missing) in cell["error"]["message"] and cell["error"]["type"] == "ModelError"
    assert cell["node"] == socket.gethostname()


def test_an_address_where_nothing_listens_fails_in_seconds(plugin_env: dict[str, str], model_dir: Path, tmp_path: Path) -> None:
    proc = run_cli(["sweep", "--executor", "ray", "--address", f"127.0.0.1:{free_port()}", "-b", "null",
                    "--model-path", str(model_dir / "argmax.onnx"), "--output", "r"], cwd=tmp_path, env=plugin_env, timeout=60)
    assert proc.returncode == 2
    assert "error: nothing answers at the Ray address 127.0.0.1:" in proc.stderr
    assert not (tmp_path / "r").exists()
