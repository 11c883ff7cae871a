"""Ledger speed at realistic sizes: append throughput and lineage queries, with baselines.

    .venv/bin/python bench/ledger.py [--sizes 10000 1000000] [--url-dir bench/results]

A synthetic history of pipeline runs: each run validates a dataset (datasets are shared by ~10
runs, so data fans out), builds features, trains, signs (two outputs), registers (three inputs:
fan-in), promotes and deploys, then checks drift: 8 events a run. For each size it measures

  - single appends (one durable transaction each) vs a bare sqlite3 INSERT + COMMIT with the
    same pragmas (the floor any SQLite ledger pays);
  - upstream of a deployment (to its dataset, 7 levels) and downstream of a dataset, p50/p95,
    vs one bare indexed lookup per level with sqlite3 (the same number of round trips).
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conveyor.registry.digests import bytes_digest
from conveyor.registry.ledger import Draft, Ledger
from conveyor.registry.lineage import downstream, upstream

EVENTS_PER_RUN = 8


def digest(*parts: object) -> str:
    return bytes_digest("/".join(map(str, parts)).encode())


def run_events(run: int) -> list[Draft]:
    data = digest("dataset", run // 10)
    report, features, model = digest("report", run), digest("features", run), digest("model", run)
    bundle, provenance, version = digest("bundle", run), digest("prov", run), digest("version", run)
    decision, deployment, drift = digest("decision", run), digest("deploy", run), digest("drift", run)
    return [
        Draft("data.validated", [data], [report], {"run": run}),
        Draft("features.built", [data, report], [features], {"run": run}),
        Draft("model.trained", [features], [model], {"run": run, "auc": 0.85}),
        Draft("model.signed", [model], [bundle, provenance], {"run": run}),
        Draft("model.registered", [model, bundle, provenance], [version], {"run": run}),
        Draft("model.promoted", [version], [decision], {"run": run, "to": "canary"}),
        Draft("model.deployed", [version, decision], [deployment], {"run": run}),
        Draft("drift.checked", [deployment], [drift], {"run": run}),
    ]


def fill(ledger: Ledger, runs: range) -> None:
    """Append the datasets and the runs ``runs`` of the synthetic history, in batches."""
    batch = [
        Draft("dataset.versioned", [], [digest("dataset", d)], {"d": d})
        for d in range(runs.start // 10, (runs.stop - 1) // 10 + 1)
    ]
    for run in runs:
        batch.extend(run_events(run))
        if len(batch) >= 20_000:
            ledger.append_many(batch)
            batch = []
    if batch:
        ledger.append_many(batch)


def build(ledger: Ledger, events: int) -> float:
    start = time.perf_counter()
    fill(ledger, range(events // EVENTS_PER_RUN))
    return time.perf_counter() - start


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.95) - 1] * 1000


def bare_append_rate(path: Path, count: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (seq INTEGER PRIMARY KEY, body TEXT)")
    start = time.perf_counter()
    for i in range(count):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (body) VALUES (?)", (digest("bare", i) * 4,))
        conn.execute("COMMIT")
    rate = count / (time.perf_counter() - start)
    conn.close()
    return rate


def bare_walk(conn: sqlite3.Connection, root: str, role: str, levels: int) -> None:
    frontier = [root]
    for _ in range(levels):
        marks = ",".join("?" * len(frontier))
        seqs = [
            s
            for (s,) in conn.execute(
                f"SELECT seq FROM ledger_links WHERE role=? AND digest IN ({marks})", (role, *frontier)
            )
        ]
        if not seqs:
            return
        rows = conn.execute(
            f"SELECT inputs FROM ledger_events WHERE seq IN ({','.join('?' * len(seqs))})", seqs
        ).fetchall()
        frontier = [r[0][2:73] for r in rows][:50]


def query_figures(ledger: Ledger, runs: int, queries: int, bare: Callable[[str, str], object], baseline: str) -> None:
    """Print p50/p95 of upstream(deployment) and downstream(dataset) over random runs, against ``bare``
    (the same walk without the ledger's code) timed on the same roots."""
    rng = random.Random(7)
    picks = [rng.randrange(runs) for _ in range(queries)]
    for name, root_of, direction, role in (
        ("upstream(deployment)", lambda r: digest("deploy", r), upstream, "out"),
        ("downstream(dataset)", lambda r: digest("dataset", r // 10), downstream, "in"),
    ):
        ours, theirs, sizes = [], [], []
        for run in picks:
            start = time.perf_counter()
            sizes.append(len(direction(ledger, root_of(run)).events))
            ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            bare(root_of(run), role)
            theirs.append(time.perf_counter() - start)
        (p50, p95), (b50, _) = percentiles(ours), percentiles(theirs)
        print(
            f"{name:22s} p50 {p50:6.1f} ms  p95 {p95:6.1f} ms  ({statistics.mean(sizes):.0f} events)"
            f"   {baseline} p50 {b50:5.1f} ms   ratio {p50 / b50:.1f}"
        )


def measure(size: int, folder: Path, appends: int, queries: int) -> None:
    path = folder / f"ledger-{size}.db"
    if path.exists():
        path.unlink()
    for side in ("-wal", "-shm"):
        Path(f"{path}{side}").unlink(missing_ok=True)
    url = f"sqlite:///{path}"
    with Ledger(url, actor="bench") as ledger:
        built = build(ledger, size)
        total = ledger.count()
        print(f"\n== {total:,} events ({built:.1f} s to build in batches: {total / built:,.0f} events/s)")

        start = time.perf_counter()
        for i in range(appends):
            ledger.append("bench.append", inputs=[digest("dataset", i % 10)], outputs=[digest("extra", size, i)])
        ours = appends / (time.perf_counter() - start)
        bare = bare_append_rate(folder / "bare.db", appends)
        print(f"single appends      {ours:8,.0f} /s   bare sqlite3 {bare:8,.0f} /s   ratio {ours / bare:.2f}")

        conn = sqlite3.connect(path)
        query_figures(
            ledger, size // EVENTS_PER_RUN, queries, lambda root, role: bare_walk(conn, root, role, 8), "bare sqlite3"
        )
        conn.close()

        start = time.perf_counter()
        report = ledger.verify_chain()
        print(f"verify_chain        {time.perf_counter() - start:6.1f} s   ok={report.ok}")
    path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--dir", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--appends", type=int, default=500)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    for size in args.sizes:
        measure(size, args.dir, args.appends, args.queries)


if __name__ == "__main__":
    main()
