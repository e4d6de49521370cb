"""Plugin discovery (real entry points, through stevedore) and plugins.toml layering.

Fake third-party plugins are "installed" without pip: a folder with modules and a
``*.dist-info`` is prepended to PYTHONPATH of a ``python -m mlpi`` subprocess, exactly how
an installed distribution looks to importlib.metadata. Each test gets its own
XDG_CACHE_HOME/HOME so stevedore's entry-point cache cannot leak between tests.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest
from conftest import CliResult

import mlpi.core.plugins.config as config_module
from mlpi.core.contract.errors import EXIT_INVALID, EXIT_USAGE, UsageError
from mlpi.core.plugins.config import PluginsConfig
from mlpi.core.plugins.options import build_options
from mlpi.testing.tiny_models import argmax_model

GOOD_MODULE = '''
import numpy as np

from mlpi.core.contract.backend import Backend, Capabilities, Session
from mlpi.core.contract.device import Device


class Echo3Session(Session):
    def __init__(self, model):
        self.inputs = list(model.inputs)
        self.outputs = list(model.outputs)
        self.capabilities = Capabilities(concurrent=True, preferred_batch_size=1)
        self.precision = "fp32"

    def run(self, feeds):
        n = len(next(iter(feeds.values())))
        return {o.name: np.zeros((n, *(d or 1 for d in o.sample_shape)), dtype=o.dtype) for o in self.outputs}


class Echo3Backend(Backend):
    name = "echo3"
    device_kinds = ("cpu",)

    def version(self):
        return "9.9"

    def probe(self):
        return [Device("cpu")]

    def load(self, model, device, options, precision, context=None):
        return Echo3Session(model)
'''

BROKEN_IMPORT_ERROR = "thirdparty_broken needs libfrobnicate.so.3"


class Result(CliResult):

    def json(self) -> object:
        return json.loads(self.stdout)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A folder that looks like site-packages with the distribution thirdparty-plugins 1.2.3."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "thirdparty_good.py").write_text(GOOD_MODULE, encoding="utf-8")
    (site / "thirdparty_broken.py").write_text(f"raise ImportError({BROKEN_IMPORT_ERROR!r})\n", encoding="utf-8")
    dist = site / "thirdparty_plugins-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-plugins\nVersion: 1.2.3\n", encoding="utf-8")
    (dist / "entry_points.txt").write_text(
        "[mlpi.backends]\necho3 = thirdparty_good:Echo3Backend\nbroken = thirdparty_broken:Backend\n", encoding="utf-8"
    )
    return site


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """The subprocess's cwd: empty, so no ./plugins.toml unless a test writes one."""
    work = tmp_path / "work"
    work.mkdir()
    return work


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return argmax_model(tmp_path / "tiny.onnx")


