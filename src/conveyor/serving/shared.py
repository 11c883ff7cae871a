"""The state a service's workers share: which models to serve, the canary's step and weight, and its traffic.

BentoML runs ``workers`` processes that each hold their own models; for the canary analysis to
judge all traffic and for every worker to switch at once, what must agree lives here, in one
SQLite database in WAL mode per service run (``<home>/serving/runs/<run>.db``):

- ``desired``: the champion and canary versions every worker must serve (written by the leader,
  which watches the registry's aliases);
- ``canary``: the canary's run, state, step, weight, window and last verdict. Every change is a
  compare-and-set on its ``epoch``, so two workers cannot both advance or roll back one step;
- ``observations``: every canary and champion answer (or failure) with its model time and
  prediction, written by each worker in batches a few times a second.

One worker leads (an ``fcntl`` lock on a file beside the database): it watches the aliases and
judges the canary. When it dies the lock is freed and another worker takes over within a second.

In the server profile (``redis_url`` set) the same state lives in Redis (``serving.shared_redis``),
so the replicas of a service on several machines share it under one key prefix: the desired
models and the canary row as JSON values changed by optimistic transactions (``WATCH`` on the
key, the same compare-and-set on ``epoch``), the observations in one list per run, role and step
window, the lead as a lease (``SET NX PX``, renewed by its holder). When Redis does not answer, every read
returns the last state read, writes wait (observations in a bounded buffer, sent when it is
back), nobody leads, and the requests are served as before: no client sees the outage. A Redis
that comes back empty is given the last known state again.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

__all__ = [
    "CanaryRow",
    "Desired",
    "Observation",
    "SharedState",
    "open_shared_state",
    "run_state_path",
]

log = logging.getLogger("conveyor.serving")

_SCHEMA = """
create table if not exists desired (id integer primary key check (id = 1), champion text, canary text, epoch integer);
create table if not exists canary (
    id integer primary key check (id = 1), run text, version text, state text, step integer, weight real,
    held integer, window integer, window_started real, breaches_in_a_row integer, last_analysis real,
    verdict text, epoch integer
);
create table if not exists observations (
    run text, window integer, role text, ok integer, kind text, latency_ms real, predictions text, at real,
    worker text, signals text
);
create index if not exists observations_by_run on observations (run, role, window);
"""


@dataclass(frozen=True)
class Desired:
    champion: str | None = None
    canary: str | None = None
    epoch: int = 0


@dataclass(frozen=True)
class CanaryRow:
    run: str | None = None  # one canary deployment: a new run for every canary started
    version: str | None = None
    state: str = "idle"  # idle | running | promoted | rolled_back
    step: int = 0
    weight: float = 0.0
    held: bool = False
    window: int = 0  # the step's observation window
    window_started: float = 0.0  # wall-clock seconds
    breaches_in_a_row: int = 0
    last_analysis: float = 0.0
    verdict: dict | None = None  # {"action": ..., "reasons": [...]}
    epoch: int = 0


@dataclass(frozen=True)
class Observation:
    run: str
    window: int
    role: str  # champion | canary
    ok: bool
    kind: str  # ok | error | timeout | crash | contract
    latency_ms: float
    predictions: tuple[float, ...] = ()
    worker: str = ""  # the worker that served it
    signals: dict[str, Any] | None = None  # an LLM answer's: ttft_ms, tpot_ms, blocked, refused, scored, score_ok


class SharedState:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._local = threading.local()
        self._lock_file = open(path.with_suffix(".leader"), "a+")  # noqa: SIM115 - held for the state's life
        self.leading = False
        self._connection().executescript(_SCHEMA)
        with self._db() as db:
            db.execute("insert or ignore into desired values (1, null, null, 0)")
            row = CanaryRow()
            db.execute(
                "insert or ignore into canary values (1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                _canary_values(row),
            )

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "db", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            connection.execute("pragma journal_mode=wal")
            connection.execute("pragma synchronous=normal")
            self._local.db = connection
        return connection

    def _db(self) -> _Transaction:
        return _Transaction(self._connection())

    def close(self) -> None:
        if self.leading:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self.leading = False
        self._lock_file.close()
        connection = getattr(self._local, "db", None)
        if connection is not None:
            connection.close()
            self._local.db = None

    # -- leadership ---------------------------------------------------------------------------

    def try_lead(self) -> bool:
        """Take the lead if no live worker holds it; True while this process leads."""
        if not self.leading:
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.leading = True
            except BlockingIOError:
                pass
        return self.leading

    # -- desired models -----------------------------------------------------------------------

    def desired(self) -> Desired:
        with self._db() as db:
            champion, canary, epoch = db.execute("select champion, canary, epoch from desired").fetchone()
        return Desired(champion, canary, epoch)

    def set_desired(self, champion: str | None, canary: str | None) -> Desired:
        with self._db() as db:
            current = db.execute("select champion, canary, epoch from desired").fetchone()
            if (current[0], current[1]) != (champion, canary):
                db.execute("update desired set champion = ?, canary = ?, epoch = epoch + 1", (champion, canary))
        return self.desired()

    # -- the canary -----------------------------------------------------------------------------

    def canary(self) -> CanaryRow:
        with self._db() as db:
            row = db.execute("select * from canary").fetchone()
        return _canary_row(row)

    def change_canary(self, expected_epoch: int, **changes: Any) -> CanaryRow | None:
        """Apply ``changes`` if nobody changed the canary since ``expected_epoch``; the new row, or None."""
        with self._db() as db:
            current = _canary_row(db.execute("select * from canary").fetchone())
            if current.epoch != expected_epoch:
                return None
            new = replace(current, **changes, epoch=current.epoch + 1)
            db.execute("delete from canary")
            db.execute("insert into canary values (1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", _canary_values(new))
        return new

    # -- observations ---------------------------------------------------------------------------

    def add(self, observations: Iterable[Observation]) -> None:
        rows = [
            (
                o.run,
                o.window,
                o.role,
                int(o.ok),
                o.kind,
                o.latency_ms,
                json.dumps(o.predictions),
                time.time(),
                o.worker,
                None if o.signals is None else json.dumps(o.signals),
            )
            for o in observations
        ]
        if rows:
            with self._db() as db:
                db.executemany("insert into observations values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def observations(self, run: str, role: str, *, window: int | None = None, limit: int = 10_000) -> list[Observation]:
        """The newest ``limit`` observations of ``role`` in canary ``run`` (in ``window`` only, if given), oldest first."""
        query = (
            "select run, window, role, ok, kind, latency_ms, predictions, worker, signals from observations"
            " where run = ? and role = ?"
        )
        params: list[Any] = [run, role]
        if window is not None:
            query += " and window = ?"
            params.append(window)
        query += " order by rowid desc limit ?"
        params.append(limit)
        with self._db() as db:
            rows = db.execute(query, params).fetchall()
        return [
            Observation(
                r[0], r[1], r[2], bool(r[3]), r[4], r[5], tuple(json.loads(r[6])), r[7], r[8] and json.loads(r[8])
            )
            for r in reversed(rows)
        ]

    def forget(self, keep_run: str | None) -> None:
        """Drop the observations of every canary run but ``keep_run``."""
        with self._db() as db:
            db.execute("delete from observations where run is not ?", (keep_run,))


class _Transaction:
    """``with`` a connection: one immediate (write-locked) transaction, committed or rolled back."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def __enter__(self) -> sqlite3.Connection:
        self.connection.execute("begin immediate")
        return self.connection

    def __exit__(self, kind: object, *rest: object) -> None:
        self.connection.execute("rollback" if kind else "commit")


