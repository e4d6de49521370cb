"""A tune's state: ``<tune dir>/tune.json``, rewritten atomically after every trial.

It holds the tune's settings (what was asked: the run request and the search settings) and
every trial with the run it made and what LoadGen said. The search is deterministic given the
trials' outcomes, so a stopped tune resumes by asking for the same trials again: each one
already recorded is answered from here instead of being run (:meth:`TuneState.finished`).
An interrupted or failed trial is run again; its earlier run id is kept. Like a sweep's
state (:mod:`mlpi.sweep.state`), it names the process running it, so two processes never
run one tune.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlpi.core.contract.errors import UsageError
from mlpi.core.results.rundir import owner_gone, process_owner, write_json_atomic

STATE_FILE = "tune.json"
STATE_VERSION = 1
TRIAL_STATUSES = ("done", "failed", "interrupted")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass
class TrialRecord:
    """One trial: what it asked for (``spec``), the run it made and what LoadGen said."""

    number: int
    key: str
    spec: dict[str, Any]
    status: str
    run_id: str | None = None
    run_dir: str | None = None
    valid: bool | None = None
    metric: str | None = None
    value: float | None = None
    unit: str | None = None
    reasons: list[str] = field(default_factory=list)
    #: What the trial measured besides its figure: the target it ran at (``target``), the
    #: calibrated ``throughput_qps`` and ``server_target_qps``, ``mean_latency_ms``, ``p50_latency_ms``.
    measured: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0
    finished: str = ""
    error: dict[str, Any] | None = None
    previous_runs: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any, source: str) -> TrialRecord:
        if not isinstance(data, dict):
            raise TypeError(f"a trial is {type(data).__name__}, not an object")
        known = {f for f in cls.__dataclass_fields__}
        record = cls(**{k: v for k, v in data.items() if k in known})
        if record.status not in TRIAL_STATUSES or not isinstance(record.key, str) or not isinstance(record.spec, dict):
            raise ValueError(f"trial {record.number} has status {record.status!r} or no key")
        return record


@dataclass
class TuneState:
    directory: Path
    #: What was asked: ``request`` (the run request every trial starts from) and ``search``
    #: (scenarios, batch sizes, instances, tolerance, durations). A tune resumes only with the same.
    settings: dict[str, Any]
    tune_id: str
    trials: list[TrialRecord] = field(default_factory=list)
    created: str = field(default_factory=now)
    status: str = "running"
    owner: dict[str, Any] | None = None
    profile: str | None = None

    @property
    def path(self) -> Path:
        return self.directory / STATE_FILE

    # -- the file ------------------------------------------------------------------------

    @classmethod
    def create(cls, directory: Path, settings: dict[str, Any]) -> TuneState:
        state = cls(directory, settings, f"{time.strftime('%Y%m%d-%H%M%S')}-{directory.name}")
        state.save()
        return state

    @classmethod
    def load(cls, directory: Path) -> TuneState | None:
        """The tune recorded in ``directory``; None when there is none."""
        path = directory / STATE_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("version") != STATE_VERSION:
                raise ValueError(f"version {data.get('version')!r} is not {STATE_VERSION}")
            return cls(
                directory=directory, settings=dict(data["settings"]), tune_id=str(data["tune_id"]),
                trials=[TrialRecord.from_json(t, str(path)) for t in data["trials"]], created=str(data["created"]),
                status=str(data["status"]), owner=data.get("owner"), profile=data.get("profile"),
            )
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
            raise UsageError(f"{path} is not an mlpi tune state ({type(exc).__name__}: {exc})",
                             f"move it away, or pass --fresh to start over in {directory} (the file is kept)") from None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION, "tune_id": self.tune_id, "created": self.created, "updated": now(),
            "status": self.status, "owner": self.owner, "profile": self.profile, "settings": self.settings,
            "trials": [t.to_json() for t in self.trials],
        }

    def save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, self.to_json())

    def set_aside(self) -> Path:
        """Keep this state (and its profile) under a name of its own, so a fresh tune can
        start in the same folder without losing it."""
        stamp = self.tune_id.split("-", 2)
        suffix = "-".join(stamp[:2]) if len(stamp) >= 2 else str(int(time.time()))
        kept = self.directory / f"tune-{suffix}.json"
        self.release("set aside")
        os.replace(self.path, kept)
        profile = self.directory / "profile.json"
        if profile.is_file():
            os.replace(profile, self.directory / f"profile-{suffix}.json")
        return kept

    # -- who runs it ---------------------------------------------------------------------

    def claim(self) -> None:
        """Take the tune for this process; refuse while another live process runs it."""
        owner = self.owner or {}
        if self.status == "running" and owner and owner.get("pid") != os.getpid() and owner_gone(owner) is None:
            raise UsageError(
                f"the tune in {self.directory} is being run by process {owner.get('pid')} on {owner.get('hostname')}",
                "wait for it to end or stop it (Ctrl-C), then run the same command again to resume",
            )
        self.owner = process_owner()
        self.status = "running"
        self.save()

    def release(self, status: str) -> None:
        self.status, self.owner = status, None
        self.save()

    # -- trials --------------------------------------------------------------------------

    def finished(self, key: str) -> TrialRecord | None:
        """The recorded trial of ``key`` that ran to its end (VALID or INVALID); None otherwise."""
        return next((t for t in self.trials if t.key == key and t.status == "done"), None)

    def add(self, record: TrialRecord) -> None:
        """Record a trial; an earlier unfinished one of the same key gives way, its run kept."""
        for earlier in [t for t in self.trials if t.key == record.key]:
            record.previous_runs = [*earlier.previous_runs, *([earlier.run_id] if earlier.run_id else [])]
            self.trials.remove(earlier)
        self.trials.append(record)
        self.save()

    def differences(self, settings: dict[str, Any]) -> list[str]:
        """The settings (``request.model``, ``search.tolerance``...) that differ from these."""
        out = []
        for part in sorted(set(self.settings) | set(settings)):
            mine, theirs = self.settings.get(part) or {}, settings.get(part) or {}
            for key in sorted(set(mine) | set(theirs)):
                if mine.get(key) != theirs.get(key):
                    out.append(f"{part}.{key}")
        return out


__all__ = ["STATE_FILE", "TrialRecord", "TuneState"]