@pytest.fixture
def cli(tmp_path: Path, work: Path):
    """``cli(*args, site=None, env=None, cwd=None)`` runs ``python -m mlpi ARGS``."""
    home = tmp_path / "home"
    home.mkdir()

    def run(*args: str, site: Path | None = None, env: dict[str, str] | None = None, cwd: Path | None = None) -> Result:
        full = {k: v for k, v in os.environ.items() if k not in ("MLPI_PLUGINS", "PYTHONPATH")}
        full.update(XDG_CACHE_HOME=str(tmp_path / "xdg-cache"), HOME=str(home), COLUMNS="200", PYTHONUNBUFFERED="1")
        paths = ([str(site)] if site else []) + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
        if paths:
            full["PYTHONPATH"] = os.pathsep.join(paths)
        full.update(env or {})
        proc = subprocess.run(
            [sys.executable, "-m", "mlpi", *args], cwd=cwd or work, env=full, capture_output=True, text=True,
            timeout=60, stdin=subprocess.DEVNULL,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    return run


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def rows_by_name(result: Result) -> dict[str, dict]:
    assert result.rc == 0, result.output
    rows = result.json()
    assert isinstance(rows, list)
    by_name = {row["name"]: row for row in rows}
    assert len(by_name) == len(rows), "a backend is listed twice"
    return by_name


def the_result(root: Path) -> dict:
    dirs = [p for p in root.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return json.loads((dirs[0] / "result.json").read_text(encoding="utf-8"))


def short_run(*extra: str, model: Path, out: Path, scenario: str = "SingleStream") -> list[str]:
    return ["run", "--model-path", str(model), "--duration", "0.5", "-s", scenario, "--output", str(out), *extra]


def assert_error(result: Result, code: int, *parts: str, notes: int = 0) -> str:
    """The error and hint lines, after exactly ``notes`` ``note:`` lines."""
    assert result.rc == code, result.output
    assert "Traceback" not in result.output, result.output
    lines = result.err_lines
    assert all(line.startswith("note: ") for line in lines[:notes]), result.stderr
    lines = lines[notes:]
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: "), result.stderr
    for part in parts:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"
    return lines[1]


# --------------------------------------------------------------------------- discovery


def test_backends_json_lists_builtin_third_party_and_broken(cli, site):
    rows = rows_by_name(cli("backends", "--json", site=site))
    assert {"null", "onnxruntime", "echo3", "broken"} <= set(rows)
    for name in ("null", "onnxruntime"):
        assert rows[name]["origin"] == "built-in"
        assert rows[name]["status"] == "ok"
    echo = rows["echo3"]
    assert "thirdparty-plugins" in echo["origin"] and "1.2.3" in echo["origin"]
    assert echo["distribution"] == "thirdparty-plugins" and echo["distribution_version"] == "1.2.3"
    assert echo["status"] == "ok" and echo["error"] is None
    assert echo["version"] == "9.9"
    assert echo["device_kinds"] == ["cpu"] and echo["devices"] == ["cpu"]
    assert echo["entry_point"] == "thirdparty_good:Echo3Backend"
    broken = rows["broken"]
    assert broken["status"] == "broken"
    assert "ImportError" in broken["error"] and BROKEN_IMPORT_ERROR in broken["error"]
    assert "thirdparty-plugins" in broken["origin"]
    assert broken["version"] is None


def test_backends_table_lists_a_broken_plugin_without_crashing(cli, site):
    result = cli("backends", site=site)
    assert result.rc == 0, result.output
    assert "Traceback" not in result.output
    for word in ("echo3", "broken", "null", "onnxruntime", "built-in", "9.9"):
        assert word in result.stdout, word


def test_third_party_plugins_are_invisible_without_their_distribution(cli, model, tmp_path):
    rows = rows_by_name(cli("backends", "--json"))
    assert "echo3" not in rows and "broken" not in rows
    assert_error(cli(*short_run("--backend", "echo3", model=model, out=tmp_path / "R")), EXIT_USAGE, "unknown backend 'echo3'")


def test_run_with_broken_backend_names_the_import_error(cli, site, model, tmp_path):
    out = tmp_path / "R"
    result = cli(*short_run("--backend", "broken", model=model, out=out), site=site)
    assert_error(result, 1, "'broken'", "failed to import", BROKEN_IMPORT_ERROR, "thirdparty-plugins 1.2.3")
    assert result.stdout.strip() == ""
    assert not out.exists()


def test_broken_plugin_does_not_stop_a_null_run(cli, site, model, tmp_path):
    out = tmp_path / "R"
    result = cli(*short_run("--backend", "null", model=model, out=out), site=site)
    assert result.rc == 0, result.output
    data = the_result(out)
    assert data["status"] == "ok"
    assert data["backend"]["name"] == "null"
    assert [t["status"] for t in data["tests"]] == ["ok"]


def test_third_party_backend_runs_end_to_end(cli, site, model, tmp_path):
    out = tmp_path / "R"
    result = cli(*short_run("--backend", "echo3", model=model, out=out), site=site)
    assert result.rc == 0, result.output
    data = the_result(out)
    assert data["status"] == "ok"
    assert data["backend"]["name"] == "echo3" and data["backend"]["version"] == "9.9"
    assert data["tests"][0]["scenario"] == "SingleStream" and data["tests"][0]["status"] == "ok"


# --------------------------------------------------------------------------- plugins.toml through the CLI


def test_disabled_backend_is_refused_and_listed_as_disabled(cli, model, tmp_path):
    cfg = write(tmp_path / "off.toml", '[disabled]\nbackends = ["null"]\n')
    out = tmp_path / "R"
    result = cli(*short_run("--backend", "null", "--plugins", str(cfg), model=model, out=out))
    hint = assert_error(result, EXIT_USAGE, "'null'", "disabled", "off.toml")
    assert "[disabled]" in hint
    assert not out.exists()

    rows = rows_by_name(cli("backends", "--json", "--plugins", str(cfg)))
    assert rows["null"]["status"] == "disabled"
    assert rows["onnxruntime"]["status"] == "ok"


def test_alias_selects_its_backend(cli, model, tmp_path):
    cfg = write(tmp_path / "alias.toml", '[aliases]\nnn = "null"\n')
    out = tmp_path / "R"
    result = cli(*short_run("--backend", "nn", "--plugins", str(cfg), model=model, out=out))
    assert result.rc == 0, result.output
    data = the_result(out)
    assert data["status"] == "ok" and data["backend"]["name"] == "null"

    rows = rows_by_name(cli("backends", "--json", "--plugins", str(cfg)))
    assert rows["null"]["aliases"] == ["nn"]
    assert rows["onnxruntime"]["aliases"] == ["ort"]  # the packaged alias survives the merge


def test_aliases_match_in_any_case_like_names(cli, model, tmp_path):
    cfg = write(tmp_path / "alias.toml", '[aliases]\nnn = "null"\n')
    out = tmp_path / "R"
    result = cli(*short_run("--backend", "NN", "--plugins", str(cfg), model=model, out=out))
    assert result.rc == 0, result.output
    assert the_result(out)["backend"]["name"] == "null"


def test_options_table_named_by_an_alias_applies_and_is_checked(cli, model, tmp_path):
    cfg = write(tmp_path / "o.toml", '[aliases]\nnn = "null"\n[options.nn]\npreferred_batch_size = 5\n')
    out = tmp_path / "R"
    result = cli(*short_run("--backend", "null", "--plugins", str(cfg), model=model, out=out, scenario="Offline"))
    # What is checked is where the options went; a 0.5 s Offline run of the null backend
    # may end INVALID (3) on a busy machine, which says nothing about them.
    assert result.rc in (0, EXIT_INVALID), result.output
    assert the_result(out)["tests"][0]["batch_size"] == 5

    bad = write(tmp_path / "bad.toml", '[aliases]\nnn = "null"\n[options.nn]\npreferred_batch_size = "lots"\n')
    result = cli(*short_run("--backend", "null", "--plugins", str(bad), model=model, out=tmp_path / "R2"))
    assert_error(result, 2, "preferred_batch_size", "lots")


def test_options_table_for_an_unknown_backend_is_an_error(cli, model, tmp_path):
    cfg = write(tmp_path / "o.toml", "[options.onnxrutime]\nbogus = 1\n")
    result = cli(*short_run("--backend", "null", "--plugins", str(cfg), model=model, out=tmp_path / "R"))
    error = assert_error(result, 2, "options.onnxrutime", "unknown backend")
    assert "did you mean onnxruntime?" in result.stderr, error


def test_unknown_option_hint_does_not_repeat_the_list(cli, model, tmp_path):
    cfg = write(tmp_path / "o.toml", "[options.null]\nnope = 1\n")
    result = cli(*short_run("--backend", "null", "--plugins", str(cfg), model=model, out=tmp_path / "R"))
    assert_error(result, 2, "nope")
    hint = [line for line in result.stderr.splitlines() if line.startswith("hint:")][0]
    assert hint.count("preferred_batch_size") == 1, hint


def test_default_backend_for_device_kind(cli, site, model, tmp_path):
    cfg = write(tmp_path / "default.toml", '[default_backend]\ncpu = "null"\n')
    out = tmp_path / "R"
    # with the third-party site on the path, a fallback "first cpu backend by name" would be
    # echo3, and the packaged default is onnxruntime: only the user's table gives null
    result = cli(*short_run("--plugins", str(cfg), model=model, out=out), site=site)
    assert result.rc == 0, result.output
    assert the_result(out)["backend"]["name"] == "null"


def test_default_backend_names_an_unknown_backend(cli, model, tmp_path):
    cfg = write(tmp_path / "default.toml", '[default_backend]\ncpu = "nosuch"\n')
    assert_error(cli(*short_run("--plugins", str(cfg), model=model, out=tmp_path / "R")), EXIT_USAGE,
                 "unknown backend 'nosuch'")


def test_backend_options_from_plugins_toml_reach_the_run(cli, model, tmp_path):
    cfg = write(tmp_path / "opts.toml", "[options.null]\npreferred_batch_size = 7\n")
    out = tmp_path / "R"
    result = cli(*short_run("--backend", "null", "--plugins", str(cfg), model=model, out=out, scenario="Offline"))
    # What is checked is where the options went; a 0.5 s Offline run of the null backend
    # may end INVALID (3) on a busy machine, which says nothing about them.
    assert result.rc in (0, EXIT_INVALID), result.output
    data = the_result(out)
    assert data["backend"]["options"] == {"preferred_batch_size": 7}
    (test,) = data["tests"]
    assert test["scenario"] == "Offline" and test["status"] == "ok"
    assert test["batch_size"] == 7  # the default would be 64


def test_unknown_option_in_plugins_toml_lists_valid_keys(cli, model, tmp_path):
    cfg = write(tmp_path / "nope.toml", "[options.null]\nnope = 1\n")
    out = tmp_path / "R"
    hint = assert_error(cli(*short_run("--backend", "null", "--plugins", str(cfg), model=model, out=out)),
                        EXIT_USAGE, "unknown option 'nope'", "'null'", "nope.toml")
    assert "preferred_batch_size" in hint
    assert not out.exists()


def test_bad_option_value_in_plugins_toml(cli, model, tmp_path):
    cfg = write(tmp_path / "bad.toml", '[options.null]\npreferred_batch_size = "many"\n')
    assert_error(cli(*short_run("--backend", "null", "--plugins", str(cfg), model=model, out=tmp_path / "R")),
                 EXIT_USAGE, "preferred_batch_size", "'many'", "bad.toml")


def test_mlpi_plugins_env_var_is_honoured(cli, model, tmp_path):
    cfg = write(tmp_path / "env.toml", '[disabled]\nbackends = ["null"]\n')
    env = {"MLPI_PLUGINS": str(cfg)}
    assert rows_by_name(cli("backends", "--json", env=env))["null"]["status"] == "disabled"
    assert_error(cli(*short_run("--backend", "null", model=model, out=tmp_path / "R"), env=env), EXIT_USAGE,
                 "disabled", "env.toml", notes=1)


def test_plugins_toml_in_cwd_is_honoured(cli, work, model, tmp_path):
    write(work / "plugins.toml", '[disabled]\nbackends = ["null"]\n')
    assert rows_by_name(cli("backends", "--json"))["null"]["status"] == "disabled"
    assert_error(cli(*short_run("--backend", "null", model=model, out=tmp_path / "R")), EXIT_USAGE, "disabled", notes=1)
    # another directory does not see it
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert rows_by_name(cli("backends", "--json", cwd=elsewhere))["null"]["status"] == "ok"


def test_plugins_option_wins_over_env_var(cli, tmp_path):
    env_cfg = write(tmp_path / "env.toml", '[disabled]\nbackends = ["null"]\n')
    cli_cfg = write(tmp_path / "cli.toml", '[aliases]\nnn = "null"\n')
    rows = rows_by_name(cli("backends", "--json", "--plugins", str(cli_cfg), env={"MLPI_PLUGINS": str(env_cfg)}))
    assert rows["null"]["status"] == "ok"  # the env file is not read at all
    assert rows["null"]["aliases"] == ["nn"]


def test_env_var_wins_over_cwd_file(cli, work, tmp_path):
    write(work / "plugins.toml", '[disabled]\nbackends = ["null"]\n')
    env_cfg = write(tmp_path / "env.toml", '[aliases]\nnn = "null"\n')
    rows = rows_by_name(cli("backends", "--json", env={"MLPI_PLUGINS": str(env_cfg)}))
    assert rows["null"]["status"] == "ok"
    assert rows["null"]["aliases"] == ["nn"]


def test_third_party_plugins_can_be_disabled(cli, site, tmp_path):
    cfg = write(tmp_path / "p.toml", '[disabled]\nbackends = ["echo3", "broken"]\n')
    rows = rows_by_name(cli("backends", "--json", "--plugins", str(cfg), site=site))
    assert rows["echo3"]["status"] == "disabled"
    assert rows["broken"]["status"] == "disabled"
    assert rows["null"]["status"] == "ok"


# --------------------------------------------------------------------------- name clashes between distributions

CLASH_MODULE = GOOD_MODULE.replace("Echo3", "{cls}").replace('"echo3"', '"{name}"').replace('"9.9"', '"{version}"')

CLASH_DATASET = '''
from mlpi.datasets.synthetic import Synthetic


class OtherSynthetic(Synthetic):
    description = "a third-party synthetic"
'''


def fake_distribution(site: Path, dist: str, version: str, backends: dict[str, str], extra: str = "") -> Path:
    """Install (as a folder for PYTHONPATH) distribution ``dist`` with one fake backend class
    per entry-point name in ``backends`` (name -> version it reports)."""
    site.mkdir(parents=True, exist_ok=True)
    module = dist.replace("-", "_") + "_mod"
    code, lines = "", ["[mlpi.backends]"]
    for i, (name, reports) in enumerate(backends.items()):
        cls = f"Fake{i}"
        code += CLASH_MODULE.replace("{cls}", cls).replace("{name}", name).replace("{version}", reports)
        lines.append(f"{name} = {module}:{cls}Backend")
    (site / f"{module}.py").write_text(code, encoding="utf-8")
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8")
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return site


def installed(tmp_path: Path, site: Path, order: str) -> dict[str, str]:
    """The environment that puts ``site`` before mlpi's own site-packages ("first") or after
    it ("last", through a sitecustomize that appends it), so the run's children see it too."""
    if order == "first":
        return {"PYTHONPATH": python_path(site)}
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(f"import sys\nsys.path.append({str(site)!r})\n", encoding="utf-8")
    return {"PYTHONPATH": python_path(hook)}


def python_path(*folders: Path) -> str:
    """``folders`` first, then the caller's own PYTHONPATH (as the ``cli`` fixture keeps it)."""
    return os.pathsep.join([*map(str, folders), *([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])])


def entry_point_order(tmp_path: Path, env: dict[str, str], name: str) -> list[str]:
    """The distributions providing backend ``name`` in the order importlib.metadata finds them."""
    code = ("from importlib.metadata import entry_points\n"
            f"print(' '.join(ep.dist.name for ep in entry_points(group='mlpi.backends', name={name!r})))")
    full = {k: v for k, v in os.environ.items() if k not in ("MLPI_PLUGINS", "PYTHONPATH")}
    full.update(env)
    proc = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=60, check=True,
                          cwd=tmp_path)
    return proc.stdout.split()


@pytest.fixture
def ort_clash(tmp_path: Path) -> Path:
    """A third-party distribution ``clash-pkg 1.0`` whose backend is also named onnxruntime."""
    return fake_distribution(tmp_path / "clash-site", "clash-pkg", "1.0", {"onnxruntime": "6.6.6"})


@pytest.mark.parametrize("order", ["first", "last"])
def test_builtin_keeps_its_name_whatever_the_install_order(cli, ort_clash, tmp_path, order):
    env = installed(tmp_path, ort_clash, order)
    found = entry_point_order(tmp_path, env, "onnxruntime")
    assert sorted(found) == ["clash-pkg", "mlpi"]
    assert found[0] == ("clash-pkg" if order == "first" else "mlpi")  # the simulation did change the order
    rows = rows_by_name(cli("backends", "--json", env=env))
    builtin, other = rows["onnxruntime"], rows["clash-pkg:onnxruntime"]
    assert builtin["origin"] == "built-in" and builtin["entry_point"] == "mlpi.backends.ort:OnnxRuntimeBackend"
    assert builtin["clash"] == ["clash-pkg:onnxruntime"]
    assert other["distribution"] == "clash-pkg" and other["distribution_version"] == "1.0"
    assert other["version"] == "6.6.6" and other["status"] == "ok"
    assert other["clash"] == ["mlpi:onnxruntime"]
    assert "--backend clash-pkg:onnxruntime" in other["hint"]


@pytest.mark.parametrize("order", ["first", "last"])
def test_bare_name_runs_the_builtin_and_says_so(cli, ort_clash, model, tmp_path, order):
    out = tmp_path / "R"
    result = cli(*short_run("--backend", "onnxruntime", model=model, out=out), env=installed(tmp_path, ort_clash, order))
    assert result.rc == 0, result.output
    warnings = [line for line in result.err_lines if line.startswith("warning:")]
    assert len(warnings) == 1, result.stderr
    for part in ("'onnxruntime'", "mlpi", "(built-in)", "clash-pkg 1.0", "--backend clash-pkg:onnxruntime", "[disabled]"):
        assert part in warnings[0], (part, warnings[0])
    data = the_result(out)
    assert data["backend"]["name"] == "onnxruntime" and data["backend"]["version"] != "6.6.6"
    assert data["backend"]["plugin"]["distribution"] == "mlpi" and data["backend"]["plugin"]["builtin"] is True
    assert data["tests"][0]["status"] == "ok"


@pytest.mark.parametrize("order", ["first", "last"])
def test_qualified_name_runs_the_third_party_one(cli, ort_clash, model, tmp_path, order):
    out = tmp_path / "R"
    env = installed(tmp_path, ort_clash, order)
    result = cli(*short_run("--backend", "clash-pkg:onnxruntime", model=model, out=out), env=env)
    assert result.rc == 0, result.output
    assert "warning:" not in result.stderr
    data = the_result(out)
    # the plan, the test's child process and result.json all name the third-party one
    assert data["backend"]["name"] == "clash-pkg:onnxruntime" and data["backend"]["version"] == "6.6.6"
    plugin = data["backend"]["plugin"]
    assert (plugin["distribution"], plugin["distribution_version"], plugin["builtin"]) == ("clash-pkg", "1.0", False)
    assert data["tests"][0]["status"] == "ok"


def test_disabling_the_other_one_silences_the_warning(cli, ort_clash, model, tmp_path):
    cfg = write(tmp_path / "p.toml", '[disabled]\nbackends = ["clash_pkg:onnxruntime"]\n')  # any spelling of the dist
    env = installed(tmp_path, ort_clash, "first")
    result = cli(*short_run("--backend", "onnxruntime", "--plugins", str(cfg), model=model, out=tmp_path / "R"), env=env)
    assert result.rc == 0, result.output
    assert not any(line.startswith("warning:") for line in result.err_lines), result.stderr
    rows = rows_by_name(cli("backends", "--json", "--plugins", str(cfg), env=env))
    assert rows["clash-pkg:onnxruntime"]["status"] == "disabled" and rows["onnxruntime"]["status"] == "ok"


@pytest.mark.parametrize("order", ["ab", "ba"])
def test_two_third_party_backends_with_one_name_are_refused_by_that_name(cli, model, tmp_path, order):
    alpha = fake_distribution(tmp_path / "a", "alpha-plugins", "1.0", {"echo9": "1.0"})
    beta = fake_distribution(tmp_path / "b", "beta-plugins", "2.0", {"echo9": "2.0"})
    sites = [alpha, beta] if order == "ab" else [beta, alpha]
    env = {"PYTHONPATH": python_path(*sites)}
    assert entry_point_order(tmp_path, env, "echo9") == [
        "alpha-plugins" if order == "ab" else "beta-plugins", "beta-plugins" if order == "ab" else "alpha-plugins"]
    rows = rows_by_name(cli("backends", "--json", env=env))
    assert "echo9" not in rows
    assert rows["alpha-plugins:echo9"]["version"] == "1.0" and rows["beta-plugins:echo9"]["version"] == "2.0"
    assert rows["alpha-plugins:echo9"]["clash"] == ["beta-plugins:echo9"]

    out = tmp_path / "R"
    hint = assert_error(cli(*short_run("--backend", "echo9", model=model, out=out), env=env), EXIT_USAGE,
                        "'echo9'", "alpha-plugins 1.0", "beta-plugins 2.0")
    assert "--backend alpha-plugins:echo9" in hint and "--backend beta-plugins:echo9" in hint
    assert not out.exists()

    result = cli(*short_run("--backend", "beta-plugins:echo9", model=model, out=out), env=env)
    assert result.rc == 0, result.output
    backend = the_result(out)["backend"]
    assert {k: backend[k] for k in ("name", "version", "options")} == {"name": "beta-plugins:echo9", "version": "2.0", "options": {}}
    assert (backend["plugin"]["distribution"], backend["plugin"]["builtin"]) == ("beta-plugins", False)


def test_disabling_all_but_one_gives_it_the_name(cli, model, tmp_path):
    alpha = fake_distribution(tmp_path / "a", "alpha-plugins", "1.0", {"echo9": "1.0"})
    beta = fake_distribution(tmp_path / "b", "beta-plugins", "2.0", {"echo9": "2.0"})
    env = {"PYTHONPATH": python_path(alpha, beta)}
    cfg = write(tmp_path / "p.toml", '[disabled]\nbackends = ["alpha-plugins:echo9"]\n')
    out = tmp_path / "R"
    result = cli(*short_run("--backend", "echo9", "--plugins", str(cfg), model=model, out=out), env=env)
    assert result.rc == 0, result.output
    assert "warning:" not in result.stderr
    assert the_result(out)["backend"]["version"] == "2.0"


def test_dataset_named_like_a_builtin_is_listed_under_its_distribution(cli, tmp_path):
    site = fake_distribution(tmp_path / "d", "clash-pkg", "1.0", {}, extra="[mlpi.datasets]\nsynthetic = clash_data:OtherSynthetic\n")
    (site / "clash_data.py").write_text(CLASH_DATASET, encoding="utf-8")
    for order in ("first", "last"):
        rows = rows_by_name(cli("datasets", "--json", env=installed(tmp_path, site, order)))
        assert rows["synthetic"]["origin"] == "built-in", order
        assert rows["clash-pkg:synthetic"]["description"] == "a third-party synthetic", order
        assert rows["synthetic"]["clash"] == ["clash-pkg:synthetic"]


def test_result_provenance_names_the_distribution(tmp_path, ort_clash):
    code = textwrap.dedent("""
        import json
        from mlpi.core.plugins.config import PluginsConfig
        from mlpi.core.plugins.registry import Registry
        registry = Registry(PluginsConfig.load(None))
        print(json.dumps([registry.provenance("backends", n) for n in ("onnxruntime", "clash-pkg:onnxruntime")]))
    """)
    full = {k: v for k, v in os.environ.items() if k not in ("MLPI_PLUGINS", "PYTHONPATH")}
    full.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), PYTHONPATH=python_path(ort_clash))
    proc = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    builtin, other = json.loads(proc.stdout)
    assert builtin["distribution"] == "mlpi" and builtin["builtin"] is True and builtin["name"] == "onnxruntime"
    assert other == {"name": "clash-pkg:onnxruntime", "entry_point": "clash_pkg_mod:Fake0Backend",
                     "distribution": "clash-pkg", "distribution_version": "1.0", "builtin": False}


