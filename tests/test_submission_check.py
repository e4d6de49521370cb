"""mlpi submission check: MLCommons' checker from the user's checkout, its verdict and CSV summary,
and what mlpi says of trees broken by hand the ways submitters break them.

The tree is built from real LoadGen runs, made once per pytest run (mlpi.testing.submission_fixture). The
pinned checker runs unpatched; where a verdict must not depend on the runs being short, it runs
behind mlpi.testing.submission_fixture.relaxed_checker (the 600 s minimum duration setting, the
performance sample count and the data set size lowered to the test's, nothing else).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import one_error, run_cli

from mlpi.core.contract.rounds import SEED_NAMES
from mlpi.submission.layout import LAYOUTS
from mlpi.submission.readme import DEVELOPMENT_MARK
from mlpi.testing.submission_fixture import (
    DURATION_S,
    LABELS,
    SubmissionRuns,
    relaxed_checker,
    submission_runs,
)

CHECKOUT = Path(__file__).resolve().parents[2] / "shared" / "mlcommons-inference"
needs_checker = pytest.mark.skipif(not (CHECKOUT / "tools" / "submission" / "submission_checker").is_dir(),
                                   reason=f"MLCommons' checker is not at {CHECKOUT}")
SYSTEM = "testbox"
FOLDER = "resnet-classifier"
NO_CHECKOUT_ENV = {"MLPI_MLCOMMONS_INFERENCE": ""}


def check(tree: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli(["submission", "check", str(tree), *args], cwd=tree.parent, env={**NO_CHECKOUT_ENV, **(env or {})})


# -- without a checkout ------------------------------------------------------------------------


@pytest.fixture
def empty_tree(tmp_path: Path) -> Path:
    (tmp_path / "tree" / "open").mkdir(parents=True)
    return tmp_path / "tree"


def test_without_a_checkout_it_says_how_to_get_one(empty_tree: Path) -> None:
    proc = check(empty_tree)
    one_error(proc, "no checkout of MLCommons' inference repository was given")
    assert "hint: get MLCommons' inference repository (git clone https://github.com/mlcommons/inference)" in proc.stderr
    assert "--mlcommons DIR, or set MLPI_MLCOMMONS_INFERENCE=DIR" in proc.stderr


def test_a_checkout_without_the_checker_is_named(empty_tree: Path, tmp_path: Path) -> None:
    (tmp_path / "inference").mkdir()
    proc = check(empty_tree, "--mlcommons", str(tmp_path / "inference"))
    one_error(proc, f"{tmp_path / 'inference'} (--mlcommons) holds no tools/submission/submission_checker/main.py")
    proc = check(empty_tree, env={"MLPI_MLCOMMONS_INFERENCE": str(tmp_path / "inference")})
    one_error(proc, "(MLPI_MLCOMMONS_INFERENCE) holds no tools/submission/submission_checker/main.py")


def test_a_folder_that_holds_no_tree_is_refused(tmp_path: Path) -> None:
    proc = check(tmp_path, "--mlcommons", str(CHECKOUT))
    one_error(proc, f"{tmp_path} holds no closed/, open/ or network/ folder")


# -- on a tree built from real runs ----------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> SubmissionRuns:
    return submission_runs(tmp_path_factory.getbasetemp() / "submission-runs")


@pytest.fixture(scope="module")
def tree(runs: SubmissionRuns, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("check") / "tree"
    proc = run_cli(["submission", "build", "--output", str(out), "--results", str(runs.root), "--division", "open",
                    "--submitter", "acme", "--system", SYSTEM, "--category", "edge", "--system-file", str(runs.system_file),
                    "--measurements-file", str(runs.measurements_file), "--model", "resnet50", "-s", "Offline",
                    "-s", "SingleStream", "--allow-short-runs", "--allow-subset"], cwd=out.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


@pytest.fixture(scope="module")
def relaxed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return relaxed_checker(tmp_path_factory.mktemp("relaxed"), CHECKOUT, version="v6.1", benchmark="resnet",
                           min_duration_ms=DURATION_S * 1000, performance_sample_count=len(LABELS),
                           dataset_size=len(LABELS))


def without_development_mark(tree: Path, copy: Path) -> Path:
    """A copy of ``tree`` whose READMEs lack the development tree's first paragraph: the tree
    a build from full-length runs over the whole data set writes (the checker in front of it
    is relaxed for these short runs)."""
    shutil.copytree(tree, copy)
    for readme in copy.rglob("README.md"):
        text = readme.read_text()
        if text.startswith(f"**{DEVELOPMENT_MARK}**"):
            readme.write_text(text.split("\n\n", 1)[1])
    return copy


@pytest.fixture
def broken(tree: Path, tmp_path: Path) -> Path:
    """A copy of the tree, as if built from full-length runs, to break by hand."""
    return without_development_mark(tree, tmp_path / "tree")


def scenario_dir(tree: Path, scenario: str = "Offline") -> Path:
    return tree / "open" / "acme" / "results" / SYSTEM / FOLDER / scenario


@needs_checker
@pytest.mark.slow
def test_the_unpatched_checker_shows_why_short_runs_are_no_submission(tree: Path) -> None:
    proc = check(tree, "--mlcommons", str(CHECKOUT))
    assert proc.returncode == 3, proc.stderr
    out = proc.stdout
    perf = f"{scenario_dir(tree.resolve())}/performance/run_1/mlperf_log_detail.txt"
    assert f"checker error: {perf} Test duration less than 600s in user config. expected=600000, found=1000" in out
    assert f"checker error: {perf} performance_sample_count, found 10, needs to be >= 1024" in out
    assert "accurcy run does not cover all dataset, accuracy samples: 10, dataset size: 50000" in out  # its spelling
    assert "results the checker accepted: none" in out
    assert "checker: SUMMARY: submission has errors" in out
    assert "the checker says: SUMMARY: submission has errors)" in out and "verdict: NOT READY" in out
    log = tree.parent / "tree.checker.log"
    command = log.read_text().splitlines()[0]
    assert f"--input {tree.resolve()} --version v6.1 --csv" in command  # absolute input, the current round
    assert f"checker output: {log}" in out


@needs_checker
@pytest.mark.slow
def test_the_checkout_may_come_from_the_environment(tree: Path) -> None:
    proc = check(tree, env={"MLPI_MLCOMMONS_INFERENCE": str(CHECKOUT)})
    assert proc.returncode == 3 and "checker: SUMMARY: submission has errors" in proc.stdout


@needs_checker
@pytest.mark.slow
def test_a_development_tree_is_never_ready(tree: Path, relaxed: Path) -> None:
    proc = check(tree, "--mlcommons", str(relaxed))
    assert proc.returncode == 3
    assert (f"mlpi: open/acme/results/{SYSTEM}/{FOLDER}/Offline/README.md: says {DEVELOPMENT_MARK}: a development "
            "tree") in proc.stdout
    assert "checker: SUMMARY: submission looks OK" in proc.stdout  # with its limits lowered for these runs
    assert "verdict: NOT READY (mlpi found 1 problem(s) the checker does not catch)" in proc.stdout


@needs_checker
@pytest.mark.slow
def test_verdict_and_csv_summary_of_an_accepted_tree(broken: Path, relaxed: Path, tmp_path: Path) -> None:
    proc = check(broken, "--mlcommons", str(relaxed), "--csv", str(tmp_path / "s.csv"), "--log", str(tmp_path / "c.log"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "mlpi:" not in proc.stdout
    lines = proc.stdout.splitlines()
    assert f"results the checker accepted (CSV summary {tmp_path / 's.csv'}):" in lines
    header = next(line for line in lines if line.strip().startswith("Organization"))
    assert header.split() == ["Organization", "Division", "Platform", "Model", "MlperfModel", "Scenario", "Result",
                              "Units", "Accuracy"]
    rows = [line.split() for line in lines if f" {FOLDER} " in line]
    assert [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows] == [
        ("acme", "open", SYSTEM, FOLDER, "resnet", "Offline"), ("acme", "open", SYSTEM, FOLDER, "resnet", "SingleStream")]
    assert float(rows[0][6]) > 0 and rows[0][7] == "Samples/s" and rows[1][7:9] == ["Latency", "(ms)"]
    assert "verdict: SUMMARY: submission looks OK" in lines
    assert (tmp_path / "s.csv").is_file() and (tmp_path / "c.log").is_file()


@needs_checker
@pytest.mark.slow
def test_a_round_the_checkout_does_not_know_says_which_checkout_to_use(tree: Path) -> None:
    proc = check(tree, "--mlcommons", str(CHECKOUT), "--version", "v4.0")
    one_error(proc, "this checker does not know round v4.0", "invalid choice: 'v4.0'")
    assert "hint: check a v4.0 tree with a checkout of MLCommons' inference repository from that round" in proc.stderr


# -- trees broken by hand --------------------------------------------------------------------


@needs_checker
@pytest.mark.slow
def test_a_missing_readme_is_the_checkers_own_error(broken: Path, relaxed: Path) -> None:
    (scenario_dir(broken) / "README.md").unlink()
    proc = check(broken, "--mlcommons", str(relaxed))
    assert proc.returncode == 3
    assert f"checker error: {scenario_dir(broken.resolve())} is missing README.md" in proc.stdout
    assert "verdict: NOT READY" in proc.stdout


@needs_checker
@pytest.mark.slow
def test_an_untruncated_accuracy_log_is_the_checkers_own_error(broken: Path, relaxed: Path) -> None:
    accuracy = scenario_dir(broken) / "accuracy"
    entries = ",\n".join(f'{{ "seq_id" : {i}, "qsl_idx" : {i % 10}, "data" : "00000000" }}' for i in range(400))
    (accuracy / "mlperf_log_accuracy.json").write_text(f"[\n{entries}\n]\n")
    proc = check(broken, "--mlcommons", str(relaxed))
    assert proc.returncode == 3
    assert f"{scenario_dir(broken.resolve())}/accuracy/mlperf_log_accuracy.json is not truncated" in proc.stdout


@needs_checker
@pytest.mark.slow
def test_an_empty_system_field_is_the_checkers_own_error(broken: Path, relaxed: Path) -> None:
    path = broken / "open" / "acme" / "systems" / f"{SYSTEM}.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "cooling": ""}))
    proc = check(broken, "--mlcommons", str(relaxed))
    assert proc.returncode == 3
    assert "field cooling requires a meaningful response but is empty" in proc.stdout


@needs_checker
@pytest.mark.slow
def test_a_wrong_system_name_is_mlpis_finding_and_the_checker_is_not_run(broken: Path, relaxed: Path) -> None:
    systems = broken / "open" / "acme" / "systems"
    (systems / f"{SYSTEM}.json").rename(systems / "othername.json")
    proc = check(broken, "--mlcommons", str(relaxed))
    one_error(proc, "1 of the 1 problem(s)", "would stop MLCommons' checker with a traceback; it was not run")
    assert (f"mlpi: open/acme/systems/{SYSTEM}.json: missing: results/{SYSTEM} needs a system description of the "
            "same name (systems/ holds othername)") in proc.stdout
    assert "running MLCommons' submission checker" not in proc.stdout


@needs_checker
@pytest.mark.slow
def test_a_missing_accuracy_folder_would_crash_the_checker_so_mlpi_names_it(broken: Path, relaxed: Path) -> None:
    shutil.rmtree(scenario_dir(broken) / "accuracy")
    proc = check(broken, "--mlcommons", str(relaxed))
    one_error(proc, "would stop MLCommons' checker with a traceback; it was not run")
    assert "accuracy/mlperf_log_detail.txt: missing: every scenario needs its accuracy run's LoadGen log" in proc.stdout
    raw = subprocess.run([sys.executable, "-m", "submission_checker.main", "--input", str(broken.resolve()),
                          "--version", "v6.1", "--csv", str(broken.parent / "raw.csv")],
                         cwd=relaxed / "tools" / "submission", check=False, capture_output=True, text=True, timeout=120)
    assert raw.returncode != 0 and "Traceback" in raw.stderr  # what mlpi spares the user


@needs_checker
@pytest.mark.slow
def test_a_system_description_the_checkers_summary_cannot_count_is_named(broken: Path, relaxed: Path) -> None:
    path = broken / "open" / "acme" / "systems" / f"{SYSTEM}.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "accelerators_per_node": "N/A"}))
    proc = check(broken, "--mlcommons", str(relaxed))
    one_error(proc, "would stop MLCommons' checker with a traceback; it was not run")
    assert "accelerators_per_node is 'N/A', not a whole number: the checker's summary stops on it" in proc.stdout
    raw = subprocess.run([sys.executable, "-m", "submission_checker.main", "--input", str(broken.resolve()),
                          "--version", "v6.1", "--csv", str(broken.parent / "raw.csv")], check=False,
                         cwd=relaxed / "tools" / "submission", capture_output=True, text=True, timeout=120)
    assert "ValueError: invalid literal for int()" in raw.stderr  # what mlpi spares the user


@needs_checker
@pytest.mark.slow
def test_the_results_of_another_model_are_found(broken: Path, relaxed: Path) -> None:
    conf = scenario_dir(broken) / "user.conf"
    conf.write_text(conf.read_text().replace("resnet50.", "bert."))
    proc = check(broken, "--mlcommons", str(relaxed))
    assert proc.returncode == 3
    assert (f"mlpi: open/acme/results/{SYSTEM}/{FOLDER}/Offline/user.conf: LoadGen ran bert here, not {FOLDER} "
            "(its runs use resnet50): the results of another model are in this folder") in proc.stdout
    assert "checker: SUMMARY: submission looks OK" in proc.stdout  # the checker does not see it
    assert "verdict: NOT READY (mlpi found 1 problem(s) the checker does not catch)" in proc.stdout


@needs_checker
@pytest.mark.slow
def test_an_invalid_run_slipped_into_a_tree_is_found(broken: Path, relaxed: Path, runs: SubmissionRuns) -> None:
    shutil.copyfile(runs.root / runs.invalid / "Offline" / "performance" / "mlperf_log_detail.txt",
                    scenario_dir(broken) / "performance" / "run_1" / "mlperf_log_detail.txt")
    proc = check(broken, "--mlcommons", str(relaxed))
    assert proc.returncode == 3
    assert (f"mlpi: open/acme/results/{SYSTEM}/{FOLDER}/Offline/performance/run_1/mlperf_log_detail.txt: LoadGen "
            "judged this run INVALID (min duration not satisfied") in proc.stdout
    assert "checker: SUMMARY: submission looks OK" in proc.stdout  # it accepts INVALID runs
    assert "verdict: NOT READY" in proc.stdout


# -- the tree mlpi writes is where the checker looks -----------------------------------------


@needs_checker
@pytest.mark.parametrize("version", list(LAYOUTS))
def test_each_rounds_layout_and_seeds_are_the_checkers(version: str) -> None:
    """Every path mlpi writes for a round is the one the checker of that round reads, and
    the round's LoadGen seeds are the ones it requires (read from the pinned checker's tables)."""
    spec = importlib.util.spec_from_file_location(
        "checker_constants", CHECKOUT / "tools" / "submission" / "submission_checker" / "constants.py")
    assert spec is not None and spec.loader is not None
    constants = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(constants)
    layout = LAYOUTS[version]
    where = {"division": "closed", "submitter": "acme", "system": "box", "benchmark": "resnet", "scenario": "Offline",
             "file": "box_Offline.json"}

    def theirs(table: dict[str, str]) -> str:
        return table[version].format(**where)

    def ours(path: object) -> str:
        return f"closed/acme/{path}"

    args = ("box", "resnet", "Offline")
    assert theirs(constants.PERFORMANCE_LOG_PATH) == ours(layout.performance_dir(*args) / "mlperf_log_detail.txt")
    assert theirs(constants.PERFORMANCE_SUMMARY_PATH) == ours(layout.performance_dir(*args) / "mlperf_log_summary.txt")
    assert theirs(constants.ACCURACY_LOG_PATH) == ours(layout.accuracy_dir(*args) / "mlperf_log_detail.txt")
    assert theirs(constants.ACCURACY_RESULT_PATH) == ours(layout.accuracy_dir(*args) / "accuracy.txt")
    assert theirs(constants.ACCURACY_JSON_PATH) == ours(layout.accuracy_dir(*args) / "mlperf_log_accuracy.json")
    assert theirs(constants.MEASUREMENTS_PATH) == ours(layout.measurements_file(*args))
    for test in ("TEST01", "TEST04"):
        perf = getattr(constants, f"{test}_PERF_PATH")
        assert theirs(perf) == ours(layout.audit_dir(*args, test) / "performance" / "run_1" / "mlperf_log_detail.txt")
        assert theirs(getattr(constants, f"{test}_ACC_PATH")) == ours(layout.audit_dir(*args, test) / "verify_accuracy.txt")
    assert theirs(constants.COMPLIANCE_PATH).rstrip("/") == ours(layout.audit_dir(*args, "TEST01").parent)
    assert theirs(constants.SYSTEM_PATH) == ours(layout.system_file("box"))
    assert theirs(constants.SRC_PATH) == ours(layout.code_dir())
    seeds = constants.MODEL_CONFIG[version]["seeds"]
    assert tuple(seeds[name] for name in SEED_NAMES) == layout.seeds
