"""The bad-input matrix: every value a user can get wrong, on the command line, in a
plugins.toml or in a hand-edited plan.json, ends the way ARCHITECTURE.md's "Errors" says.

Each case is a real ``python -m mlpi run`` (null backend, a tiny model) that must fail
while the run is planned: exactly one ``error:`` line, the expected exit code, no traceback,
no "internal error", no run directory (not even the results root), and nothing written
before lost (a plan's own run directory is byte for byte what it was).

Starting Python and importing mlpi costs far more than planning a run, so one driver
process imports ``mlpi.cli`` (what ``python -m mlpi`` imports first) and forks one child per
case, a few at a time: each child is a process of its own, with its own arguments,
environment, working directory, stdout, stderr and exit code, running ``mlpi.cli.main`` as
``python -m mlpi`` would. Cases that need a different interpreter start (PYTHONPATH), and
every case where ``os.fork`` is missing, run as plain ``python -m mlpi`` processes. Only the
cases pytest selected run, each is still its own test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import CliResult

from mlpi.core.contract.errors import EXIT_FAILURE, EXIT_USAGE
from mlpi.testing.tiny_models import argmax_model

#: Every CLI case starts from this short run; a case's arguments come after, so they win
#: over these (``--backend``, ``--duration``) or add to them (``-s``).
BASE = ["run", "--backend", "null", "--model-path", "{model}", "-s", "SingleStream", "--duration", "0.5"]

HUGE = "1000000000000000"  # 10**15: petabytes of batch buffers for any model

# (id, arguments after BASE, exit code, words the error line holds)
CLI_CASES: list[tuple[str, list[str], int, tuple[str, ...]]] = [
    # names given empty: refused, never taken for "the default"
    ("device-empty", ["-d", ""], EXIT_USAGE, ("'' is not a device",)),
    ("backend-empty", ["--backend", ""], EXIT_USAGE, ("unknown backend ''",)),
    ("model-empty", ["--model", ""], EXIT_USAGE, ("unknown model ''",)),
    ("precision-empty", ["--precision", ""], EXIT_USAGE, ("precision ''",)),
    ("dataset-unknown", ["--dataset", "nosuch"], EXIT_USAGE, ("unknown dataset 'nosuch'",)),
    ("scenario-unknown", ["-s", "Bogus"], EXIT_USAGE, ("unknown scenario 'Bogus'",)),
    ("scenario-empty", ["-s", ""], EXIT_USAGE, ("unknown scenario ''",)),
    ("mode-unknown", ["--mode", "fastest"], EXIT_USAGE, ("unknown mode 'fastest'",)),
    # rates and times: positive and finite
    ("target-qps-inf", ["--target-qps", "inf"], EXIT_USAGE, ("--target-qps", "finite", "inf")),
    ("target-qps-nan", ["--target-qps", "nan"], EXIT_USAGE, ("--target-qps", "nan")),
    ("target-qps-zero", ["--target-qps", "0"], EXIT_USAGE, ("--target-qps", "positive")),
    ("target-qps-negative", ["--target-qps", "-5"], EXIT_USAGE, ("--target-qps", "-5")),
    ("duration-negative", ["--duration", "-1"], EXIT_USAGE, ("--duration", "-1")),
    ("duration-inf", ["--duration", "inf"], EXIT_USAGE, ("--duration", "inf")),
    ("duration-nan", ["--duration", "nan"], EXIT_USAGE, ("--duration", "nan")),
    ("batch-timeout-inf", ["-s", "Server", "--batch-timeout-ms", "inf"], EXIT_USAGE, ("--batch-timeout-ms", "inf")),
    ("batch-timeout-zero", ["-s", "Server", "--batch-timeout-ms", "0"], EXIT_USAGE, ("--batch-timeout-ms",)),
    # counts: at least 1, and no more than the machine can hold
    ("count-zero", ["--count", "0"], EXIT_USAGE, ("--count", "at least 1")),
    ("count-negative", ["--count", "-1"], EXIT_USAGE, ("--count", "-1")),
    ("count-huge", ["--count", "100000000000000000000"], EXIT_FAILURE, ("--count", "synthetic")),
    ("instances-zero", ["--instances", "0"], EXIT_USAGE, ("--instances", "at least 1")),
    ("instances-huge", ["--instances", "100000"], EXIT_USAGE, ("--instances", "100000")),
    ("batch-size-zero", ["--batch-size", "0"], EXIT_USAGE, ("--batch-size", "at least 1")),
    ("batch-size-negative", ["--batch-size", "-3"], EXIT_USAGE, ("--batch-size", "-3")),
    ("batch-size-huge", ["-s", "Offline", "--batch-size", HUGE], EXIT_USAGE, (f"--batch-size {HUGE}", "memory available")),
    ("batch-size-1e9-spelling", ["--batch-size", "1e9"], EXIT_USAGE, ("--batch-size", "1e9")),
    ("seed-negative", ["--seed", "-1"], EXIT_USAGE, ("--seed", "-1")),
    # backend options: typed, bounded, finite
    ("ort-threads-negative", ["--backend", "onnxruntime", "-o", "intra_op_threads=-4"], EXIT_USAGE,
     ("intra_op_threads", "-4", "it takes 0 to")),
    ("ort-threads-huge", ["--backend", "onnxruntime", "-o", "intra_op_threads=100000"], EXIT_USAGE,
     ("intra_op_threads", "100000", "it takes 0 to")),
    ("ort-inter-threads-huge", ["--backend", "onnxruntime", "-o", "inter_op_threads=100000"], EXIT_USAGE,
     ("inter_op_threads", "100000")),
    ("ort-threads-1e400", ["--backend", "onnxruntime", "-o", "intra_op_threads=1e400"], EXIT_USAGE,
     ("intra_op_threads", "'1e400'")),
    ("null-batch-option-zero", ["-o", "preferred_batch_size=0"], EXIT_USAGE, ("preferred_batch_size", "1 or more")),
    ("option-not-key-value", ["-o", "threads"], EXIT_USAGE, ("'threads' is not KEY=VALUE",)),
    # data
    ("dataset-path-missing", ["--dataset", "numpy"], EXIT_USAGE, ("needs --dataset-path",)),
    ("npy-garbage", ["--dataset", "numpy", "--dataset-path", "{garbage_npy}"], EXIT_FAILURE,
     ("x.npy", "not a .npy file")),
]

# (id, plugins.toml text, --backend, exit code, words the error line holds)
TOML_CASES: list[tuple[str, str, str, int, tuple[str, ...]]] = [
    ("threads-1e400", "[options.onnxruntime]\nintra_op_threads = 1e400\n", "onnxruntime", EXIT_USAGE,
     ("intra_op_threads", "inf", "not a finite number")),
    ("threads-inf", "[options.onnxruntime]\nintra_op_threads = inf\n", "onnxruntime", EXIT_USAGE,
     ("intra_op_threads", "not a finite number")),
    ("threads-nan", "[options.onnxruntime]\nintra_op_threads = nan\n", "onnxruntime", EXIT_USAGE,
     ("intra_op_threads", "not a finite number")),
    ("threads-float", "[options.onnxruntime]\nintra_op_threads = 2.5\n", "onnxruntime", EXIT_USAGE,
     ("intra_op_threads", "whole number")),
    ("threads-negative", "[options.onnxruntime]\nintra_op_threads = -4\n", "onnxruntime", EXIT_USAGE,
     ("intra_op_threads", "-4", "it takes 0 to")),
    ("threads-huge", "[options.onnxruntime]\ninter_op_threads = 100000\n", "onnxruntime", EXIT_USAGE,
     ("inter_op_threads", "100000")),
    ("threads-not-a-number", "[options.onnxruntime]\nintra_op_threads = \"many\"\n", "onnxruntime", EXIT_USAGE,
     ("intra_op_threads", "'many'")),
    ("null-batch-zero", "[options.null]\npreferred_batch_size = 0\n", "null", EXIT_USAGE, ("preferred_batch_size",)),
    ("alias-loop", '[aliases]\na = "b"\nb = "a"\n', "b", EXIT_USAGE, ("alias 'b' loops", "b -> a -> b")),
    ("alias-of-itself", '[aliases]\nb = "b"\n', "b", EXIT_USAGE, ("alias 'b' loops", "b -> b")),
    ("alias-to-nothing", '[aliases]\nf = "nosuch"\n', "f", EXIT_USAGE, ("unknown backend 'nosuch'", "alias 'f'")),
    ("options-for-a-loop", '[aliases]\na = "b"\nb = "a"\n[options.a]\nx = 1\n', "null", EXIT_USAGE, ("loops",)),
]

# (id, a change to a good plan.json, exit code, words the error line holds)
PLAN_CASES: list[tuple[str, Callable[[dict[str, Any]], None], int, tuple[str, ...]]] = [
    ("batch-size-negative", lambda p: p.update(batch_size=-5), EXIT_USAGE, ("batch_size", "at least 1", "-5")),
    ("batch-size-zero", lambda p: p.update(batch_size=0), EXIT_USAGE, ("batch_size", "at least 1")),
    ("batch-size-text", lambda p: p.update(batch_size="8"), EXIT_USAGE, ("batch_size is '8'", "whole number")),
    ("batch-size-fraction", lambda p: p.update(batch_size=1.5), EXIT_USAGE, ("batch_size is 1.5",)),
    ("batch-size-bool", lambda p: p.update(batch_size=True), EXIT_USAGE, ("batch_size is True",)),
    ("batch-size-huge", lambda p: p.update(batch_size=10**15, scenarios=["Offline"]), EXIT_USAGE,
     ("batch_size 1000000000000000", "memory available")),
    ("scenario-bogus", lambda p: p.update(scenarios=["Bogus"]), EXIT_USAGE, ("unknown scenario 'Bogus'",)),
    ("scenario-lowercase", lambda p: p.update(scenarios=["offline"]), EXIT_USAGE, ("unknown scenario 'offline'",)),
    ("scenarios-not-a-list", lambda p: p.update(scenarios="Offline"), EXIT_USAGE, ("scenarios is 'Offline'",)),
    ("scenarios-empty", lambda p: p.update(scenarios=[]), EXIT_USAGE, ("no scenarios",)),
    ("scenarios-twice", lambda p: p.update(scenarios=["Offline", "Offline"]), EXIT_USAGE, ("twice",)),
    ("mode-bogus", lambda p: p.update(modes=["fast"]), EXIT_USAGE, ("unknown mode 'fast'",)),
    ("instances-zero", lambda p: p.update(instances=0), EXIT_USAGE, ("instances", "at least 1")),
    ("instances-huge", lambda p: p.update(instances=100000), EXIT_USAGE, ("instances", "100000")),
    ("target-qps-inf", lambda p: p.update(target_qps=float("inf")), EXIT_USAGE, ("target_qps", "inf")),
    ("target-qps-nan", lambda p: p.update(target_qps=float("nan")), EXIT_USAGE, ("target_qps", "nan")),
    ("target-qps-text", lambda p: p.update(target_qps="fast"), EXIT_USAGE, ("target_qps is 'fast'",)),
    ("duration-negative", lambda p: p.update(duration_s=-1), EXIT_USAGE, ("duration_s", "-1")),
    ("seed-negative", lambda p: p.update(seed=-1), EXIT_USAGE, ("seed", "-1")),
    ("count-zero", lambda p: p.update(dataset_count=0), EXIT_USAGE, ("dataset_count", "at least 1")),
    ("quick-text", lambda p: p.update(quick="yes"), EXIT_USAGE, ("quick is 'yes'",)),
    ("device-empty", lambda p: p.update(device=""), EXIT_USAGE, ("device", "'' is not a device")),
    ("backend-empty", lambda p: p.update(backend=""), EXIT_USAGE, ("names no backend",)),
    ("backend-number", lambda p: p.update(backend=3), EXIT_USAGE, ("backend is 3",)),
    ("plugins-file-number", lambda p: p.update(plugins_file=3), EXIT_USAGE, ("plugins_file is 3",)),
    ("option-out-of-range", lambda p: p.update(backend_options={"preferred_batch_size": 0}), EXIT_USAGE,
     ("preferred_batch_size", "plan.json")),
    ("option-inf", lambda p: p.update(backend_options={"preferred_batch_size": float("inf")}), EXIT_USAGE,
     ("preferred_batch_size", "not a finite number")),
    ("model-shape-text", lambda p: p["model"]["inputs"][0].update(shape=["N", 16]), EXIT_USAGE, ("model.inputs",)),
    ("model-graphs-list", lambda p: p["model"].update(graphs=[]), EXIT_USAGE, ("model.graphs is []",)),
    ("unknown-key", lambda p: p.update(frobnicate=1), EXIT_USAGE, ("not an mlpi plan",)),
]

# Third-party backends whose probe() breaks the contract (it "never raises").
PROBE_MODULE = '''
from mlpi.core.contract.backend import Backend


class RaisingProbe(Backend):
    name = "badprobe"
    device_kinds = ("cpu",)

    def version(self):
        return "1.0"

    def probe(self):
        raise RuntimeError("driver exploded\\nsecond line")

    def load(self, model, device, options, precision, context=None):
        raise AssertionError("never loaded")


class NoneProbe(RaisingProbe):
    name = "noneprobe"

    def probe(self):
        return None
'''

PROBE_CASES: list[tuple[str, str, int, tuple[str, ...]]] = [
    ("probe-raises", "badprobe", EXIT_FAILURE, ("backend 'badprobe'", "probe() raised RuntimeError: driver exploded")),
    ("probe-answers-none", "noneprobe", EXIT_FAILURE, ("backend 'noneprobe'", "not a list of Devices")),
]


# --------------------------------------------------------------------------- running the cases


@dataclass
class Case:
    """One process to run: its arguments, extra environment, and where its results would go."""

    args: list[str]
    output: Path
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Workspace:
    root: Path
    model: Path
    garbage_npy: Path
    site: Path
    plan_run: Path | None = None
    plan_snapshot: dict[str, bytes] | None = None


def _env(root: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLPI_PLUGINS", "PYTHONPATH")}
    env.update(XDG_CACHE_HOME=str(root / "xdg-cache"), PYTHONUNBUFFERED="1", COLUMNS="200")
    env.update(extra)
    return env


#: The driver: reads the cases (JSON) on stdin, imports what ``mlpi run`` imports (once,
#: instead of in every child), forks ``workers`` children at a time; each
#: runs ``mlpi.cli.main()`` with the case's argv, environment, cwd, stdout and stderr files,
#: and exits with what it would have exited with. Prints one "<index> <exit code>" line each.
DRIVER = r"""
import importlib, json, os, signal, sys, traceback
import mlpi.cli