# --------------------------------------------------------------------------- a plugins.toml nobody named is announced


def test_cwd_plugins_toml_is_announced_once(cli, work, model, tmp_path):
    # the case: an alias in a stray ./plugins.toml turns the default run into a null run
    write(work / "plugins.toml", '[aliases]\nonnxruntime = "null"\n')
    out = tmp_path / "R"
    result = cli(*short_run(model=model, out=out))
    assert result.rc == 0, result.output
    notes = [line for line in result.err_lines if line.startswith("note:")]
    assert notes == [f"note: applying plugins file {work / 'plugins.toml'} (from the working directory) over the packaged plugins.toml"]
    assert the_result(out)["backend"]["name"] == "null"
    # listings announce it too (on stderr: --json stays parseable)
    listing = cli("backends", "--json")
    assert "note: applying plugins file" in listing.stderr
    rows_by_name(listing)


def test_env_plugins_file_is_announced_and_an_explicit_one_is_not(cli, model, tmp_path):
    cfg = write(tmp_path / "p.toml", '[aliases]\nnn = "null"\n')
    result = cli(*short_run("--backend", "nn", model=model, out=tmp_path / "R1"), env={"MLPI_PLUGINS": str(cfg)})
    assert result.rc == 0, result.output
    assert f"note: applying plugins file {cfg} (from MLPI_PLUGINS)" in result.stderr
    result = cli(*short_run("--backend", "nn", "--plugins", str(cfg), model=model, out=tmp_path / "R2"))
    assert result.rc == 0, result.output
    assert "note:" not in result.stderr


