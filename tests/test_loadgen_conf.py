"""``--user-conf`` and ``--mlperf-conf``: read as LoadGen reads them, merged into the one
user.conf a test gives LoadGen, the settings that ran recorded, departures from the rules named.

LoadGen itself is the oracle for the merge: ``TestSettings.FromConfig(path, model, scenario, 2)``
reads one file alone (no built-in mlperf.conf, not counted as the test's conf file), so the
tests read mlpi's merged file back through it.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import one_error, only_run_dir, run_cli

from mlpi.core.contract.errors import UsageError
from mlpi.core.contract.rounds import ROUND_SEEDS, SEED_NAMES, round_seeds
from mlpi.core.engine.loadgen_conf import (
    ConfFile,
    check_applies,
    departures,
    merged,
    overridden,
    parse,
    resolve,
    seeds,
)
from mlpi.testing import tiny_models

lg = pytest.importorskip("mlperf_loadgen")
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "mlcommons-inference"
#: mlpi's own lines for a test, as child.write_settings writes them (exact keys).
OWN = "# written by mlpi\nm.Offline.target_qps = 123.5\nm.Offline.min_duration = 10000\nm.Offline.min_query_count = 1\n"


def conf(tmp_path: Path, role: str, text: str, name: str = "x.conf") -> ConfFile:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return ConfFile.read(role, str(path))


def loadgen_reads(tmp_path: Path, text: str, model: str, scenario: str) -> Any:
    """The TestSettings LoadGen makes of ``text`` alone."""
    path = tmp_path / "read-back.conf"
    path.write_text(text, encoding="utf-8")
    settings = lg.TestSettings()
    assert settings.FromConfig(str(path), model, scenario, 2) == 0
    return settings


# ------------------------------------------------------------------ reading a file


def test_lines_are_read_as_loadgen_reads_them() -> None:
    lines = parse("# a comment\n\nm.Offline.target_qps = 5\n*.*.min_duration=2000  # trailing\n"
                  "m.Server.target_latency = 0x10\nm.*.max_query_count = 1.5e3\n", "f", mlperf_conf=False)
    assert [(l.key, l.value, l.number) for l in lines] == [
        ("m.Offline.target_qps", "5", 3), ("*.*.min_duration", "2000", 4),
        ("m.Server.target_latency", "0x10", 5), ("m.*.max_query_count", "1.5e3", 6)]


def test_a_model_name_with_dots_keeps_them() -> None:
    (line,) = parse("llama3.1-8b.Offline.target_qps = 5\n", "f", mlperf_conf=False)
    assert (line.model, line.scenario, line.param) == ("llama3.1-8b", "Offline", "target_qps")


@pytest.mark.parametrize(("text", "words"), [
    ("m.Offline.target_qsp = 5", ["line 1", "no setting 'target_qsp'"]),
    ("m.Offline.target_qps = fast", ["line 1", "'fast' is not a number"]),
    ("m.Offline.target_qps = 5 6", ["line 1", "is not 'model.scenario.setting = value'"]),
    ("m.Offline.target_qps", ["line 1", "is not 'model.scenario.setting = value'"]),
    ("Offline.target_qps = 5", ["'Offline.target_qps' is not model.scenario.setting"]),
    ("m.offline.target_qps = 5", ["'m.offline.target_qps' is not model.scenario.setting"]),
    ("\n*.*.qsl_rng_seed = 5", ["line 2", "qsl_rng_seed only from an mlperf.conf"]),
    ("*.*.mode = 2", ["test mode is mlpi's --mode"]),
])
def test_a_bad_user_conf_line_is_named(text: str, words: list[str]) -> None:
    with pytest.raises(UsageError) as caught:
        parse(text, "--user-conf f", mlperf_conf=False)
    for word in words:
        assert word in caught.value.message, caught.value.message


def test_a_misspelt_setting_gets_the_close_name() -> None:
    with pytest.raises(UsageError) as caught:
        parse("m.Offline.min_duraton = 5", "f", mlperf_conf=False)
    assert caught.value.hint == "did you mean min_duration?"


def test_an_earlier_rounds_mlperf_conf_may_hold_settings_this_loadgen_dropped() -> None:
    """v2.0's mlperf.conf has ``target_duration``; today's LoadGen reads no such key. Seeds are
    an mlperf.conf's to set."""
    lines = parse("*.*.target_duration = 0\n*.*.qsl_rng_seed = 7\n", "f", mlperf_conf=True)
    assert [l.param for l in lines] == ["qsl_rng_seed"]