def _canary_values(row: CanaryRow) -> tuple:
    values = asdict(row)
    values["held"] = int(row.held)
    values["verdict"] = None if row.verdict is None else json.dumps(row.verdict)
    return tuple(values.values())


def _canary_row(row: tuple) -> CanaryRow:
    (_, run, version, state, step, weight, held, window, started, breaches, last, verdict, epoch) = row
    return CanaryRow(
        run,
        version,
        state,
        step,
        weight,
        bool(held),
        window,
        started,
        breaches,
        last,
        None if verdict is None else json.loads(verdict),
        epoch,
    )


def run_state_path(home: Path, run: str | None, model: str) -> Path:
    """Where a service run's shared state lives: one per model and ``conveyor serve`` (its workers
    share it; without a run id, the workers' common parent, BentoML's arbiter, names it)."""
    return home / "serving" / "runs" / f"{model}-{run or os.getppid()}.db"


def open_shared_state(home: Path, run: str | None, model: str, redis_url: str | None = None) -> StateStore:
    """The shared state of ``model``'s service run: in Redis when the profile names one, else SQLite
    in ``home``. Scoped by the model's name as well as the run, so two models' services that share
    a run name (or a Redis) never read each other's canary, whose version numbers may be the same."""
    if redis_url:
        from conveyor.serving.shared_redis import RedisSharedState  # here: it builds on this module (and needs redis)

        return RedisSharedState(redis_url, f"{model}:{run or 'default'}")
    return SharedState(run_state_path(home, run, model))


if TYPE_CHECKING:
    from typing import TypeAlias

    from conveyor.serving.shared_redis import RedisSharedState

    StateStore: TypeAlias = SharedState | RedisSharedState  # one interface, two stores
