"""Serving, for operators: ``serve``, ``api-key``, ``canary``."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from conveyor.cli._common import JSON, emit_json, out, sub_app, workspace

__all__ = [
    "api_key_create",
    "api_key_list",
    "api_key_revoke",
    "api_key_rotate",
    "canary_abort",
    "canary_set_weight",
    "canary_status",
    "register",
    "serve",
]

api_key_app = sub_app("Manage the service's API keys.")
canary_app = sub_app("Watch and steer the canary of a running service.")


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.add_typer(api_key_app, name="api-key")
    app.add_typer(canary_app, name="canary")


def serve(
    ctx: typer.Context,
    port: Annotated[int, typer.Option("--port", "-p", help="Port to listen on.")] = 3000,
    host: Annotated[str, typer.Option("--host", help="Address to bind (default: this machine only).")] = "127.0.0.1",
) -> None:
    """Serve @champion, and @canary when one is set, behind one endpoint (BentoML); for an LLM project,
    the OpenAI-compatible gateway (/v1/chat/completions, /v1/completions, /v1/models)."""
    import sys

    ws = workspace(ctx)
    if ws.stores.is_llm:
        ws.stores.llm_project()  # a broken config fails here, in one paragraph
        ws.stores.gateway_policy()
    else:
        ws.stores.project()
    command = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        "conveyor.serving.service:Conveyor",
        "--host",
        host,
        "--port",
        str(port),
    ]
    out(f"Serving {ws.root.name} on http://{host}:{port} (Ctrl-C stops it cleanly)")
    sys.stdout.flush()
    import uuid

    # One run id for this service's workers: they share the canary's state under it. With Redis (the
    # server profile), every replica of the model's service shares it: the model's name, unless set.
    run = ws.stores.settings.service_run or (ws.model_name if ws.stores.settings.redis_url else uuid.uuid4().hex)
    env = {**os.environ, **ws.stores.environment(), "OMP_NUM_THREADS": "1", "CONVEYOR_SERVICE_RUN": run}
    os.execve(sys.executable, command, env)  # BentoML owns the process: signals reach it directly


@api_key_app.command("create")
def api_key_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Who the key is for (a client, a team).")],
    admin: Annotated[bool, typer.Option("--admin", help="An admin key: /admin endpoints, `conveyor canary`.")] = False,
    rate: Annotated[
        float | None,
        typer.Option("--rate", min=0.001, help="This key's own limit, requests/s (default: policies/serving.yaml)."),
    ] = None,
    burst: Annotated[
        int | None, typer.Option("--burst", min=1, help="Requests at once for --rate (default: the rate).")
    ] = None,
    team: Annotated[
        str | None,
        typer.Option("--team", help="The team whose tokens and budget its LLM requests spend (policies/gateway.yaml)."),
    ] = None,
    as_json: JSON = False,
) -> None:
    """Create an API key; it is shown once and stored only as its SHA-256."""
    # here: `conveyor --help` imports every command module and stays fast
    from conveyor.policies.errors import ConveyorError
    from conveyor.serving.auth import open_api_keys

    ws = workspace(ctx)
    if team is not None and team not in (teams := ws.stores.gateway_policy().teams):
        raise ConveyorError(
            f"There is no team {team!r} in {ws.stores.policies / 'gateway.yaml'}.",
            hint=f"Its teams: {', '.join(teams)}. Add the team there first (its tokens per minute and budget).",
        )
    with open_api_keys(ws.stores) as keys:
        key = keys.create(name, admin=admin, per_second=rate, burst=burst, team=team)
    if as_json:
        emit_json({"name": name, "key": key, "admin": admin, "team": team})
        return
    out(key)
    typer.echo(f"{'Admin' if admin else 'Predict'} key for {name!r}: keep it now, it is not shown again.", err=True)


@api_key_app.command("list")
def api_key_list(ctx: typer.Context, as_json: JSON = False) -> None:
    """The keys' ids, owners and roles (never the keys)."""
    # here: `conveyor --help` imports every command module and stays fast
    from conveyor.serving.auth import open_api_keys

    with open_api_keys(workspace(ctx).stores) as keys:
        entries = keys.entries()
    if as_json:
        emit_json(entries)
        return
    for entry in entries:
        outdated = (
            "  (made by an older version, no longer accepted: `conveyor api-key rotate`)" if entry["outdated"] else ""
        )
        team = f"  team {entry['team']}" if entry.get("team") else ""
        out(f"{entry['id']}…  {entry['name']}  {'admin' if entry['admin'] else 'predict'}{team}{outdated}")


@api_key_app.command("revoke")
def api_key_revoke(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Whose keys to revoke (as in `api-key list`).")],
    as_json: JSON = False,
) -> None:
    """Revoke every key of NAME; a running service refuses them within a second."""
    # here: `conveyor --help` imports every command module and stays fast
    from conveyor.policies.errors import UnknownKey
    from conveyor.serving.auth import open_api_keys

    try:
        with open_api_keys(workspace(ctx).stores) as keys:
            removed = keys.revoke(name)
    except UnknownKey:
        raise _no_key(name) from None
    if as_json:
        emit_json({"name": name, "revoked": removed})
        return
    out(f"Revoked {removed} key{'s' if removed != 1 else ''} of {name!r}.")


