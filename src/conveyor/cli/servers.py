"""The server profile: ``doctor`` (which server each store uses, and whether it answers) and
``deploy`` (the flows as deployments on the work pool)."""

from __future__ import annotations

from dataclasses import asdict

import typer

from conveyor.cli._common import JSON, emit_json, out, workspace

__all__ = [
    "deploy",
    "doctor",
    "register",
]


def register(app: typer.Typer) -> None:
    app.command()(doctor)
    app.command()(deploy)


def doctor(ctx: typer.Context, as_json: JSON = False) -> None:
    """Say which server (or embedded file) each store uses, and whether it answers; exit 1 if one does not."""
    # here: `conveyor --help` imports every command module and stays fast
    from conveyor.pipelines.pool import pool_health
    from conveyor.registry.servers import check_stores

    ws = workspace(ctx)
    checks = check_stores(ws.stores, work_pool=pool_health)
    failed = [c for c in checks if not c.ok]
    if as_json:
        emit_json({"profile": ws.stores.settings.profile, "ok": not failed, "stores": [asdict(c) for c in checks]})
    else:
        out(f"Profile: {ws.stores.settings.profile}")
        for check in checks:
            mark = "ok  " if check.ok else "FAIL"
            out(f"  {mark} {check.store}: {check.uses} ({check.detail}, {check.ms:.0f} ms)")
        if failed:
            out(f"{len(failed)} of {len(checks)} stores did not answer: start them, or fix their settings.")
        else:
            out(f"All {len(checks)} stores answered.")
    if failed:
        raise typer.Exit(1)


def deploy(ctx: typer.Context, as_json: JSON = False) -> None:
    """Put the flows (training, drift check, retraining) on the server profile's work pool."""
    ws = workspace(ctx)  # first: Prefect reads its API URL when first imported
    # here: `conveyor --help` imports every command module and stays fast
    from conveyor.pipelines.deployments import deploy_to_pool

    names = deploy_to_pool(ws.stores)
    if as_json:
        emit_json({"work_pool": ws.stores.settings.work_pool, "deployments": names})
        return
    out(f"Deployed to work pool {ws.stores.settings.work_pool}: {', '.join(names)}.")
    out("A worker on the pool runs them; `conveyor train` in this profile runs on one and waits for it.")
