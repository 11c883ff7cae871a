"""The lineage ledger: an append-only, hash-chained record of what every stage did.

Each event names its inputs and outputs by content address, and carries the hash of the event
before it; its own hash covers its sequence number, so an edited, deleted, moved or forged event
breaks the chain at a point ``verify_chain`` can name.

Storage is any SQLAlchemy URL; SQLite (WAL) by default. Appends from several processes are
serialised by the database itself: ``BEGIN IMMEDIATE`` on SQLite, a row lock on the single
``ledger_head`` row elsewhere, so concurrent writers always extend one chain.

A second table, ``ledger_links``, indexes digests to events for fast lineage queries. It is
derived data: queries re-check every hit against the hashed event, and ``verify_chain``
checks that the index matches the events exactly.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from conveyor.policies.errors import LedgerCorrupt, LedgerError, NotFound
from conveyor.registry.digests import canonical_json, is_digest
from conveyor.registry.events import EventKind, check_details
from conveyor.registry.ledger_db import (
    display_url,
    events_table,
    head_table,
    links_table,
    make_engine,
    metadata,
    seals_table,
)

__all__ = [
    "GENESIS",
    "ChainReport",
    "Draft",
    "EventSlice",
    "Ledger",
    "LedgerEvent",
    "event_hash",
    "ledger_time",
    "model_of",
    "utc_now",
]

GENESIS = "0" * 64
_PAGE = 10_000


def utc_now() -> str:
    """The current time as the ledger writes it: ISO 8601, UTC, microseconds, sortable."""
    return ledger_time(datetime.now(UTC))


def ledger_time(moment: datetime) -> str:
    """``moment`` (timezone-aware) as the ledger writes times, so the two compare as strings."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Draft:
    """An event before the ledger gives it a place in the chain."""

    kind: str
    inputs: Sequence[str] = ()
    outputs: Sequence[str] = ()
    details: dict[str, Any] = field(default_factory=dict)
    actor: str | None = None
    time: str | None = None
    roles: tuple[str, ...] = ()  # the role of each input, in order (empty: not recorded)


@dataclass(frozen=True)
class LedgerEvent:
    """One sealed event: what happened, to which digests, and its place in the chain."""

    seq: int
    kind: str
    actor: str
    time: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    details: dict[str, Any]
    prev_hash: str
    hash: str
    roles: tuple[str, ...] = ()  # the role of each input, in order; empty for events written before roles

    def computed_hash(self) -> str:
        """The hash this event's content should have; differs from ``hash`` if it was altered."""
        return event_hash(
            self.seq,
            self.kind,
            self.actor,
            self.time,
            self.inputs,
            self.outputs,
            self.details,
            self.prev_hash,
            self.roles,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "kind": self.kind,
            "actor": self.actor,
            "time": self.time,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "details": self.details,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
            **({"roles": list(self.roles)} if self.roles else {}),
        }


def event_hash(
    seq: int,
    kind: str,
    actor: str,
    time: str,
    inputs: Sequence[str],
    outputs: Sequence[str],
    details: dict[str, Any],
    prev_hash: str,
    roles: Sequence[str] = (),
) -> str:
    """sha256 (hex) of the event's canonical JSON, its sequence number and predecessor included.

    The input roles are part of it only when recorded, so events written before roles hash as they did."""
    body = {
        "seq": seq,
        "kind": kind,
        "actor": actor,
        "time": time,
        "inputs": list(inputs),
        "outputs": list(outputs),
        "details": details,
        "prev": prev_hash,
    }
    if roles:
        body["roles"] = list(roles)
    return hashlib.sha256(canonical_json(body)).hexdigest()


@dataclass(frozen=True)
class ChainReport:
    """What ``verify_chain`` found: ``ok``, or the first broken link and why."""

    ok: bool
    events: int
    head: str | None
    broken_at: int | None = None
    reason: str | None = None
    milestones: dict[int, str] = field(default_factory=dict)  # seq -> hash, when asked for

    def raise_if_broken(self) -> None:
        if not self.ok:
            raise LedgerCorrupt(
                f"The ledger's chain is broken at event #{self.broken_at}: {self.reason}",
                hint="Do not trust events from that point on; restore the ledger from a backup "
                "or an evidence bundle and compare.",
            )


