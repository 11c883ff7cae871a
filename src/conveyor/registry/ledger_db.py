"""The ledger's tables and database connection: any SQLAlchemy URL, SQLite tuned by default.

``ledger_events`` holds the sealed events, ``ledger_links`` indexes digests to events (derived,
re-checked), ``ledger_head`` is the one row every append locks and moves, ``ledger_seals`` holds signed
checkpoints of the chain.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from conveyor.policies.errors import LedgerError

__all__ = ["display_url", "events_table", "head_table", "links_table", "make_engine", "metadata", "seals_table"]

metadata = sa.MetaData()
_Seq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
events_table = sa.Table(
    "ledger_events",
    metadata,
    sa.Column("seq", _Seq, primary_key=True, autoincrement=False),
    sa.Column("kind", sa.String(128), nullable=False, index=True),
    sa.Column("actor", sa.String(256), nullable=False),
    sa.Column("time", sa.String(32), nullable=False, index=True),
    sa.Column("inputs", sa.Text, nullable=False),
    sa.Column("outputs", sa.Text, nullable=False),
    sa.Column("details", sa.Text, nullable=False),
    # The role of each input, in order (JSON), for events written since roles were recorded; NULL
    # before. Hashed with the event when present, so old events keep their hashes.
    sa.Column("roles", sa.Text, nullable=True),
    sa.Column("prev_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("hash", sa.String(64), nullable=False, unique=True),
)
links_table = sa.Table(
    "ledger_links",
    metadata,
    sa.Column("digest", sa.String(80), primary_key=True),
    sa.Column("role", sa.String(3), primary_key=True),  # "in" or "out"
    sa.Column("seq", _Seq, primary_key=True, index=True),
    sqlite_with_rowid=False,
)
seals_table = sa.Table(
    "ledger_seals",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("seq", _Seq, nullable=False),
    sa.Column("envelope", sa.Text, nullable=False),  # a signed DSSE envelope; see registry/seals.py
)
head_table = sa.Table(
    "ledger_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", _Seq, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)


def make_engine(url: str) -> sa.Engine:
    """An engine for ``url``; on SQLite: WAL, full sync, a long busy timeout, writers take the lock first."""
    try:
        parsed = sa.make_url(url)
    except sa_exc.ArgumentError:
        raise LedgerError(
            f"{url!r} is not a database URL.",
            hint="Use e.g. sqlite:///.conveyor/ledger.db or postgresql+psycopg://user@host/db.",
        ) from None
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)

    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": 60})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" below decide how a transaction starts.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA busy_timeout=60000")
        _enter_wal(cursor)
        cursor.execute("PRAGMA synchronous=FULL")  # the audit record survives a power cut
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # Writers take the write lock up front; a deferred upgrade could deadlock two appenders.
        immediate = conn.get_execution_options().get("ledger_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _enter_wal(cursor: Any, patience: float = 60.0) -> None:
    """Put the database in WAL mode (it stays so), waiting out other processes that open it too.

    Switching the mode needs the database to itself, and SQLite answers "database is locked" at
    once, without its busy handler, when another connection is opening the file or recovering its
    WAL at that moment; so we retry, for as long as the busy timeout would have waited."""
    deadline = time.monotonic() + patience
    pause = 0.01
    while True:
        try:
            mode = cursor.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.5)


def display_url(url: str) -> str:
    """``url`` without its password, fit to print."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa_exc.ArgumentError:
        return url
