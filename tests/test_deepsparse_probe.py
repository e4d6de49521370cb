"""The compile probe that turns DeepSparse's compiler aborts into an error (no DeepSparse needed:
the child process is replaced by scripts that abort, raise, or compile)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlpi.backends import _deepsparse_probe as probe

SETTINGS = {"num_cores": 0, "num_streams": 0, "scheduler": "single_stream"}
ABORTS = "import os, sys\nprint('Assertion at ./src/include/wand/jit/function/register_state.hpp:129', flush=True)\nos.abort()\n"
RAISES = "raise RuntimeError('NM: error: unsupported operator Foo')\n"
COMPILES = "import sys\nopen(sys.argv[1] + '.compiled', 'w').write(sys.argv[2])\n"


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLPI_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_only_int8_graphs_on_cpus_without_vnni_are_probed() -> None:
    assert probe.needs_probe(True, {"isa": "avx2", "vnni": False})
    assert not probe.needs_probe(False, {"isa": "avx2", "vnni": False})  # fp32 graphs compile in process
    assert not probe.needs_probe(True, {"isa": "avx2", "vnni": True})
    assert not probe.needs_probe(True, {"isa": "avx512", "vnni": False})
    assert not probe.needs_probe(True, {"isa": "neon", "vnni": False})


def test_an_abort_is_reported_with_its_assertion_and_kept(tmp_path: Path, cache: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"x")
    monkeypatch.setattr(probe, "_CHILD", ABORTS)
    assert probe.compiles(model, "aa11", 8, SETTINGS, "1.8.0") == (
        False, "Assertion at ./src/include/wand/jit/function/register_state.hpp:129")
    kept = list((cache / "deepsparse" / "probes").glob("*.json"))
    assert [f.name for f in kept] == ["aa11-b8-0-0-single_stream-1.8.0.json"]
    assert json.loads(kept[0].read_text())["compiles"] is False
    monkeypatch.setattr(probe, "_CHILD", COMPILES)  # a kept verdict is not probed again
    assert probe.compiles(model, "aa11", 8, SETTINGS, "1.8.0")[0] is False
    assert not (tmp_path / "model.onnx.compiled").exists()
    assert probe.compiles(model, "aa11", 1, SETTINGS, "1.8.0") == (True, "")  # another batch is its own question
    assert (tmp_path / "model.onnx.compiled").read_text() == "1"
    other = tmp_path / "other" / "model.onnx"  # another file of the same name: its own question too
    other.parent.mkdir()
    other.write_bytes(b"y")
    assert probe.compiles(other, "bb22", 8, SETTINGS, "1.8.0") == (True, "")
    assert (other.parent / "model.onnx.compiled").read_text() == "8"


def test_a_compile_error_is_left_to_the_session_and_not_kept(tmp_path: Path, cache: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A compile that raises is the session's own compile to explain (its message names the
    operator): the probe passes it and keeps no verdict."""
    model = tmp_path / "model.onnx"
    model.write_bytes(b"x")
    monkeypatch.setattr(probe, "_CHILD", RAISES)
    assert probe.compiles(model, "aa11", 8, SETTINGS, "1.8.0") == (True, "")
    assert not (cache / "deepsparse" / "probes").exists()


def test_a_signal_without_an_assertion_is_an_abort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"x")
    monkeypatch.setattr(probe, "_CHILD", "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    assert probe.compiles(model, "aa11", 2, SETTINGS, "1.8.0") == (False, "killed by signal 11")
