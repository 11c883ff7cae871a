"""The ledger: append, read, walk; every kind of tampering is caught and the link named."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
import sqlalchemy as sa

from conveyor.policies.errors import LedgerCorrupt, LedgerError, NotFound
from conveyor.registry.digests import bytes_digest
from conveyor.registry.ledger import GENESIS, Draft, Ledger, event_hash
from conveyor.registry.lineage import downstream, upstream

D = {name: bytes_digest(name.encode()) for name in ("data", "features", "model", "bundle", "report", "other")}


def small_chain(ledger: Ledger) -> None:
    """data -> features -> model -> bundle, and data -> report (a diamond-free fan-out)."""
    ledger.append("dataset.versioned", outputs=[D["data"]], details={"path": "data.csv"})
    ledger.append("features.built", inputs=[D["data"]], outputs=[D["features"]])
    ledger.append("model.trained", inputs=[D["features"]], outputs=[D["model"]], details={"auc": 0.86})
    ledger.append("model.signed", inputs=[D["model"]], outputs=[D["bundle"]])
    ledger.append("data.validated", inputs=[D["data"]], outputs=[D["report"]])


def test_append_and_get_round_trip(ledger: Ledger) -> None:
    first = ledger.append("dataset.versioned", outputs=[D["data"]], details={"rows": 3, "nested": {"b": [1, 2]}})
    second = ledger.append("model.trained", inputs=[D["data"]], outputs=[D["model"]], actor="ci")
    assert (first.seq, second.seq) == (1, 2)
    assert first.prev_hash == GENESIS and second.prev_hash == first.hash
    assert ledger.get(1) == first
    assert ledger.get(2).actor == "ci" and ledger.get(1).actor == "tester"
    assert ledger.get(1).details == {"rows": 3, "nested": {"b": [1, 2]}}
    assert ledger.count() == 2
    assert first.time < second.time or first.time == second.time
    with pytest.raises(NotFound, match="no event #3"):
        ledger.get(3)


def test_append_refuses_bad_input_and_writes_nothing(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="not a content address"):
        ledger.append_many([Draft("ok", outputs=[D["data"]]), Draft("bad", inputs=["data.csv"])])
    with pytest.raises(ValueError):
        ledger.append("nan", details={"score": float("nan")})
    assert ledger.count() == 0
    assert ledger.verify_chain().ok


def test_upstream_walks_to_the_data(ledger: Ledger) -> None:
    small_chain(ledger)
    walk = upstream(ledger, D["bundle"])
    assert [e.kind for e in walk.events] == ["model.signed", "model.trained", "features.built", "dataset.versioned"]
    assert walk.levels == {4: 1, 3: 2, 2: 3, 1: 4}
    assert not walk.truncated


def test_downstream_finds_everything_the_data_fed(ledger: Ledger) -> None:
    small_chain(ledger)
    walk = downstream(ledger, D["data"])
    assert {e.kind for e in walk.events} == {"features.built", "data.validated", "model.trained", "model.signed"}
    assert downstream(ledger, D["bundle"]).events == ()


def test_depth_limits_the_walk_and_says_so(ledger: Ledger) -> None:
    small_chain(ledger)
    walk = upstream(ledger, D["bundle"], depth=2)
    assert [e.kind for e in walk.events] == ["model.signed", "model.trained"]
    assert walk.truncated
    assert not upstream(ledger, D["bundle"], depth=4).truncated


def test_walk_ignores_a_forged_index_row(ledger: Ledger, url: str) -> None:
    small_chain(ledger)
    # claim event 5 (data.validated) produced the model
    tamper(url, "INSERT INTO ledger_links (digest, role, seq) VALUES (:d, 'out', 5)", d=D["model"])
    assert "data.validated" not in {e.kind for e in upstream(ledger, D["bundle"]).events}
    report = ledger.verify_chain()
    assert (report.ok, report.broken_at) == (False, 5)
    assert "lineage index" in report.reason


def test_intact_chain_verifies(ledger: Ledger) -> None:
    small_chain(ledger)
    report = ledger.verify_chain()
    assert report.ok and report.events == 5 and report.head == ledger.get(5).hash
    report.raise_if_broken()  # does not raise


# -- tampering, straight in the database -----------------------------------------------------


def tamper(url: str, *statements: str, **params: object) -> None:
    """Change the database behind the ledger's back, in one transaction."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(sa.text(statement), params)
    finally:
        engine.dispose()


def broken(ledger: Ledger) -> tuple[int | None, str]:
    report = ledger.verify_chain()
    assert not report.ok
    return report.broken_at, report.reason or ""


def test_edited_payload_is_named(ledger: Ledger, url: str) -> None:
    small_chain(ledger)
    tamper(url, "UPDATE ledger_events SET details = :d WHERE seq = 3", d='{"auc":0.99}')
    at, reason = broken(ledger)
    assert at == 3 and "no longer matches its hash" in reason
    with pytest.raises(LedgerCorrupt, match="broken at event #3"):
        ledger.verify_chain().raise_if_broken()