# ------------------------------------------------------------------ which line applies


def test_the_exact_key_wins_whatever_the_order() -> None:
    lines = parse("m.Offline.target_qps = 1\n*.Offline.target_qps = 2\nm.*.target_qps = 3\n*.*.target_qps = 4\n",
                  "f", mlperf_conf=False)
    assert resolve(lines, "m", "Offline")["target_qps"].value == "1"
    assert resolve(lines, "other", "Offline")["target_qps"].value == "2"
    assert resolve(lines[2:], "m", "Offline")["target_qps"].value == "3"
    assert resolve(lines[3:], "m", "Offline")["target_qps"].value == "4"


def test_another_scenarios_setting_does_not_apply() -> None:
    lines = parse("*.Server.target_qps = 9\n*.*.target_latency = 7\n", "f", mlperf_conf=False)
    assert resolve(lines, "m", "Offline") == {}
    assert set(resolve(lines, "m", "SingleStream")) == {"target_latency"}


def test_the_last_line_of_a_key_wins() -> None:
    lines = parse("*.*.min_duration = 1\n*.*.min_duration = 2\n", "f", mlperf_conf=False)
    assert resolve(lines, "m", "Offline")["min_duration"].value == "2"


def test_a_user_conf_for_another_model_is_refused(tmp_path: Path) -> None:
    user = conf(tmp_path, "user_conf", "bert.Offline.target_qps = 5\nbert.Server.target_qps = 5\n")
    with pytest.raises(UsageError) as caught:
        check_applies(user, "resnet50", ["Offline"])
    assert "sets nothing for resnet50 in Offline: its lines are for bert" in caught.value.message
    check_applies(user, "bert", ["Offline"])  # the same file for its own model is fine


# ------------------------------------------------------------------ the merged file


def test_a_wildcard_user_line_replaces_mlpis_exact_line(tmp_path: Path) -> None:
    """LoadGen prefers ``m.Offline.x`` over ``*.Offline.x`` wherever each stands: appending the
    user's file after mlpi's lines would leave mlpi's value in force. The merge writes the
    user's value under the exact key, and LoadGen reads the user's."""
    user = conf(tmp_path, "user_conf", "*.Offline.target_qps = 500\n*.*.min_duration = 2500\n")
    appended = loadgen_reads(tmp_path, OWN + user.text, "m", "Offline")
    assert appended.offline_expected_qps == 123.5  # the trap
    text = merged(OWN, "m", "Offline", {"user_conf": user})
    ran = loadgen_reads(tmp_path, text, "m", "Offline")
    assert (ran.offline_expected_qps, ran.min_duration_ms, ran.min_query_count) == (500.0, 2500, 1)
    assert "# m.Offline.target_qps = 123.5  (replaced by --user-conf)" in text
    assert sorted(overridden(OWN, "m", "Offline", {"user_conf": user})) == ["min_duration 10000 -> 2500", "target_qps 123.5 -> 500"]


