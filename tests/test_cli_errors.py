"""Every user-caused failure of the ``mlpi`` CLI: ``error:`` + ``hint:``, exit code, no traceback.

The CLI runs as a real subprocess (``python -m mlpi``) in ``tmp_path`` with ``MLPI_PLUGINS``
removed, so neither a stray ``./plugins.toml`` nor the caller's environment leaks in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CliResult

from mlpi.core.results.rundir import create_run_dir
from mlpi.testing.tiny_models import argmax_model

EXIT_FAILURE = 1
EXIT_USAGE = 2




def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLPI_PLUGINS"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg-cache")
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "200"
    return env


@pytest.fixture
def cli(tmp_path: Path):
    """``cli(*args)`` runs ``python -m mlpi ARGS`` in tmp_path and returns a CliResult."""

    def run(*args: str, timeout: float = 60) -> CliResult:
        proc = subprocess.run(
            [sys.executable, "-m", "mlpi", *args],
            cwd=tmp_path,
            env=_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    return run


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """A tiny valid ONNX model (ArgMax over x[N, 16])."""
    return argmax_model(tmp_path / "tiny.onnx")


def assert_clean_error(
    result: CliResult,
    code: int,
    error_parts: tuple[str, ...] = (),
    hint_parts: tuple[str, ...] = (),
    *,
    only_lines: bool = True,
) -> tuple[str, str]:
    """The failure ends in one ``error:`` line then one ``hint:`` line, exit ``code``, no traceback."""
    assert result.rc == code, f"exit {result.rc}, expected {code}\n{result.output}"
    assert "Traceback" not in result.output, result.output
    lines = result.err_lines
    assert len(lines) >= 2, result.stderr
    if only_lines:
        # a failure found before the run starts prints nothing else
        assert len(lines) == 2, result.stderr
    error, hint = lines[-2], lines[-1]
    assert error.startswith("error: "), result.stderr
    assert hint.startswith("hint: "), result.stderr
    assert sum(line.startswith("error:") for line in lines) == 1, result.stderr
    assert len(error) > len("error: ") + 5 and len(hint) > len("hint: ") + 5
    for part in error_parts:
        assert part in error, f"{part!r} not in {error!r}"
    for part in hint_parts:
        assert part in hint, f"{part!r} not in {hint!r}"
    return error, hint


def run_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []


# --------------------------------------------------------------------------- error catalogue

# (id, args, exit code, fragments of the error line, fragments of the hint line)
# "{model}" is replaced by the tiny model's path; the named files are made by the fixture.
CASES = [
    ("unknown-backend", ["run", "--backend", "onnxrutime", "--model-path", "{model}"], EXIT_USAGE,
     ("unknown backend", "'onnxrutime'"), ("did you mean onnxruntime",)),
    ("unknown-scenario", ["run", "--backend", "null", "--model-path", "{model}", "-s", "offline,serverr"], EXIT_USAGE,
     ("unknown scenario", "'serverr'"), ("Server",)),
    ("unknown-mode", ["run", "--backend", "null", "--model-path", "{model}", "--mode", "fast"], EXIT_USAGE,
     ("unknown mode", "'fast'"), ("performance", "accuracy")),
    ("unknown-option-key", ["run", "--backend", "onnxruntime", "--model-path", "{model}", "-o", "intra_threads=2"], EXIT_USAGE,
     ("unknown option", "'intra_threads'", "onnxruntime"),
     ("intra_op_threads", "inter_op_threads", "graph_optimization_level", "execution_mode", "provider")),
    ("bad-option-choice", ["run", "--backend", "onnxruntime", "--model-path", "{model}", "-o", "graph_optimization_level=max"],
     EXIT_USAGE, ("graph_optimization_level", "'max'"), ("disable", "basic", "extended", "all")),
    ("bad-option-number", ["run", "--backend", "onnxruntime", "--model-path", "{model}", "-o", "intra_op_threads=lots"],
     EXIT_USAGE, ("intra_op_threads", "'lots'", "not a number"), ("int",)),
    ("option-not-key-value", ["run", "--backend", "onnxruntime", "--model-path", "{model}", "-o", "intra_op_threads"],
     EXIT_USAGE, ("'intra_op_threads' is not KEY=VALUE",), ("-o key=value",)),
    ("option-empty-key", ["run", "--backend", "null", "--model-path", "{model}", "-o", "=3"],
     EXIT_USAGE, ("'=3' is not KEY=VALUE",), ()),
    ("device-kind-unusable", ["run", "--backend", "null", "--device", "cuda", "--model-path", "{model}"], EXIT_FAILURE,
     ("'null'", "device kind 'cuda'"), ("cpu",)),
    ("device-misspelt", ["run", "--backend", "null", "--device", "cuda:x", "--model-path", "{model}"], EXIT_USAGE,
     ("'cuda:x'", "bad unit list"), ()),
    ("model-missing", ["run", "--backend", "null", "--model-path", "missing.onnx"], EXIT_FAILURE,
     ("missing.onnx", "does not exist"), ("--model-path",)),
    ("model-is-directory", ["run", "--backend", "null", "--model-path", "adir.onnx"], EXIT_FAILURE,
     ("adir.onnx", "is a directory"), ("--model-path",)),
    ("model-empty", ["run", "--backend", "null", "--model-path", "empty.onnx"], EXIT_FAILURE,
     ("empty.onnx", "is empty"), ()),
    ("model-random-bytes", ["run", "--backend", "null", "--model-path", "random.onnx"], EXIT_FAILURE,
     ("random.onnx", "not an ONNX model"), ("--model-path",)),
    ("model-text-file", ["run", "--backend", "onnxruntime", "--model-path", "readme.txt"], EXIT_FAILURE,
     ("readme.txt", "not an ONNX model"), ("--model-path",)),
    ("official-not-downloaded", ["run", "--backend", "null", "--model", "resnet50", "--weights", "official"],
     EXIT_FAILURE, ("official resnet50 model is not downloaded",), ("mlpi fetch resnet50", "--weights random")),
    ("random-weights-accuracy", ["run", "--backend", "null", "--model", "resnet50", "--weights", "random", "--mode", "accuracy"],
     EXIT_USAGE, ("random weights are for performance only",), ("mlpi fetch resnet50",)),
    ("batch-size-zero", ["run", "--backend", "null", "--model-path", "{model}", "--batch-size", "0"], EXIT_USAGE,
     ("--batch-size", "at least 1", "0"), ("--batch-size",)),
    ("instances-zero", ["run", "--backend", "null", "--model-path", "{model}", "--instances", "0"], EXIT_USAGE,
     ("--instances", "at least 1"), ("--instances",)),
    ("target-qps-negative", ["run", "--backend", "null", "--model-path", "{model}", "--target-qps", "-1"], EXIT_USAGE,
     ("--target-qps", "positive", "-1"), ("--target-qps",)),
    ("duration-zero", ["run", "--backend", "null", "--model-path", "{model}", "--duration", "0"], EXIT_USAGE,
     ("--duration", "positive"), ()),
    ("precision-unknown", ["run", "--backend", "null", "--model-path", "{model}", "--precision", "fp16"], EXIT_USAGE,
     ("'null'", "precision 'fp16'"), ("fp32",)),
    ("click-unknown-option", ["run", "--frobnicate"], EXIT_USAGE, ("--frobnicate",), ("mlpi run --help",)),
    ("click-unknown-option-group", ["--frobnicate"], EXIT_USAGE, ("--frobnicate",), ("mlpi --help",)),
    ("click-unknown-command", ["frobnicate"], EXIT_USAGE, ("frobnicate",), ("--help",)),
    ("click-bad-int", ["run", "--backend", "null", "--model-path", "{model}", "--batch-size", "two"], EXIT_USAGE,
     ("--batch-size", "two"), ("mlpi run --help",)),
    ("output-is-a-file", ["run", "--backend", "null", "--model-path", "{model}", "--output", "afile"], EXIT_USAGE,
     ("--output", "afile"), ()),
    ("plugins-invalid-toml", ["run", "--backend", "null", "--model-path", "{model}", "--plugins", "bad.toml"], EXIT_USAGE,
     ("bad.toml", "not valid TOML"), ()),
    ("plugins-unknown-key", ["run", "--backend", "null", "--model-path", "{model}", "--plugins", "unknown_key.toml"],
     EXIT_USAGE, ("unknown key 'frobnicate'", "unknown_key.toml"), ("disabled", "aliases", "default_backend", "options")),
    ("plugins-unknown-key-backends-cmd", ["backends", "--plugins", "unknown_key.toml"], EXIT_USAGE,
     ("unknown key 'frobnicate'",), ("default_backend",)),
    ("plugins-file-missing", ["run", "--backend", "null", "--model-path", "{model}", "--plugins", "nowhere.toml"],
     EXIT_USAGE, ("nowhere.toml",), ("--plugins",)),
    ("plan-missing", ["run", "--plan", "missing-plan.json"], EXIT_USAGE, ("missing-plan.json", "does not exist"), ("plan.json",)),
    ("plan-not-a-plan", ["run", "--plan", "notaplan.json"], EXIT_USAGE, ("notaplan.json", "not an mlpi plan"), ("plan.json",)),
    ("plan-not-json", ["run", "--plan", "notjson.json"], EXIT_USAGE, ("notjson.json", "not an mlpi plan"), ("plan.json",)),
    ("plan-with-other-flags", ["run", "--plan", "notaplan.json", "-s", "Server", "--duration", "5"], EXIT_USAGE,
     ("would be ignored", "--scenario", "--duration"), ("without --plan",)),
    ("seed-negative", ["run", "--backend", "null", "--model-path", "{model}", "--seed", "-1"], EXIT_USAGE,
     ("--seed", "-1"), ("--seed",)),
    # Found by the backend's own check while planning, before any run directory exists.
    ("ort-dynamic-int8-not-int8", ["run", "--backend", "onnxruntime", "--model-path", "{model}", "--precision", "fp16",
                                   "-o", "dynamic_int8=true"],
     EXIT_USAGE, ("-o dynamic_int8 derives --precision int8", "fp16"), ("--precision int8",)),
    ("ort-provider-wrong-device", ["run", "--backend", "onnxruntime", "--model-path", "{model}", "-o", "provider=tensorrt"],
     EXIT_USAGE, ("provider 'tensorrt'", "'cpu'"), ("provider=default",)),
    ("ort-provider-not-in-build", ["run", "--backend", "onnxruntime", "--model-path", "{model}", "-o", "provider=openvino"],
     EXIT_FAILURE, ("OpenVINOExecutionProvider",), ("onnxruntime-openvino",)),
]


@pytest.fixture
def bad_inputs(tmp_path: Path, model: Path) -> Path:
    (tmp_path / "adir.onnx").mkdir()
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "random.onnx").write_bytes(os.urandom(257) + b"\xff\xff\xff\xff")
    (tmp_path / "readme.txt").write_text("this is not a model\nat all\n", encoding="utf-8")
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    (tmp_path / "bad.toml").write_text("[aliases\nnn = 'null'\n", encoding="utf-8")
    (tmp_path / "unknown_key.toml").write_text("frobnicate = 1\n", encoding="utf-8")
    (tmp_path / "notaplan.json").write_text('{"version": 1, "backend": "null"}', encoding="utf-8")
    (tmp_path / "notjson.json").write_text("backend = null\n", encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(("args", "code", "error_parts", "hint_parts"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_user_error_is_one_error_and_one_hint(cli, model, bad_inputs, tmp_path, args, code, error_parts, hint_parts):
    args = [str(model) if a == "{model}" else a for a in args]
    output_root = tmp_path / "results"
    if args[0] == "run" and "--plan" not in args:  # --plan refuses any other run flag
        # should a broken implementation start the run anyway, keep it short
        if "--output" not in args:
            args += ["--output", str(output_root)]
        if "--duration" not in args:
            args += ["--duration", "0.5"]
        if "-s" not in args:
            args += ["-s", "SingleStream"]
    result = cli(*args)
    assert_clean_error(result, code, error_parts, hint_parts)
    assert result.stdout.strip() == "", "a failure before the run prints no results table"
    # a run that fails before it starts leaves nothing behind: not even the results root
    assert not output_root.exists(), list(output_root.rglob("*"))


def test_onnxruntime_device_not_present(cli, model, tmp_path):
    from mlpi.backends.ort import OnnxRuntimeBackend

    if any(d.kind == "cuda" for d in OnnxRuntimeBackend().probe()):
        pytest.skip("this machine has a CUDA device onnxruntime can use")
    result = cli("run", "--backend", "onnxruntime", "--device", "cuda", "--model-path", str(model),
                 "--duration", "0.5", "-s", "SingleStream", "--output", str(tmp_path / "results"))
    error, hint = assert_clean_error(result, EXIT_FAILURE, ("'cuda'", "onnxruntime", "not usable"), ("--device",))
    assert "usable: cpu" in error  # says what *is* usable here
    assert not (tmp_path / "results").exists()


def test_onnxruntime_device_unit_not_present(cli, model, tmp_path):
    # cpu has no numbered units; asking for cpu:3 names the missing unit
    result = cli("run", "--backend", "onnxruntime", "--device", "cpu:3", "--model-path", str(model),
                 "--duration", "0.5", "-s", "SingleStream", "--output", str(tmp_path / "results"))
    assert_clean_error(result, EXIT_FAILURE, ("unit(s) 3", "onnxruntime"), ())
    assert not (tmp_path / "results").exists()


def test_debug_shows_traceback_for_mlpi_error(cli, tmp_path):
    plain = cli("run", "--backend", "null", "--model-path", "missing.onnx", "--output", str(tmp_path / "r"))
    assert_clean_error(plain, EXIT_FAILURE, ("does not exist",))
    for args in (
        ["run", "--debug", "--backend", "null", "--model-path", "missing.onnx"],
        ["--debug", "run", "--backend", "null", "--model-path", "missing.onnx"],
    ):
        debug = cli(*args, "--output", str(tmp_path / "r"))
        assert debug.rc == EXIT_FAILURE, debug.output  # --debug keeps the error's own exit code
        assert debug.stderr.rstrip().splitlines()[-2].startswith("error: ")
        assert "Traceback (most recent call last)" in debug.stderr
        assert "ModelError" in debug.stderr
        assert "missing.onnx does not exist" in debug.stderr
    assert not (tmp_path / "r").exists()


def test_debug_does_not_turn_usage_errors_into_tracebacks(cli):
    # click's own usage errors are not exceptions worth a traceback, even with --debug
    result = cli("--debug", "run", "--frobnicate")
    assert_clean_error(result, EXIT_USAGE, ("--frobnicate",))


def test_backend_failure_inside_test_process_is_clean(cli, tmp_path):
    """A model that passes the up-front ONNX check but that onnxruntime rejects: the child
    fails, the CLI still ends in error/hint (exit 1), and the measured-nothing result is kept."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("NoSuchOp", ["x"], ["y"])],
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.save(proto, str(tmp_path / "noop.onnx"))

    out = tmp_path / "results"
    result = cli("run", "--backend", "onnxruntime", "--model-path", "noop.onnx", "-s", "SingleStream",
                 "--duration", "0.5", "--output", str(out))
    error, _ = assert_clean_error(result, EXIT_FAILURE, ("onnxruntime could not load", "NoSuchOp"), only_lines=False)
    (run_dir,) = run_dirs(out)
    data = json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
    assert data["status"] == "failed"
    assert data["tests"][0]["status"] == "failed"
    assert data["tests"][0]["error"]["type"] == "ModelError"


