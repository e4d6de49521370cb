"""Compile an int8 graph in a throwaway process first, where DeepSparse's compiler may abort.

DeepSparse 1.8's AVX2 code generator (CPUs without VNNI) aborts the whole process on some
int8 graphs: mlpi's int8 ResNet50 (Q/DQ, two outputs) compiles at batch 1 and aborts at
batch 2 and above with ``Assertion at ./src/include/wand/jit/function/register_state.hpp:129``,
a C++ assert no Python code can catch. So before the session's own compile, the same
compile runs in a child process; an abort there becomes one error naming the batch sizes
that do compile. The verdict is kept in the cache (keyed by the compiled file, batch, engine
settings and DeepSparse's version), so each test of a run does not compile twice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Seconds a probe compile may take (ResNet50 int8 compiles in about 10 s on 2 cores).
PROBE_TIMEOUT_S = 900

_CHILD = """
import os, sys
import deepsparse
deepsparse.compile_model(sys.argv[1], batch_size=int(sys.argv[2]), num_cores=int(sys.argv[3]) or None,
                         num_streams=int(sys.argv[4]) or None, scheduler=sys.argv[5])
"""


def needs_probe(quantized: bool, cpu: Mapping[str, Any]) -> bool:
    """An int8 graph on a CPU without VNNI (DeepSparse's AVX2 code generator) is probed."""
    return quantized and not bool(cpu.get("vnni")) and str(cpu.get("isa", "")) == "avx2"


def compiles(path: Path, identity: str, batch: int, settings: Mapping[str, Any], version: str) -> tuple[bool, str]:
    """Whether DeepSparse compiles ``path`` at ``batch`` with ``settings`` without aborting,
    and the abort's first line when it does not; from the cache when asked before.
    ``identity`` names the file's content (its sha256): two files of one name (every derived
    ``model.onnx``) must not share a verdict."""
    from mlpi.core.engine.cache import cache_root

    key = f"{identity}-b{batch}-{settings['num_cores']}-{settings['num_streams']}-{settings['scheduler']}-{version}"
    verdict_file = cache_root() / "deepsparse" / "probes" / f"{key}.json"
    try:
        verdict = json.loads(verdict_file.read_text(encoding="utf-8"))
        return bool(verdict["compiles"]), str(verdict["why"])
    except (OSError, ValueError, KeyError):
        pass
    args = [sys.executable, "-c", _CHILD, str(path), str(batch), str(settings["num_cores"]),
            str(settings["num_streams"]), str(settings["scheduler"])]
    env = {**os.environ, "NM_DISABLE_ANALYTICS": "1"}
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, env=env, check=False)
    except subprocess.TimeoutExpired:
        return True, ""  # slow, not aborted: the session's own compile decides
    output = done.stdout + done.stderr
    # Only an abort is this probe's business: a compile that raises is caught, and explained,
    # by the session's own compile
    aborted = done.returncode < 0 or "Assertion at" in output
    why = _abort_line(output, done.returncode) if aborted else ""
    if done.returncode == 0 or aborted:  # a compiler verdict, worth keeping
        from mlpi.core.results.rundir import write_bytes_atomic

        try:
            verdict_file.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(verdict_file, json.dumps({"compiles": not aborted, "why": why}).encode())
        except OSError:
            pass  # a read-only cache only costs the next test another probe
    return not aborted, why


def _abort_line(output: str, returncode: int) -> str:
    for line in output.splitlines():
        if line.startswith("Assertion at"):
            return line.strip()[:200]
    return f"killed by signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