def test_config_records_the_user_file_and_what_chose_it(clean_env, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(config_module, "_announced", set())
    assert PluginsConfig.load().user_file is None
    local = write(Path.cwd() / "plugins.toml", '[aliases]\nc = "null"\n')
    config = PluginsConfig.load()
    assert (config.user_file, config.user_file_from) == (str(local.resolve()), "./plugins.toml")
    PluginsConfig.load()
    err = capsys.readouterr().err
    assert err.count("note: applying plugins file") == 1, err  # once per process
    explicit = write(tmp_path / "x.toml", "")
    config = PluginsConfig.load(explicit)
    assert (config.user_file, config.user_file_from) == (str(explicit.resolve()), "--plugins")
    assert capsys.readouterr().err == ""


def test_names_do_not_depend_on_the_order_entry_points_are_found():
    from mlpi.core.plugins.registry import PluginInfo, _keyed

    def found() -> list[PluginInfo]:
        return [
            PluginInfo("backends", "onnxruntime", "zeta_mod:B", distribution="zeta", distribution_version="1"),
            PluginInfo("backends", "onnxruntime", "mlpi.backends.ort:OrtBackend", distribution="mlpi"),
            PluginInfo("backends", "echo", "b_mod:B", distribution="b-pkg"),
            PluginInfo("backends", "echo", "a_mod:B", distribution="A_Pkg"),
            PluginInfo("backends", "solo", "s:B", distribution="s"),
        ]

    outcomes = set()
    for order in itertools.permutations(range(5)):
        infos = found()
        keyed, ambiguous = _keyed([infos[i] for i in order])
        outcomes.add((tuple(sorted((k, v.target) for k, v in keyed.items())), tuple(sorted(ambiguous))))
    assert outcomes == {(
        (("A_Pkg:echo", "a_mod:B"), ("b-pkg:echo", "b_mod:B"), ("onnxruntime", "mlpi.backends.ort:OrtBackend"),
         ("solo", "s:B"), ("zeta:onnxruntime", "zeta_mod:B")),
        ("echo",),
    )}


def test_disabled_accepts_qualified_names_in_any_spelling(clean_env, tmp_path):
    config = PluginsConfig.load(write(tmp_path / "p.toml", '[disabled]\nbackends = ["Clash_Pkg:onnxruntime"]\n'))
    assert config.is_disabled("backends", "onnxruntime", "clash-pkg")
    assert not config.is_disabled("backends", "onnxruntime", "mlpi")
    assert not config.is_disabled("backends", "onnxruntime")


# --------------------------------------------------------------------------- PluginsConfig.load in-process

PACKAGED = """
[disabled]
backends = ["onnxruntime"]
models = ["m1"]
datasets = []

[aliases]
ort = "onnxruntime"

[default_backend]
cpu = "onnxruntime"
cuda = "onnxruntime"

[options.onnxruntime]
intra_op_threads = 2
inter_op_threads = 1
"""


class _FakeResource:
    def __init__(self, text: str) -> None:
        self.text = text

    def joinpath(self, name: str) -> _FakeResource:
        assert name == "plugins.toml"
        return self

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.text


@pytest.fixture
def packaged(monkeypatch, tmp_path):
    """Replace the packaged plugins.toml (only as config.py sees it) with PACKAGED."""

    class FakeResources:
        @staticmethod
        def files(package: str) -> _FakeResource:
            assert package == "mlpi"
            return _FakeResource(PACKAGED)

    monkeypatch.setattr(config_module, "resources", FakeResources)
    monkeypatch.delenv("MLPI_PLUGINS", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv("MLPI_PLUGINS", raising=False)
    empty = tmp_path / "empty-cwd"
    empty.mkdir()
    monkeypatch.chdir(empty)


def test_config_user_list_replaces_packaged_list(packaged, tmp_path):
    user = write(tmp_path / "user.toml", """
        [disabled]
        backends = ["null"]

        [aliases]
        nn = "null"

        [default_backend]
        cpu = "null"

        [options.onnxruntime]
        intra_op_threads = 4
    """)
    config = PluginsConfig.load(user)
    assert config.disabled["backends"] == ["null"]  # replaced, not ["onnxruntime", "null"]
    assert not config.is_disabled("backends", "onnxruntime")
    assert config.is_disabled("backends", "null")
    assert config.disabled["models"] == ["m1"]  # a list the user did not give is kept
    assert config.aliases == {"ort": "onnxruntime", "nn": "null"}
    assert config.default_backend == {"cpu": "null", "cuda": "onnxruntime"}
    assert config.options["onnxruntime"] == {"intra_op_threads": 4, "inter_op_threads": 1}
    assert config.option_sources["onnxruntime"] == str(user)
    assert config.sources == ["packaged plugins.toml", str(user)]


def test_config_empty_user_list_reenables(packaged, tmp_path):
    user = write(tmp_path / "user.toml", "[disabled]\nbackends = []\n")
    config = PluginsConfig.load(user)
    assert config.disabled["backends"] == []
    assert not config.is_disabled("backends", "onnxruntime")


def test_config_without_user_file_is_the_packaged_one(packaged):
    config = PluginsConfig.load()
    assert config.sources == ["packaged plugins.toml"]
    assert config.disabled["backends"] == ["onnxruntime"]
    assert config.options == {"onnxruntime": {"intra_op_threads": 2, "inter_op_threads": 1}}


def test_config_real_packaged_file(clean_env):
    config = PluginsConfig.load()
    assert config.sources == ["packaged plugins.toml"]
    assert config.aliases == {"ort": "onnxruntime"}
    assert config.default_backend["cpu"] == "onnxruntime"
    assert all(names == [] for names in config.disabled.values())


def test_config_user_file_precedence(clean_env, monkeypatch, tmp_path):
    explicit = write(tmp_path / "explicit.toml", '[aliases]\na = "null"\n')
    from_env = write(tmp_path / "env.toml", '[aliases]\nb = "null"\n')
    write(Path.cwd() / "plugins.toml", '[aliases]\nc = "null"\n')
    assert "c" in PluginsConfig.load().aliases
    monkeypatch.setenv("MLPI_PLUGINS", str(from_env))
    loaded = PluginsConfig.load()
    assert "b" in loaded.aliases and "c" not in loaded.aliases
    loaded = PluginsConfig.load(explicit)
    assert "a" in loaded.aliases and "b" not in loaded.aliases and "c" not in loaded.aliases
    assert loaded.sources[-1] == str(explicit)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("frobnicate = 1\n", ("unknown key 'frobnicate'",)),
        ("[disabled]\nbackend = ['null']\n", ("disabled.backend",)),
        ("[disabled]\nbackends = 'null'\n", ("disabled.backends", "not a list")),
        ("[disabled]\nbackends = [1]\n", ("disabled.backends", "not a list")),
        ("[aliases]\nnn = 3\n", ("aliases.nn", "must be a string")),
        ("[default_backend]\ncpu = ['null']\n", ("default_backend.cpu", "must be a string")),
        ("options = 3\n", ("'options'", "must be a table")),
        ("[options]\nnull = 3\n", ("options.null", "not a table")),
        ("[aliases\n", ("not valid TOML",)),
    ],
    ids=["top-key", "group", "list-type", "list-items", "alias-type", "default-type", "options-type", "options-table", "toml"],
)
def test_config_errors_are_usage_errors(clean_env, tmp_path, text, words):
    user = write(tmp_path / "bad.toml", text)
    with pytest.raises(UsageError) as info:
        PluginsConfig.load(user)
    assert info.value.exit_code == EXIT_USAGE
    assert info.value.hint
    for word in words:
        assert word in info.value.message, info.value.message
    assert "bad.toml" in info.value.message