def test_layers_apply_in_loadgens_order(tmp_path: Path) -> None:
    """mlperf.conf < mlpi's own lines < user.conf, and nothing the mlperf.conf sets for another
    scenario or model leaks in."""
    round_conf = conf(tmp_path, "mlperf_conf", "*.*.min_query_count = 2048\n*.*.max_duration = 77\n"
                      "*.*.performance_sample_count_override = 64\nother.*.max_query_count = 5\n"
                      "*.Server.target_qps = 3\n*.*.qsl_rng_seed = 42\n", "mlperf.conf")
    user = conf(tmp_path, "user_conf", "m.*.performance_sample_count_override = 128\n")
    text = merged(OWN, "m", "Offline", {"mlperf_conf": round_conf, "user_conf": user})
    ran = loadgen_reads(tmp_path, text, "m", "Offline")
    assert ran.max_duration_ms == 77  # only the mlperf.conf sets it
    assert ran.min_query_count == 1  # mlpi's own line over the mlperf.conf's
    assert ran.performance_sample_count_override == 128  # the user's over the mlperf.conf's
    assert ran.max_query_count == 0 and ran.server_target_qps != 3
    assert "qsl_rng_seed" not in text  # LoadGen would ignore it here: set on the settings instead
    assert seeds({"mlperf_conf": round_conf}, "m", "Offline") == {"qsl_rng_seed": 42}


def test_the_merged_file_is_one_loadgen_accepts_line_by_line(tmp_path: Path) -> None:
    """LoadGen takes anything after a value for another value (a ``# comment`` fails the file):
    the sources go on lines of their own."""
    user = conf(tmp_path, "user_conf", "*.Offline.target_qps = 500  # mine\n")
    text = merged(OWN, "m", "Offline", {"user_conf": user})
    for line in text.splitlines():
        if not line.startswith("#"):
            assert "#" not in line, line


# ------------------------------------------------------------------ seeds and rules


def test_each_rounds_seeds_are_the_checkers_and_loadgens() -> None:
    """v5.0 to v6.1 as the pinned submission checker requires them; the current round's as
    the pinned LoadGen's mlperf.conf sets them and as the LoadGen installed here holds them."""
    spec = importlib.util.spec_from_file_location(
        "checker_constants", SHARED / "tools" / "submission" / "submission_checker" / "constants.py")
    if spec is None or spec.loader is None or not Path(str(spec.origin)).exists():
        pytest.skip(f"the pinned MLCommons checker is not beside the tree ({SHARED})")
    constants = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(constants)
    for version, config in constants.MODEL_CONFIG.items():
        if "seeds" in config:
            assert ROUND_SEEDS[version] == tuple(config["seeds"][name] for name in SEED_NAMES), version
    pinned = parse((SHARED / "loadgen" / "mlperf.conf").read_text(), "mlperf.conf", mlperf_conf=True)
    assert round_seeds("v6.1") == {l.param: int(l.value) for l in pinned if l.param in SEED_NAMES}
    built_in = lg.TestSettings()
    built_in.FromConfig("", "resnet50", "Offline", 0)
    assert round_seeds("v6.1") == {name: getattr(built_in, name) for name in SEED_NAMES}


@pytest.mark.parametrize("scenario", ["Offline", "Server", "SingleStream", "MultiStream"])
def test_mlcommons_own_mlperf_conf_merges_for_every_scenario(tmp_path: Path, scenario: str) -> None:
    """The pinned round's mlperf.conf as a --mlperf-conf: every setting it gives resnet50 is
    written under the exact key (LoadGen reads it back so), and its seeds are the round's."""
    source = SHARED / "loadgen" / "mlperf.conf"
    if not source.is_file():
        pytest.skip(f"the pinned MLCommons tree is not beside the tree ({SHARED})")
    round_conf = ConfFile.read("mlperf_conf", str(source))
    got = seeds({"mlperf_conf": round_conf}, "resnet50", scenario)
    assert {name: got[name] for name in SEED_NAMES} == round_seeds("v6.1")
    text = merged("", "resnet50", scenario, {"mlperf_conf": round_conf})
    from_file = loadgen_reads(tmp_path, text, "resnet50", scenario)
    built_in = lg.TestSettings()
    built_in.FromConfig("", "resnet50", scenario, 0)
    own = {"Server": ("server_target_latency_ns", "server_target_latency_percentile"),
           "MultiStream": ("multi_stream_samples_per_query", "multi_stream_target_latency_percentile"),
           "SingleStream": ("single_stream_target_latency_percentile",)}.get(scenario, ())
    for name in ("min_duration_ms", "min_query_count", "performance_sample_count_override",
                 "sample_concatenate_permutation", *own):
        assert getattr(from_file, name) == getattr(built_in, name), name


