"""The inference log keeps every entry, writes whole files only, and loses nothing on close."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conveyor.registry.inference_log import InferenceLog, LogEntry, read_log

START = datetime(2026, 9, 30, 23, 59, 50, tzinfo=UTC)


def entry(i: int, when: datetime = START) -> LogEntry:
    return LogEntry(
        f"req-{i:05d}",
        when + timedelta(seconds=i % 20),
        "loan-default",
        "3",
        {"income": 1000.0 + i, "purpose": "car"},
        prediction=i / 10_000,
        served_by="champion",
    )


def test_everything_recorded_is_readable_after_close(tmp_path: Path) -> None:
    with InferenceLog(tmp_path, batch_rows=64) as log:
        for i in range(1000):
            log.record(entry(i))
    frame = read_log(tmp_path)
    assert len(frame) == 1000 == log.written and frame["request_id"].is_unique
    assert {"feature.income", "feature.purpose", "prediction", "version", "served_by"} <= set(frame.columns)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["date=2026-09-30", "date=2026-10-01"]  # split by day
    assert not list(tmp_path.rglob("*.partial"))


def test_small_batches_are_flushed_by_time_without_a_close(tmp_path: Path) -> None:
    log = InferenceLog(tmp_path, batch_rows=10_000, batch_seconds=0.2)
    try:
        log.record(entry(1))
        deadline = time.monotonic() + 5
        while log.written < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(read_log(tmp_path)) == 1
    finally:
        log.close()


def test_many_threads_recording_at_once_lose_nothing(tmp_path: Path) -> None:
    log = InferenceLog(tmp_path, batch_rows=100)
    threads = [
        threading.Thread(target=lambda t=t: [log.record(entry(t * 500 + i)) for i in range(500)]) for t in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    assert len(read_log(tmp_path)) == 4000


def test_recording_after_close_is_an_error_and_windows_filter_by_time(tmp_path: Path) -> None:
    with InferenceLog(tmp_path) as log:
        for i in range(20):
            log.record(entry(i))
    with pytest.raises(RuntimeError, match="closed"):
        log.record(entry(99))
    window = read_log(tmp_path, since=START + timedelta(seconds=5), until=START + timedelta(seconds=10))
    assert len(window) == 5
    assert read_log(tmp_path / "nothing").empty
