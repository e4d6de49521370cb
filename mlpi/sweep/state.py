"""The sweep directory: ``<results>/sweeps/<sweep-id>/sweep.json``, rewritten atomically after
every change, so a sweep stopped at any point (Ctrl-C, a crash, a lost machine) resumes.

Each cell is ``pending``, ``running``, ``done``, ``failed`` (with its error) or
``interrupted``, and names the run directory (``<results>/<run-id>``) it produced.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlpi.core.contract.errors import UsageError
from mlpi.core.results.rundir import create_run_dir, write_json_atomic
from mlpi.sweep.matrix import Cell

STATE_VERSION = 1
STATE_FILE = "sweep.json"
STATUSES = ("pending", "running", "done", "failed", "interrupted")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass
class CellRecord:
    """One cell and what became of it; ``previous_runs`` keeps the run ids of earlier tries."""

    index: int
    cell: Cell
    request: dict[str, Any]
    status: str = "pending"
    run_id: str | None = None
    error: dict[str, Any] | None = None
    tests: list[dict[str, Any]] = field(default_factory=list)
    node: str | None = None
    attempts: int = 0
    started: str | None = None
    finished: str | None = None
    previous_runs: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index, "key": self.cell.label, "cell": self.cell.to_json(), "status": self.status,
            "run_id": self.run_id, "error": self.error, "tests": self.tests, "node": self.node,
            "attempts": self.attempts, "started": self.started, "finished": self.finished,
            "previous_runs": self.previous_runs, "request": self.request,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CellRecord:
        if data["status"] not in STATUSES:
            raise ValueError(f"cell status {data['status']!r}")
        return cls(
            index=int(data["index"]), cell=Cell.from_json(data["cell"]), request=dict(data["request"]),
            status=data["status"], run_id=data.get("run_id"), error=data.get("error"), tests=list(data.get("tests") or []),
            node=data.get("node"), attempts=int(data.get("attempts") or 0), started=data.get("started"),
            finished=data.get("finished"), previous_runs=list(data.get("previous_runs") or []),
        )


@dataclass
class SweepState:
    """The whole sweep as recorded on disk; every ``start``/``finish`` is saved at once."""

    directory: Path
    output_root: Path
    spec: dict[str, Any]
    cells: list[CellRecord]
    executor: dict[str, Any]
    created: str = field(default_factory=_now)
    status: str = "pending"
    owner: dict[str, Any] | None = None

    @property
    def sweep_id(self) -> str:
        return self.directory.name

    @classmethod
    def create(cls, output_root: Path, stem: str, spec: dict[str, Any], records: list[CellRecord],
               executor: dict[str, Any]) -> SweepState:
        directory = create_run_dir(output_root / "sweeps", stem).resolve()
        state = cls(directory, output_root.resolve(), spec, records, executor)
        state.save()
        return state

    @classmethod
    def load(cls, ref: str, output_root: Path) -> SweepState:
        """Find a sweep by id (under ``<output_root>/sweeps``), by its folder, or by its sweep.json."""
        path = Path(ref).expanduser()
        candidates = [path / STATE_FILE, path, output_root / "sweeps" / ref / STATE_FILE]
        found = next((p for p in candidates if p.name == STATE_FILE and p.is_file()), None)
        if found is None:
            known = sorted(p.name for p in (output_root / "sweeps").glob("*") if (p / STATE_FILE).is_file())
            listing = f"sweeps in {output_root / 'sweeps'}: {', '.join(known[-5:])}" if known else f"there are none in {output_root / 'sweeps'}"
            raise UsageError(f"no sweep '{ref}' found", f"give a sweep id, its folder or its sweep.json ({listing}); pass --output if it lies under another results root")
        try:
            data = json.loads(found.read_text(encoding="utf-8"))
            if data.get("version") != STATE_VERSION:
                raise ValueError(f"version {data.get('version')!r} is not {STATE_VERSION}")
            return cls(
                directory=found.parent.resolve(), output_root=Path(data["output_root"]), spec=data["spec"],
                cells=[CellRecord.from_json(c) for c in data["cells"]], executor=dict(data["executor"]),
                created=data["created"], status=data["status"], owner=data.get("owner"),
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
            raise UsageError(f"{found} is not an mlpi sweep ({type(exc).__name__}: {exc})", "give the sweep.json of a sweep made by this mlpi version") from None

    def to_json(self) -> dict[str, Any]:
        counts = {s: sum(1 for c in self.cells if c.status == s) for s in STATUSES}
        return {
            "version": STATE_VERSION, "sweep_id": self.sweep_id, "created": self.created, "updated": _now(),
            "status": self.status, "output_root": str(self.output_root), "executor": self.executor,
            "owner": self.owner, "counts": counts, "spec": self.spec, "cells": [c.to_json() for c in self.cells],
        }

    def save(self) -> None:
        write_json_atomic(self.directory / STATE_FILE, self.to_json())

    # ------------------------------------------------------------------ ownership

    def claim(self) -> None:
        """Take the sweep for this process; refuse while another live process runs it.

        Cells left ``running`` by a process that is gone were interrupted."""
        owner = self.owner or {}
        if owner.get("host") == socket.gethostname() and owner.get("pid") not in (None, os.getpid()) and _alive(int(owner["pid"])):
            raise UsageError(
                f"sweep {self.sweep_id} is being run by process {owner['pid']}",
                "wait for it to end or stop it (Ctrl-C), then resume",
            )
        for record in self.cells:
            if record.status == "running":
                record.status = "interrupted"
                record.error = {"type": "Interrupted", "message": "the sweep stopped while this cell ran", "hint": None}
        self.owner = {"pid": os.getpid(), "host": socket.gethostname()}
        self.status = "running"
        self.save()

    def release(self) -> None:
        counts = {s: sum(1 for c in self.cells if c.status == s) for s in STATUSES}
        if counts["interrupted"] or counts["pending"] or counts["running"]:
            self.status = "interrupted"
        else:
            self.status = "failed" if counts["failed"] else "done"
        self.owner = None
        self.save()

    # ------------------------------------------------------------------ cells

    def todo(self, retry_failed: bool) -> list[CellRecord]:
        """The cells a (resumed) sweep runs: all but done ones, and failed ones only when asked."""
        wanted = {"pending", "interrupted", "running"} | ({"failed"} if retry_failed else set())
        return [c for c in self.cells if c.status in wanted]

    def start(self, record: CellRecord) -> None:
        if record.run_id:
            record.previous_runs.append(record.run_id)
        record.status, record.run_id, record.error, record.tests, record.node = "running", None, None, [], None
        record.attempts += 1
        record.started, record.finished = _now(), None
        self.save()

    def finish(self, record: CellRecord, summary: dict[str, Any]) -> None:
        """Record a cell's outcome (see :func:`mlpi.sweep.cellrun.summarize`)."""
        record.status = summary["status"]
        record.run_id = summary.get("run_id")
        record.error = summary.get("error")
        record.tests = list(summary.get("tests") or [])
        record.node = summary.get("node")
        record.finished = _now()
        self.save()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
