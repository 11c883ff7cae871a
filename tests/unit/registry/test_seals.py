"""Seals: a signed checkpoint lets one event's stretch stand for the whole chain, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from conveyor.policies.errors import LedgerCorrupt
from conveyor.registry.digests import bytes_digest
from conveyor.registry.keys import SigningKey, load_or_create_key
from conveyor.registry.ledger import Draft, Ledger, event_hash
from conveyor.registry.seals import MILESTONE_EVERY, prove_events, seal_ledger, trusted_seal
from tests.unit.registry.test_ledger import tamper

EVENTS = 2 * MILESTONE_EVERY + 500  # three stretches: two whole, one partial


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    return load_or_create_key(tmp_path / "keys")


def fill(ledger: Ledger, n: int = EVENTS) -> None:
    drafts = [
        Draft(
            "step",
            inputs=[bytes_digest(f"{i - 1}".encode())] if i else [],
            outputs=[bytes_digest(f"{i}".encode())],
            details={"i": i},
        )
        for i in range(n)
    ]
    ledger.append_many(drafts)


def seal(ledger: Ledger, key: SigningKey):
    return seal_ledger(ledger, key.private_key(), key.fingerprint, trusted(key))


def trusted(key: SigningKey) -> dict[str, bytes]:
    return {key.fingerprint: key.public_path.read_bytes()}


def test_a_seal_signs_the_head_and_the_milestones(ledger: Ledger, key: SigningKey) -> None:
    fill(ledger)
    sealed = seal(ledger, key)
    assert sealed.seq == EVENTS and sealed.hash == ledger.get(EVENTS).hash
    assert sorted(sealed.milestones) == [MILESTONE_EVERY, 2 * MILESTONE_EVERY, EVENTS]
    found, problem = trusted_seal(ledger, trusted(key))
    assert problem is None and found is not None and found.seq == EVENTS
    proof = prove_events(ledger, {5, MILESTONE_EVERY + 7}, trusted(key))
    assert proof.ok and proof.checked == 2 * MILESTONE_EVERY  # two stretches, not the whole chain


def test_sealing_again_walks_only_the_new_events(ledger: Ledger, key: SigningKey) -> None:
    fill(ledger, 1_200)
    seal(ledger, key)
    ledger.append("later", outputs=[bytes_digest(b"later")])
    again = seal(ledger, key)
    assert again.seq == 1_201 and set(again.milestones) == {MILESTONE_EVERY, 1_200, 1_201}
    assert prove_events(ledger, {1_201}, trusted(key)).ok


def test_an_edit_inside_a_sealed_stretch_is_caught_even_if_rehashed_to_the_end(
    ledger: Ledger, key: SigningKey, url: str
) -> None:
    fill(ledger, 1_500)
    seal(ledger, key)
    # The forger rewrites event 10 and every hash after it, head included: a self-consistent chain.
    events = list(ledger.iter_events())
    prev, rows = events[8].hash, []
    for event in events[9:]:
        details = {"i": -1} if event.seq == 10 else event.details
        new = event_hash(event.seq, event.kind, event.actor, event.time, event.inputs, event.outputs, details, prev)
        rows.append({"d": f'{{"i":{details["i"]}}}', "p": "x" + new[1:], "h": new, "s": event.seq})
        prev = new
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # prev_hash is unique: park each value, then set it
        conn.execute(sa.text("UPDATE ledger_events SET details = :d, prev_hash = :p, hash = :h WHERE seq = :s"), rows)
        fixed = [{"p": events[8].hash if r["s"] == 10 else rows[i - 1]["h"], "s": r["s"]} for i, r in enumerate(rows)]
        conn.execute(sa.text("UPDATE ledger_events SET prev_hash = :p WHERE seq = :s"), fixed)
        conn.execute(sa.text("UPDATE ledger_head SET hash = :h WHERE id = 1"), {"h": prev})
    engine.dispose()
    assert ledger.verify_chain().ok  # the chain alone cannot tell
    proof = prove_events(ledger, {10}, trusted(key))
    assert not proof.ok and f"event #{MILESTONE_EVERY} no longer has the hash the seal recorded" in proof.detail


def test_a_deleted_tail_after_the_seal_is_caught(ledger: Ledger, key: SigningKey, url: str) -> None:
    fill(ledger, 50)
    seal(ledger, key)
    tamper(url, "DELETE FROM ledger_events WHERE seq = 50")
    tamper(url, "DELETE FROM ledger_links WHERE seq = 50")
    tamper(url, "UPDATE ledger_head SET seq = 49, hash = :h WHERE id = 1", h=ledger.get(49).hash)
    assert ledger.verify_chain().ok
    proof = prove_events(ledger, {3}, trusted(key))
    assert not proof.ok and "#50" in proof.detail


def test_a_seal_by_an_untrusted_key_is_refused_not_skipped(ledger: Ledger, key: SigningKey, tmp_path: Path) -> None:
    fill(ledger, 10)
    seal(ledger, key)
    stranger = load_or_create_key(tmp_path / "stranger")
    seal_ledger(ledger, stranger.private_key(), stranger.fingerprint, trusted(stranger) | trusted(key))
    found, problem = trusted_seal(ledger, trusted(key))
    assert found is None and "not signed by a trusted key" in str(problem)
    assert not prove_events(ledger, {3}, trusted(key)).ok
    with pytest.raises(LedgerCorrupt, match="cannot be sealed"):
        seal(ledger, key)


def test_without_a_seal_the_whole_chain_is_verified(ledger: Ledger, key: SigningKey) -> None:
    fill(ledger, 30)
    proof = prove_events(ledger, {3}, trusted(key))
    assert proof.ok and proof.checked == 30 and "no seal yet" in proof.detail


def test_an_empty_ledger_cannot_be_sealed(tmp_path: Path, key: SigningKey) -> None:
    with Ledger(f"sqlite:///{tmp_path / 'empty.db'}") as empty, pytest.raises(LedgerCorrupt, match="nothing to seal"):
        seal(empty, key)