# --------------------------------------------------------------------------- results are never overwritten


def test_results_directory_is_never_overwritten(cli, model, tmp_path):
    out = tmp_path / "R"
    args = ("run", "--backend", "null", "--model-path", str(model), "--duration", "0.5", "-s", "SingleStream",
            "--output", str(out))
    first = cli(*args)
    assert first.rc == 0, first.output
    (first_dir,) = run_dirs(out)
    first_bytes = (first_dir / "result.json").read_bytes()
    first_plan = (first_dir / "plan.json").read_bytes()

    second = cli(*args)
    assert second.rc == 0, second.output
    dirs = run_dirs(out)
    assert len(dirs) == 2, dirs
    assert first_dir in dirs
    (second_dir,) = [d for d in dirs if d != first_dir]
    assert (first_dir / "result.json").read_bytes() == first_bytes
    assert (first_dir / "plan.json").read_bytes() == first_plan
    for d in dirs:
        data = json.loads((d / "result.json").read_text(encoding="utf-8"))
        assert data["status"] == "ok"
        assert data["run_id"] == d.name
    assert str(second_dir) in second.stdout or second_dir.name in second.stdout
    assert str(first_dir.name) not in second.stdout


def test_create_run_dir_takes_a_fresh_name_when_the_stem_exists(tmp_path):
    root = tmp_path / "results"
    taken = root / "20250101-000000-m-null-cpu"
    taken.mkdir(parents=True)
    (taken / "result.json").write_text("precious", encoding="utf-8")
    fresh = create_run_dir(root, taken.name)
    again = create_run_dir(root, taken.name)
    assert fresh == root / f"{taken.name}-2"
    assert again == root / f"{taken.name}-3"
    assert list(fresh.iterdir()) == [] and list(again.iterdir()) == []
    assert (taken / "result.json").read_text(encoding="utf-8") == "precious"


