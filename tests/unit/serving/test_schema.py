"""The request schema refuses every malformed request, naming the field."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from conveyor.serving.schema import Column, columns_from_mlmodel, request_model

COLUMNS = [Column("income", "double"), Column("term", "long"), Column("purpose", "string")]
Request = request_model(COLUMNS, max_rows=3)
GOOD = {"income": 52_000.0, "term": 36, "purpose": "car"}


def refused(payload: dict) -> str:
    with pytest.raises(ValidationError) as caught:
        Request.model_validate(payload)
    return str(caught.value)


def test_good_rows_pass_and_null_is_allowed_where_the_model_imputes() -> None:
    request = Request.model_validate({"rows": [GOOD, {**GOOD, "income": None}], "key": "user-7"})
    assert len(request.rows) == 2 and request.key == "user-7"
    assert Request.model_validate({"rows": [{**GOOD, "income": 52_000}]}).rows[0].income == 52_000


@pytest.mark.parametrize(
    "row, field",
    [
        ({**GOOD, "income": "52000"}, "income"),  # a string where a number belongs
        ({**GOOD, "term": 36.5}, "term"),  # a fraction where an integer belongs
        ({**GOOD, "purpose": 3}, "purpose"),  # a number where text belongs
        ({k: v for k, v in GOOD.items() if k != "term"}, "term"),  # missing
        ({**GOOD, "extra": 1}, "extra"),  # unknown
        ({**GOOD, "income": math.nan}, "income"),
        ({**GOOD, "income": math.inf}, "income"),
    ],
)
def test_bad_rows_are_refused_naming_the_field(row: dict, field: str) -> None:
    assert f"rows.0.{field}" in refused({"rows": [row]})


def test_batch_size_is_bounded_and_empty_batches_refused() -> None:
    assert "rows" in refused({"rows": [GOOD] * 4})
    assert "rows" in refused({"rows": []})
    assert "other" in refused({"rows": [GOOD], "other": True})


def test_columns_come_from_a_real_mlflow_signature_as_an_mlmodel_file_holds_it(tmp_path) -> None:
    import yaml
    from mlflow.models import Model, infer_signature

    frame = pd.DataFrame({"income": [1.0, 2.0], "term": np.array([12, 24], dtype="int64"), "purpose": ["a", "b"]})
    Model(signature=infer_signature(frame, np.array([0.1, 0.2]))).save(tmp_path / "MLmodel")
    columns = columns_from_mlmodel(yaml.safe_load((tmp_path / "MLmodel").read_text()))
    assert columns == [Column("income", "double"), Column("term", "long"), Column("purpose", "string")]


def test_a_boolean_column_takes_json_booleans_only_and_reaches_the_model_as_numbers() -> None:
    from conveyor.serving.models import frame_of

    columns = [Column("autopay", "boolean"), Column("balance", "double")]
    model = request_model(columns)
    rows = model.model_validate_json('{"rows": [{"autopay": true, "balance": 2}, {"autopay": null, "balance": 1.5}]}')
    with pytest.raises(ValidationError, match="autopay"):
        model.model_validate_json('{"rows": [{"autopay": 1, "balance": 2}]}')
    frame = frame_of([r.__dict__ for r in rows.rows], tuple(columns))
    assert frame["autopay"].tolist()[0] == 1.0 and str(frame["autopay"].dtype) == "float64"
    assert frame["autopay"].isna().tolist() == [False, True]