def test_config_missing_user_file(clean_env, tmp_path):
    with pytest.raises(UsageError) as info:
        PluginsConfig.load(tmp_path / "nowhere.toml")
    assert "nowhere.toml" in info.value.message


# --------------------------------------------------------------------------- build_options in-process


@dataclass
class Opts:
    threads: int = 0
    ratio: float = 1.0
    fast: bool = False
    level: Literal["disable", "basic", "all"] = "all"
    label: str = "x"
    limit: Optional[int] = 5  # noqa: UP007 - the Optional spelling is what users write too
    cap: int | None = None
    tags: list = field(default_factory=list)


@dataclass
class Empty:
    pass


def test_build_options_converts_types():
    opts = build_options(
        Opts,
        [("--option", {"threads": "2", "ratio": "0.25", "fast": "true", "level": "BaSiC", "label": 12, "limit": "none",
                       "cap": "3"})],
        "demo",
    )
    assert opts.threads == 2 and type(opts.threads) is int
    assert opts.ratio == 0.25 and type(opts.ratio) is float
    assert opts.fast is True
    assert opts.level == "basic"
    assert opts.label == "12"
    assert opts.limit is None
    assert opts.cap == 3 and type(opts.cap) is int


@pytest.mark.parametrize(("raw", "expected"), [("true", True), ("YES", True), ("on", True), ("1", True), (True, True),
                                                ("false", False), ("No", False), ("off", False), ("0", False), (False, False)])
