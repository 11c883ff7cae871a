"""Lineage queries and the audit of one model version on a ledger of ~1M events, SQLite and PostgreSQL.

    bash scripts/with-test-services.sh .venv/bin/python bench/audit.py [--events 1000000]

A real project (demo data, one trained, signed, registered and promoted version) whose ledger
also holds a synthetic history of pipeline runs (bench/ledger.py: datasets shared by ~10 runs,
3-input registrations, deployments fed by promotions), half before the real model and half
after. For each backend (PostgreSQL when ``TEST_POSTGRES_URL`` is set, as the script above does):

  - upstream of a deployment and downstream of a dataset, p50/p95, vs the same walk as bare SQL
    (one indexed lookup per level through the same engine: the floor for any walk);
  - ``conveyor audit`` of the real version, after ``audit --ledger --seal``, p50 of 5, vs
    ``verify_version`` alone (the signature, provenance, tags and registry checks every promotion
    and every model load already pay);
  - sealing itself (a full walk of the chain, once).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from ledger import EVENTS_PER_RUN, fill, percentiles, query_figures

from conveyor.registry.ledger import Ledger

REPO = HERE.parent


def bare_walk(conn: sa.Connection, root: str, role: str) -> int:
    """The same walk as bare SQL: per level, one lookup in the index and one fetch of the events."""
    frontier, seen, found = {root}, {root}, 0
    links, events = (
        sa.table("ledger_links", sa.column("digest"), sa.column("role"), sa.column("seq")),
        sa.table("ledger_events", sa.column("seq"), sa.column("inputs"), sa.column("outputs")),
    )
    import json

    while frontier:
        seqs = [
            s
            for (s,) in conn.execute(
                sa.select(links.c.seq).where(links.c.role == role, links.c.digest.in_(list(frontier)))
            )
        ]
        if not seqs:
            break
        rows = conn.execute(sa.select(events.c.inputs, events.c.outputs).where(events.c.seq.in_(seqs))).all()
        found += len(rows)
        onward = {d for r in rows for d in json.loads(r.inputs if role == "out" else r.outputs)} - seen
        seen |= onward
        frontier = onward
    return found


def project_with_model(base: Path, ledger_url: str, events: int) -> tuple[Path, Path]:
    """Demo data, half the synthetic history, one real trained version, the other half."""
    from conveyor.demo.data import DEMO_DATASETS, generate, write_csv
    from conveyor.pipelines.training import run_training
    from conveyor.registry.workspace import Workspace

    root, home = base / "project", base / "project" / ".conveyor"
    (root / "data").mkdir(parents=True)
    shutil.copy(REPO / "conveyor.yaml", root / "conveyor.yaml")
    shutil.copytree(REPO / "policies", root / "policies", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    frame = generate(DEMO_DATASETS["v1"]).head(8_000)
    write_csv(frame, root / "data" / "loans.csv")
    runs = events // EVENTS_PER_RUN
    with Ledger(ledger_url, actor="bench") as ledger:
        fill(ledger, range(runs // 2))
    run_training(
        Workspace.open(
            root,
            home=str(home),
            ledger_url=ledger_url,
            mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
            actor="bench",
        )
    )
    with Ledger(ledger_url, actor="bench") as ledger:
        fill(ledger, range(runs // 2, runs))
    return root, home


def measure(backend: str, ledger_url: str, events: int, queries: int) -> None:
    from typer.testing import CliRunner

    from conveyor.cli import app

    base = Path(tempfile.mkdtemp(prefix=f"bench-audit-{backend}-"))
    try:
        start = time.perf_counter()
        root, home = project_with_model(base, ledger_url, events)
        os.environ.update(CONVEYOR_HOME=str(home), CONVEYOR_LEDGER_URL=ledger_url)
        cli = CliRunner()

        def conveyor(*args: str):
            result = cli.invoke(app, ["--config", str(root / "conveyor.yaml"), *args])
            assert result.exit_code == 0, f"{result.stdout}{result.stderr}{result.exception!r}"
            return result

        conveyor("promote", "loan-default/1", "--to", "champion")
        with Ledger(ledger_url) as ledger:
            total = ledger.count()
        print(f"\n== {backend}: {total:,} events (built in {time.perf_counter() - start:.0f} s)")

        with Ledger(ledger_url) as ledger, ledger._engine.connect() as conn:
            query_figures(
                ledger, events // EVENTS_PER_RUN, queries, lambda root, role: bare_walk(conn, root, role), "bare SQL"
            )

        t = time.perf_counter()
        conveyor("audit", "--ledger", "--seal")
        print(f"seal (full chain walk)   {time.perf_counter() - t:6.1f} s")

        import mlflow

        from conveyor.policies.signing import load_signing_policy
        from conveyor.registry.audit import audit_version
        from conveyor.registry.verify import verify_version

        mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
        policy = load_signing_policy(root)
        audits, verifies = [], []
        with Ledger(ledger_url) as ledger:
            for _ in range(5):
                t = time.perf_counter()
                report = audit_version("loan-default/1", policy, root=root, keys_dir=home / "keys", ledger=ledger)
                audits.append(time.perf_counter() - t)
                assert report.ok, [link for link in report.links if not link.ok]
                t = time.perf_counter()
                verify_version("loan-default/1", policy, root=root, keys_dir=home / "keys", ledger=ledger)
                verifies.append(time.perf_counter() - t)
        (a50, _), (v50, _) = percentiles(audits), percentiles(verifies)
        print(
            f"audit of one version     p50 {a50 / 1000:5.2f} s  max {max(audits):5.2f} s ({len(report.events)} record events; "
            f"{report.proof.checked:,} re-hashed)   verify_version p50 {v50 / 1000:5.2f} s   ratio {a50 / v50:.1f}"
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)
        for name in ("CONVEYOR_HOME", "CONVEYOR_LEDGER_URL"):
            os.environ.pop(name, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    args = parser.parse_args()
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for backend in args.backends:
        if backend == "sqlite":
            scratch = Path(tempfile.mkdtemp(prefix="bench-ledger-"))
            measure(backend, f"sqlite:///{scratch / 'ledger.db'}", args.events, args.queries)
            shutil.rmtree(scratch, ignore_errors=True)
            continue
        admin_url = os.environ.get("TEST_POSTGRES_URL")
        if not admin_url:
            print("\n== postgresql: skipped (no TEST_POSTGRES_URL; run through scripts/with-test-services.sh)")
            continue
        name = f"bench_{uuid.uuid4().hex[:10]}"
        admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        try:
            measure(backend, str(sa.make_url(admin_url).set(database=name)), args.events, args.queries)
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            admin.dispose()


if __name__ == "__main__":
    main()
