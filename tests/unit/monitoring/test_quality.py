"""Labels join the prediction they judge (entity + time); quality is judged per champion version."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from conveyor.monitoring.quality import join_labels, quality_of, read_labels
from conveyor.policies.drift import Quality
from conveyor.policies.errors import DataInvalid
from conveyor.policies.project import load_project
from conveyor.registry.events import EventKind, check_details
from tests.conftest import REPO


@pytest.fixture
def project():
    return load_project(REPO / "conveyor.yaml", check_data=False)


def _log(rows: list[tuple[str, str | None, str, float, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "request_id": f"r{i}",
                "row": 0,
                "time": pd.Timestamp(t, tz="UTC"),
                "version": v,
                "prediction": p,
                "served_by": "champion",
                "entity": e,
                "event_time": et,
            }
            for i, (e, et, t, p, v) in enumerate(rows)
        ]
    )


def test_each_label_joins_the_latest_earlier_prediction_of_its_entity(project) -> None:
    log = _log(
        [
            ("A1", "2026-08-01T10:00:00Z", "2026-11-21 09:00", 0.9, "1"),
            ("A1", "2026-08-03T10:00:00Z", "2026-11-21 09:01", 0.2, "1"),
            ("A2", None, "2026-11-21 09:02", 0.7, "2"),
        ]
    )
    labels = pd.DataFrame(
        {
            "applicant_id": ["A1", "A1", "A2", "A3"],
            "defaulted": [1, 0, 1, 0],
            "event_timestamp": pd.to_datetime(
                ["2026-08-01T10:00:00Z", "2026-08-03T12:00:00Z", "2026-11-21T09:30:00Z", "2026-08-01T10:00:00Z"],
                utc=True,
            ),
        }
    )
    joined = join_labels(labels, log, project, tolerance_hours=24).sort_values("request_id")
    assert list(joined["request_id"]) == ["r0", "r1", "r2"]  # A3 was never predicted
    assert list(joined["label"]) == [1, 0, 1]
    assert join_labels(labels, log, project, tolerance_hours=1)["request_id"].tolist() == [
        "r0",
        "r2",
    ]  # r1 is 2 h early


def test_quality_is_judged_on_the_champions_predictions(project) -> None:
    good = pd.DataFrame({"version": "1", "label": [0, 1] * 150, "prediction": [0.1, 0.9] * 150})
    bad = pd.DataFrame({"version": "1", "label": [0, 1] * 150, "prediction": [0.9, 0.1] * 150})
    policy = Quality(metric="roc_auc", min=0.75, min_labelled=200)
    assert quality_of(good, project, policy, "1").status == "ok"
    result = quality_of(bad, project, policy, "1")
    assert result.status == "breach" and result.value == pytest.approx(0.0) and result.labelled == 300
    assert quality_of(good.head(100), project, policy, "1").status == "not_enough_data"
    assert quality_of(good, project, policy, "2").status == "not_enough_data"


def test_a_labels_file_without_the_keys_is_refused(project, tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("applicant_id,defaulted\nA1,1\n")
    with pytest.raises(DataInvalid, match=r"lacks the column.*event_timestamp"):
        read_labels(path, project)
    path.write_text("applicant_id,event_timestamp,defaulted\nA1,not a time,1\n")
    with pytest.raises(DataInvalid, match="1 empty or unreadable"):
        read_labels(path, project)
    path.write_text(f"applicant_id,event_timestamp,defaulted\nA1,{datetime(2026, 8, 1, tzinfo=UTC).isoformat()},1\n")
    frame, complete = read_labels(path, project)
    assert len(frame) == 1 and not complete


def test_a_metric_the_labels_cannot_define_is_the_verdict_undefined_with_its_reason(project) -> None:
    one_class = pd.DataFrame({"version": "1", "label": [0] * 300, "prediction": [0.1, 0.4] * 150})
    result = quality_of(one_class, project, Quality(metric="roc_auc", min=0.75, min_labelled=200), "1")
    assert result.status == "undefined" and result.value is None and result.labelled == 300
    assert "one class (0)" in result.describe()
    assert result.per_version["1"]["roc_auc"] is None  # JSON-safe: no NaN reaches the ledger
    check_details(EventKind.QUALITY_CHECKED, {"model": "loan-default", **result.to_dict(), "trigger": None})
    f1 = quality_of(one_class, project, Quality(metric="f1", min=0.5, min_labelled=200), "1")
    assert f1.status == "undefined"  # no positive label and none predicted: f1 is 0/0
    loss = quality_of(one_class, project, Quality(metric="log_loss", max=0.5, min_labelled=200), "1")
    assert loss.status == "ok" and loss.value == pytest.approx(
        0.3081, abs=1e-3
    )  # -(ln 0.9 + ln 0.6) / 2: defined with one class