def test_every_registered_models_round_has_its_seeds() -> None:
    """A model keeping an earlier round's rules runs with that round's seeds: the round must be
    one mlpi knows."""
    from mlpi.core.plugins.config import PluginsConfig
    from mlpi.core.plugins.registry import Registry

    registry = Registry(PluginsConfig.load(None))
    rounds = {registry.model(name).rules.round for name in registry.names("models")}
    rounds.discard("")
    assert rounds and rounds <= set(ROUND_SEEDS), rounds - set(ROUND_SEEDS)


def _settings(**values: Any) -> SimpleNamespace:
    base = {"min_duration_ms": 600000, "min_query_count": 100, "server_target_latency_ns": 100_000_000,
            "multi_stream_samples_per_query": 8, "offline_expected_qps": 1.0,
            "single_stream_target_latency_percentile": 0.9}
    return SimpleNamespace(**{**base, **values})


def test_departures_are_the_loosened_rules_only(tmp_path: Path) -> None:
    user = conf(tmp_path, "user_conf", "*.*.min_duration = 1000\n*.Offline.target_qps = 9\n*.*.min_query_count = 500\n")
    ran = _settings(min_duration_ms=1000, offline_expected_qps=9.0, min_query_count=500)
    found = departures(OWN, "m", "Offline", {"user_conf": user}, ran, _settings())
    assert found == ["--user-conf line 1 sets min_duration to 1,000 ms, where the rules have 600,000 ms"]
    server = conf(tmp_path, "user_conf", "*.Server.target_latency = 150\n*.SingleStream.target_latency_percentile = 50\n")
    assert departures("", "m", "Server", {"user_conf": server}, _settings(server_target_latency_ns=150_000_000),
                      _settings()) == ["--user-conf line 1 sets target_latency to 150 ms, where the rules have 100 ms"]
    assert departures("", "m", "SingleStream", {"user_conf": server}, _settings(single_stream_target_latency_percentile=0.5),
                      _settings()) == ["--user-conf line 2 sets target_latency_percentile to 50%, where the rules have 90%"]


def test_an_mlperf_conf_value_that_did_not_run_is_no_departure(tmp_path: Path) -> None:
    """mlpi's own min_query_count replaced the mlperf.conf's: what ran is not the file's."""
    round_conf = conf(tmp_path, "mlperf_conf", "*.*.min_query_count = 1\n", "mlperf.conf")
    assert departures(OWN, "m", "Offline", {"mlperf_conf": round_conf}, _settings(min_query_count=1), _settings()) == []
    assert departures("", "m", "Offline", {"mlperf_conf": round_conf}, _settings(min_query_count=1), _settings()) == [
        "--mlperf-conf line 1 sets min_query_count to 1, where the rules have 100"]


# ------------------------------------------------------------------ a real run


V2_0_SEEDS = "# v2.0's seeds\n*.*.qsl_rng_seed = {}\n*.*.sample_index_rng_seed = {}\n*.*.schedule_rng_seed = {}\n".format(
    *ROUND_SEEDS["v2.0"])


