"""Where each file of a submission tree goes, per round.

Follows the path tables of MLCommons' submission checker (``tools/submission/
submission_checker/constants.py``: ``PERFORMANCE_LOG_PATH``, ``ACCURACY_LOG_PATH``,
``MEASUREMENTS_PATH``, ``TEST01_PERF_PATH``, ``SYSTEM_PATH``, ``SRC_PATH``...) and its
``submission_structure.md``. From v6.0 on, a scenario's folder holds everything about it
(``performance/run_1``, ``accuracy``, ``TEST0x``, ``measurements.json``, ``user.conf``,
``README.md``) and the code folder is ``src``; v5.0 and v5.1 kept measurements and compliance
runs in trees of their own (``measurements/``, ``compliance/``) and the code in ``code``.
Every path here is relative to ``<division>/<submitter>``.

Each round also has its own LoadGen random seeds (the checker's ``MODEL_CONFIG[round]["seeds"]``,
LoadGen's ``mlperf.conf`` of that round, :data:`mlpi.core.contract.rounds.ROUND_SEEDS`): the
checker refuses a performance run made with another round's seeds. mlpi runs each model with
the seeds of its rules' round, so a run fits the tree of that round.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from mlpi.core.contract.errors import UsageError
from mlpi.core.contract.rounds import ROUND_SEEDS

#: The round ``mlpi submission build`` and ``check`` use unless told otherwise.
DEFAULT_ROUND = "v6.1"
DIVISIONS: tuple[str, ...] = ("closed", "open")
#: The open division's map from a submitter's model names to MLPerf's benchmarks.
MODEL_MAPPING_FILE = "model_mapping.json"


@dataclass(frozen=True)
class Layout:
    """The tree of one round. ``combined``: each scenario's folder holds its measurements
    and compliance runs (v6.0 on); otherwise they live under ``measurements/`` and
    ``compliance/`` beside ``results/``."""

    round: str
    code_folder: str
    combined: bool
    #: LoadGen's ``qsl_rng_seed``, ``sample_index_rng_seed`` and ``schedule_rng_seed`` of the round.
    seeds: tuple[int, int, int]

    def system_file(self, system: str) -> PurePosixPath:
        return PurePosixPath("systems", f"{system}.json")

    def scenario_dir(self, system: str, benchmark: str, scenario: str) -> PurePosixPath:
        return PurePosixPath("results", system, benchmark, scenario)

    def performance_dir(self, system: str, benchmark: str, scenario: str) -> PurePosixPath:
        return self.scenario_dir(system, benchmark, scenario) / "performance" / "run_1"

    def accuracy_dir(self, system: str, benchmark: str, scenario: str) -> PurePosixPath:
        return self.scenario_dir(system, benchmark, scenario) / "accuracy"

    def audit_dir(self, system: str, benchmark: str, scenario: str, test: str) -> PurePosixPath:
        if self.combined:
            return self.scenario_dir(system, benchmark, scenario) / test
        return PurePosixPath("compliance", system, benchmark, scenario, test)

    def measurements_dir(self, system: str, benchmark: str, scenario: str) -> PurePosixPath:
        """The folder holding ``user.conf`` and ``README.md`` next to the measurements file."""
        if self.combined:
            return self.scenario_dir(system, benchmark, scenario)
        return PurePosixPath("measurements", system, benchmark, scenario)

    def measurements_file(self, system: str, benchmark: str, scenario: str) -> PurePosixPath:
        folder = self.measurements_dir(system, benchmark, scenario)
        return folder / ("measurements.json" if self.combined else f"{system}_{scenario}.json")

    def code_dir(self) -> PurePosixPath:
        return PurePosixPath(self.code_folder)


#: The rounds whose tree mlpi can write, oldest first.
LAYOUTS: dict[str, Layout] = {
    "v5.0": Layout("v5.0", "code", False, ROUND_SEEDS["v5.0"]),
    "v5.1": Layout("v5.1", "code", False, ROUND_SEEDS["v5.1"]),
    "v6.0": Layout("v6.0", "src", True, ROUND_SEEDS["v6.0"]),
    "v6.1": Layout("v6.1", "src", True, ROUND_SEEDS["v6.1"]),
}


def layout_for(round_name: str) -> Layout:
    """The tree of ``round_name`` (``v6.1``); a :class:`UsageError` naming the rounds mlpi writes."""
    layout = LAYOUTS.get(round_name)
    if layout is None:
        raise UsageError(
            f"mlpi writes submission trees for rounds {', '.join(LAYOUTS)}, not '{round_name}'",
            f"pass --version {DEFAULT_ROUND} (the current round) or another of those",
        )
    return layout


def round_key(round_name: str) -> tuple[int, ...]:
    """``v6.1`` as ``(6, 1)``, for ordering rounds; ``()`` for a name that is not a round."""
    parts = round_name.lstrip("vV").split(".")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else ()
