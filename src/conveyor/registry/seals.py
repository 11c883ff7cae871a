"""Seals: signed checkpoints of the ledger's chain, so one model's record verifies without the whole chain.

A seal is made after the chain verifies: it signs the head (sequence number and hash) and the
hash of every ``MILESTONE_EVERY``-th event. Later, an event at or before the seal is proved
part of that sealed chain by verifying only its stretch, from the milestone before it to the
milestone after it: rewriting the event means rewriting the hash chain up to the next milestone,
whose hash the seal signed. Events after the seal are verified one by one up to the head.

A seal is only as strong as its key: it is signed by the project key and checked against the
keys the signing policy trusts. Sealing again continues from the newest trusted seal, so only
the new events are walked.

A seal also holds the ledger to what it signed: ``check_seals`` fails a chain that lacks an event
a seal names (the newest, sealed events deleted, the head row rewritten to match), or holds it
with another hash. Seals kept outside the ledger's database (``--against``) are checked the same
way: the only defence when whoever drops the tail drops the seal rows too.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from conveyor.policies.errors import LedgerCorrupt, NotFound
from conveyor.registry.keys import load_or_create_key, show_public_key
from conveyor.registry.ledger import GENESIS, ChainReport, Ledger, utc_now
from conveyor.registry.provenance import open_envelope, sign_envelope

if TYPE_CHECKING:
    from conveyor.registry.keys import SigningKey
    from conveyor.registry.workspace import Workspace

__all__ = [
    "MILESTONE_EVERY",
    "SEAL_TYPE",
    "ChainProof",
    "Seal",
    "check_seals",
    "known_trust",
    "open_seal",
    "project_trust",
    "prove_events",
    "seal_ledger",
    "seal_with_project_key",
    "trusted_seal",
]

SEAL_TYPE = "application/vnd.conveyor.ledger-seal+json"
MILESTONE_EVERY = 1_000


@dataclass(frozen=True)
class Seal:
    """What a seal signed: the head at sealing time and the milestone hashes before it."""

    seq: int
    hash: str
    time: str
    signer: str  # the public key's fingerprint
    milestones: dict[int, str]
    envelope: dict[str, Any]

    @classmethod
    def from_payload(cls, payload: dict[str, Any], signer: str, envelope: dict[str, Any]) -> Seal:
        milestones = {int(k): v for k, v in payload["milestones"].items()}
        return cls(int(payload["seq"]), payload["hash"], payload["time"], signer, milestones, envelope)

    def stretch(self, seq: int) -> tuple[int, str, int, str]:
        """(after, its hash, until, its hash): the sealed milestones either side of event #``seq``."""
        marks = sorted(self.milestones)
        i = bisect.bisect_left(marks, seq)
        after = marks[i - 1] if i else 0
        return after, self.milestones.get(after, GENESIS), marks[i], self.milestones[marks[i]]


@dataclass(frozen=True)
class ChainProof:
    """How the chain behind some events was checked, and what was found."""

    ok: bool
    detail: str
    seal: Seal | None
    checked: int  # events re-hashed


def seal_ledger(
    ledger: Ledger, private_key: Any, signer: str, trusted: dict[str, bytes], *, verified: ChainReport | None = None
) -> Seal:
    """Verify the chain (from the newest trusted seal on, or all of it) and seal its head; ``verified``
    is a whole-chain check with milestones just made, which then is not repeated."""
    previous, problem = trusted_seal(ledger, trusted)
    if problem:
        raise LedgerCorrupt(
            f"The ledger cannot be sealed: {problem}.",
            hint="Find out what changed before sealing again: `conveyor audit --ledger`.",
        )
    if verified is not None and verified.milestones:
        report, milestones = verified, dict(verified.milestones)
    elif previous is None:
        report = ledger.verify_chain(milestone_every=MILESTONE_EVERY)
        milestones = dict(report.milestones)
    else:
        report = ledger.verify_range(previous.seq, previous.hash, None, milestone_every=MILESTONE_EVERY)
        milestones = {**previous.milestones, **report.milestones}
    report.raise_if_broken()
    seq = max(milestones, default=0)
    if seq == 0:
        raise LedgerCorrupt(
            "The ledger is empty: there is nothing to seal.", hint="Run `conveyor demo` or `conveyor train` first."
        )
    payload = {
        "ledger": "conveyor",
        "seq": seq,
        "hash": milestones[seq],
        "time": utc_now(),
        "milestones": {str(k): v for k, v in sorted(milestones.items())},
    }
    envelope = sign_envelope(payload, SEAL_TYPE, private_key)
    ledger.add_seal(seq, envelope)
    return Seal.from_payload(payload, signer, envelope)


def open_seal(envelope: Any, trusted: dict[str, bytes]) -> Seal | None:
    """The seal in ``envelope`` if one of the ``trusted`` keys (fingerprint -> PEM) signed it."""
    for name, pem in trusted.items():
        try:
            payload = open_envelope(envelope, SEAL_TYPE, pem, "ledger seal")
            return Seal.from_payload(payload, name, envelope)
        except Exception:
            continue
    return None


def trusted_seal(ledger: Ledger, trusted: dict[str, bytes]) -> tuple[Seal | None, str | None]:
    """The newest seal, checked: (seal, None), (None, None) when there is none, or (None, what is wrong).

    The newest stored seal must be signed by a trusted key: a seal nobody trusted could sign is
    itself a sign of tampering, never skipped over for an older one."""
    stored = ledger.seals(limit=1)
    if not stored:
        return None, None
    row_id, seq, envelope = stored[0]
    seal = open_seal(envelope, trusted) if envelope is not None else None
    if seal is None or seal.seq != seq:
        return None, f"seal #{row_id} (of event #{seq}) is not signed by a trusted key"
    return seal, None


