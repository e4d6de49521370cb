"""How close ``mlpi tune`` gets to the highest VALID Server target QPS, and what it costs.

In one invocation: ``mlpi tune -s Server`` (bracket, then bisect to ``--tolerance``, then
one confirming run), then a fine manual sweep of the Server target QPS at the same
durations (each target at least ``--trial-duration`` seconds and at least the tune's
minimum query count), on a grid ``--step`` apart from ``--below`` steps under the tuned
value, going up until, once one was VALID, ``--stop-after`` targets in a row are INVALID
(and down from the first point until one is VALID, when none was).
Prints every sweep point, the tuned value, the highest VALID value the sweep found, their
ratio (tuned / highest VALID: 1.0 means the tune found the best the sweep could; above 1.0,
every sweep run at or above the tuned value was INVALID: noise at the edge), and the number
of runs and seconds each side took. Near the edge a short run is VALID or not partly by
chance, so the sweep's highest VALID point is itself a lucky draw.

    python benchmarks/tune_server.py [--backend null|onnxruntime] [--model-path FILE]
        [--trial-duration 2] [--tolerance 0.05] [--step 0.02] [--json FILE]

The default model is a tiny generated matmul graph (mlpi.testing.tiny_models), so what is
measured is the harness and the search, not a network. Machines are noisy: compare within
one invocation only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


class _Quiet:
    """A run reporter that prints nothing (the sweep prints one line per point)."""

    def test_started(self, *args: Any) -> None:
        pass

    def test_finished(self, *args: Any) -> None:
        pass


def tune(args: argparse.Namespace, model: Path, work: Path) -> tuple[dict[str, Any], float]:
    """``mlpi tune`` as a user runs it; the profile it wrote and the seconds it took."""
    command = [sys.executable, "-m", "mlpi", "tune", "-b", args.backend, "--model-path", str(model), "-s", "Server",
               "--trial-duration", str(args.trial_duration), "--confirm-duration", str(args.trial_duration),
               "--tolerance", str(args.tolerance), "--output", str(work / "results"),
               "--profile-out", str(work / "profile.json")]
    print("$ " + " ".join(command[2:]), flush=True)
    started = time.monotonic()
    proc = subprocess.run(command, text=True, capture_output=True, check=False)
    seconds = time.monotonic() - started
    sys.stdout.write("".join(f"  {line}\n" for line in proc.stderr.splitlines() if line.startswith("trial ")))
    if proc.returncode not in (0, 3):
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"mlpi tune failed (exit code {proc.returncode})")
    return json.loads((work / "profile.json").read_text()), seconds


def sweep(args: argparse.Namespace, model: Path, work: Path, tuned: float) -> tuple[list[dict[str, Any]], float]:
    """Server runs on a grid ``step`` apart around ``tuned``: from ``below`` steps under it
    upwards until, once one was VALID, ``stop_after`` in a row are INVALID; when none up to
    ``stop_after`` steps above ``tuned`` was VALID, downwards from under the first point until
    one is. Each point's target, duration, figure and validity."""
    from mlpi.core.engine.planning import RunRequest, build_plan
    from mlpi.core.engine.runner import execute
    from mlpi.tune.tuner import SERVER_TRIAL_MIN_QUERIES

    plan = build_plan(RunRequest(backend=args.backend, model_path=str(model), scenarios=["Server"],
                                 duration_s=args.trial_duration))
    points: list[dict[str, Any]] = []
    started = time.monotonic()

    def run_point(k: int) -> bool:
        target = float(f"{tuned * (1 + args.step) ** k:.4g}")
        duration = max(args.trial_duration, math.ceil(SERVER_TRIAL_MIN_QUERIES / target * 10) / 10)
        outcome = execute(dataclasses.replace(plan, target_qps=target, duration_s=duration), work / "sweep", _Quiet())
        if outcome.interruption is not None:
            raise SystemExit(f"interrupted: {outcome.interruption.message}")
        test = outcome.result.tests[0] if outcome.result.tests else None
        valid = bool(test is not None and test.status == "ok" and test.valid)
        value = test.value if test is not None else None
        points.append({"target_qps": target, "duration_s": duration, "valid": valid, "samples_per_s": value,
                       "run_id": outcome.result.run_id})
        print(f"  sweep {target:>12,.1f} QPS, {duration:g} s: {value or 0:>12,.1f} samples/s "
              f"{'VALID' if valid else 'INVALID'}", flush=True)
        return valid

    k, invalid_in_a_row, seen_valid = -args.below, 0, False
    while k <= args.max_steps:
        valid = run_point(k)
        seen_valid = seen_valid or valid
        invalid_in_a_row = 0 if valid else invalid_in_a_row + 1
        if invalid_in_a_row >= args.stop_after and (seen_valid or k >= args.stop_after):
            break
        k += 1
    k = -args.below - 1
    while not seen_valid and k >= -args.max_steps:
        seen_valid = run_point(k)
        k -= 1
    return points, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="null", help="null (default) or onnxruntime, or any installed backend")
    parser.add_argument("--model-path", type=Path, help="ONNX model (default: a tiny generated matmul graph)")
    parser.add_argument("--trial-duration", type=float, default=2.0, help="seconds per tune trial and per sweep point")
    parser.add_argument("--tolerance", type=float, default=0.05, help="the tune's --tolerance")
    parser.add_argument("--step", type=float, default=0.02, help="the sweep's grid, relative (0.02: 2%% apart)")
    parser.add_argument("--below", type=int, default=5, help="sweep points below the tuned value")
    parser.add_argument("--stop-after", type=int, default=3,
                        help="once a point was VALID, the sweep stops after this many INVALID in a row")
    parser.add_argument("--max-steps", type=int, default=40, help="the most sweep steps above (or below) the tuned value")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="mlpi-tune-bench-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("MLPI_CACHE", str(work / "cache"))
        model = args.model_path
        if model is None:
            from mlpi.testing.tiny_models import matmul_model

            model = matmul_model(work / "matmul.onnx")
        profile, tune_s = tune(args, model, work)
        entry = profile["scenarios"]["Server"]
        tuned = float(entry["target_qps"])
        trials = len(entry["found_by"]["trials"])
        print(f"tuned: {tuned:,.1f} QPS ({trials} trials incl. the measuring one and the confirmation, "
              f"confirmed {'VALID' if entry['confirmed'] else 'INVALID'}; {tune_s:.0f} s)", flush=True)
        points, sweep_s = sweep(args, Path(model), work, tuned)
    valid = [p["target_qps"] for p in points if p["valid"]]
    best = max(valid) if valid else None
    ratio = tuned / best if best else None
    print(f"highest VALID in the sweep: {best:,.1f} QPS" if best else "highest VALID in the sweep: none")
    print(f"tuned / highest VALID: {ratio:.3f}" if ratio else "tuned / highest VALID: -")
    print(f"cost: tune {trials} runs in {tune_s:.0f} s; sweep {len(points)} runs in {sweep_s:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({
            "backend": args.backend, "trial_duration_s": args.trial_duration, "tolerance": args.tolerance,
            "step": args.step, "tuned_qps": tuned, "tune_seconds": tune_s, "tune_runs": trials,
            "highest_valid_qps": best, "ratio": ratio, "sweep_seconds": sweep_s, "sweep": points,
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