def test_edited_payload_with_recomputed_hash_breaks_the_next_link(ledger: Ledger, url: str) -> None:
    small_chain(ledger)
    event = ledger.get(3)
    forged_hash = event_hash(
        3, event.kind, event.actor, event.time, event.inputs, event.outputs, {"auc": 0.99}, event.prev_hash
    )
    tamper(url, "UPDATE ledger_events SET details = :d, hash = :h WHERE seq = 3", d='{"auc":0.99}', h=forged_hash)
    at, reason = broken(ledger)
    assert at == 4 and "does not follow #3" in reason


def test_deleted_row_is_named(ledger: Ledger, url: str) -> None:
    small_chain(ledger)
    tamper(url, "DELETE FROM ledger_events WHERE seq = 2")
    at, reason = broken(ledger)
    assert at == 3 and "event #2 is missing" in reason


def test_deleted_last_row_is_caught_by_the_head(ledger: Ledger, url: str) -> None:
    small_chain(ledger)
    tamper(url, "DELETE FROM ledger_events WHERE seq = 5", "DELETE FROM ledger_links WHERE seq = 5")
    at, reason = broken(ledger)
    assert at == 5 and "head records #5 but the last event is #4" in reason


def test_reordered_rows_are_caught(ledger: Ledger, url: str) -> None:
    small_chain(ledger)
    swap = [
        f"UPDATE {table} SET seq = {new} WHERE seq = {old}"  # swap events 2 and 3, index and all
        for table in ("ledger_events", "ledger_links")
        for old, new in ((2, -1), (3, 2), (-1, 3))
    ]
    tamper(url, *swap)
    at, reason = broken(ledger)
    assert at == 2 and "does not follow #1" in reason


def test_inserted_forged_row_is_caught(ledger: Ledger, url: str) -> None:
    small_chain(ledger)
    last = ledger.get(5)
    # A well-formed event appended behind the ledger's back: its hash is right, the head is not.
    forged = event_hash(6, "model.promoted", "mallory", last.time, [D["model"]], [D["other"]], {}, last.hash)
    tamper(
        url,
        "INSERT INTO ledger_events (seq, kind, actor, time, inputs, outputs, details, prev_hash, hash) "
        "VALUES (6, 'model.promoted', 'mallory', :t, :i, :o, '{}', :p, :h)",
        "INSERT INTO ledger_links (digest, role, seq) VALUES (:m, 'in', 6), (:x, 'out', 6)",
        t=last.time,
        i=f'["{D["model"]}"]',
        o=f'["{D["other"]}"]',
        p=last.hash,
        h=forged,
        m=D["model"],
        x=D["other"],
    )
    at, reason = broken(ledger)
    assert at == 6 and "head records #5 but the last event is #6" in reason


def test_row_inserted_in_the_middle_is_caught(ledger: Ledger, url: str) -> None:
    small_chain(ledger)
    prev = ledger.get(2).hash
    time = "2026-01-01T00:00:00.000000Z"
    forged = event_hash(3, "x", "mallory", time, [], [], {}, prev)
    shift = [
        f"UPDATE {table} SET seq = {seq + 1} WHERE seq = {seq}"  # make room at 3
        for seq in (5, 4, 3)
        for table in ("ledger_events", "ledger_links")
    ]
    tamper(
        url,
        *shift,
        "INSERT INTO ledger_events (seq, kind, actor, time, inputs, outputs, details, prev_hash, hash) "
        "VALUES (3, 'x', 'mallory', :t, '[]', '[]', '{}', :p, :h)",
        t=time,
        p="e" * 64,
        h=forged,
    )
    at, _ = broken(ledger)
    assert at == 3


def test_not_a_ledger_is_a_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(LedgerError, match="Could not open the ledger"):
        Ledger(f"sqlite:///{junk}")
    with pytest.raises(LedgerError, match="not a database URL"):
        Ledger("not a url")


# -- several processes at once ---------------------------------------------------------------


def _append_many(url: str, worker: int, count: int) -> None:
    with Ledger(url, actor=f"worker-{worker}") as ledger:
        for i in range(count):
            ledger.append("concurrent", outputs=[bytes_digest(f"{worker}-{i}".encode())], details={"i": i})


@pytest.mark.slow
def test_four_processes_appending_make_one_valid_chain(url: str) -> None:
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_many, args=(url, w, 250)) for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=240)
        assert process.exitcode == 0
    with Ledger(url) as ledger:
        report = ledger.verify_chain()
        assert report.ok, report.reason
        assert report.events == 1000 == ledger.count()
        per_worker: dict[str, int] = {}
        for event in ledger.iter_events():
            per_worker[event.actor] = per_worker.get(event.actor, 0) + 1
        assert per_worker == {f"worker-{w}": 250 for w in range(4)}