def check_seals(
    ledger: Ledger, chain: ChainReport, trusted: dict[str, bytes], external: Sequence[dict[str, Any]] = ()
) -> tuple[ChainReport, Seal | None]:
    """``chain`` (a whole-chain check) held to every seal: the stored ones and the ``external``
    envelopes. Fails naming the sealed events the ledger no longer holds, or holds with another
    hash, and a stored seal no trusted key signed. Returns the report and the newest trusted seal."""
    if not chain.ok:
        return chain, None
    problems: list[tuple[int, str]] = []
    seals: list[tuple[str, Seal]] = []
    for row_id, seq, envelope in ledger.seals(limit=100_000):
        seal = open_seal(envelope, trusted) if envelope is not None else None
        if seal is None or seal.seq != seq:
            problems.append((seq, f"seal #{row_id} (of event #{seq}) is not signed by a trusted key"))
        else:
            seals.append((f"the seal of #{seal.seq:,} ({seal.time})", seal))
    for envelope in external:
        seal = open_seal(envelope, trusted)
        if seal is None:
            problems.append((0, "a seal given with --against is not signed by a trusted key"))
        else:
            seals.append((f"the seal of #{seal.seq:,} given with --against ({seal.time})", seal))
    newest = max((s for _, s in seals), key=lambda s: s.seq, default=None)
    for name, seal in seals:
        named = {**seal.milestones, seal.seq: seal.hash}
        held = {e.seq: e.hash for e in ledger.get_many(named)}
        missing = sorted(seq for seq in named if seq not in held)
        changed = sorted(seq for seq in named if seq in held and held[seq] != named[seq])
        if missing:
            shown = ", ".join(f"#{s:,}" for s in missing[:10])
            problems.append((missing[0], f"{name} names event(s) {shown}, which the ledger no longer holds: deleted"))
        if changed:
            shown = ", ".join(f"#{s:,}" for s in changed[:10])
            problems.append((changed[0], f"{name} signed event(s) {shown} with another hash: rewritten"))
    if not problems:
        return chain, newest
    problems.sort()
    return (
        ChainReport(False, chain.events, chain.head, problems[0][0] or None, "; ".join(p for _, p in problems)),
        newest,
    )


def prove_events(ledger: Ledger, seqs: set[int], trusted: dict[str, bytes]) -> ChainProof:
    """Check the chain behind events ``seqs``: each sealed event's stretch between milestones, and every
    event after the seal up to the head; without a seal, the whole chain."""
    seal, problem = trusted_seal(ledger, trusted)
    if problem:
        return ChainProof(False, problem, None, 0)
    if seal is None:
        report = ledger.verify_chain()
        return _proof(
            report,
            None,
            f"whole chain verified ({report.events:,} events; no seal yet: "
            "`conveyor audit --ledger --seal` lets later audits check only the stretches they need)",
        )
    stretches = sorted({seal.stretch(seq) for seq in seqs if seq <= seal.seq})
    checked = 0
    for after, after_hash, until, until_hash in stretches:
        report = ledger.verify_range(after, after_hash, until, until_hash)
        checked += report.events
        if not report.ok:
            return _proof(report, seal, "", checked)
    tail = ledger.verify_range(seal.seq, seal.hash, None)
    checked += tail.events
    return _proof(
        tail,
        seal,
        f"{len(seqs)} events verified in {len(stretches)} sealed stretch(es) against the seal of "
        f"#{seal.seq:,} ({seal.time}, key {seal.signer[:19]}…), and {tail.events:,} events since",
        checked,
    )


def _proof(report: ChainReport, seal: Seal | None, detail: str, checked: int | None = None) -> ChainProof:
    checked = report.events if checked is None else checked
    if report.ok:
        return ChainProof(True, detail, seal, checked)
    return ChainProof(False, f"the chain is broken at event #{report.broken_at}: {report.reason}", seal, checked)


def project_trust(ws: Workspace) -> tuple[SigningKey, dict[str, bytes]]:
    """The project's key (made on first use), and every key a seal may be signed by: the keys the
    signing policy trusts, and the project key."""
    from conveyor.registry.audit import trusted_signers  # here: the audit reads the seals

    key = load_or_create_key(ws.keys_dir)
    trusted = {**trusted_signers(ws.signing(), ws.root, ws.keys_dir), key.fingerprint: key.public_path.read_bytes()}
    return key, trusted


def known_trust(ws: Workspace) -> dict[str, bytes]:
    """The keys a seal may be signed by, as ``project_trust`` gives them, without making a project
    key where there is none (an audit changes nothing)."""
    from conveyor.registry.audit import trusted_signers  # here: the audit reads the seals

    trusted = dict(trusted_signers(ws.signing(), ws.root, ws.keys_dir))
    try:
        pem, fingerprint = show_public_key(ws.keys_dir)
    except NotFound:
        return trusted
    return {**trusted, fingerprint: pem.encode() + b"\n"}


def seal_with_project_key(ws: Workspace, ledger: Ledger, verified: ChainReport | None = None) -> Seal:
    """Seal ``ledger`` with the project key (see ``seal_ledger``)."""
    key, trusted = project_trust(ws)
    return seal_ledger(ledger, key.private_key(), key.fingerprint, trusted, verified=verified)
