"""Whether the server profile's work pool has a worker online to run the flows (``conveyor doctor``)."""

from __future__ import annotations

from conveyor.registry.workspace import Workspace

__all__ = ["pool_health"]


def pool_health(ws: Workspace) -> str:
    """The pool's type and its online workers; ``RuntimeError`` when none is online."""
    # Prefect here, not at the top: `conveyor doctor` in the embedded profile never loads it.
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        pool = client.read_work_pool(str(ws.settings.work_pool))
        workers = client.read_workers_for_work_pool(pool.name)
    online = [w for w in workers if str(getattr(w, "status", "")).upper().endswith("ONLINE")]
    if not online:
        raise RuntimeError(
            f"no worker is online on pool {pool.name} (start one: `prefect worker start --pool {pool.name}`)"
        )
    return f"{pool.type} pool, {len(online)} worker(s) online"
