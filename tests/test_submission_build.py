"""mlpi submission build: a tree MLCommons' checker accepts, from real LoadGen runs; and what it refuses.

The runs (mlpi.testing.submission_fixture.submission_runs) are made once per pytest run:
ResNet50's signature on a 10-image data set, 1 s per test. MLCommons' checker is run from the
pinned copy, unpatched, behind mlpi.testing.submission_fixture.relaxed_checker, which lowers
in its own process exactly the three limits such runs cannot reach (its docstring says which
and why): the 600 s minimum duration setting, the performance sample count (1,024 for ResNet50;
the test data set holds 10 images) and the data set size an accuracy run covers (50,000).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import one_error, run_cli

from mlpi.core.results.store import RunFilter, Store, store_path
from mlpi.submission.layout import LAYOUTS
from mlpi.submission.readme import DEVELOPMENT_MARK
from mlpi.submission.runinfo import BenchmarkRules, Setup
from mlpi.submission.select import (
    Request,
    TestPick,
    accuracy_refusals,
    performance_refusals,
)
from mlpi.submission.src import write_src
from mlpi.testing.submission_fixture import (
    DURATION_S,
    LABELS,
    SubmissionRuns,
    add_audit,
    relaxed_checker,
    submission_runs,
)

CHECKOUT = Path(__file__).resolve().parents[2] / "shared" / "mlcommons-inference"
needs_checker = pytest.mark.skipif(not (CHECKOUT / "tools" / "submission" / "submission_checker").is_dir(),
                                   reason=f"MLCommons' checker is not at {CHECKOUT}")
pytestmark = pytest.mark.slow
SYSTEM = "testbox"
FOLDER = "resnet-classifier"  # the open division's folder for the test's model file, classifier.onnx
DEV = ["--allow-short-runs", "--allow-subset"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> SubmissionRuns:
    return submission_runs(tmp_path_factory.getbasetemp() / "submission-runs")


def build(runs: SubmissionRuns, out: Path, *args: str, results: Path | None = None, files: bool = True):
    extra = ["--system-file", str(runs.system_file), "--measurements-file", str(runs.measurements_file)] if files else []
    return run_cli(["submission", "build", "--output", str(out), "--results", str(results or runs.root),
                    "--submitter", "acme", "--system", SYSTEM, "--category", "edge", *extra, *args], cwd=out.parent)


def checker(tmp_path: Path, tree: Path, *, offline_min_samples: int | None = None) -> subprocess.CompletedProcess[str]:
    """MLCommons' checker on ``tree``, run as its README says, behind the relaxed front."""
    fake = relaxed_checker(tmp_path / "relaxed", CHECKOUT, version="v6.1", benchmark="resnet",
                           min_duration_ms=DURATION_S * 1000, performance_sample_count=len(LABELS),
                           dataset_size=len(LABELS), offline_min_samples=offline_min_samples)
    return subprocess.run([sys.executable, "-m", "submission_checker.main", "--input", str(tree.resolve()),
                           "--version", "v6.1", "--csv", str(tmp_path / "summary.csv")],
                          cwd=fake / "tools" / "submission", check=False, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def open_tree(runs: SubmissionRuns, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("open") / "tree"
    proc = build(runs, out, "--division", "open", "--model", "resnet50", "-s", "Offline", "-s", "SingleStream", *DEV)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"wrote {out}/open/acme" in proc.stdout
    return out


# -- the open tree, accepted by the checker ---------------------------------------------------


@needs_checker
def test_the_open_tree_passes_mlcommons_checker(open_tree: Path, tmp_path: Path) -> None:
    proc = checker(tmp_path, open_tree)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "SUMMARY: submission looks OK" in proc.stderr
    summary = (tmp_path / "summary.csv").read_text()
    assert summary.count(f'"{FOLDER}","resnet"') == 2  # both scenarios counted, mapped to MLPerf's resnet


@needs_checker
def test_the_relaxed_checker_still_fails_what_it_should(open_tree: Path, tmp_path: Path) -> None:
    """The relaxations lower three limits, nothing else: a tree breaking another rule fails."""
    broken = tmp_path / "tree"
    shutil.copytree(open_tree, broken)
    (broken / "open" / "acme" / "results" / SYSTEM / FOLDER / "Offline" / "user.conf").unlink()
    proc = checker(tmp_path, broken)
    assert proc.returncode == 1 and "SUMMARY: submission has errors" in proc.stderr
    assert "is missing user.conf" in proc.stderr


def test_the_tree_holds_the_runs_files(open_tree: Path, runs: SubmissionRuns) -> None:
    base = open_tree / "open" / "acme"
    scenario = base / "results" / SYSTEM / FOLDER / "Offline"
    run = runs.main_dir / "Offline"
    for name in ("mlperf_log_summary.txt", "mlperf_log_detail.txt"):
        assert (scenario / "performance" / "run_1" / name).read_bytes() == (run / "performance" / name).read_bytes()
        assert (scenario / "accuracy" / name).read_bytes() == (run / "accuracy" / name).read_bytes()
    assert sorted(p.name for p in (scenario / "performance" / "run_1").iterdir()) == [
        "mlperf_log_detail.txt", "mlperf_log_summary.txt"]
    assert (scenario / "user.conf").read_bytes() == (run / "performance" / "user.conf").read_bytes()
    whole = hashlib.sha256((run / "accuracy" / "mlperf_log_accuracy.json").read_bytes()).hexdigest()
    assert (scenario / "accuracy" / "accuracy.txt").read_text() == (
        (run / "accuracy" / "accuracy.txt").read_text() + f"\nhash={whole}\n")
    assert json.loads((base / "model_mapping.json").read_text()) == {FOLDER: "resnet"}
    assert sorted(p.name for p in (base / "results" / SYSTEM / FOLDER).iterdir()) == ["Offline", "SingleStream"]


def test_the_system_description_merges_the_users_file_over_what_the_run_recorded(
        open_tree: Path, runs: SubmissionRuns) -> None:
    described = json.loads((open_tree / "open" / "acme" / "systems" / f"{SYSTEM}.json").read_text())
    recorded = json.loads((runs.main_dir / "result.json").read_text())["system"]
    assert described["division"] == "open" and described["submitter"] == "acme" and described["system_type"] == "edge"
    assert described["host_processor_model_name"] == recorded["host_processor_model_name"]
    assert described["framework"] == recorded["framework"] and "onnxruntime" in described["framework"]
    assert described["system_name"] == "mlpi test machine" and described["cooling"] == "air"
    assert described["accelerators_per_node"] == "0"  # the checker reads the number 0 as empty
    assert "hostname" not in described and "packages" not in described  # mlpi's own fields stay out


def test_measurements_say_what_the_run_ran(open_tree: Path) -> None:
    scenario = open_tree / "open" / "acme" / "results" / SYSTEM / FOLDER / "SingleStream"
    assert json.loads((scenario / "measurements.json").read_text()) == {
        "starting_weights_filename": "classifier.onnx", "weight_data_types": "fp32", "input_data_types": "fp32",
        "retraining": "No", "weight_transformations": "No"}


def test_readme_and_src_say_how_to_run_again(open_tree: Path, runs: SubmissionRuns) -> None:
    base = open_tree / "open" / "acme"
    readme = (base / "results" / SYSTEM / FOLDER / "Offline" / "README.md").read_text()
    assert readme.startswith(f"**{DEVELOPMENT_MARK}**") and "--allow-short-runs" in readme
    assert f"mlpi run --plan src/mlpi/{runs.main}/plan.json" in readme
    assert (base / "src" / "mlpi" / runs.main / "plan.json").read_bytes() == (runs.main_dir / "plan.json").read_bytes()
    facts = json.loads((base / "src" / "mlpi" / runs.main / "run.json").read_text())
    assert facts["backend"]["name"] == "onnxruntime" and facts["backend"]["version"]
    assert facts["packages"]["mlcommons-loadgen"] and facts["mlpi_version"]
    assert f"mlpi run --plan src/mlpi/{runs.main}/plan.json" in (base / "src" / "README.md").read_text()
    assert not list(open_tree.glob(".mlpi-build-*"))  # the staging folder is gone


# -- refusals: nothing is written ------------------------------------------------------------


def test_short_runs_are_refused_without_the_development_flag(runs: SubmissionRuns, tmp_path: Path) -> None:
    proc = build(runs, tmp_path / "tree", "--division", "open", "--model", "resnet50", "-s", "Offline", "--allow-subset")
    one_error(proc, "the tree was not built", "nothing was written")
    assert "a quick or shortened run (--quick or --duration)" in proc.stdout and "--allow-short-runs" in proc.stdout
    assert not (tmp_path / "tree").exists()


def test_a_data_set_subset_is_refused_without_its_flag(runs: SubmissionRuns, tmp_path: Path) -> None:
    proc = build(runs, tmp_path / "tree", "--division", "open", "--model", "resnet50", "-s", "Offline",
                 "--allow-short-runs")
    one_error(proc, "the tree was not built")
    assert "it kept 10 samples loaded; resnet needs a performance sample count of 1024" in proc.stdout
    assert not (tmp_path / "tree").exists()


def test_an_accuracy_run_over_part_of_the_data_set_is_refused(runs: SubmissionRuns) -> None:
    with Store(store_path(runs.root)) as store:
        record = store.find(runs.main)
    test = next(t for t in record.result.tests if t.scenario == "Offline" and t.mode == "accuracy")
    pick = TestPick(record, test, Setup.of(record.result, test.precision))
    rules = BenchmarkRules.of(record.result)
    assert rules is not None and rules.benchmark == "resnet" and rules.dataset_size == 50000
    refused = accuracy_refusals(pick, rules, Request("open", "edge", "v6.1", allow_short_runs=True))
    assert refused == [("it covered 10 of the 50000 samples of resnet's data set; an accuracy run must cover them all "
                       "(--allow-subset builds a development tree from it)")]
    assert accuracy_refusals(pick, rules, Request("open", "edge", "v6.1", allow_subset=True)) == []


def test_an_invalid_performance_run_is_refused(runs: SubmissionRuns, tmp_path: Path) -> None:
    proc = build(runs, tmp_path / "tree", "--division", "open", "--run", runs.invalid, *DEV)
    one_error(proc, "the tree was not built")
    assert f"run {runs.invalid} Offline performance: INVALID (min duration not satisfied" in proc.stdout
    assert not (tmp_path / "tree").exists()


def test_an_empty_required_system_field_is_named(runs: SubmissionRuns, tmp_path: Path) -> None:
    system = json.loads(runs.system_file.read_text())
    system["cooling"] = ""
    system.pop("host_network_card_count")
    (tmp_path / "system.json").write_text(json.dumps(system))
    proc = run_cli(["submission", "build", "--output", str(tmp_path / "tree"), "--results", str(runs.root),
                    "--division", "open", "--submitter", "acme", "--system", SYSTEM, "--category", "edge",
                    "--system-file", str(tmp_path / "system.json"), "--measurements-file", str(runs.measurements_file),
                    "--model", "resnet50", *DEV], cwd=tmp_path)
    one_error(proc, "the tree was not built")
    assert "leaves 2 field(s) empty that a submission needs filled: host_network_card_count, cooling" in proc.stdout
    assert not (tmp_path / "tree").exists()


def test_without_any_system_file_every_undetected_field_is_named(runs: SubmissionRuns, tmp_path: Path) -> None:
    proc = build(runs, tmp_path / "tree", "--division", "open", "--model", "resnet50", *DEV, files=False)
    one_error(proc, "the tree was not built")
    line = next(line for line in proc.stdout.splitlines() if "field(s) empty" in line)
    for field in ("status", "system_name", "host_storage_type", "cooling", "accelerator_model_name"):
        assert field in line
    assert "host_processor_model_name" not in line  # detected and recorded by the run
    assert "retraining, weight_transformations empty" in proc.stdout  # a model file mlpi cannot vouch for


def test_a_user_file_that_contradicts_the_options_is_refused(runs: SubmissionRuns, tmp_path: Path) -> None:
    system = {**json.loads(runs.system_file.read_text()), "division": "closed"}
    (tmp_path / "system.json").write_text(json.dumps(system))
    proc = run_cli(["submission", "build", "--output", str(tmp_path / "tree"), "--results", str(runs.root),
                    "--division", "open", "--submitter", "acme", "--system", SYSTEM, "--category", "edge",
                    "--system-file", str(tmp_path / "system.json"), "--model", "resnet50", *DEV], cwd=tmp_path)
    one_error(proc, "the tree was not built")
    assert "--system-file says division is 'closed', but --division is 'open'" in proc.stdout


def test_a_retired_benchmark_names_its_last_round(runs: SubmissionRuns, tmp_path: Path) -> None:
    proc = build(runs, tmp_path / "tree", "--division", "open", "--run", runs.retired, *DEV)
    one_error(proc, "the tree was not built")
    assert "ssd-small is not a benchmark of v6.1: its last round is v2.0" in proc.stdout
    assert "--version v2.0" in proc.stdout
    proc = build(runs, tmp_path / "tree", "--division", "open", "--run", runs.retired, "--version", "v2.0", *DEV)
    one_error(proc, "mlpi writes submission trees for rounds v5.0, v5.1, v6.0, v6.1, not 'v2.0'")


def test_a_run_of_another_model_is_refused(runs: SubmissionRuns, tmp_path: Path) -> None:
    proc = build(runs, tmp_path / "tree", "--division", "open", "--model", "resnet50", "--run", runs.retired, *DEV)
    one_error(proc, f"run {runs.retired} is a run of ssd-mobilenet, not of resnet50")
    assert not (tmp_path / "tree").exists()


def test_a_system_name_that_cannot_be_a_folder_is_refused(runs: SubmissionRuns, tmp_path: Path) -> None:
    proc = run_cli(["submission", "build", "--output", str(tmp_path / "tree"), "--results", str(runs.root),
                    "--division", "open", "--submitter", "acme", "--system", "../evil", "--category", "edge"],
                   cwd=tmp_path)
    one_error(proc, "--system '../evil' cannot name a folder of the tree")


def test_an_existing_tree_is_replaced_only_with_force(runs: SubmissionRuns, tmp_path: Path) -> None:
    out = tmp_path / "tree"
    args = ["--division", "open", "--model", "resnet50", "-s", "Offline", *DEV]
    assert build(runs, out, *args).returncode == 0
    marker = out / "open" / "acme" / "hand-made.txt"
    marker.write_text("kept until --force")
    proc = build(runs, out, *args)
    one_error(proc, f"{out}/open/acme exists already; nothing was written")
    assert marker.exists()
    refused = build(runs, out, "--division", "open", "--run", runs.invalid, "--force", *DEV)  # refused: old tree stays
    assert refused.returncode != 0 and marker.exists()
    assert build(runs, out, *args, "--force").returncode == 0
    assert not marker.exists() and (out / "open" / "acme" / "results" / SYSTEM / FOLDER / "Offline").is_dir()


def test_dry_run_writes_nothing_and_other_rounds_runs_are_left_out(runs: SubmissionRuns, tmp_path: Path) -> None:
    proc = build(runs, tmp_path / "tree", "--division", "open", "--dry-run", *DEV)  # every run of the store
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "dry run" in proc.stdout and not (tmp_path / "tree").exists()
    assert "resnet-classifier  MultiStream" in proc.stdout  # every scenario the runs have, in the open division
    assert f"note: run {runs.retired}: ssd-small is not a benchmark of v6.1: its last round is v2.0" in proc.stdout


# -- the closed division: compliance audits --------------------------------------------------


@pytest.fixture(scope="module")
def audited(runs: SubmissionRuns, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results root holding a copy of the main run with its TEST01 and TEST04 audits, as
    ``mlpi run --audit`` leaves them (TEST01's byte comparison failed in Offline, so its
    scores were compared and its accuracy log comes with accuracy.txt)."""
    root = tmp_path_factory.mktemp("audited") / "results"
    shutil.copytree(runs.main_dir, root / runs.main)
    for scenario in ("Offline", "SingleStream", "MultiStream"):
        add_audit(root / runs.main, scenario, "TEST01", byte_match=scenario != "Offline")
        add_audit(root / runs.main, scenario, "TEST04")
    return root


@pytest.fixture(scope="module")
def closed_tree(runs: SubmissionRuns, audited: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("closed") / "tree"
    proc = build(runs, out, "--division", "closed", *DEV, results=audited)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


@needs_checker
def test_the_closed_tree_with_its_audits_passes_mlcommons_checker(closed_tree: Path, tmp_path: Path) -> None:
    # a 1 s Offline run issues fewer samples than the closed division's 24,576 a query: lowered too
    proc = checker(tmp_path, closed_tree, offline_min_samples=1)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "SUMMARY: submission looks OK" in proc.stderr
    rows = (tmp_path / "summary.csv").read_text().splitlines()[1:]
    assert len(rows) == 3 and all(row.startswith('"acme","available","closed","edge"') for row in rows)


def test_audit_folders_are_copied_without_the_raw_run(closed_tree: Path, audited: Path, runs: SubmissionRuns) -> None:
    scenario = closed_tree / "closed" / "acme" / "results" / SYSTEM / "resnet" / "SingleStream"
    assert sorted(p.name for p in scenario.iterdir()) == [
        "README.md", "TEST01", "TEST04", "accuracy", "measurements.json", "performance",
        "user.conf"]
    source = audited / runs.main / "SingleStream" / "TEST04"
    assert not (scenario / "TEST04" / "run").exists() and (source / "run").is_dir()
    assert (scenario / "TEST04" / "verify_performance.txt").read_bytes() == (source / "verify_performance.txt").read_bytes()
    # byte comparison passed: TEST01's log is left whole, as MLCommons' tool leaves it
    assert (scenario / "TEST01" / "accuracy" / "mlperf_log_accuracy.json").read_bytes() == (
        audited / runs.main / "SingleStream" / "TEST01" / "accuracy" / "mlperf_log_accuracy.json").read_bytes()


def test_the_tree_is_what_mlcommons_truncation_tool_makes_of_the_whole_logs(
        closed_tree: Path, audited: Path, runs: SubmissionRuns, tmp_path: Path) -> None:
    """Put the runs' whole accuracy logs back into a copy of the tree, let MLCommons' tool cut
    them, and compare every file with mlpi's tree."""
    tool = CHECKOUT / "tools" / "submission" / "truncate_accuracy_log.py"
    if not tool.is_file():
        pytest.skip(f"MLCommons' truncate_accuracy_log.py is not at {tool}")
    whole = tmp_path / "whole"
    shutil.copytree(closed_tree, whole)
    results = whole / "closed" / "acme" / "results" / SYSTEM / "resnet"
    for scenario in ("Offline", "SingleStream", "MultiStream"):
        for source, target in ((runs.main_dir / scenario / "accuracy", results / scenario / "accuracy"),
                               (audited / runs.main / scenario / "TEST01" / "accuracy", results / scenario / "TEST01" / "accuracy")):
            for name in ("mlperf_log_accuracy.json", "accuracy.txt"):
                if (source / name).exists():
                    shutil.copyfile(source / name, target / name)
    cut = tmp_path / "cut"
    proc = subprocess.run([sys.executable, str(tool), "--input", str(whole), "--output", str(cut), "--submitter", "acme"],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ours = {p.relative_to(closed_tree): p.read_bytes() for p in closed_tree.rglob("*") if p.is_file()}
    theirs = {p.relative_to(cut): p.read_bytes() for p in cut.rglob("*") if p.is_file()}
    assert ours.keys() == theirs.keys()
    assert [k for k in ours if ours[k] != theirs[k]] == []
    offline_test01 = Path("closed/acme/results", SYSTEM, "resnet/Offline/TEST01/accuracy/accuracy.txt")
    assert b"\nhash=" in ours[offline_test01]  # the audit whose scores were compared was cut and hashed


def test_a_failed_or_missing_audit_keeps_the_closed_tree_from_being_built(
        runs: SubmissionRuns, tmp_path: Path) -> None:
    root = tmp_path / "results"
    shutil.copytree(runs.main_dir, root / runs.main)
    for scenario in ("Offline", "SingleStream", "MultiStream"):
        add_audit(root / runs.main, scenario, "TEST01", passed=scenario != "Offline")
        if scenario != "MultiStream":
            add_audit(root / runs.main, scenario, "TEST04")
    proc = build(runs, tmp_path / "tree", "--division", "closed", *DEV, results=root)
    one_error(proc, "the tree was not built")
    assert "missing: resnet Offline: audit TEST01" in proc.stdout
    assert f"run {runs.main} Offline TEST01: it failed its verification" in proc.stdout
    assert "missing: resnet MultiStream: audit TEST04" in proc.stdout
    assert not (tmp_path / "tree").exists()


def test_closed_division_refuses_random_weights(runs: SubmissionRuns) -> None:
    with Store(store_path(runs.root)) as store:
        record = next(r for r in store.runs(RunFilter()) if r.name == runs.retired)
    test = record.result.tests[0]
    pick = TestPick(record, test, Setup.of(record.result, test.precision))
    rules = BenchmarkRules.of(record.result)
    assert rules is not None
    closed = performance_refusals(pick, rules, Request("closed", "edge", "v2.0", allow_short_runs=True, allow_subset=True))
    assert "random weights (the closed division measures the model's own weights)" in closed
    opened = performance_refusals(pick, rules, Request("open", "edge", "v2.0", allow_short_runs=True, allow_subset=True))
    assert opened == []


def test_closed_division_refuses_int8_calibrated_on_other_data(runs: SubmissionRuns) -> None:
    """A run whose int8 model was calibrated on anything but the official calibration set
    (result.json ``model.precision.closed_division`` false) is refused in the closed division only."""
    import dataclasses

    with Store(store_path(runs.root)) as store:
        record = store.find(runs.main)
    reason = "int8 calibrated on the first 500 samples of dataset 'imagenet', not the official calibration set"
    model = dataclasses.replace(record.result.model, extra={**record.result.model.extra, "precision": {
        "requested": "int8", "method": "transform", "closed_division": False, "closed_reason": reason}})
    record = dataclasses.replace(record, result=dataclasses.replace(record.result, model=model))
    test = next(t for t in record.result.tests if t.scenario == "Offline" and t.mode == "performance")
    pick = TestPick(record, test, Setup.of(record.result, test.precision))
    rules = BenchmarkRules.of(record.result)
    assert rules is not None
    dev = {"allow_short_runs": True, "allow_subset": True}
    closed = performance_refusals(pick, rules, Request("closed", "edge", "v6.1", seeds=LAYOUTS["v6.1"].seeds, **dev))
    assert f"its int8 precision: {reason}" in closed
    assert performance_refusals(pick, rules, Request("open", "edge", "v6.1", seeds=LAYOUTS["v6.1"].seeds, **dev)) == []


def test_a_run_with_another_rounds_loadgen_seeds_is_refused(runs: SubmissionRuns) -> None:
    """Each round has its own LoadGen seeds and its checker refuses others: a ResNet50 run
    (rules of v6.1) goes into v6.1's tree only, and the refusal names the way to another."""
    with Store(store_path(runs.root)) as store:
        record = store.find(runs.main)
    test = next(t for t in record.result.tests if t.scenario == "Offline" and t.mode == "performance")
    pick = TestPick(record, test, Setup.of(record.result, test.precision))
    rules = BenchmarkRules.of(record.result)
    assert rules is not None
    dev = {"allow_short_runs": True, "allow_subset": True}
    assert performance_refusals(pick, rules, Request("open", "edge", "v6.1", seeds=LAYOUTS["v6.1"].seeds, **dev)) == []
    refused = performance_refusals(pick, rules, Request("open", "edge", "v6.0", seeds=LAYOUTS["v6.0"].seeds, **dev))
    assert refused == [(f"LoadGen ran it with other random seeds than v6.0's (qsl_rng_seed {LAYOUTS['v6.1'].seeds[0]}, "
                       f"not {LAYOUTS['v6.0'].seeds[0]}), which the v6.0 checker refuses: mlpi runs a model with the "
                       "seeds of its rules' round (run it with --mlperf-conf and v6.0's mlperf.conf for this tree)")]


def test_audits_made_against_a_named_run_come_with_it(runs: SubmissionRuns, tmp_path: Path) -> None:
    """``mlpi run --audit TEST01 --against RUN`` makes a run holding only audits; naming RUN
    with --run brings them into the closed tree."""
    root = tmp_path / "results"
    shutil.copytree(runs.main_dir, root / runs.main)
    audits = root / f"{runs.main}-audits"
    shutil.copytree(runs.main_dir, audits)
    for scenario in ("Offline", "SingleStream", "MultiStream"):
        for test in ("TEST01", "TEST04"):
            add_audit(audits, scenario, test, reference_run=runs.main)
    result = json.loads((audits / "result.json").read_text())
    result.update(run_id=audits.name, tests=[])  # an audit-only run: no tests of its own
    (audits / "result.json").write_text(json.dumps(result))
    proc = build(runs, tmp_path / "tree", "--division", "closed", "--run", runs.main, *DEV, results=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    readme = (tmp_path / "tree" / "closed" / "acme" / "results" / SYSTEM / "resnet" / "Offline" / "README.md").read_text()
    assert f"| TEST01 | {audits.name} | passed |" in readme and f"| performance | {runs.main} |" in readme


def test_src_keeps_the_tuned_profile_a_run_was_made_with(runs: SubmissionRuns, tmp_path: Path) -> None:
    run = tmp_path / "results" / runs.main
    shutil.copytree(runs.main_dir, run)
    profile = tmp_path / "profile.json"
    profile.write_bytes(b'{"format": "mlpi-tuned-profile", "scenarios": {}}\n')
    plan = json.loads((run / "plan.json").read_text())
    recorded = {"path": str(profile), "sha256": hashlib.sha256(profile.read_bytes()).hexdigest(), "tune": {"trials": 7}}
    plan["extra"]["profile"] = recorded  # what `mlpi run --profile FILE` records in the plan
    (run / "plan.json").write_text(json.dumps(plan))
    with Store(tmp_path / "results" / "mlpi.sqlite") as store:
        record = store.index_run(run)
    write_src(tmp_path / "src", "src", [record], {runs.main: ["resnet Offline performance"]}, "mlpi submission build")
    folder = tmp_path / "src" / "mlpi" / runs.main
    assert (folder / "tuned_profile.json").read_bytes() == profile.read_bytes()
    facts = json.loads((folder / "run.json").read_text())
    assert facts["tuned_profile"] == {"recorded": recorded, "file": "tuned_profile.json"}
    profile.write_text("{}")  # changed since the run: recorded, not copied
    write_src(tmp_path / "src2", "src", [record], {}, "mlpi submission build")
    assert not (tmp_path / "src2" / "mlpi" / runs.main / "tuned_profile.json").exists()
    assert json.loads((tmp_path / "src2" / "mlpi" / runs.main / "run.json").read_text())["tuned_profile"]["file"].startswith(
        "not found unchanged")
