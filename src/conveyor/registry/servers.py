"""Which server each store uses, and whether it answers (``conveyor doctor``).

One probe per store, each bounded by a few seconds: the ledger and Feast's registry (a SQL
``select 1``), MLflow's and Prefect's servers (their ``/health``), the work pool and its online
workers (probed by the flows' layer, which knows Prefect), Redis (``PING``), the object store
(the bucket's ``HEAD``). Embedded stores are files in
``home``: they are named, and "answer" when their folder can be written.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from conveyor.registry.workspace import Workspace

__all__ = ["StoreCheck", "check_stores", "redacted"]

TIMEOUT_S = 3.0


@dataclass(frozen=True)
class StoreCheck:
    store: str  # what Conveyor keeps there
    uses: str  # the server (URL, passwords removed) or the embedded file
    ok: bool
    detail: str  # what answered, or why not
    ms: float


def redacted(url: str) -> str:
    """``url`` without its password (shown, logged and recorded URLs never carry one)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def check_stores(ws: Workspace, *, work_pool: Callable[[Workspace], str] | None = None) -> list[StoreCheck]:
    """Every store of the Workspace's profile, probed in turn; ``work_pool`` probes the profile's
    work pool (the flows' layer knows Prefect's pools: ``pipelines.pool.pool_health``)."""
    s = ws.settings
    checks: list[tuple[str, str, Callable[[], str]]] = [
        ("ledger", s.ledger_url or "", lambda: _sql(str(s.ledger_url))),
        ("tracking and registry (MLflow)", ws.tracking_uri, lambda: _mlflow(ws)),
    ]
    if s.prefect_api_url:
        checks.append(("flows (Prefect API)", s.prefect_api_url, lambda: _http(f"{s.prefect_api_url}/health")))
    else:
        checks.append(("flows (Prefect)", "in process (no server)", lambda: "stages run in the command's process"))
    if s.work_pool:
        probe = work_pool or _unprobed
        checks.append(("flow runs (work pool)", f"{s.work_pool} on {s.prefect_api_url}", lambda: probe(ws)))
    if s.feature_registry_url:
        checks.append(("feature registry (Feast)", s.feature_registry_url, lambda: _sql(str(s.feature_registry_url))))
    else:
        checks.append(("feature registry (Feast)", str(ws.home / "feast" / "registry.db"), lambda: _folder(ws.home)))
    if s.redis_url:
        checks.append(
            ("online features, replicas' state, API keys (Redis)", s.redis_url, lambda: _redis(str(s.redis_url)))
        )
    else:
        checks.append(("online features (Feast)", str(ws.home / "feast" / "online.db"), lambda: _folder(ws.home)))
        checks.append(("replicas' state", str(ws.home / "serving" / "runs"), lambda: _folder(ws.home)))
        checks.append(("API keys", str(ws.api_keys_file), lambda: _folder(ws.home)))
    if s.object_store_url and s.bucket:
        checks.append(
            ("object store (artifacts, DVC remote)", f"s3://{s.bucket} at {s.object_store_url}", lambda: _bucket(ws))
        )
    return [_timed(store, uses, probe) for store, uses, probe in checks]


def _timed(store: str, uses: str, probe: Callable[[], str]) -> StoreCheck:
    started = time.perf_counter()
    try:
        detail, ok = probe(), True
    except Exception as exc:
        detail, ok = _reason(exc), False
    return StoreCheck(store, redacted(uses), ok, detail, round((time.perf_counter() - started) * 1000, 1))


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _sql(url: str) -> str:
    import sqlalchemy as sa

    if url.startswith("sqlite:///"):  # embedded: a file, made on first use
        path = Path(url.removeprefix("sqlite:///"))
        if not path.exists():
            return _folder(path.parent)

    args = {"connect_timeout": int(TIMEOUT_S)} if url.startswith("postgresql") else {}
    engine = sa.create_engine(url, connect_args=args)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("select 1")
            return f"{engine.dialect.name} answered"
    finally:
        engine.dispose()


def _http(url: str) -> str:
    import httpx

    response = httpx.get(url, timeout=TIMEOUT_S)
    response.raise_for_status()
    return f"HTTP {response.status_code}"


def _mlflow(ws: Workspace) -> str:
    uri = ws.tracking_uri
    if uri.startswith(("http://", "https://")):
        return _http(f"{uri.rstrip('/')}/health")
    if uri.startswith("sqlite:///"):
        return _folder(Path(uri.removeprefix("sqlite:///")).parent)
    return _sql(uri)


def _folder(path: Path) -> str:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / ".doctor"
    probe.write_text("")
    probe.unlink()
    return "embedded: a file in a writable folder"


def _redis(url: str) -> str:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S)
    try:
        client.ping()
        info: Any = client.info("server")
        return f"Redis {info.get('redis_version', '?')} answered"
    finally:
        client.close()


def _bucket(ws: Workspace) -> str:
    import boto3
    from botocore.config import Config

    s3 = boto3.client(
        "s3",
        endpoint_url=ws.settings.object_store_url,
        config=Config(connect_timeout=TIMEOUT_S, read_timeout=TIMEOUT_S, retries={"max_attempts": 1}),
    )
    s3.head_bucket(Bucket=str(ws.settings.bucket))
    return "the bucket answered"


def _unprobed(ws: Workspace) -> str:
    raise RuntimeError("no probe of the work pool was given (`conveyor doctor` gives one)")