def test_build_options_bools(raw, expected):
    assert build_options(Opts, [("t", {"fast": raw})], "demo").fast is expected


def test_build_options_toml_values_and_defaults():
    opts = build_options(Opts, [("plugins.toml", {"threads": 3, "ratio": 2})], "demo")
    assert opts.threads == 3 and opts.ratio == 2.0 and type(opts.ratio) is float
    assert (opts.fast, opts.level, opts.label, opts.limit, opts.cap) == (False, "all", "x", 5, None)


def test_build_options_later_layer_wins_key_by_key():
    opts = build_options(
        Opts,
        [("plugins.toml", {"threads": 4, "level": "disable"}), ("--option", {"threads": "8"})],
        "demo",
    )
    assert opts.threads == 8
    assert opts.level == "disable"


def test_build_options_dash_spelling():
    from mlpi.backends.ort import OrtOptions

    opts = build_options(OrtOptions, [("--option", {"intra-op-threads": "2", "graph-optimization-level": "BASIC"})],
                         "onnxruntime")
    assert opts.intra_op_threads == 2
    assert opts.graph_optimization_level == "basic"


def test_build_options_unknown_key_lists_valid_names():
    with pytest.raises(UsageError) as info:
        build_options(Opts, [("plugins.toml", {"threds": "2"})], "demo")
    err = info.value
    assert err.exit_code == EXIT_USAGE
    assert "threds" in err.message and "demo" in err.message and "plugins.toml" in err.message
    assert "did you mean threads" in err.hint
    for name in ("threads", "ratio", "fast", "level", "label", "limit", "cap"):
        assert name in err.hint