@pytest.fixture(scope="module")
def conf_run(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """One quick run of a tiny model in Offline and SingleStream with both files, then the same
    plan again after both files are gone."""
    root = tmp_path_factory.mktemp("conf-run")
    tiny_models.matmul_model(root / "tiny.onnx")
    (root / "mine.conf").write_text("*.Offline.target_qps = 4000\ncustom_tiny.*.min_duration=3000\n", encoding="utf-8")
    (root / "round.conf").write_text(V2_0_SEEDS + "*.*.target_duration = 0\n", encoding="utf-8")
    proc = run_cli(["run", "--model-path", "tiny.onnx", "--quick", "-s", "Offline", "-s", "SingleStream",
                    "--user-conf", "mine.conf", "--mlperf-conf", "round.conf", "--output", "out"], root)
    assert proc.returncode in (0, 3), proc.stderr  # 3: a test INVALID (the rate is the user's, not calibrated)
    run_dir = only_run_dir(root / "out")
    (root / "mine.conf").unlink()
    (root / "round.conf").unlink()
    again = run_cli(["run", "--plan", str(run_dir / "plan.json"), "--output", "again"], root)
    return SimpleNamespace(root=root, proc=proc, run_dir=run_dir, again=again,
                           result=json.loads((run_dir / "result.json").read_text()))


def test_the_run_gives_loadgen_the_users_settings(conf_run: SimpleNamespace) -> None:
    offline = next(t for t in conf_run.result["tests"] if t["scenario"] == "Offline")
    ran = offline["loadgen_settings"]
    assert (ran["target_qps"], ran["min_duration_ms"]) == (4000, 3000)
    assert [ran[name] for name in SEED_NAMES] == list(ROUND_SEEDS["v2.0"])
    text = (conf_run.run_dir / "Offline" / "performance" / "user.conf").read_text()
    assert "custom_tiny.Offline.target_qps = 4000" in text and "(replaced by --user-conf)" in text
    assert "mlpi: --user-conf sets target_qps" in (conf_run.run_dir / "Offline" / "performance" / "harness.log").read_text()


def test_loadgen_logged_one_conf_file_and_no_error(conf_run: SimpleNamespace) -> None:
    """The rules read for the departure check are no second conf file to LoadGen."""
    for test in ("Offline", "SingleStream"):
        detail = (conf_run.run_dir / test / "performance" / "mlperf_log_detail.txt").read_text()
        assert "error_invalid_config" not in detail and "Multiple conf files" not in detail


def test_the_result_records_the_files_and_why_it_is_not_for_submission(conf_run: SimpleNamespace) -> None:
    assert conf_run.result["status"] == "ok"
    settings = conf_run.result["settings"]
    assert settings["user_conf"]["path"].endswith("mine.conf") and len(settings["user_conf"]["sha256"]) == 64
    assert settings["mlperf_conf"]["path"].endswith("round.conf")
    assert conf_run.result["submission_valid"] is False
    for test in conf_run.result["tests"]:
        assert test["conf_departures"] == ["--user-conf line 2 sets min_duration to 3,000 ms, where the rules have 600,000 ms"]
    assert "a conf file departs from the rules: --user-conf line 2 sets min_duration" in conf_run.proc.stdout


def test_the_plan_reruns_without_the_files(conf_run: SimpleNamespace) -> None:
    assert conf_run.again.returncode in (0, 3), conf_run.again.stderr
    rerun = only_run_dir(conf_run.root / "again")
    tests = json.loads((rerun / "result.json").read_text())["tests"]
    assert [t["loadgen_settings"]["qsl_rng_seed"] for t in tests] == [ROUND_SEEDS["v2.0"][0]] * 2
    assert "custom_tiny.Offline.min_duration = 3000" in (rerun / "Offline" / "performance" / "user.conf").read_text()


def test_a_bad_conf_file_stops_the_run_before_any_test(tmp_path: Path) -> None:
    tiny_models.matmul_model(tmp_path / "tiny.onnx")
    (tmp_path / "bad.conf").write_text("*.Offline.target_qps = 5\n*.*.qsl_rng_seed = 1\n", encoding="utf-8")
    proc = run_cli(["run", "--model-path", "tiny.onnx", "--quick", "--user-conf", "bad.conf", "--output", "out"], tmp_path)
    one_error(proc, "line 2", "qsl_rng_seed only from an mlperf.conf")
    assert "hint: put the round's seeds in a file passed with --mlperf-conf" in proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
