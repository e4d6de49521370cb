"""The worker process of the ONNX node-test tier's ``isolate`` mode: a backend's side of each
case runs here, so that native code which ends the process (a C++ assert, a segfault) ends
only this worker, and the tier counts the case as unsupported and starts a fresh one.

One worker runs the cases one after another. The parent writes JSON lines to its stdin: the
settings first (:class:`WorkerSettings`: the backend's name or importable class, device,
precision, options, plugins file, the parent's ``sys.path``), from which the worker builds
the backend itself, as the kit does; then one case per line, with the model file to load
and the file holding onnxruntime's outputs (computed once, in the parent). The worker answers
in JSON lines on the pipe that was its stdout: ``{"ready": true}`` (or the error that kept it
from building the backend), then ``{"outcome": ..., "detail": ...}`` per case, the verdict
:func:`mlpi.testing.onnx_node_tier.judge` gives in process. Its file descriptor 1 is pointed
at stderr, so what native code prints cannot garble an answer; stderr goes to a file, where
the parent finds the line that says why a crashed worker died.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import pickle
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from mlpi.core.contract import errors
from mlpi.core.contract.backend import Backend
from mlpi.core.contract.errors import MlpiError, PluginError, UsageError
from mlpi.testing.onnx_node_cases import NodeCase

#: Seconds a new worker may take to import and build the backend before the run stops.
STARTUP_TIMEOUT_S = 180.0
#: Seconds a worker told to stop (its stdin closed) gets before it is killed.
_STOP_S = 5.0
#: The stderr lines that say why a crashed worker died: a C++ assert's first (a runtime may
#: log errors it recovers from before the one it dies of), else the first error's
#: (``Fatal Python error: Segmentation fault`` is Python's own, from faulthandler).
_TELLING = (re.compile(r"Assertion at"), re.compile(r"error", re.IGNORECASE))
_COLOURS = re.compile(r"\x1b\[[0-9;]*m")
_TIMED_OUT = object()


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker needs to build the same backend as the parent's kit, as JSON."""

    backend: str
    backend_is_class: bool
    device: str
    precision: str | None
    options: dict[str, Any]
    plugins_file: str | None
    path: tuple[str, ...]

    @classmethod
    def of(
        cls,
        backend: str | type[Backend] | Backend,
        device: str,
        precision: str | None,
        options: Mapping[str, Any] | None,
        plugins_file: str | Path | None,
    ) -> WorkerSettings:
        """The settings for ``run_node_tests``' arguments; UsageError for what a worker cannot rebuild."""
        if isinstance(backend, str):
            name, is_class = backend, False
        elif isinstance(backend, type) and issubclass(backend, Backend):
            name, is_class = _class_reference(backend), True
        else:
            raise UsageError(
                f"isolated node tests build the backend anew in a worker process, not from the instance {backend!r}",
                "pass the backend's name or its class",
            )
        opts = dict(options or {})
        try:
            json.dumps(opts)
        except (TypeError, ValueError):
            raise UsageError(
                f"backend options {opts!r} cannot be sent to the worker process of isolated node tests",
                "give options as strings, numbers or booleans (as -o KEY=VALUE does)",
            ) from None
        return cls(name, is_class, device, precision, opts, None if plugins_file is None else str(plugins_file),
                   tuple(sys.path))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WorkerSettings:
        return cls(**{**data, "path": tuple(data["path"])})

    def build_kit(self) -> Any:
        """The conformance kit for these settings, built in this process as the parent built its own."""
        from mlpi.testing.conformance import _Kit

        sys.path[:0] = [entry for entry in self.path if entry not in sys.path]
        importlib.invalidate_caches()
        backend: str | type[Backend] = _import_class(self.backend) if self.backend_is_class else self.backend
        return _Kit.setup(backend, self.device, self.precision, self.options, self.plugins_file)