def test_build_options_no_options_backend():
    assert build_options(Empty, [], "plain") == Empty()
    with pytest.raises(UsageError) as info:
        build_options(Empty, [("--option", {"x": "1"})], "plain")
    assert "no options" in info.value.hint


@pytest.mark.parametrize(
    ("key", "raw", "words"),
    [
        ("threads", "two", ("'two'", "not a number")),
        ("threads", "2.5", ("'2.5'",)),
        ("threads", 2.5, ("2.5", "whole number")),
        ("threads", True, ("True",)),
        ("ratio", "fast", ("'fast'", "not a number")),
        ("fast", "maybe", ("'maybe'", "not a boolean")),
        ("level", "max", ("'max'",)),
        ("cap", "lots", ("'lots'",)),
    ],
)
def test_build_options_bad_values(key, raw, words):
    with pytest.raises(UsageError) as info:
        build_options(Opts, [("--option", {key: raw})], "demo")
    assert key in info.value.message
    for word in words:
        assert word in info.value.message, info.value.message
    assert info.value.hint


def test_build_options_literal_hint_lists_choices():
    with pytest.raises(UsageError) as info:
        build_options(Opts, [("--option", {"level": "max"})], "demo")
    assert info.value.hint == "choose one of: disable, basic, all"


@pytest.mark.parametrize(
    ("key", "raw"),
    [("ratio", float("inf")), ("ratio", float("-inf")), ("ratio", float("nan")), ("ratio", "inf"), ("ratio", "nan"),
     ("ratio", "1e400"), ("threads", float("inf")), ("threads", "1e400"), ("cap", float("nan"))],
)
def test_build_options_refuses_numbers_that_are_not_finite(key, raw):
    # TOML reads 1e400 as inf: it used to become an option value (or, for an int, an
    # OverflowError ending in "internal error")
    with pytest.raises(UsageError) as info:
        build_options(Opts, [("plugins.toml", {key: raw})], "demo")
    assert key in info.value.message and ("not a finite number" in info.value.message or "not a number" in info.value.message)


