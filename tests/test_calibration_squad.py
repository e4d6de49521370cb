"""The squad dataset opened by a calibration list: MLCommons' BERT feature indices or question
ids, read from the run's own feature cache, and the lists it refuses."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlpi.core.contract.backend import TensorSpec
from mlpi.core.contract.dataset import DataParams, DatasetRequest
from mlpi.core.contract.errors import DatasetError
from mlpi.datasets.squad import Squad11, SquadDataset
from mlpi.models.bert import DATA, INPUTS
from mlpi.models.calibration_lists import SQUAD
from mlpi.testing.squad_fixture import write_squad_fixture

#: The fixture's features: q0 and q1 have one each, q2's long context has five (rows 2..6).
FEATURES_OF = {"q0": [0], "q1": [1], "q2": [2, 3, 4, 5, 6]}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("squad-calibration")
    write_squad_fixture(path)
    return path


def open_squad(folder: Path, names: tuple[str, ...] | None = None, params: DataParams = DATA,
               inputs: Any = INPUTS) -> SquadDataset:
    dataset = Squad11().open(DatasetRequest(inputs=inputs, params=params, path=folder, names=names))
    assert isinstance(dataset, SquadDataset)
    return dataset


def fed(dataset: SquadDataset) -> dict[str, np.ndarray]:
    """Every sample's feeds, loaded as int8 calibration loads them (load, then one by one)."""
    indices = list(range(dataset.count))
    dataset.load(indices)
    rows = [dataset.sample(i) for i in indices]
    return {name: np.concatenate([row[name] for row in rows]) for name in rows[0]}


def with_params(**changes: Any) -> DataParams:
    return DataParams({**DATA.values, **changes})


def test_squad_reads_calibration_lists() -> None:
    assert Squad11.opens_by_name
    indices = SQUAD.names()
    assert len(indices) == 100 and all(name.isdigit() and int(name) < 10833 for name in indices)


def test_feature_indices_give_the_runs_features_in_list_order(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = fed(open_squad(folder))
    import mlpi.datasets.squad as squad_module

    def no_build(*args: object) -> None:
        raise AssertionError("calibration built the features again instead of reading the run's cache")

    monkeypatch.setattr(squad_module, "build_features", no_build)
    dataset = open_squad(folder, ("2", "0"))
    assert dataset.count == 2
    calibration = fed(dataset)
    for name in ("input_ids", "input_mask", "segment_ids"):
        assert np.array_equal(calibration[name], run[name][[2, 0]]), name
    assert not np.array_equal(calibration["input_ids"][0], calibration["input_ids"][1])
    assert dataset.describe()["selected_by"] == "feature indices"


def test_question_ids_give_every_feature_of_each_question_in_list_order(folder: Path) -> None:
    run = fed(open_squad(folder))
    dataset = open_squad(folder, ("q2", "q0"))
    rows = FEATURES_OF["q2"] + FEATURES_OF["q0"]
    assert dataset.count == len(rows)
    calibration = fed(dataset)
    assert np.array_equal(calibration["input_ids"], run["input_ids"][rows])
    assert np.array_equal(calibration["segment_ids"], run["segment_ids"][rows])
    assert dataset.ground_truth().features.example.tolist() == [2] * 5 + [0]


def test_an_index_past_the_features_is_named_with_the_count(folder: Path) -> None:
    with pytest.raises(DatasetError, match=r"feature 7, but the data has 7 features") as caught:
        open_squad(folder, ("0", "7"))
    assert caught.value.hint
    with pytest.raises(DatasetError, match=r"feature -1\b"):
        open_squad(folder, ("-1",))


def test_an_unknown_question_id_is_named(folder: Path) -> None:
    with pytest.raises(DatasetError) as caught:
        open_squad(folder, ("q1", "nope", "gone"))
    assert caught.value.message.endswith("2 question(s) the SQuAD file does not hold: nope, gone")


def test_a_list_mixing_indices_and_question_ids_is_refused(folder: Path) -> None:
    with pytest.raises(DatasetError, match=r"mixes feature indices \(0\) with question ids \(q1\)"):
        open_squad(folder, ("0", "q1"))


@pytest.mark.parametrize("changes", [{"doc_stride": 64}, {"seq_len": 256}, {"max_query_len": 32}])
def test_indices_are_refused_for_features_made_otherwise(folder: Path, changes: dict[str, int]) -> None:
    inputs = [dataclasses.replace(spec, shape=(None, None)) for spec in INPUTS]
    key, value = next(iter(changes.items()))
    with pytest.raises(DatasetError, match=rf"defined for .*{key} {value} \(not "):
        open_squad(folder, ("0",), with_params(**changes), inputs)
    # question ids name questions, whatever the windows: still served
    assert open_squad(folder, ("q0",), with_params(**changes), inputs).count >= 1


def test_a_calibration_dataset_feeds_the_int8_models_input_names(folder: Path) -> None:
    inputs = [TensorSpec(n, "int64", (None, 384)) for n in ("input_ids", "attention_mask", "token_type_ids")]
    run = fed(open_squad(folder))
    calibration = fed(open_squad(folder, ("1",), inputs=inputs))
    assert np.array_equal(calibration["attention_mask"], run["input_mask"][[1]])
    assert np.array_equal(calibration["token_type_ids"], run["segment_ids"][[1]])
