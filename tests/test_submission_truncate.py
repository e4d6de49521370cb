"""mlpi's accuracy-log truncation equals MLCommons' truncate_accuracy_log.py byte for byte."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mlpi.core.contract.errors import MlpiError
from mlpi.submission.truncate import (
    MAX_ACCURACY_LOG_SIZE,
    VIEWABLE_SIZE,
    looks_truncated,
    truncate,
)

TOOL = Path(__file__).resolve().parents[2] / "shared" / "mlcommons-inference" / "tools" / "submission" / "truncate_accuracy_log.py"
pytestmark = pytest.mark.skipif(not TOOL.is_file(), reason=f"MLCommons' truncate_accuracy_log.py is not at {TOOL}")

SCENARIO = Path("open", "acme", "results", "sys", "resnet", "Offline")


def loadgen_log(size: int) -> bytes:
    """A log shaped as LoadGen writes it (one entry per line, upper-case hex), ``size`` bytes long."""
    head, tail = b"[\n", b"\n]\n"
    entries: list[bytes] = []
    i = 0
    while True:
        entry = b'{ "seq_id" : %d, "qsl_idx" : %d, "data" : "%08X" }' % (i, i % 1000, i * 7919)
        body = b",\n".join([*entries, entry])
        if len(head + body + tail) > size:
            break
        entries.append(entry)
        i += 1
    log = head + b",\n".join(entries) + tail
    missing = size - len(log)
    assert entries and missing >= 0
    last = entries[-1]
    entries[-1] = last[:-3] + b"0" * missing + last[-3:]  # pad the last entry's hex to the exact size
    log = head + b",\n".join(entries) + tail
    assert len(log) == size
    return log


def official(tmp_path: Path, log: bytes, accuracy_txt: bytes) -> tuple[bytes, bytes]:
    """What MLCommons' tool makes of the two files, run on a one-scenario tree."""
    source = tmp_path / "in"
    folder = source / SCENARIO / "accuracy"
    folder.mkdir(parents=True)
    (folder / "mlperf_log_accuracy.json").write_bytes(log)
    (folder / "accuracy.txt").write_bytes(accuracy_txt)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(TOOL), "--input", str(source), "--output", str(out), "--submitter", "acme"],
                          check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    done = out / SCENARIO / "accuracy"
    return (done / "mlperf_log_accuracy.json").read_bytes(), (done / "accuracy.txt").read_bytes()


SIZES = [100, VIEWABLE_SIZE - 1, VIEWABLE_SIZE, VIEWABLE_SIZE + 1, 6000, 2 * VIEWABLE_SIZE, 9000,
         MAX_ACCURACY_LOG_SIZE + 5, 300_000]


@pytest.mark.parametrize("size", SIZES)
def test_truncation_is_byte_for_byte_the_tools(tmp_path: Path, size: int) -> None:
    log = loadgen_log(size)
    accuracy = b"accuracy=76.456%, good=38228, total=50000\n"
    theirs_log, theirs_txt = official(tmp_path, log, accuracy)
    (tmp_path / "log.json").write_bytes(log)
    ours = truncate(tmp_path / "log.json", accuracy)
    assert ours.log == theirs_log
    assert ours.accuracy_txt == theirs_txt
    assert ours.accuracy_txt.endswith(b"\nhash=" + ours.sha256.encode() + b"\n")
    # from 4,096 bytes on, the first and last 4,096 joined (a log under 8,192 bytes comes out longer, as the tool's does)
    assert ours.log == (log if size < VIEWABLE_SIZE else log[:VIEWABLE_SIZE] + b"\n\n...\n\n" + log[-VIEWABLE_SIZE:])
    assert looks_truncated(len(ours.log), ours.accuracy_txt)


@pytest.mark.parametrize("size", [2000, 20_000])
def test_a_log_that_already_has_its_hash_line_is_treated_as_the_tool_treats_it(tmp_path: Path, size: int) -> None:
    log = loadgen_log(size)
    accuracy = b"accuracy=50.000%, good=1, total=2\n\nhash=abc123\n"
    theirs_log, theirs_txt = official(tmp_path, log, accuracy)
    (tmp_path / "log.json").write_bytes(log)
    ours = truncate(tmp_path / "log.json", accuracy)
    assert (ours.log, ours.accuracy_txt) == (theirs_log, theirs_txt)
    assert (ours.sha256 is None) == (size < MAX_ACCURACY_LOG_SIZE)  # small: left alone; large: cut and hashed again


def test_a_log_that_is_not_loadgens_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "log.json"
    path.write_bytes(loadgen_log(5000).replace(b"\n", b"\r\n", 3))
    with pytest.raises(MlpiError, match="is not a LoadGen accuracy log"):
        truncate(path, b"accuracy=1%\n")
    path.write_bytes("[\n{ \"data\" : \"é\" }\n]\n".encode())
    with pytest.raises(MlpiError, match="non-ASCII"):
        truncate(path, b"accuracy=1%\n")