@dataclass(frozen=True)
class EventSlice:
    """Some events held in memory (e.g. read from an evidence bundle), answering the same lookups as a ledger."""

    events: tuple[LedgerEvent, ...]

    def producers(self, digest: str) -> list[LedgerEvent]:
        return [e for e in self.events if digest in e.outputs]

    def consumers(self, digest: str) -> list[LedgerEvent]:
        return [e for e in self.events if digest in e.inputs]

    @staticmethod
    def event_of(record: dict[str, Any]) -> LedgerEvent:
        """An event from its ``to_dict`` form."""
        return LedgerEvent(
            int(record["seq"]),
            record["kind"],
            record["actor"],
            record["time"],
            tuple(record["inputs"]),
            tuple(record["outputs"]),
            record["details"],
            record["prev_hash"],
            record["hash"],
            tuple(record.get("roles") or ()),
        )


class Ledger:
    """An append-only, hash-chained event store at a SQLAlchemy URL."""

    def __init__(self, url: str, *, actor: str = "conveyor") -> None:
        self.url = url
        self.actor = actor
        self._engine = make_engine(url)
        self._reader: sa.Connection | None = None
        with self._guard("open"):
            self._ensure_schema()

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def display_url(self) -> str:
        """The URL without its password, fit to print."""
        return display_url(self.url)

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -----------------------------------------------------------------------------

    def append(
        self,
        kind: str,
        *,
        inputs: Iterable[str] | Mapping[str, str | None] = (),
        outputs: Iterable[str] = (),
        details: dict[str, Any] | None = None,
        actor: str | None = None,
    ) -> LedgerEvent:
        """Seal one event onto the end of the chain and return it.

        ``inputs`` by role (``{"data": digest, "suite": digest}``; a ``None`` digest is left out)
        stores the digests in that order and the role names in the details. An ``EventKind``'s
        details are checked against its model (``registry.events``) before anything is written.
        """
        details = dict(details or {})
        roles: tuple[str, ...] = ()
        if isinstance(inputs, Mapping):
            named: dict[str, str] = {}
            for role, digest in inputs.items():
                if digest and digest not in named.values():  # a digest is stored once, under its first role
                    named[role] = digest
            roles, inputs = tuple(named), tuple(named.values())
        if isinstance(kind, EventKind):
            check_details(kind, details, roles)
            kind = kind.value
        draft = Draft(kind, tuple(inputs), tuple(outputs), details, actor, roles=roles)
        return self.append_many([draft])[0]

    def append_many(self, drafts: Iterable[Draft]) -> list[LedgerEvent]:
        """Seal several events in one transaction: all of them land, or none."""
        drafts = [_checked(d) for d in drafts]
        sealed: list[LedgerEvent] = []
        with self._guard("append to"), self._write() as conn:
            head = conn.execute(
                sa.select(head_table.c.seq, head_table.c.hash).where(head_table.c.id == 1).with_for_update()
            ).one()
            seq, prev = head.seq, head.hash
            now = utc_now()
            for draft in drafts:
                seq += 1
                event = _seal(seq, draft, prev, draft.actor or self.actor, draft.time or now)
                sealed.append(event)
                prev = event.hash
            conn.execute(sa.insert(events_table), [_row(e) for e in sealed])
            link_rows = [
                {"digest": d, "role": role, "seq": e.seq}
                for e in sealed
                for role, digests in (("in", e.inputs), ("out", e.outputs))
                for d in digests
            ]
            if link_rows:
                conn.execute(sa.insert(links_table), link_rows)
            conn.execute(sa.update(head_table).where(head_table.c.id == 1).values(seq=seq, hash=prev))
        return sealed

    # -- reading -----------------------------------------------------------------------------

    def get(self, seq: int) -> LedgerEvent:
        """The event with sequence number ``seq``."""
        with self._guard("read"), self._engine.connect() as conn:
            row = conn.execute(sa.select(events_table).where(events_table.c.seq == seq)).first()
        if row is None:
            raise NotFound(f"The ledger has no event #{seq}.", hint="`conveyor audit --ledger` lists how many it has.")
        return _event(row)

    def get_many(self, seqs: Iterable[int]) -> list[LedgerEvent]:
        """The events with these sequence numbers, in sequence order (unknown ones skipped)."""
        wanted = sorted(set(seqs))
        found: list[LedgerEvent] = []
        with self._guard("read"), self.reading() as conn:
            for chunk in _chunks(wanted, 500):
                rows = conn.execute(
                    sa.select(events_table).where(events_table.c.seq.in_(chunk)).order_by(events_table.c.seq)
                )
                found.extend(_event(r) for r in rows)
        return found

    def seqs_linked(self, digests: Iterable[str], role: str) -> dict[str, list[int]]:
        """For each digest, the events that name it as an input (``"in"``) or output (``"out"``)."""
        hits: dict[str, list[int]] = {}
        with self._guard("read"), self.reading() as conn:
            for chunk in _chunks(sorted(set(digests)), 500):
                rows = conn.execute(
                    sa.select(links_table.c.digest, links_table.c.seq).where(
                        links_table.c.role == role, links_table.c.digest.in_(chunk)
                    )
                )
                for digest, seq in rows:
                    hits.setdefault(digest, []).append(seq)
        return hits

    def producers(self, digest: str) -> list[LedgerEvent]:
        """Events that output ``digest``, oldest first (checked against their hashed content)."""
        seqs = self.seqs_linked([digest], "out").get(digest, [])
        return [e for e in self.get_many(seqs) if digest in e.outputs]

    def consumers(self, digest: str) -> list[LedgerEvent]:
        """Events that took ``digest`` as an input, oldest first."""
        seqs = self.seqs_linked([digest], "in").get(digest, [])
        return [e for e in self.get_many(seqs) if digest in e.inputs]

    def latest(
        self, kinds: Iterable[str], *, limit: int = 100, until: str | None = None, model: str | None = None
    ) -> list[LedgerEvent]:
        """The newest ``limit`` events of these kinds (recorded at or before ``until``, a ledger
        time, when given), newest first; given ``model``, only that model's (its name in the
        details' ``name`` or ``model``): ``limit`` of its own, however many other models' events
        lie between them, since two models' version numbers collide in one ledger."""
        query = sa.select(events_table).where(events_table.c.kind.in_(list(kinds)))
        if until is not None:
            query = query.where(events_table.c.time <= until)
        query = query.order_by(events_table.c.seq.desc())
        if model is None:
            with self._guard("read"), self.reading() as conn:
                rows = conn.execute(query.limit(limit)).all()
            return [_event(row) for row in rows]
        found: list[LedgerEvent] = []
        below: int | None = None
        while len(found) < limit:
            page = query if below is None else query.where(events_table.c.seq < below)
            with self._guard("read"), self.reading() as conn:
                rows = conn.execute(page.limit(_PAGE)).all()
            found += [e for e in map(_event, rows) if model_of(e) == model][: limit - len(found)]
            if len(rows) < _PAGE:
                break
            below = rows[-1].seq
        return found

    def count(self) -> int:
        with self._guard("read"), self._engine.connect() as conn:
            return conn.execute(sa.select(head_table.c.seq).where(head_table.c.id == 1)).scalar_one()

    def iter_events(self, start: int = 1) -> Iterator[LedgerEvent]:
        """Every event from ``start`` on, in sequence order, read a page at a time."""
        after = start - 1
        while True:
            with self._guard("read"), self._engine.connect() as conn:
                rows = conn.execute(
                    sa.select(events_table).where(events_table.c.seq > after).order_by(events_table.c.seq).limit(_PAGE)
                ).all()
            if not rows:
                return
            for row in rows:
                yield _event(row)
            after = rows[-1].seq

    @contextmanager
    def reading(self) -> Iterator[sa.Connection]:
        """One connection and one consistent snapshot for several reads (e.g. a lineage walk)."""
        if self._reader is not None:
            yield self._reader
            return
        with self._engine.connect() as conn, conn.begin():
            self._reader = conn
            try:
                yield conn
            finally:
                self._reader = None

    # -- checking ----------------------------------------------------------------------------

    def verify_chain(self, *, milestone_every: int | None = None) -> ChainReport:
        """Walk the whole chain and name the first broken link, if any.

        Checks, in order for each event: no sequence number is missing, it points at its
        predecessor's hash, its content still hashes to its own hash, and the lineage index
        holds exactly its inputs and outputs. Then that the recorded head is the last event.
        With ``milestone_every``, the report keeps the hash of every that-many-th event (what a
        seal signs, so later checks can verify one stretch instead of the whole chain).
        """
        return self.verify_range(0, GENESIS, None, milestone_every=milestone_every)

    def verify_range(
        self,
        after: int,
        after_hash: str,
        until: int | None,
        until_hash: str | None = None,
        *,
        milestone_every: int | None = None,
    ) -> ChainReport:
        """Verify the events after #``after`` (whose hash is ``after_hash``) up to #``until`` and that
        #``until`` still has ``until_hash`` when given; ``until`` None: up to the head, checked too."""
        with self._guard("verify"), self._engine.connect() as conn:
            report = self._verify_range(conn, after, after_hash, until, milestone_every)
            last_seq, last_hash = after + report.events, report.head or after_hash
            if not report.ok:
                return report
            if until is None:
                stray = conn.execute(sa.select(links_table.c.seq).where(links_table.c.seq > last_seq).limit(1)).scalar()
                head = conn.execute(sa.select(head_table).where(head_table.c.id == 1)).one()
        if until is not None:
            if last_seq != until:
                return ChainReport(
                    False,
                    report.events,
                    last_hash,
                    last_seq + 1,
                    f"event #{last_seq + 1} is missing: events were deleted",
                )
            if until_hash is not None and last_hash != until_hash:
                return ChainReport(
                    False,
                    report.events,
                    last_hash,
                    until,
                    f"event #{until} no longer has the hash the seal recorded ({until_hash[:16]}…): "
                    "events up to it were rewritten",
                )
            return report
        if stray is not None:
            return ChainReport(
                False, report.events, last_hash, stray, "the lineage index names an event that does not exist"
            )
        if (head.seq, head.hash) != (last_seq, last_hash):
            return ChainReport(
                False,
                report.events,
                last_hash,
                min(head.seq, last_seq) + 1,
                f"the ledger head records #{head.seq} but the last event is #{last_seq}: "
                "events at the end were deleted or added behind the ledger's back",
            )
        return report

    def _verify_range(
        self, conn: sa.Connection, after: int, after_hash: str, until: int | None, milestone_every: int | None
    ) -> ChainReport:
        prev_seq, prev_hash, count = after, after_hash, 0
        milestones: dict[int, str] = {}
        while until is None or prev_seq < until:
            query = sa.select(events_table).where(events_table.c.seq > prev_seq)
            if until is not None:
                query = query.where(events_table.c.seq <= until)
            rows = conn.execute(query.order_by(events_table.c.seq).limit(_PAGE)).all()
            if not rows:
                break
            index = _links_between(conn, rows[0].seq, rows[-1].seq)
            for row in rows:
                event = _event(row)
                problem = _link_problem(event, prev_seq, prev_hash, index.get(event.seq, set()))
                if problem:
                    return ChainReport(False, count, prev_hash, event.seq, problem)
                prev_seq, prev_hash, count = event.seq, event.hash, count + 1
                if milestone_every and prev_seq % milestone_every == 0:
                    milestones[prev_seq] = prev_hash
        if milestone_every and prev_seq:
            milestones[prev_seq] = prev_hash
        return ChainReport(True, count, prev_hash if count else None, milestones=milestones)

    # -- seals -------------------------------------------------------------------------------

    def add_seal(self, seq: int, envelope: dict[str, Any]) -> None:
        """Store a signed checkpoint of the chain at #``seq`` (see ``registry.seals``)."""
        with self._guard("seal"), self._write() as conn:
            conn.execute(sa.insert(seals_table).values(seq=seq, envelope=json.dumps(envelope, sort_keys=True)))

    def seals(self, limit: int = 10) -> list[tuple[int, int, Any]]:
        """The newest stored seals, newest first: (id, seq, envelope or None when unreadable)."""
        with self._guard("read"), self._engine.connect() as conn:
            rows = conn.execute(sa.select(seals_table).order_by(seals_table.c.id.desc()).limit(limit)).all()
        found = []
        for row in rows:
            try:
                envelope = json.loads(row.envelope)
            except ValueError:
                envelope = None
            found.append((row.id, row.seq, envelope))
        return found

    # -- plumbing ----------------------------------------------------------------------------

    def _ensure_schema(self) -> None:
        for attempt in range(2):
            try:
                with self._write() as conn:
                    metadata.create_all(conn)
                    _add_roles_column(conn)
                    exists = conn.execute(sa.select(head_table.c.id).where(head_table.c.id == 1)).first()
                    if exists is None:
                        conn.execute(sa.insert(head_table).values(id=1, seq=0, hash=GENESIS))
                return
            except (sa_exc.IntegrityError, sa_exc.ProgrammingError):
                # Another process created the schema between our check and our create.
                if attempt:
                    raise

    @contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        with self._engine.connect() as conn:
            conn = conn.execution_options(ledger_write=True)
            with conn.begin():
                yield conn

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        try:
            yield
        except sa_exc.SQLAlchemyError as exc:
            detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise LedgerError(
                f"Could not {action} the ledger at {self.display_url}: {detail}.",
                hint="Check CONVEYOR_LEDGER_URL (or `ledger_url` in conveyor.yaml), that the "
                "database is reachable and writable, and that the file is a Conveyor ledger.",
            ) from exc


