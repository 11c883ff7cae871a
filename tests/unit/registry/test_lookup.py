"""Start points of lineage queries: files, digests, events, deployments, times, and what is not one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conveyor.policies.errors import ConveyorError, NotFound
from conveyor.registry.digests import bytes_digest, file_digest
from conveyor.registry.events import EventKind
from conveyor.registry.ledger import Ledger, ledger_time
from conveyor.registry.lookup import find_start, parse_time, serving_at


def d(name: str) -> str:
    return bytes_digest(name.encode())


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    with Ledger(f"sqlite:///{tmp_path / 'ledger.db'}", actor="tester") as opened:
        yield opened


def deploy(ledger: Ledger, version: str, role: str, at: datetime) -> int:
    details = {"name": "m", "version": version, "role": role, "at": ledger_time(at), "instance": "i"}
    from conveyor.registry.ledger import Draft

    return ledger.append_many(
        [
            Draft(
                EventKind.MODEL_DEPLOYED.value,
                (d(f"v{version}"),),
                (d(f"dep{version}{role}"),),
                details,
                time=ledger_time(at),
            )
        ]
    )[0].seq


def test_a_file_is_found_by_its_content(tmp_path: Path, ledger: Ledger) -> None:
    path = tmp_path / "data.csv"
    path.write_text("a,b\n1,2\n")
    start = find_start(str(path), ledger)
    assert start.digests == (file_digest(path),) and str(path) in start.label


def test_a_digest_with_or_without_its_prefix(ledger: Ledger) -> None:
    digest = d("x")
    assert find_start(digest, ledger).digests == (digest,)
    assert find_start(digest.removeprefix("sha256:"), ledger).digests == (digest,)


def test_event_and_deployment_numbers(ledger: Ledger) -> None:
    other = ledger.append("custom.kind", outputs=[d("o")])
    seq = deploy(ledger, "1", "champion", datetime.now(UTC))
    assert find_start(f"deployment:{seq}", ledger).digests == (d("dep1champion"),)
    assert find_start(f"event:{other.seq}", ledger).note.startswith(f"#{other.seq} custom.kind")
    with pytest.raises(NotFound, match="not a deployment"):
        find_start(f"deployment:{other.seq}", ledger)


def test_what_is_none_of_these_says_which_forms_exist(ledger: Ledger) -> None:
    with pytest.raises(NotFound, match="neither a file here") as caught:
        find_start("no-such-thing", ledger)
    assert "MODEL@ALIAS" in caught.value.hint and "request:ID" in caught.value.hint


def test_times_without_an_offset_are_utc_and_bad_ones_are_refused() -> None:
    assert parse_time("2026-11-21T14:30") == datetime(2026, 11, 21, 14, 30, tzinfo=UTC)
    assert parse_time("2026-11-21T15:30+01:00") == datetime(2026, 11, 21, 14, 30, tzinfo=UTC)
    with pytest.raises(ConveyorError, match="is not a time"):
        parse_time("yesterday")


def test_serving_at_a_time_is_the_champion_then_and_a_canary_still_under_analysis(ledger: Ledger) -> None:
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    deploy(ledger, "1", "champion", t0)
    deploy(ledger, "2", "canary", t0 + timedelta(hours=1))
    deploy(ledger, "2", "champion", t0 + timedelta(hours=3))
    early = serving_at(ledger, t0 + timedelta(minutes=30))
    assert early.digests == (d("dep1champion"),)
    during = serving_at(ledger, t0 + timedelta(hours=2))
    assert set(during.digests) == {d("dep1champion"), d("dep2canary")} and "as canary" in (during.note or "")
    later = serving_at(ledger, t0 + timedelta(hours=4))
    assert later.digests == (d("dep2champion"),)
    with pytest.raises(NotFound, match="No deployment is recorded"):
        serving_at(ledger, t0 - timedelta(days=1))
