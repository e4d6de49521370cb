"""Harness overhead: bare LoadGen with an inline echo FastSUT versus ``mlpi run --backend null``.

Both sides run in the same invocation, each LoadGen test in its own process, on the same
tiny single-output model signature (so data movement is negligible and what is measured
is the harness). The bare echo is the fastest Python SUT we know: it completes each query
inside the issue callback, in chunks of 1024 samples, reusing its response objects.

    python benchmarks/harness_overhead.py [--duration 5] [--server-qps 80000] [--baseline REV]

Prints per scenario: bare figure, mlpi figure, ratio (mlpi / bare for throughput,
bare / mlpi for latency), and Server validity at the given QPS. With ``--baseline REV``
the same run also measures mlpi as of git revision REV (checked out into a temporary
worktree) and prints this tree's figure over the baseline's: a change to the harness
is judged against its own predecessor on the same machine, minutes apart.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

BARE = textwrap.dedent(
    """
    import array, os, sys
    import mlperf_loadgen as lg
    scenario, outdir, conf = sys.argv[1:4]
    buf = array.array("B", bytes(8)); ptr = buf.buffer_info()[0]
    make, complete = lg.QuerySampleResponse, lg.QuerySamplesComplete
    pool = [make(0, ptr, 8) for _ in range(1024)]
    def issue(ids, indices):
        for start in range(0, len(ids), 1024):
            chunk = ids[start:start + 1024]
            responses = pool if len(chunk) == 1024 else pool[:len(chunk)]
            for r, i in zip(responses, chunk):
                r.id = i
            complete(responses)
    sut = lg.ConstructFastSUT(issue, lambda: None)
    qsl = lg.ConstructQSL(1024, 1024, lambda s: None, lambda s: None)
    settings = lg.TestSettings()
    settings.FromConfig(conf, "echo", scenario)
    settings.scenario = getattr(lg.TestScenario, scenario)
    settings.mode = lg.TestMode.PerformanceOnly
    out = lg.LogOutputSettings(); out.outdir = outdir
    log = lg.LogSettings(); log.log_output = out
    lg.StartTestWithLogSettings(sut, qsl, settings, log, os.path.join(outdir, "audit.config"))
    """
)


def detail(path: Path) -> dict[str, object]:
    values: dict[str, object] = {}
    for line in path.read_text().splitlines():
        if line.startswith(":::MLLOG "):
            entry = json.loads(line[len(":::MLLOG ") :])
            values[entry["key"]] = entry["value"]
    return values


def figure(scenario: str, values: dict[str, object]) -> float:
    if scenario == "Offline":
        return float(values["result_samples_per_second"])  # type: ignore[arg-type]
    if scenario == "Server":
        return float(values["result_completed_samples_per_sec"])  # type: ignore[arg-type]
    return float(values["result_qps_with_loadgen_overhead"])  # type: ignore[arg-type]


def run_bare(scenario: str, work: Path, duration: float, server_qps: float, bare_expect: dict[str, str]) -> dict[str, object]:
    out = work / "bare" / scenario
    out.mkdir(parents=True)
    conf = out / "user.conf"
    lines = [f"echo.{scenario}.min_duration = {int(duration * 1000)}", f"echo.{scenario}.min_query_count = 64"]
    if scenario == "Offline":
        lines += [f"echo.Offline.target_qps = {bare_expect['Offline']}", "echo.Offline.min_query_count = 1"]
    elif scenario == "Server":
        lines.append(f"echo.Server.target_qps = {server_qps}")
    else:
        lines.append(f"echo.SingleStream.target_latency = {bare_expect['SingleStream']}")
    conf.write_text("\n".join(lines) + "\n")
    subprocess.run([sys.executable, "-c", BARE, scenario, str(out), str(conf)], check=True, stdout=subprocess.DEVNULL)
    return detail(out / "mlperf_log_detail.txt")


def run_mlpi(
    scenario: str, work: Path, model: Path, duration: float, server_qps: float, batch: int, source: Path | None = None
) -> dict[str, object]:
    """One ``mlpi run --backend null`` test; ``source``: run the mlpi package found there."""
    root = work / ("mlpi" if source is None else "baseline") / scenario
    command = [
        sys.executable, "-m", "mlpi", "run", "--backend", "null", "--model-path", str(model),
        "--scenario", scenario, "--duration", str(duration), "--output", str(root), "--batch-size", str(batch),
    ]
    if scenario == "Server":
        command += ["--target-qps", str(server_qps)]
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH")]))
    proc = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False, env=env)
    if proc.returncode not in (0, 3):  # 3: ran, but INVALID - still a figure to compare
        raise SystemExit(f"mlpi {scenario} run failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    (run_dir,) = [p for p in root.iterdir() if p.is_dir()]  # the results store file sits beside it
    values = detail(run_dir / scenario / "performance" / "mlperf_log_detail.txt")
    # What mlpi told LoadGen to expect, so that the bare SUT is asked for the same work.
    for line in (run_dir / scenario / "performance" / "user.conf").read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip().endswith((".target_qps", ".target_latency")):
            values["mlpi_expectation"] = value.strip()
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="min duration of each test, seconds")
    parser.add_argument("--server-qps", type=float, default=80000.0, help="Server target QPS for both sides")
    parser.add_argument("--batch-size", type=int, default=64, help="mlpi batch size (Offline, Server)")
    parser.add_argument("--scenarios", default="Offline,SingleStream,Server")
    parser.add_argument("--baseline", metavar="REV", help="also measure mlpi at this git revision (e.g. HEAD~3)")
    args = parser.parse_args()

    from mlpi.testing.tiny_models import argmax_model

    bare_expect = {"Offline": "1500000", "SingleStream": "0.004"}
    rows = []
    against: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="mlpi-overhead-") as tmp:
        work = Path(tmp)
        model = argmax_model(work / "tiny.onnx")
        baseline = checkout(args.baseline, work / "baseline-src") if args.baseline else None
        for scenario in args.scenarios.split(","):
            # mlpi first: the bare SUT then gets the same expected QPS / latency mlpi calibrated.
            mine = run_mlpi(scenario, work, model, args.duration, args.server_qps, args.batch_size)
            if baseline is not None:
                before = run_mlpi(scenario, work, model, args.duration, args.server_qps, args.batch_size, baseline)
                against[scenario] = (figure(scenario, before), figure(scenario, mine))
            expect = dict(bare_expect)
            if "mlpi_expectation" in mine and scenario in expect:
                expect[scenario] = str(mine["mlpi_expectation"])
            bare = run_bare(scenario, work, args.duration, args.server_qps, expect)
            b, m = figure(scenario, bare), figure(scenario, mine)
            rows.append((scenario, b, m, m / b, bare.get("result_validity"), mine.get("result_validity"),
                         bare.get("result_99.00_percentile_latency_ns"), mine.get("result_99.00_percentile_latency_ns")))
    print(f"machine: {os.cpu_count()} logical CPUs; duration {args.duration}s per test; mlpi batch size {args.batch_size}")
    print(f"{'scenario':<13}{'unit':<12}{'bare':>12}{'mlpi':>12}{'ratio':>8}  validity (bare/mlpi)  p99 ns (bare/mlpi)")
    for scenario, b, m, ratio, bv, mv, bp, mp in rows:
        unit = "samples/s" if scenario in ("Offline", "Server") else "queries/s"
        print(f"{scenario:<13}{unit:<12}{b:>12,.0f}{m:>12,.0f}{ratio:>8.2f}  {bv}/{mv}  {bp}/{mp}")
    if against:
        print(f"\nmlpi at {args.baseline} (baseline) against this tree, same machine, same run:")
        print(f"{'scenario':<13}{'baseline':>12}{'this tree':>12}{'ratio':>8}")
        for scenario, (before, after) in against.items():
            print(f"{scenario:<13}{before:>12,.0f}{after:>12,.0f}{after / before:>8.2f}")
    return 0


def checkout(revision: str, into: Path) -> Path:
    """A detached copy of this repository's ``revision`` (``git archive``: no worktree left behind)."""
    repo = Path(__file__).resolve().parent.parent
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", "--format=tar", revision], stdout=subprocess.PIPE, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


if __name__ == "__main__":
    sys.exit(main())