def _add_roles_column(conn: sa.Connection) -> None:
    """Migrate a ledger made before input roles were recorded: add the (nullable) ``roles`` column.

    Nothing else changes: its events keep their bytes and hashes, and are read by the positions the
    code of that time wrote (``registry.events``)."""
    columns = {c["name"] for c in sa.inspect(conn).get_columns(events_table.name)}
    if "roles" not in columns:
        conn.exec_driver_sql(f"ALTER TABLE {events_table.name} ADD COLUMN roles TEXT")


def _checked(draft: Draft) -> Draft:
    if not draft.kind or not isinstance(draft.kind, str):
        raise ValueError("a ledger event needs a kind")
    inputs, outputs = _unique(draft.inputs), _unique(draft.outputs)
    for digest in (*inputs, *outputs):
        if not is_digest(digest):
            raise ValueError(f"not a content address: {digest!r} (expected sha256:<64 hex>)")
    if draft.roles and len(draft.roles) != len(inputs):
        raise ValueError(f"{len(draft.roles)} input roles for {len(inputs)} distinct inputs")
    canonical_json(draft.details)  # fails now, not halfway through a transaction
    return Draft(draft.kind, inputs, outputs, draft.details, draft.actor, draft.time, tuple(draft.roles))


def _unique(digests: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(digests))