@api_key_app.command("rotate")
def api_key_rotate(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Whose key to replace (as in `api-key list`).")],
    as_json: JSON = False,
) -> None:
    """Replace NAME's keys by one new key with the same role and rate; the old ones stop within a second."""
    # here: `conveyor --help` imports every command module and stays fast
    from conveyor.policies.errors import UnknownKey
    from conveyor.serving.auth import open_api_keys

    try:
        with open_api_keys(workspace(ctx).stores) as keys:
            key = keys.rotate(name)
    except UnknownKey:
        raise _no_key(name) from None
    if as_json:
        emit_json({"name": name, "key": key, "revoked_old": True})
        return
    out(key)
    typer.echo(f"New key for {name!r}: keep it now, it is not shown again; the old one is revoked.", err=True)


def _no_key(name: str) -> Exception:
    # here: `conveyor --help` imports every command module and stays fast
    from conveyor.policies.errors import ConveyorError

    return ConveyorError(f"No API key belongs to {name!r}.", hint="`conveyor api-key list` shows the keys' owners.")


_URL = typer.Option("--url", help="The service (default: http://127.0.0.1:3000, or $CONVEYOR_SERVICE_URL).")
_TOKEN = typer.Option("--token", help="An admin API key (default: $CONVEYOR_ADMIN_KEY).")


def _call(
    method: str, path: str, url: str | None, token: str | None, body: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    # here: `conveyor --help` imports every command module and stays fast
    from conveyor.serving.admin import admin_call

    client = _client()
    admin_key = client.admin_key.get_secret_value() if client.admin_key else None
    return admin_call(method, path, url or client.service_url, token or admin_key, body)


def _client() -> Any:
    # here: `conveyor --help` imports every command module and stays fast
    from conveyor.registry.settings import read_client_settings

    return read_client_settings()


def _print_status(status: dict[str, Any]) -> None:
    champion, canary, analysis = status.get("champion"), status.get("canary"), status.get("analysis", {})
    out(
        f"{status['model']}: champion {champion['version'] if champion else 'none'}, "
        f"canary {canary['version'] if canary else 'none'}"
    )
    if canary:
        out(
            f"  weight {analysis['weight']:g}% (step {analysis['step'] + 1}), state {analysis['state']}, "
            f"{analysis['canary_requests']} canary requests, {analysis['canary_errors']} errors"
        )
    verdict = analysis.get("last_verdict")
    if verdict:
        out(f"  last verdict: {verdict['action']}: {'; '.join(verdict['reasons'])}")
    for role, version in (status.get("refused") or {}).items():
        out(f"  refused as {role}: version {version} (did not verify; see the ledger)")


@canary_app.command("status")
def canary_status(
    ctx: typer.Context,
    url: Annotated[str | None, _URL] = None,
    token: Annotated[str | None, _TOKEN] = None,
    as_json: JSON = False,
) -> None:
    """The canary's weight, step and last verdict (from the ledger when no service is running, or
    without an admin key: the ledger needs none)."""
    keyed = bool(token or _client().admin_key)
    status = _call("GET", "status", url, token) if keyed else None
    if status is None:
        # here: `conveyor --help` imports every command module and stays fast
        from conveyor.serving.admin import canary_history

        ws = workspace(ctx)
        with ws.stores.ledger() as ledger:
            status = canary_history(ledger, ws.model_name)
    if as_json:
        emit_json(status)
    elif "events" in status:
        why = "No service answered" if keyed else "No admin key given (--token for the live state)"
        out(f"{why}; the ledger's last canary events for {status['model']}:")
        for event in status["events"]:
            out(f"  #{event['seq']} {event['time']} {event['kind']} version {event['version']}: {event['summary']}")
    else:
        _print_status(status)


@canary_app.command("set-weight")
def canary_set_weight(
    weight: Annotated[float, typer.Argument(help="Percent of requests for the canary (0-100).")],
    hold: Annotated[
        bool, typer.Option("--hold", help="Stay at this weight (rollback still applies) until the next set-weight.")
    ] = False,
    url: Annotated[str | None, _URL] = None,
    token: Annotated[str | None, _TOKEN] = None,
    as_json: JSON = False,
) -> None:
    """Move the canary's weight by hand; the analysis goes on from there."""
    status = _running(_call("POST", "weight", url, token, {"weight": weight, "hold": hold}))
    emit_json(status) if as_json else _print_status(status)


@canary_app.command("abort")
def canary_abort(
    reason: Annotated[str, typer.Option("--reason", help="Why, for the ledger.")] = "no reason given",
    url: Annotated[str | None, _URL] = None,
    token: Annotated[str | None, _TOKEN] = None,
    as_json: JSON = False,
) -> None:
    """Roll the canary back now: weight 0, alias removed, recorded in the ledger."""
    status = _running(_call("POST", "abort", url, token, {"reason": reason}))
    emit_json(status) if as_json else _print_status(status)


def _running(status: dict[str, Any] | None) -> dict[str, Any]:
    # here: `conveyor --help` imports every command module and stays fast
    from conveyor.policies.errors import ConveyorError

    if status is None:
        raise ConveyorError("No service answered.", hint="Start it with `conveyor serve`, or pass --url.")
    return status