@dataclass
class Bounded:
    threads: int = field(default=0, metadata={"threads": True})
    workers: int = field(default=1, metadata={"threads": True, "min": 1})
    level: int = field(default=3, metadata={"min": 0, "max": 5})
    delay_ms: float = field(default=1.0, metadata={"min": 0})
    cap: int | None = field(default=None, metadata={"min": 1})


@pytest.mark.parametrize(
    ("key", "raw", "words"),
    [
        ("threads", "-4", ("is -4; it takes 0 to",)),
        ("threads", "100000", ("is 100000; it takes 0 to", "CPUs")),
        ("workers", "0", ("is 0; it takes 1 to",)),
        ("level", "6", ("is 6; it takes 0 to 5",)),
        ("level", -1, ("is -1; it takes 0 to 5",)),
        ("delay_ms", "-0.5", ("is -0.5; it takes 0 or more",)),
        ("cap", "0", ("is 0; it takes 1 or more",)),
    ],
)
def test_field_metadata_bounds_numbers_for_every_backend(key, raw, words):
    with pytest.raises(UsageError) as info:
        build_options(Bounded, [("--option", {key: raw})], "demo")
    for word in words:
        assert word in info.value.message, info.value.message
    assert key in info.value.hint


def test_bounded_fields_accept_their_range_and_say_it():
    from mlpi.core.plugins.options import option_help, thread_limit

    limit = thread_limit()
    opts = build_options(Bounded, [("--option", {"threads": str(limit), "workers": "1", "level": "0", "delay_ms": "0",
                                                 "cap": "none"})], "demo")
    assert (opts.threads, opts.workers, opts.level, opts.delay_ms, opts.cap) == (limit, 1, 0, 0.0, None)
    assert limit >= 64
    helps = option_help(Bounded)
    assert helps["threads"].startswith(f"int (default 0, 0 to {limit})")
    assert helps["level"].startswith("int (default 3, 0 to 5)")


def _thread_fields():
    import dataclasses
    import importlib

    classes = {
        "onnxruntime": ("mlpi.backends.ort", "OrtOptions", ("intra_op_threads", "inter_op_threads")),
        "openvino": ("mlpi.backends.ov", "OvOptions", ("num_streams", "num_threads", "num_requests")),
        "pytorch": ("mlpi.backends.torch_backend", "TorchOptions", ("threads",)),
        "deepsparse": ("mlpi.backends.deepsparse_backend", "DeepSparseOptions", ("num_streams", "num_cores")),
        "qaic": ("mlpi.backends.qaic", "QaicOptions", ("concurrency", "queue_depth", "threads")),
    }
    for backend, (module, name, keys) in classes.items():
        cls = getattr(importlib.import_module(module), name)  # the modules import their runtimes lazily
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key in keys:
            yield pytest.param(backend, cls, key, fields[key], id=f"{backend}-{key}")


@pytest.mark.parametrize(("backend", "cls", "key", "spec"), list(_thread_fields()))
def test_every_thread_count_option_is_bounded_by_the_core(backend, cls, key, spec):
    # -o intra_op_threads=-4 or =100000 used to start the run (then hang or be "interrupted")
    assert spec.metadata.get("threads") is True
    for raw in ("-4", "100000"):
        with pytest.raises(UsageError) as info:
            build_options(cls, [("--option", {key: raw})], backend)
        assert f"is {raw}; it takes" in info.value.message


def test_an_alias_loop_is_one_error_that_shows_it(tmp_path):
    from mlpi.core.plugins.registry import Registry

    config = PluginsConfig.load(write(tmp_path / "a.toml", '[aliases]\na = "b"\nb = "a"\nc = "c"\nd = "e"\ne = "null"\n'))
    registry = Registry(config)
    for name, loop in (("a", "a -> b -> a"), ("b", "b -> a -> b"), ("c", "c -> c"), ("B", "B -> a -> b")):
        with pytest.raises(UsageError) as info:
            registry.resolve("backends", name)
        assert loop in info.value.message and "loops" in info.value.message, info.value.message
        assert "did you mean" not in (info.value.hint or "")
    assert registry.resolve("backends", "d").name == "null"  # an alias of an alias reaches its backend
    assert registry.resolve("backends", "ort").name == "onnxruntime"


def test_an_unknown_backend_never_suggests_itself(tmp_path):
    from mlpi.core.plugins.registry import Registry

    config = PluginsConfig.load(write(tmp_path / "a.toml", '[aliases]\nf = "nosuch"\nnull = "null"\n'))
    registry = Registry(config)
    with pytest.raises(UsageError) as info:
        registry.resolve("backends", "f")
    assert info.value.message == "unknown backend 'nosuch' (alias 'f' in [aliases] stands for it)"
    assert "did you mean f" not in info.value.hint and "nosuch" not in info.value.hint
    assert info.value.hint.count("null") == 1
    assert registry.resolve("backends", "null").name == "null"  # an alias naming its own backend is no loop