def _seal(seq: int, draft: Draft, prev: str, actor: str, time: str) -> LedgerEvent:
    details = json.loads(canonical_json(draft.details))  # what is stored is what is hashed
    digest = event_hash(seq, draft.kind, actor, time, draft.inputs, draft.outputs, details, prev, draft.roles)
    return LedgerEvent(
        seq,
        draft.kind,
        actor,
        time,
        tuple(draft.inputs),
        tuple(draft.outputs),
        details,
        prev,
        digest,
        tuple(draft.roles),
    )


def _row(event: LedgerEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "kind": event.kind,
        "actor": event.actor,
        "time": event.time,
        "inputs": json.dumps(list(event.inputs)),
        "outputs": json.dumps(list(event.outputs)),
        "details": canonical_json(event.details).decode(),
        "prev_hash": event.prev_hash,
        "hash": event.hash,
        "roles": json.dumps(list(event.roles)) if event.roles else None,
    }


_PAGE = 1_000  # rows read at a time when events are filtered by model


def model_of(event: LedgerEvent) -> str | None:
    """The model an event is about: its details' ``name`` (releases, registrations, canaries) or
    ``model`` (checks, triggers, labels, feedback); None for events about no one model."""
    named = event.details.get("name", event.details.get("model"))
    return named if isinstance(named, str) else None


