"""The conformance kit's extended tier: ONNX's node test cases through a backend, judged
against onnxruntime on the CPU.

Follows onnx's ``onnx/backend/test/runner/__init__.py`` (one model per case, its inputs fed,
every output compared with ``rtol``/``atol``), with two differences: the answer a backend
must give is what onnxruntime's CPU provider gives on the same inputs, not the case's stored
outputs (one reference for every backend, and the one mlpi's kit already compares with);
and a backend is allowed to refuse. Each case ends as one of:

- ``pass``: the backend ran it, and every output has onnxruntime's dtype and shape and
  values within :data:`TOLERANCES` (and :data:`SCALED_ATOL`) of onnxruntime's;
- ``wrong``: the backend ran it and answered something else (another dtype, shape or
  values, a missing output): a silent wrong answer, the one outcome that fails the tier;
- ``unsupported``: the backend refused it: ``check()`` or ``load()`` raised (an mlpi error,
  as the contract asks, or anything else: the detail names it), ``run()`` raised, or no
  answer came within the case's time limit. A case whose inputs are not all tensors (a
  sequence, an optional, a map) is unsupported without running: mlpi feeds sessions arrays;
- ``no-reference``: onnxruntime itself cannot load or run it, or its outputs are random
  draws (Bernoulli, Dropout in training mode...), so there is nothing to judge against.

A wrong answer that matches the output onnx's case definition expects, where onnxruntime's
does not, says so in its detail: the reference is then the first thing to look at.

The core pass rate is ``pass / (pass + wrong + unsupported)`` over the ``core`` cases that
have a reference (see :mod:`mlpi.testing.onnx_node_cases` for the categories).

A backend whose native code can end the process (a C++ assert, a segfault) is run with
``isolate=True`` (``--isolate``): its side of each case then runs in a worker process
(:mod:`mlpi.testing.onnx_node_worker`), and a case that kills it is ``unsupported``, saying
how the process ended, while a fresh worker goes on with the next case.

Command line (the conformance kit's, with ``--onnx-node-tests``)::

    python -m mlpi.testing.conformance --backend NAME --onnx-node-tests [--sample N] [--op OP ...] [--isolate] [--json]

In a plugin's own tests: ``assert run_node_tests("mybackend", sample=100).wrong == []``.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlpi.core.contract.backend import Backend, LoadContext
from mlpi.core.contract.errors import MlpiError, PluginError
from mlpi.testing.onnx_node_cases import (
    CORE,
    NodeCase,
    load_cases,
    onnx_version,
    select,
)

PASS, WRONG, UNSUPPORTED, NO_REFERENCE = "pass", "wrong", "unsupported", "no-reference"
OUTCOMES = (PASS, WRONG, UNSUPPORTED, NO_REFERENCE)

#: (rtol, atol) per floating output dtype. float32 and float64 use onnx's own node-test
#: tolerances; float16 and bfloat16 the conformance kit's for those precisions (a few units
#: in the last place: backends may compute in float32 and round once). Integer, bool and
#: string outputs must be equal; float8 and other low-bit floats too (their rounding is
#: defined exactly).
TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-3, 1e-7),
    "float32": (1e-3, 1e-7),
    "float16": (1e-2, 1e-3),
    "bfloat16": (5e-2, 5e-2),
}
#: A session that reports running below fp32 (``session.precision``) is judged on its float
#: outputs with the kit's tolerance for that precision when that is looser.
_PRECISION_TOLERANCES: dict[str, tuple[float, float]] = {"fp16": (1e-2, 1e-3), "bf16": (5e-2, 5e-2), "int8": (1e-1, 1e-1)}
#: The absolute tolerance grows to this share of the output's largest finite magnitude: two
#: correct float sums (a DFT, a reduction) differ near zero by rounding errors the size of
#: their largest terms, not of the result (onnx's DFT cases: up to 6.4e-7 of the largest
#: value between onnxruntime and onnx's own float64 answer; 5e-6 is about 40 float32 units
#: in the last place of that value).
SCALED_ATOL = 5e-6
#: Seconds one case (check, load and run) may take before it counts as unsupported.
CASE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class CaseResult:
    """One case's outcome; ``detail`` says why it is not a pass."""

    name: str
    op: str
    category: str
    expanded: bool
    outcome: str
    detail: str = ""