def _first_run(cli, model_path: Path, out: Path) -> Path:
    first = cli("run", "--backend", "null", "--model-path", str(model_path), "--duration", "0.5", "-s", "SingleStream",
                "--output", str(out))
    assert first.rc == 0, first.output
    (run_dir,) = run_dirs(out)
    return run_dir / "plan.json"


def test_plan_rerun_checks_that_the_model_file_still_exists(cli, tmp_path):
    # (was a package bug: a re-run with --plan used to start without looking at the model)
    model_path = argmax_model(tmp_path / "gone.onnx")
    plan = _first_run(cli, model_path, tmp_path / "R")
    model_path.unlink()
    again = cli("run", "--plan", str(plan), "--output", str(tmp_path / "R2"))
    assert_clean_error(again, EXIT_FAILURE, ("gone.onnx", "does not exist"))
    assert not (tmp_path / "R2").exists()


def test_plan_rerun_refuses_a_changed_model_file(cli, tmp_path):
    # a different file under the same name would be run but recorded with the old sha256
    model_path = argmax_model(tmp_path / "swapped.onnx")
    plan = _first_run(cli, model_path, tmp_path / "R")
    argmax_model(model_path, features=8)
    again = cli("run", "--plan", str(plan), "--output", str(tmp_path / "R2"))
    assert_clean_error(again, EXIT_FAILURE, ("swapped.onnx", "changed"))
    assert not (tmp_path / "R2").exists()