# What `mlpi run` imports as it goes, imported once here rather than in every child
for name in ("mlpi.cli_output", "mlpi.core.engine.planning", "mlpi.core.engine.runner", "mlpi.core.plugins.registry",
             "mlpi.core.engine.onnx_file", "stevedore", "onnx", "onnxruntime", "mlpi.backends.null", "mlpi.backends.ort",
             "mlpi.datasets.synthetic", "mlpi.datasets.numpy_files"):
    try:
        importlib.import_module(name)
    except ImportError:
        pass

cases, workers, limit = json.load(sys.stdin), int(sys.argv[1]), int(sys.argv[2])
running = {}


def child(case):
    code = 1
    try:
        signal.alarm(limit)  # a case that starts a run and hangs ends (SIGALRM), not the matrix
        if sys.platform.startswith("linux"):  # and ends with the driver, should the driver be killed
            import ctypes

            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        os.chdir(case["cwd"])
        os.environ.clear()
        os.environ.update(case["env"])
        for fd, name in ((1, case["stdout"]), (2, case["stderr"])):
            os.dup2(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        sys.argv = ["mlpi", *case["args"]]
        try:
            mlpi.cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


for index, case in enumerate(cases):
    while len(running) >= workers:
        pid, status = os.wait()
        print(running.pop(pid), os.waitstatus_to_exitcode(status), flush=True)
    pid = os.fork()
    if pid == 0:
        child(case)
    running[pid] = index
while running:
    pid, status = os.wait()
    print(running.pop(pid), os.waitstatus_to_exitcode(status), flush=True)
"""


#: Set to run every case as a plain ``python -m mlpi`` process (slower; the same results).
PLAIN_ENV = "MLPI_BAD_INPUTS_PLAIN"
#: A case is refused in well under a second; one that starts a run instead is stopped here.
CASE_TIMEOUT_S = 60


def _run_forked(ws: Workspace, cases: list[Case], workers: int) -> list[CliResult]:
    logs = ws.root / "logs"
    logs.mkdir(exist_ok=True)
    jobs = []
    for i, case in enumerate(cases):
        jobs.append({"args": case.args, "cwd": str(ws.root / "cwd"), "env": _env(ws.root, case.env),
                     "stdout": str(logs / f"{id(case)}-{i}.out"), "stderr": str(logs / f"{id(case)}-{i}.err")})
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(workers), str(CASE_TIMEOUT_S)], input=json.dumps(jobs),
                          cwd=ws.root / "cwd", env=_env(ws.root, {}), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    codes = dict(tuple(map(int, line.split())) for line in proc.stdout.splitlines() if line.strip())
    assert len(codes) == len(cases), proc.stdout + proc.stderr
    return [CliResult(codes[i], Path(job["stdout"]).read_text(encoding="utf-8"),
                      Path(job["stderr"]).read_text(encoding="utf-8")) for i, job in enumerate(jobs)]


def _run(ws: Workspace, case: Case) -> CliResult:
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "mlpi", *case.args], cwd=ws.root / "cwd", env=_env(ws.root, case.env),
            capture_output=True, text=True, timeout=CASE_TIMEOUT_S, stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:  # it started a run instead of refusing it
        def text(data: Any) -> str:
            return data.decode(errors="replace") if isinstance(data, bytes) else data or ""

        return CliResult(-9, text(exc.stdout), text(exc.stderr) + f"\n(killed after {CASE_TIMEOUT_S} s)")
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _selected(session: pytest.Session, test: str) -> list[str]:
    """The ids of ``test``'s parametrized cases that this session runs."""
    return [item.callspec.id for item in session.items
            if getattr(item, "originalname", None) == test and hasattr(item, "callspec")]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("bad-inputs")
    (root / "cwd").mkdir()  # empty: no ./plugins.toml
    garbage = root / "garbage-npy"
    garbage.mkdir()
    (garbage / "x.npy").write_bytes(bytes(range(256)) * 4)
    site = root / "site"
    site.mkdir()
    (site / "probe_plugins.py").write_text(PROBE_MODULE, encoding="utf-8")
    info = site / "probe_plugins-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: probe-plugins\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(
        "[mlpi.backends]\nbadprobe = probe_plugins:RaisingProbe\nnoneprobe = probe_plugins:NoneProbe\n", encoding="utf-8"
    )
    for case_id, text, *_ in TOML_CASES:
        (root / f"{case_id}.toml").write_text(text, encoding="utf-8")
    return Workspace(root, argmax_model(root / "tiny.onnx"), garbage, site)