def _class_reference(backend: type[Backend]) -> str:
    """``module:qualname`` of a class another process can import; UsageError otherwise."""
    reference = f"{backend.__module__}:{backend.__qualname__}"
    try:
        found = _import_class(reference) if backend.__module__ != "__main__" else None
    except (ImportError, AttributeError):
        found = None
    if found is not backend:
        raise UsageError(
            f"isolated node tests import backend class {backend.__module__}.{backend.__qualname__} in a worker "
            "process, and it cannot be imported by that name",
            "define it in a module on sys.path, or pass the backend's entry-point name",
        )
    return reference


def _import_class(reference: str) -> Any:
    module, _, qualname = reference.partition(":")
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


def _case_to_json(case: NodeCase) -> dict[str, Any]:
    return {**dataclasses.asdict(case), "folder": str(case.folder)}


def _case_from_json(data: Mapping[str, Any]) -> NodeCase:
    fields = {name: tuple(value) if isinstance(value, list) else value for name, value in data.items()}
    return NodeCase(**{**fields, "folder": Path(data["folder"])})


# --------------------------------------------------------------------------- the parent's side


class Worker:
    """The parent's handle on one worker at a time: started when a case needs it, replaced
    after a crash or a time-out."""

    def __init__(self, settings: WorkerSettings, workdir: Path) -> None:
        self.settings = settings
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr_path = workdir / "worker.stderr"
        self.started = 0
        self._answers: queue.Queue[Any] = queue.Queue()

    def judge(self, case: NodeCase, path: Path, want: Mapping[str, Any], timeout_s: float) -> tuple[str, str]:
        """(outcome, detail) of the backend on the case, from a worker; a crash or no answer
        within ``timeout_s`` is unsupported, and the next case gets a fresh worker."""
        from mlpi.testing.onnx_node_tier import UNSUPPORTED

        if self.proc is None:
            self._start()
        want_path = self.workdir / f"{case.name}.want.pickle"
        with open(want_path, "wb") as out:
            pickle.dump(dict(want), out, protocol=pickle.HIGHEST_PROTOCOL)
        mark = self.stderr_path.stat().st_size
        try:
            sent = self._send({"case": _case_to_json(case), "model": str(path), "want": str(want_path)})
            answer = self._receive(time.monotonic() + timeout_s) if sent else None
            if answer is _TIMED_OUT:
                self._kill()
                return UNSUPPORTED, f"no answer within {timeout_s:g} s (check, load and run; its worker process was ended)"
            if answer is None:
                return UNSUPPORTED, f"the backend crashed the process ({self._death(mark)})"
            return str(answer["outcome"]), str(answer["detail"])
        finally:
            want_path.unlink(missing_ok=True)

    def close(self) -> None:
        """Ends the worker: its stdin closed, it leaves; killed if it does not."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(_STOP_S)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()

    # ------------------------------------------------------------------ starting, talking, ending

    def _start(self) -> None:
        self.started += 1
        self.stderr_path = self.workdir / f"worker-{self.started}.stderr"
        self._answers = queue.Queue()
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlpi.testing.onnx_node_worker"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
            )
        assert self.proc.stdout is not None
        threading.Thread(target=_read_answers, args=(self.proc.stdout, self._answers), daemon=True,
                         name=f"node-test-worker-{self.started}").start()
        sent = self._send(self.settings.to_json())
        answer = self._receive(time.monotonic() + STARTUP_TIMEOUT_S) if sent else None
        if isinstance(answer, dict) and answer.get("ready"):
            return
        what = f"the worker process of isolated node tests (backend {self.settings.backend})"
        if isinstance(answer, dict) and "error" in answer:
            self.close()
            kind = getattr(errors, str(answer.get("type")), MlpiError)
            kind = kind if isinstance(kind, type) and issubclass(kind, MlpiError) else MlpiError
            raise kind(str(answer["error"]), answer.get("hint"))
        if answer is _TIMED_OUT:
            self._kill()
            raise PluginError(f"{what} was not ready within {STARTUP_TIMEOUT_S:g} s",
                              "run without --isolate to see where the backend hangs")
        raise PluginError(f"{what} ended before it was ready ({self._death(0)})",
                          "run without --isolate to see the error")

    def _send(self, message: Mapping[str, Any]) -> bool:
        """Writes one line to the worker; False when it is gone."""
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(message).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError:
            return False
        return True

    def _receive(self, deadline: float) -> Any:
        """The worker's next answer; None when it died first, _TIMED_OUT past ``deadline``."""
        try:
            return self._answers.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return _TIMED_OUT

    def _kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()
            proc.wait()

    def _death(self, mark: int) -> str:
        """How the worker ended (its signal or exit code) and the first telling line it wrote
        to stderr since ``mark``; the worker is forgotten."""
        proc, self.proc = self.proc, None
        assert proc is not None
        try:
            code = proc.wait(_STOP_S)
        except subprocess.TimeoutExpired:  # it closed its answers but lives on
            proc.kill()
            code = proc.wait()
        how = _ending(code)
        line = _telling_line(self.stderr_path, mark)
        return f"{how}; {line}" if line else how