# Unreadable --plan / --plugins files (these used to end in "error: internal error: ...",
# exit 1, "report the traceback") are usage errors that name the file.
UNREADABLE_FILES = [
    ("plan-json-string", ["run", "--plan", "p.json"], lambda d: (d / "p.json").write_text('"x"', encoding="utf-8")),
    ("plan-json-list", ["run", "--plan", "p.json"], lambda d: (d / "p.json").write_text("[1, 2]", encoding="utf-8")),
    ("plan-wrong-version", ["run", "--plan", "p.json"], lambda d: (d / "p.json").write_text('{"hello": 1}', encoding="utf-8")),
    ("plan-not-utf8", ["run", "--plan", "p.json"], lambda d: (d / "p.json").write_bytes(b"\xff\xfe\x00{")),
    ("plan-is-directory", ["run", "--plan", "pdir"], lambda d: (d / "pdir").mkdir()),
    ("plugins-not-utf8", ["backends", "--plugins", "p.toml"], lambda d: (d / "p.toml").write_bytes(b"\xff\xfe\x00")),
    ("plugins-is-directory", ["backends", "--plugins", "pdir"], lambda d: (d / "pdir").mkdir()),
]


@pytest.mark.parametrize(("args", "make"), [c[1:] for c in UNREADABLE_FILES], ids=[c[0] for c in UNREADABLE_FILES])
def test_unreadable_plan_or_plugins_file_is_a_usage_error(cli, tmp_path, args, make):
    make(tmp_path)
    result = cli(*args)
    error, _ = assert_clean_error(result, EXIT_USAGE, (args[-1],))
    assert "internal error" not in error


@pytest.mark.parametrize("args", [(), ("results",), ("submission",)])
def test_a_command_group_alone_prints_its_help(cli, args: tuple[str, ...]) -> None:
    """Asking for no subcommand is asking what there is: the help, not an ``error:`` wrapped
    around it (click 8.2 and later raise for it)."""
    res = cli(*args)
    assert res.rc == 0, res.stderr
    assert res.stdout.startswith(f"Usage: mlpi {' '.join(args)}".rstrip() + " [OPTIONS] COMMAND") and "Commands:" in res.stdout
    assert "error:" not in res.stderr
