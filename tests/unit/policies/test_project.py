"""The project config: a valid one loads; every mistake is one message naming field and fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conveyor.policies.errors import ConfigInvalid, DataInvalid
from conveyor.policies.project import load_project, read_columns
from tests.conftest import REPO


def demo_config() -> dict:
    return yaml.safe_load((REPO / "conveyor.yaml").read_text())


def write(tmp_path: Path, document: object, name: str = "conveyor.yaml") -> Path:
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
    return path


def test_demo_config_loads_with_data_path_beside_the_file(tmp_path: Path) -> None:
    config = load_project(write(tmp_path, demo_config()))
    assert config.model_name == "loan-default"
    assert config.task == "classification"
    assert config.data == tmp_path / "data" / "loans.csv"
    assert config.columns[:3] == ("applicant_id", "event_timestamp", "defaulted")
    assert "purpose" in config.features.categorical


def error_for(tmp_path: Path, document: object) -> ConfigInvalid:
    with pytest.raises(ConfigInvalid) as caught:
        load_project(write(tmp_path, document))
    return caught.value


def test_missing_key_is_named(tmp_path: Path) -> None:
    document = demo_config()
    del document["target"]
    error = error_for(tmp_path, document)
    assert "`target` is missing" in error.message
    assert "needs model_name, task" in error.hint


def test_misspelt_key_gets_a_suggestion(tmp_path: Path) -> None:
    document = demo_config()
    document["featurs"] = document.pop("features")
    error = error_for(tmp_path, document)
    assert "`featurs` is not a known key (did you mean `features`?)" in error.message


def test_wrong_type_names_the_nested_field(tmp_path: Path) -> None:
    document = demo_config()
    document["features"]["numeric"] = 5
    error = error_for(tmp_path, document)
    assert "`features.numeric`" in error.message


def test_unknown_task_is_refused(tmp_path: Path) -> None:
    document = demo_config()
    document["task"] = "clasification"
    error = error_for(tmp_path, document)
    assert "`task`" in error.message and "'clasification'" in error.message


def test_test_fraction_out_of_range(tmp_path: Path) -> None:
    document = demo_config()
    document["split"]["test_fraction"] = 1.5
    assert "`split.test_fraction`" in error_for(tmp_path, document).message


def test_unknown_estimator_module(tmp_path: Path) -> None:
    document = demo_config()
    document["estimator"]["class"] = "sklearn.nonexistent.Thing"
    error = error_for(tmp_path, document)
    assert "module 'sklearn.nonexistent' cannot be imported" in error.message


def test_unknown_estimator_class_gets_a_suggestion(tmp_path: Path) -> None:
    document = demo_config()
    document["estimator"]["class"] = "sklearn.ensemble.RandomForestClasifier"
    error = error_for(tmp_path, document)
    assert "has no class 'RandomForestClasifier'" in error.message
    assert "sklearn.ensemble.RandomForestClassifier" in error.hint


def test_estimator_not_an_import_path(tmp_path: Path) -> None:
    document = demo_config()
    document["estimator"]["class"] = "RandomForest"
    assert "`estimator.class`: must be an import path" in error_for(tmp_path, document).message


def test_estimator_params_refused(tmp_path: Path) -> None:
    document = demo_config()
    document["estimator"]["params"] = {"n_trees": 5}
    error = error_for(tmp_path, document)
    assert "`estimator.params` were refused" in error.message and "n_trees" in error.message


def test_column_used_twice(tmp_path: Path) -> None:
    document = demo_config()
    document["features"]["numeric"].append("defaulted")
    assert "'defaulted' named more than once" in error_for(tmp_path, document).message


def test_no_features(tmp_path: Path) -> None:
    document = demo_config()
    document["features"] = {"numeric": [], "categorical": []}
    assert "lists no columns" in error_for(tmp_path, document).message


def test_column_the_data_lacks_is_named_with_a_suggestion(tmp_path: Path) -> None:
    document = demo_config()
    document["features"]["numeric"][0] = "agee"
    (tmp_path / "data").mkdir()
    header = ",".join(c for c in load_columns() if c != "agee")
    (tmp_path / "data" / "loans.csv").write_text(header + "\n")
    error = error_for(tmp_path, document)
    assert "does not have: 'agee' (did you mean 'age'?)" in error.message
    assert "the file has: applicant_id" in error.hint


def load_columns() -> list[str]:
    document = demo_config()
    return [
        document["entity_key"],
        document["event_timestamp"],
        document["target"],
        *document["features"]["numeric"],
        *document["features"]["categorical"],
    ]


def test_malformed_yaml(tmp_path: Path) -> None:
    error = error_for(tmp_path, "model_name: [unclosed\n")
    assert "is not valid YAML" in error.message
    assert "\n" not in error.message


def test_not_a_mapping(tmp_path: Path) -> None:
    assert "must be a YAML mapping" in error_for(tmp_path, "- a\n- b\n").message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigInvalid, match=r"No file at .*nope\.yaml"):
        load_project(tmp_path / "nope.yaml")


def test_read_columns_refuses_non_utf8_and_empty_files(tmp_path: Path) -> None:
    garbled = tmp_path / "garbled.csv"
    garbled.write_bytes(b"a,b\n\xff\xfe\x00,1\n" * 3)
    with pytest.raises(DataInvalid, match="not UTF-8"):
        read_columns(garbled)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataInvalid, match="is empty"):
        read_columns(empty)


def test_boolean_features_are_numbers_to_the_model_and_generated_keys_are_keys_only(tmp_path: Path) -> None:
    config = demo_config()
    config["features"]["boolean"] = ["first_loan"]
    config["generated"] = ["event_timestamp"]
    loaded = load_project(write(tmp_path, config))
    assert "first_loan" in loaded.features.all and "first_loan" in loaded.features.numbers
    assert "first_loan" not in loaded.features.numeric and loaded.generated == ("event_timestamp",)
    config["generated"] = ["age"]
    error = error_for(tmp_path, config)
    assert "`generated` names 'age': only the entity key and the event timestamp can be generated" in error.message
    del config["generated"]
    config["features"]["booleans"] = ["first_loan"]
    assert "(did you mean `boolean`?)" in error_for(tmp_path, config).message