def _read_answers(stream: IO[bytes], answers: queue.Queue[Any]) -> None:
    """Puts each answer line, decoded, on ``answers``, then None when the worker is gone."""
    for raw in iter(stream.readline, b""):
        try:
            answers.put(json.loads(raw))
        except ValueError:
            continue  # not an answer; the worker writes only answers here
    answers.put(None)


def _ending(code: int) -> str:
    """``SIGABRT`` for a process a signal ended, else ``exit code N``."""
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def _telling_line(path: Path, start: int, limit: int = 300) -> str | None:
    """The first 'Assertion at' line of the file from byte ``start``, else its first 'error'
    line; without terminal colours, clipped."""
    try:
        with open(path, "rb") as err:
            err.seek(start)
            text = err.read(4 << 20).decode("utf-8", "replace")
    except OSError:
        return None
    lines = [_COLOURS.sub("", line).strip() for line in text.splitlines()]
    for pattern in _TELLING:
        line = next((line for line in lines if pattern.search(line)), None)
        if line is not None:
            return line if len(line) <= limit else line[: limit - 3] + "..."
    return None


# --------------------------------------------------------------------------- the worker's side


def serve() -> int:
    """The worker's loop: the settings, then one case per line of stdin until it closes."""
    import faulthandler

    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # what the backend prints goes to stderr, never between the answers
    faulthandler.enable()  # a segfault names itself on stderr
    first = sys.stdin.readline()
    if not first:
        return 0
    try:
        kit = WorkerSettings.from_json(json.loads(first)).build_kit()
    except MlpiError as exc:
        _answer(answers, {"error": exc.message, "hint": exc.hint, "type": type(exc).__name__})
        return 1
    except Exception as exc:  # noqa: BLE001 - the parent raises it as a plugin error
        _answer(answers, {"error": f"building the backend raised {type(exc).__name__}: {exc}",
                          "hint": "run without --isolate to see the traceback", "type": "PluginError"})
        return 1
    _answer(answers, {"ready": True})
    while line := sys.stdin.readline():
        _answer(answers, _judge_request(kit, json.loads(line)))
    return 0


def _judge_request(kit: Any, request: Mapping[str, Any]) -> dict[str, str]:
    from mlpi.testing.onnx_node_tier import UNSUPPORTED, judge

    try:
        with open(request["want"], "rb") as saved:
            want = pickle.load(saved)  # written by the parent, in its own temporary folder
        outcome, detail = judge(kit, _case_from_json(request["case"]), Path(request["model"]), want)
    except KeyboardInterrupt:
        raise
    except BaseException:  # noqa: BLE001 - as a case thread that ends without a verdict in process
        outcome, detail = UNSUPPORTED, "the case ended without a verdict"
    return {"outcome": outcome, "detail": detail}


def _answer(answers: IO[str], message: Mapping[str, Any]) -> None:
    answers.write(json.dumps(message) + "\n")
    answers.flush()


if __name__ == "__main__":
    raise SystemExit(serve())
