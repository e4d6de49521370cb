"""The Ray executor: each cell a Ray task on a node that has the device the cell asks for.

Every cell asks for ``--cpus-per-cell`` CPUs (default 1); a cell on any other device kind
also asks for a custom resource named after the kind, one per unit it uses (``cuda:0,1``
asks ``{"cuda": 2}``, ``qaic:0-3`` asks ``{"qaic": 4}``). Start each node with the
resources it has::

    ray start --head --port 6379 --resources '{"cuda": 4}'       # head node with 4 GPUs
    ray start --address HEAD:6379 --resources '{"qaic": 16}'     # a node with 16 QAIC cards
    ray start --address HEAD:6379 --num-cpus 32                  # a CPU-only node

A node runs as many cells at once as its resources allow; to measure one cell at a time
on a node, give ``--cpus-per-cell`` as many CPUs as the node has. A cell whose resources
no node has fails at once (Ray would wait for such a node forever). Each cell's run
directory is packed on its node and unpacked into the driver's results root. Every node
needs mlpi and the backends its cells use, and the model and dataset files at the same
paths (a registered model is fetched or built on the node).
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import socket
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from mlpi.core.contract.device import Device
from mlpi.core.contract.errors import (
    DeviceError,
    MlpiError,
    PluginError,
    RunFailed,
    UsageError,
)
from mlpi.core.results.rundir import create_run_dir
from mlpi.core.results.schema import TestResult
from mlpi.core.results.store import record_run
from mlpi.sweep.cellrun import failure, interrupted, summarize
from mlpi.sweep.driver import SweepReporter
from mlpi.sweep.state import CellRecord, SweepState

#: How long a cancelled cell gets to stop its LoadGen process before the sweep gives up on it.
CANCEL_GRACE_S = 15.0
_CONNECT_TIMEOUT_S = 5.0


def demand(record: CellRecord, cpus: float) -> dict[str, float]:
    """The Ray resources one cell asks for."""
    device = Device.parse(record.cell.device)
    wanted = {"CPU": float(cpus)}
    if device.kind != "cpu":  # CPU is Ray's own resource; every other kind is a custom one
        wanted[device.kind] = float(len(device.indices) or 1)
    return wanted


class RayExecutor:
    """Runs cells as Ray tasks on the cluster at ``address`` and brings their runs back."""

    def __init__(self, address: str | None, *, cpus_per_cell: float = 1.0, debug: bool = False) -> None:
        if not cpus_per_cell > 0:
            raise UsageError(f"--cpus-per-cell must be positive, not {cpus_per_cell}", "pass --cpus-per-cell 1 or more")
        self.address = address
        self.cpus_per_cell = cpus_per_cell
        self.debug = debug
        self._nodes: list[dict[str, float]] = []

    def describe(self) -> dict[str, Any]:
        return {"name": "ray", "address": self.address, "cpus_per_cell": self.cpus_per_cell}

    def prepare(self, records: list[CellRecord]) -> None:
        """Connect to the cluster and learn what resources its nodes have."""
        ray = _import_ray()
        if ray.is_initialized():
            ray.shutdown()
        address = self.address or os.environ.get("RAY_ADDRESS") or "auto"
        _check_reachable(address)
        try:
            ray.init(address=address, log_to_driver=self.debug, ignore_reinit_error=True,
                     logging_level=logging.WARNING if self.debug else logging.ERROR)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UsageError(
                f"cannot connect to the Ray cluster at {address}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                "start one with `ray start --head`, and pass its address as --address HOST:PORT",
            ) from None
        self._nodes = [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]

    def run(self, state: SweepState, records: list[CellRecord], reporter: SweepReporter) -> bool:
        ray = _import_ray()
        task = ray.remote(max_retries=0)(run_cell)
        pending: dict[Any, CellRecord] = {}
        try:
            for position, record in enumerate(records, 1):
                wanted = demand(record, self.cpus_per_cell)
                reporter.cell_started(record, position, len(records))
                state.start(record)
                problem = self._infeasible(wanted)
                if problem is not None:
                    state.finish(record, failure(problem))
                    reporter.cell_finished(record)
                    continue
                custom = {k: v for k, v in wanted.items() if k != "CPU"}
                ref = task.options(num_cpus=wanted["CPU"], resources=custom or None).remote(
                    record.request, {"id": state.sweep_id, "cell": record.index}
                )
                pending[ref] = record
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in ready:
                    record = pending.pop(ref)
                    state.finish(record, self._collect(ray, ref, state))
                    reporter.cell_finished(record)
        except KeyboardInterrupt:
            self._cancel(ray, pending, state, reporter)
            return True
        finally:
            ray.shutdown()
        return False

    def _infeasible(self, wanted: dict[str, float]) -> MlpiError | None:
        """Why no node can ever run a cell that asks for ``wanted``, or None when one can."""
        if any(all(node.get(k, 0.0) >= v for k, v in wanted.items()) for node in self._nodes):
            return None
        asked = ", ".join(f"{k} {v:g}" for k, v in wanted.items())
        have = "; ".join(
            ", ".join(f"{k} {v:g}" for k, v in sorted(node.items()) if not k.startswith("node:") and "memory" not in k)
            for node in self._nodes
        ) or "no nodes"
        custom = {k: v for k, v in wanted.items() if k != "CPU"}
        if custom:
            hint = f"start a node that has them: ray start --address ADDR --resources '{json.dumps({k: int(v) for k, v in custom.items()})}'"
        else:
            hint = f"lower --cpus-per-cell, or add a node with at least {wanted['CPU']:g} CPUs (ray start --num-cpus N)"
        return DeviceError(f"no node of the Ray cluster has {asked} (nodes have: {have})", hint)

    def _collect(self, ray: Any, ref: Any, state: SweepState) -> dict[str, Any]:
        try:
            payload: dict[str, Any] = ray.get(ref)
        except ray.exceptions.RayError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return failure(RunFailed(f"the cell's Ray task failed: {first}", "see the node's Ray logs (`ray logs` on the head node)"))
        archive = payload.pop("archive", None)
        if archive is not None and payload.get("run_id"):
            run_dir = adopt_run(archive, state.output_root, payload["run_id"])
            payload["run_id"] = run_dir.name
            record_run(run_dir, state.output_root)  # the results store; a failure there only warns
        return payload

    def _cancel(self, ray: Any, pending: dict[Any, CellRecord], state: SweepState, reporter: SweepReporter) -> None:
        """Ctrl-C: ask every unfinished cell to stop (each stops its LoadGen process), mark them interrupted."""
        for ref in pending:
            ray.cancel(ref)
        try:
            ray.wait(list(pending), num_returns=len(pending), timeout=CANCEL_GRACE_S)
        except KeyboardInterrupt:
            pass
        for record in pending.values():
            state.finish(record, interrupted())
            reporter.cell_finished(record)


# ------------------------------------------------------------------ on the node


class _Quiet:
    """A run reporter for a cell on a node: its logs are in the run directory."""

    def test_started(self, scenario: str, mode: str, index: int, total: int) -> None:
        pass

    def test_finished(self, test: TestResult) -> None:
        pass


def run_cell(request: dict[str, Any], sweep: dict[str, Any]) -> dict[str, Any]:
    """The Ray task: plan and run one cell on this node; its summary plus the packed run directory."""
    from mlpi.core.engine.planning import RunRequest, build_plan
    from mlpi.core.engine.runner import execute

    node = socket.gethostname()
    with tempfile.TemporaryDirectory(prefix="mlpi-cell-") as tmp:
        try:
            plan = build_plan(RunRequest(**request))
            plan.extra["sweep"] = sweep
            outcome = execute(plan, Path(tmp), _Quiet())
        except MlpiError as exc:
            return {**failure(exc), "node": node}
        summary = summarize(outcome)
        summary["node"] = node
        summary["archive"] = pack_run(outcome.run_dir)
        return summary


def pack_run(run_dir: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(run_dir, arcname=run_dir.name)
    return buffer.getvalue()


# ------------------------------------------------------------------ back on the driver


def adopt_run(archive: bytes, root: Path, run_id: str) -> Path:
    """Unpack a run directory from a node under ``root``, whole or not at all; a name already
    taken gets a suffix (``NAME-2``, result.json unchanged, as the store imports runs)."""
    if not run_id or Path(run_id).name != run_id or run_id.startswith("."):
        raise RunFailed(f"a node sent back a run with a bad id {run_id!r}", "check that every node runs the same mlpi version")
    root.mkdir(parents=True, exist_ok=True)
    incoming = Path(tempfile.mkdtemp(prefix=".incoming-", dir=root))
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            for member in tar.getmembers():
                parts = Path(member.name).parts
                if not parts or parts[0] != run_id or ".." in parts or member.issym() or member.islnk() or Path(member.name).is_absolute():
                    raise RunFailed(f"a node sent back a run archive with an unexpected entry {member.name!r}",
                                    "check that every node runs the same mlpi version")
            tar.extractall(incoming, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        target = create_run_dir(root, run_id)
        os.replace(incoming / run_id, target)  # onto the empty directory just reserved
        return target
    finally:
        shutil.rmtree(incoming, ignore_errors=True)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise PluginError("the ray executor needs Ray, which is not installed", "pip install 'mlpi[ray]' on this machine and on every node") from None
    return ray


def _check_reachable(address: str) -> None:
    """Fail in seconds on an address nothing listens at (Ray itself retries for minutes)."""
    if address == "auto" or address == "local":
        return
    host_port = address.split("://", 1)[-1]
    host, sep, port = host_port.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"'{address}' is not a Ray address", "write it as HOST:PORT (e.g. 127.0.0.1:6379) or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=_CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise UsageError(
            f"nothing answers at the Ray address {address} ({exc.strerror or exc})",
            "check the head node's address and port (`ray status` on it), or start one with `ray start --head`",
        ) from None