def _plan_run(ws: Workspace) -> None:
    """One good run, whose plan.json the plan cases edit (and whose files they must not touch)."""
    out = ws.root / "plan-source"
    result = _run(ws, Case([*_fill(BASE, ws), "--output", str(out)], out))
    assert result.rc == 0, result.output
    (ws.plan_run,) = [p for p in out.iterdir() if p.is_dir()]
    ws.plan_snapshot = _snapshot(ws.plan_run)


def _fill(args: list[str], ws: Workspace) -> list[str]:
    return [{"{model}": str(ws.model), "{garbage_npy}": str(ws.garbage_npy)}.get(a, a) for a in args]


def _cases(ws: Workspace, session: pytest.Session) -> dict[tuple[str, str], Case]:
    cases: dict[tuple[str, str], Case] = {}
    cli = {c[0]: c for c in CLI_CASES}
    for case_id in _selected(session, "test_bad_command_line"):
        out = ws.root / "out-cli" / case_id
        cases["cli", case_id] = Case([*_fill(BASE, ws), *_fill(cli[case_id][1], ws), "--output", str(out)], out)
    toml = {c[0]: c for c in TOML_CASES}
    for case_id in _selected(session, "test_bad_plugins_toml"):
        out = ws.root / "out-toml" / case_id
        args = [*_fill(BASE, ws), "--backend", toml[case_id][2], "--plugins", str(ws.root / f"{case_id}.toml"),
                "--output", str(out)]
        cases["toml", case_id] = Case(args, out)
    for case_id in _selected(session, "test_backend_breaking_the_probe_contract"):
        out = ws.root / "out-probe" / case_id
        backend = {c[0]: c[1] for c in PROBE_CASES}[case_id]
        cases["probe", case_id] = Case([*_fill(BASE, ws), "--backend", backend, "--output", str(out)], out,
                                       {"PYTHONPATH": str(ws.site)})
    plans = {c[0]: c for c in PLAN_CASES}
    selected = _selected(session, "test_bad_plan_file")
    if selected:
        _plan_run(ws)
        assert ws.plan_run is not None
        for case_id in selected:
            data = json.loads((ws.plan_run / "plan.json").read_text(encoding="utf-8"))
            plans[case_id][1](data)
            edited = ws.root / "plans" / case_id / "plan.json"
            edited.parent.mkdir(parents=True)
            edited.write_text(json.dumps(data, indent=2), encoding="utf-8")  # inf and nan as JSON's Infinity, NaN
            out = ws.root / "out-plan" / case_id
            cases["plan", case_id] = Case(["run", "--plan", str(edited), "--output", str(out)], out)
    return cases