def _event(row: Any) -> LedgerEvent:
    try:
        inputs, outputs, details = json.loads(row.inputs), json.loads(row.outputs), json.loads(row.details)
        roles = json.loads(row.roles) if row.roles else []
    except (TypeError, ValueError):
        inputs, outputs, details, roles = [], [], {"unreadable": True}, []  # verify_chain flags the hash
    return LedgerEvent(
        row.seq,
        row.kind,
        row.actor,
        row.time,
        tuple(inputs),
        tuple(outputs),
        details,
        row.prev_hash,
        row.hash,
        tuple(map(str, roles)),
    )


def _links_between(conn: sa.Connection, first: int, last: int) -> dict[int, set[tuple[str, str]]]:
    rows = conn.execute(
        sa.select(links_table.c.seq, links_table.c.role, links_table.c.digest).where(
            links_table.c.seq.between(first, last)
        )
    )
    index: dict[int, set[tuple[str, str]]] = {}
    for seq, role, digest in rows:
        index.setdefault(seq, set()).add((role, digest))
    return index


def _link_problem(event: LedgerEvent, prev_seq: int, prev_hash: str, indexed: set[tuple[str, str]]) -> str | None:
    if event.seq != prev_seq + 1:
        missing = prev_seq + 1 if event.seq - prev_seq == 2 else f"{prev_seq + 1}-{event.seq - 1}"
        return f"event #{missing} is missing (#{prev_seq} is followed by #{event.seq}): events were deleted"
    if event.prev_hash != prev_hash:
        return (
            f"it does not follow #{prev_seq}: it records the previous hash {event.prev_hash[:16]}…, "
            f"but #{prev_seq} hashes to {prev_hash[:16]}… (#{prev_seq} was altered or replaced, "
            "or this event was inserted)"
        )
    if event.computed_hash() != event.hash:
        return "its content no longer matches its hash (the event was edited, or moved from another position)"
    expected = {("in", d) for d in event.inputs} | {("out", d) for d in event.outputs}
    if indexed != expected:
        return "the lineage index does not match the event's inputs and outputs (the index was edited)"
    return None


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