@dataclass(frozen=True)
class OperatorCounts:
    """One operator's cases by outcome."""

    op: str
    passed: int = 0
    wrong: int = 0
    unsupported: int = 0
    no_reference: int = 0

    @property
    def total(self) -> int:
        return self.passed + self.wrong + self.unsupported + self.no_reference


@dataclass
class NodeTestReport:
    """What :func:`run_node_tests` found; ``wrong`` is empty when the backend gave no wrong answer."""

    backend: str
    origin: str
    version: str | None
    device: str
    precision: str | None
    onnx_version: str
    reference: str
    available: int
    sample: int | None = None
    ops: tuple[str, ...] = ()
    seconds: float = 0.0
    isolated: bool = False
    results: list[CaseResult] = field(default_factory=list)

    def outcome(self, name: str) -> str:
        """The outcome of the case called ``name`` (KeyError when it did not run)."""
        for r in self.results:
            if r.name == name:
                return r.outcome
        raise KeyError(name)

    def having(self, outcome: str, core: bool | None = None) -> list[CaseResult]:
        """The results with ``outcome`` (only core ones, or only the others, when ``core`` is set)."""
        return [
            r for r in self.results
            if r.outcome == outcome and (core is None or (r.category == CORE) == core)
        ]

    @property
    def wrong(self) -> list[CaseResult]:
        return self.having(WRONG)

    @property
    def passed(self) -> list[CaseResult]:
        return self.having(PASS)

    @property
    def unsupported(self) -> list[CaseResult]:
        return self.having(UNSUPPORTED)

    @property
    def no_reference(self) -> list[CaseResult]:
        return self.having(NO_REFERENCE)

    def core_pass_rate(self) -> float | None:
        """pass / (pass + wrong + unsupported) over core cases with a reference; None without any."""
        judged = [r for r in self.results if r.category == CORE and r.outcome != NO_REFERENCE]
        return sum(r.outcome == PASS for r in judged) / len(judged) if judged else None

    def by_operator(self) -> list[OperatorCounts]:
        counts: dict[str, dict[str, int]] = {}
        for r in self.results:
            row = counts.setdefault(r.op, dict.fromkeys(OUTCOMES, 0))
            row[r.outcome] += 1
        return [
            OperatorCounts(op, row[PASS], row[WRONG], row[UNSUPPORTED], row[NO_REFERENCE])
            for op, row in sorted(counts.items(), key=lambda item: item[0].lower())
        ]

    def summary(self) -> str:
        """``core: P of J passed (R%), W wrong, U unsupported, N no reference; other types: ...; C cases in S s``."""
        parts = [_tally("core", [r for r in self.results if r.category == CORE], with_rate=True)]
        others = [r for r in self.results if r.category != CORE]
        if others:
            kinds = ", ".join(sorted({r.category for r in others}))
            parts.append(_tally(f"other types ({kinds})", others, with_rate=False))
        return "; ".join(parts) + f"; {len(self.results)} cases in {self.seconds:.1f} s"

    def to_json(self) -> dict[str, Any]:
        rate = self.core_pass_rate()
        return {
            "backend": self.backend,
            "origin": self.origin,
            "version": self.version,
            "device": self.device,
            "precision": self.precision,
            "onnx": self.onnx_version,
            "reference": self.reference,
            "cases_available": self.available,
            "sample": self.sample,
            "ops": list(self.ops),
            "seconds": round(self.seconds, 3),
            "isolated": self.isolated,
            "counts": {outcome: len(self.having(outcome)) for outcome in OUTCOMES},
            "core_counts": {outcome: len(self.having(outcome, core=True)) for outcome in OUTCOMES},
            "core_pass_rate": None if rate is None else round(rate, 6),
            "operators": {c.op: {PASS: c.passed, WRONG: c.wrong, UNSUPPORTED: c.unsupported, NO_REFERENCE: c.no_reference}
                          for c in self.by_operator()},
            "results": [dataclasses.asdict(r) for r in self.results],
            "summary": self.summary(),
        }