@pytest.fixture(scope="module")
def outcomes(workspace: Workspace, request: pytest.FixtureRequest) -> dict[tuple[str, str], tuple[Case, CliResult]]:
    """Every selected case's process, run a few at a time."""
    cases = _cases(workspace, request.session)
    workers = max(2, min(4, (os.cpu_count() or 2) + 1))
    fork = hasattr(os, "fork") and not os.environ.get(PLAIN_ENV)
    forked = [key for key, case in cases.items() if fork and "PYTHONPATH" not in case.env]
    results = dict(zip(forked, _run_forked(workspace, [cases[k] for k in forked], workers))) if forked else {}
    plain = [key for key in cases if key not in results]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results.update(zip(plain, pool.map(lambda key: _run(workspace, cases[key]), plain)))
    return {key: (cases[key], results[key]) for key in cases}


def assert_refused(case: Case, result: CliResult, code: int, words: tuple[str, ...]) -> str:
    """One ``error:`` line holding ``words`` (and a hint), exit ``code``, no traceback, no
    internal error, nothing printed on stdout, and no results root made."""
    assert result.rc == code, f"exit {result.rc}, expected {code}\n{result.output}"
    assert "Traceback" not in result.output, result.output
    assert "internal error" not in result.output, result.output
    errors = [line for line in result.err_lines if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    hints = [line for line in result.err_lines if line.startswith("hint:")]
    assert len(hints) == 1 and len(hints[0]) > len("hint: ") + 5, result.stderr
    for word in words:
        assert word in errors[0], f"{word!r} not in {errors[0]!r}"
    assert result.stdout.strip() == "", "a failure found while planning prints no results"
    assert not case.output.exists(), sorted(case.output.rglob("*"))
    return errors[0]


# --------------------------------------------------------------------------- the matrix


@pytest.mark.parametrize(("case_id", "args", "code", "words"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_bad_command_line(outcomes, case_id, args, code, words) -> None:
    case, result = outcomes["cli", case_id]
    assert_refused(case, result, code, words)


@pytest.mark.parametrize(("case_id", "text", "backend", "code", "words"), TOML_CASES, ids=[c[0] for c in TOML_CASES])
def test_bad_plugins_toml(outcomes, case_id, text, backend, code, words) -> None:
    case, result = outcomes["toml", case_id]
    assert_refused(case, result, code, words)


@pytest.mark.parametrize(("case_id", "change", "code", "words"), PLAN_CASES, ids=[c[0] for c in PLAN_CASES])
def test_bad_plan_file(outcomes, workspace: Workspace, case_id, change, code, words) -> None:
    case, result = outcomes["plan", case_id]
    assert_refused(case, result, code, words)
    assert workspace.plan_run is not None
    assert _snapshot(workspace.plan_run) == workspace.plan_snapshot, "the plan's own run directory changed"


@pytest.mark.parametrize(("case_id", "backend", "code", "words"), PROBE_CASES, ids=[c[0] for c in PROBE_CASES])
def test_backend_breaking_the_probe_contract(outcomes, case_id, backend, code, words) -> None:
    case, result = outcomes["probe", case_id]
    error = assert_refused(case, result, code, words)
    assert "second line" not in error  # the first line of its message, not all of it
    assert "authors of the" in result.stderr and "--backend" in result.stderr


# --------------------------------------------------------------------------- in-process details


@pytest.mark.parametrize(
    ("backend", "message", "says"),
    [
        ("onnxruntime", "[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation for Erf(13) node "
         "with name ''", "operator Erf is not supported by onnxruntime for the types"),
        ("onnxruntime", "No Op registered for Swish with domain_version of 24", "operator Swish is not supported by onnxruntime"),
        ("onnxruntime", "No Op registered for Swish with domain_version of 21", "Swish is not an ONNX operator at opset 21"),
        ("onnxruntime", "No Op registered for NoSuchOp with domain_version of 17", "onnx.checker"),
        ("onnxruntime", "Fatal error: com.acme:Foo(-1) is not a registered function/op", "com.acme:Foo is a custom operator"),
        ("openvino", "Summary:\n-- No conversion rule found for operations: Det-17\n", "operator Det is not supported by openvino"),
        ("openvino", "-- No conversion rule found for operations: com.acme.Foo", "com.acme:Foo is a custom operator"),
        ("tensorrt", "In node 3 (parseNode): UNSUPPORTED_NODE: No importer registered for op: Det",
         "operator Det is not supported by tensorrt"),
        ("onnxruntime", "Protobuf parsing failed.", "check the model with onnx.checker.check_model"),
        ("openvino", ("FrontEnd API failed with OpConversionFailure: Model wasn't fully converted. Failed operations "
                      "detailed log: -- Conv-16 with a message: While validating ONNX node "
                      "'<Node(Conv): /decoder/2/Conv_output_0>': Check 'data.get_partial_shape().rank().is_static()' failed"),
         "openvino could not convert a Conv node of it: run the model with --backend onnxruntime or pytorch"),
    ],
)
def test_model_hint_tells_a_missing_operator_from_a_broken_file(backend: str, message: str, says: str) -> None:
    from mlpi.backends._model_hint import model_hint

    hint = model_hint(backend, message)
    assert says in hint, hint
    if "not supported by" in says:
        assert "onnx.checker" not in hint and "--backend" in hint and f"--backend {backend}" not in hint


def test_probe_failure_in_process_names_the_backend(monkeypatch: pytest.MonkeyPatch, workspace: Workspace) -> None:
    from mlpi.backends.null import NullBackend
    from mlpi.core.contract.errors import PluginError
    from mlpi.core.engine.planning import RunRequest, build_plan

    def probe(self: Any) -> Any:
        raise OSError("no /dev/thing")

    monkeypatch.setattr(NullBackend, "probe", probe)
    with pytest.raises(PluginError) as info:
        build_plan(RunRequest(backend="null", model_path=str(workspace.model), scenarios=["SingleStream"]))
    assert info.value.message == "backend 'null' failed to list its devices: probe() raised OSError: no /dev/thing"


def test_result_plan_and_outcome_files_follow_the_umask(workspace: Workspace) -> None:
    """result.json, plan.json and outcome.json get 0666 less the umask, like every other file
    of a run (mkstemp would have made them 0600)."""
    out = workspace.root / "umask-run"
    proc = subprocess.run(
        [sys.executable, "-m", "mlpi", "run", *_fill(BASE, workspace)[1:], "--output", str(out)],
        cwd=workspace.root / "cwd", env=_env(workspace.root, {}), capture_output=True, text=True, timeout=120,
        stdin=subprocess.DEVNULL, preexec_fn=lambda: os.umask(0o027),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    modes = {str(p.relative_to(run_dir)): p.stat().st_mode & 0o777 for p in run_dir.rglob("*") if p.is_file()}
    for name in ("result.json", "plan.json", os.path.join("SingleStream", "performance", "outcome.json")):
        assert modes.pop(name) == 0o640, name
    assert set(modes.values()) == {0o640}, modes