def _tally(label: str, results: Sequence[CaseResult], with_rate: bool) -> str:
    count = {outcome: sum(r.outcome == outcome for r in results) for outcome in OUTCOMES}
    judged = count[PASS] + count[WRONG] + count[UNSUPPORTED]
    rate = f" ({100 * count[PASS] / judged:.1f}%)" if with_rate and judged else ""
    return (f"{label}: {count[PASS]} of {judged} passed{rate}, {count[WRONG]} wrong, {count[UNSUPPORTED]} unsupported, "
            f"{count[NO_REFERENCE]} no reference")


# --------------------------------------------------------------------------- entry point


def run_node_tests(
    backend: str | type[Backend] | Backend,
    device: str = "cpu",
    precision: str | None = None,
    options: Mapping[str, Any] | None = None,
    plugins_file: str | Path | None = None,
    ops: Iterable[str] = (),
    sample: int | None = None,
    case_timeout_s: float = CASE_TIMEOUT_S,
    on_start: Callable[[NodeTestReport, int], None] | None = None,
    on_result: Callable[[CaseResult], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    isolate: bool = False,
) -> NodeTestReport:
    """Run the installed onnx's node test cases (those of ``ops``, then ``sample`` of them)
    through ``backend`` and compare each answer with onnxruntime's on the CPU.

    ``backend`` is what :func:`~mlpi.testing.conformance.run_checks` takes, and so are
    ``device``, ``precision``, ``options`` and ``plugins_file``. Raises an
    :class:`~mlpi.core.contract.errors.MlpiError` when the tier cannot start (those of
    ``run_checks``, onnxruntime not installed, an operator no case tests). ``on_start`` gets
    the empty report and the number of cases to run, ``on_result`` each result as it comes,
    ``on_note`` a sentence before a long first collection.

    ``isolate``: run the backend's side of each case (check, load, run, the comparison) in a
    worker process that builds the backend from the same settings, so that a case which ends
    the process is unsupported and the run goes on; ``backend`` must then be a name or an
    importable class (UsageError for an instance).
    """
    from mlpi.testing.conformance import _Kit

    ops = tuple(ops)
    reference_version = _onnxruntime_version()
    kit = _Kit.setup(backend, device, precision, options, plugins_file)
    settings = None
    if isolate:
        from mlpi.testing.onnx_node_worker import WorkerSettings

        settings = WorkerSettings.of(backend, device, precision, options, plugins_file)
    cases = load_cases(on_collect=on_note)
    chosen = select(cases, ops, sample)
    report = NodeTestReport(
        kit.name, kit.origin, kit.version, str(kit.device), precision, onnx_version(),
        f"onnxruntime {reference_version} CPU", len(cases), sample, ops, isolated=isolate,
    )
    if on_start is not None:
        on_start(report, len(chosen))
    started = time.monotonic()
    # a case left running past its time limit may still hold its file when the run ends
    with tempfile.TemporaryDirectory(prefix="mlpi-node-tests-", ignore_cleanup_errors=True) as tmp:
        runner = _CaseRunner(kit, Path(tmp), case_timeout_s) if settings is None else _IsolatedRunner(
            kit, Path(tmp), case_timeout_s, settings)
        try:
            for case in chosen:
                result = runner.run(case)
                report.results.append(result)
                if on_result is not None:
                    on_result(result)
        finally:
            runner.close()
    report.seconds = time.monotonic() - started
    return report


def _onnxruntime_version() -> str:
    try:
        import onnxruntime
    except ImportError:
        raise PluginError(
            "the ONNX node tests compare every answer with onnxruntime on the CPU, which is not installed",
            'pip install "mlpi[onnxruntime]"',
        ) from None
    return str(onnxruntime.__version__)


class _CaseRunner:
    """Runs one case at a time: the reference, then the backend in a thread it can give up on."""

    def __init__(self, kit: Any, workdir: Path, timeout_s: float) -> None:
        self.kit = kit
        self.workdir = workdir
        self.timeout_s = timeout_s

    def run(self, case: NodeCase) -> CaseResult:
        def result(outcome: str, detail: str = "") -> CaseResult:
            return CaseResult(case.name, case.op, case.category, case.expanded, outcome, detail)

        if case.random:
            return result(NO_REFERENCE, "its outputs are random draws: onnxruntime's are no reference for another backend's")
        try:
            feeds = case.inputs()
            want = _reference(case, feeds)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's refusal is the outcome
            return result(NO_REFERENCE, f"onnxruntime: {_describe(exc)}")
        other = next((kind for kind in case.input_kinds if kind != "tensor"), None)
        if other is not None or any(value is None for value in feeds.values()):
            return result(UNSUPPORTED, f"its inputs include {'an empty optional' if other is None else 'a ' + other}; "
                                       "mlpi feeds a session arrays only")
        path = self.workdir / f"{case.name}.onnx"
        shutil.copyfile(case.model_path, path)  # the backend gets a file of its own, the cache stays as it is
        return result(*self._backend_side(case, path, want))

    def _backend_side(self, case: NodeCase, path: Path, want: dict[str, Any]) -> tuple[str, str]:
        """(outcome, detail) of the backend on the case, in a thread given up on after the time limit."""
        box: dict[str, tuple[str, str]] = {}

        def work() -> None:
            box["verdict"] = judge(self.kit, case, path, want)

        thread = threading.Thread(target=work, name=f"node-test-{case.name}", daemon=True)
        thread.start()
        thread.join(self.timeout_s)
        if thread.is_alive():
            return UNSUPPORTED, f"no answer within {self.timeout_s:g} s (check, load and run; left running)"
        path.unlink(missing_ok=True)
        return box.get("verdict", (UNSUPPORTED, "the case ended without a verdict"))

    def close(self) -> None:
        """Nothing to end: a thread left running is a daemon."""


class _IsolatedRunner(_CaseRunner):
    """Runs the backend's side of each case in a worker process; a new one after a crash or a time-out."""

    def __init__(self, kit: Any, workdir: Path, timeout_s: float, settings: Any) -> None:
        from mlpi.testing.onnx_node_worker import Worker

        super().__init__(kit, workdir, timeout_s)
        self.worker = Worker(settings, workdir)

    def _backend_side(self, case: NodeCase, path: Path, want: dict[str, Any]) -> tuple[str, str]:
        try:
            return self.worker.judge(case, path, want, self.timeout_s)
        finally:
            path.unlink(missing_ok=True)

    def close(self) -> None:
        self.worker.close()


def judge(kit: Any, case: NodeCase, path: Path, want: Mapping[str, Any]) -> tuple[str, str]:
    """(outcome, detail) of ``kit``'s backend on the case's model at ``path``: check, load, run,
    compare with ``want``; whatever the backend raises is a refusal, never an error of the run."""
    from mlpi.core.engine.onnx_file import inspect_onnx

    feeds = case.inputs()  # arrays of its own: the reference's stay untouched
    try:
        artifact = inspect_onnx(path)
        kit.backend.check(artifact, kit.device, kit.options, kit.precision)
        session = kit.backend.load(artifact, kit.device, kit.options, kit.precision, LoadContext())
    except MlpiError as exc:
        return UNSUPPORTED, f"{type(exc).__name__}: {_clip(exc.message)}"
    except Exception as exc:  # noqa: BLE001 - a refusal all the same; the detail names the type
        return UNSUPPORTED, f"check()/load() raised {_describe(exc)}"
    try:
        try:
            got = session.run(feeds)
        except Exception as exc:  # noqa: BLE001 - a refusal at run time
            return UNSUPPORTED, f"run() raised {_describe(exc)}"
        precision = getattr(session, "precision", None)
        problem = compare(got, want, precision)
        if problem:
            problem += _onnx_sides_with_backend(case, got, want, precision)
    finally:
        try:
            session.close()
        except Exception:  # noqa: BLE001, S110 - the verdict is about the answer
            pass
    return (WRONG, problem) if problem else (PASS, "")


def _onnx_sides_with_backend(case: NodeCase, got: Any, want: Mapping[str, Any], precision: str | None) -> str:
    """A note for a wrong answer that is the output onnx's case definition expects, where
    onnxruntime's is not: the verdict stays (onnxruntime is the reference), but whoever reads
    it should look at the reference first."""
    try:
        expected = case.expected()
        if compare(got, expected, precision) is None and compare(want, expected) is not None:
            return "; onnx's expected output agrees with the backend, not with onnxruntime (check the reference)"
    except Exception:  # noqa: BLE001, S110 - a note only; the verdict stands without it
        pass
    return ""


def _reference(case: NodeCase, feeds: Mapping[str, Any]) -> dict[str, Any]:
    """onnxruntime's CPU outputs for the case, by output name."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4  # a case it refuses says why in the exception; no log lines on the screen
    session = ort.InferenceSession(str(case.model_path), sess_options=so, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4
    return dict(zip(names, session.run(names, dict(feeds), quiet)))


# --------------------------------------------------------------------------- comparing


def compare(got: Any, want: Mapping[str, Any], precision: str | None = None) -> str | None:
    """None when ``got`` (a backend's run()) answers like ``want`` (onnxruntime's); else what
    differs, in words. ``precision``: what the session reports running."""
    if not isinstance(got, Mapping):
        return f"run() returned {type(got).__name__}, not a mapping of output name to array"
    for name, expected in want.items():
        if name not in got:
            return f"no output '{name}' (run() returned: {', '.join(map(str, got)) or 'nothing'})"
        problem = _compare_value(got[name], expected, precision)
        if problem:
            return f"output '{name}': {problem}"
    return None


def _compare_value(value: Any, expected: Any, precision: str | None) -> str | None:
    if expected is None or isinstance(expected, list):
        if type(value) is not type(expected):
            return f"is a {type(value).__name__}, onnxruntime gives a {type(expected).__name__}"
        if expected is None:
            return None
        if len(value) != len(expected):
            return f"a sequence of {len(value)} tensors, onnxruntime gives {len(expected)}"
        for k, (item, ref) in enumerate(zip(value, expected)):
            problem = _compare_value(item, ref, precision)
            if problem:
                return f"item {k}: {problem}"
        return None
    if not isinstance(value, np.ndarray):
        return f"is a {type(value).__name__}, not a numpy array"
    expected = np.asarray(expected)
    if value.dtype != expected.dtype:
        return f"is {value.dtype}, onnxruntime gives {expected.dtype}"
    if value.shape != expected.shape:
        return f"has shape {list(value.shape)}, onnxruntime gives {list(expected.shape)}"
    tolerance = _tolerance(expected.dtype, precision)
    if tolerance is None:
        bad = ~_equal(value, expected)
        if bad.any():
            return f"{int(bad.sum())} of {bad.size} values differ from onnxruntime's (must be equal)"
        return None
    rtol, atol = tolerance
    with np.errstate(invalid="ignore"):  # NaN in bfloat16
        value64, expected64 = value.astype(np.float64), expected.astype(np.float64)
    finite = np.abs(expected64[np.isfinite(expected64)])
    if finite.size:
        atol = max(atol, SCALED_ATOL * float(finite.max()))
    bad = ~np.isclose(value64, expected64, rtol=rtol, atol=atol, equal_nan=True)
    if bad.any():
        diff = np.abs(value64 - expected64)[bad]
        finite = diff[np.isfinite(diff)]
        worst = f"largest difference {float(finite.max()):.3g}" if finite.size else "infinities or NaNs where onnxruntime has none"
        return f"{int(bad.sum())} of {bad.size} values differ from onnxruntime's ({worst}; rtol {rtol:g}, atol {atol:g})"
    return None


def _tolerance(dtype: np.dtype[Any], precision: str | None) -> tuple[float, float] | None:
    """(rtol, atol) for a floating dtype; None where values must be equal."""
    base = TOLERANCES.get(dtype.name)
    if base is None:
        return None
    loose = _PRECISION_TOLERANCES.get(precision or "")
    if loose is None:
        return base
    return max(base[0], loose[0]), max(base[1], loose[1])


def _equal(value: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Element-wise equality; NaN equals NaN for the float types compared exactly (float8...)."""
    same = np.asarray(value == expected)
    if expected.dtype.kind not in "biuOSU":
        try:
            as_float = value.astype(np.float64), expected.astype(np.float64)
        except (TypeError, ValueError):
            return same
        same = same | (np.isnan(as_float[0]) & np.isnan(as_float[1]))
    return same


def _describe(exc: BaseException) -> str:
    """``Type: message`` on one line: every line of the message (a runtime's first ones often
    only say where in its sources it failed), joined and clipped."""
    text = " / ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return f"{type(exc).__name__}: {_clip(text)}" if text else type(exc).__name__


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- command line


def print_report(report: NodeTestReport, out: Any = None) -> None:
    """The per-operator table, the wrong cases by name and the summary line."""
    out = out or sys.stdout
    rows = report.by_operator()
    width = max([len("operator"), *(len(r.op) for r in rows)])
    print(f"{'operator':<{width}}  {'pass':>5}  {'wrong':>5}  {'unsupported':>11}  {'no-reference':>12}", file=out)
    for r in rows:
        print(f"{r.op:<{width}}  {r.passed:>5}  {r.wrong:>5}  {r.unsupported:>11}  {r.no_reference:>12}", file=out)
    if report.wrong:
        print(f"\nwrong answers ({len(report.wrong)}; the backend ran these and answered unlike onnxruntime):", file=out)
        for r in report.wrong:
            print(f"  {r.name} ({r.op}{', ' + r.category if r.category != CORE else ''}): {r.detail}", file=out)
    print(report.summary(), file=out)


class Progress:
    """Where a long run is, on stderr: one line kept up to date on a terminal; piped, a line
    every 30 s (the per-case results stay off stdout, which gets the report)."""

    PERIOD_S = 30.0

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.total = 0
        self.done = 0
        self.wrong = 0
        self.started = self.last = time.monotonic()
        self._shown = 0

    def start(self, report: NodeTestReport, total: int) -> None:
        self.total = total
        chosen = f"{total} of {report.available} cases" + (" (a sample)" if report.sample else "")
        print(
            f"mlpi onnx node tests: backend {report.backend} {report.version or '?'} ({report.origin}) on {report.device}, "
            f"precision {report.precision or 'default'}; {chosen} of onnx {report.onnx_version}; "
            f"reference {report.reference}" + ("; the backend in a worker process" if report.isolated else ""),
            file=self.stream, flush=True,
        )
        self.started = self.last = time.monotonic()

    def note(self, text: str) -> None:
        print(f"mlpi: {text}", file=self.stream, flush=True)

    def result(self, result: CaseResult) -> None:
        self.done += 1
        self.wrong += result.outcome == WRONG
        now = time.monotonic()
        line = f"{self.done} of {self.total} cases done, {self.wrong} wrong so far, {now - self.started:.0f} s"
        if self.live:
            text = f"{line}: {result.name}" if self.done < self.total else line
            print("\r" + text.ljust(self._shown), end="\n" if self.done == self.total else "", file=self.stream, flush=True)
            self._shown = len(text)
        elif now - self.last >= self.PERIOD_S:
            self.last = now
            print(line, file=self.stream, flush=True)


def main_node_tests(
    backend: str, device: str, precision: str | None, options: Mapping[str, Any], plugins_file: str | None,
    ops: Sequence[str], sample: int | None, as_json: bool, isolate: bool = False,
) -> int:
    """``--onnx-node-tests``: run, print, and return the exit code (1 on a wrong answer, else 0)."""
    import json

    from mlpi.core.contract.errors import EXIT_FAILURE, EXIT_OK

    progress = Progress()
    report = run_node_tests(
        backend, device=device, precision=precision, options=options, plugins_file=plugins_file, ops=ops, sample=sample,
        on_start=progress.start, on_result=progress.result, on_note=progress.note, isolate=isolate,
    )
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print_report(report)
    return EXIT_FAILURE if report.wrong else EXIT_OK
