"""The record, for auditors: ``status``, ``lineage``, ``audit``, ``export openlineage|intoto``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from conveyor.cli._common import JSON, emit_json, out, progress, sub_app, workspace

__all__ = [
    "audit",
    "export_intoto",
    "export_openlineage",
    "lineage",
    "register",
    "status",
]

export_app = sub_app("Export the lineage record for other tools (OpenLineage, in-toto).")


def register(app: typer.Typer) -> None:
    app.command()(status)
    app.command()(lineage)
    app.command()(audit)
    app.add_typer(export_app, name="export")


def status(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Argument(help="The registered model (default: the project's).")] = None,
    as_json: JSON = False,
) -> None:
    """Where a model stands: versions and aliases, what was last deployed, the canary and its last
    verdict, the last drift and quality checks, the ledger's last seal; each with its ledger event."""
    found = workspace(ctx).status(model)
    if as_json:
        emit_json(found)
        return
    out(found["model"])
    versions = [
        f"{v['version']}"
        + (f" ({', '.join(v['aliases'])})" if v["aliases"] else "")
        + (" (UNFINISHED registration)" if v.get("unfinished") else "")
        for v in found["versions"]
    ]
    out(f"  versions  {', '.join(versions) or 'none'}")
    for v in found["versions"]:
        if v.get("unfinished"):
            out(f"  version {v['version']}: {v['unfinished']}")
    deployed = []
    for role, d in found["last_deployed"].items():
        text = f"{role} v{d['version']} at {_when(d['at'])} (#{d['event']})"
        now = found["aliases"].get(role)
        if now is not None and now != str(d["version"]):
            text += f", before @{role} moved to v{now} (no service has loaded it since)"
        elif now is None and role != "fallback":
            text += f", before @{role} was removed"
        deployed.append(text)
    out(f"  loaded    {'; '.join(deployed) or 'never'} (by a service, last)")
    canary, verdict = found["canary"], found["canary"]["last_verdict"]
    text = f"version {canary['version']}" if canary["version"] else "none"
    if verdict:
        text += f"; last verdict: v{verdict['version']} {verdict['outcome']} at {_when(verdict['at'])} (#{verdict['event']})"
    out(f"  canary    {text}")
    for name in ("drift", "quality"):
        check = found[name]
        text = (
            f"{check['status']} on v{check['version']} at {_when(check['at'])} (#{check['event']})"
            if check
            else "never"
        )
        out(f"  {name:<9} {text}")
    ledger = found["ledger"]
    sealed = (
        f"newest seal at #{ledger['sealed_at']}, {ledger['unsealed']} since" if ledger["sealed_at"] else "never sealed"
    )
    out(f"  ledger    {ledger['events']} events, {sealed}")


def _when(at: str) -> str:
    return at[:19].replace("T", " ")  # a ledger time, to the second (UTC)


def lineage(
    ctx: typer.Context,
    target: Annotated[
        str | None,
        typer.Argument(
            help="A file (hashed), a sha256 digest, MODEL/VERSION, MODEL@ALIAS, deployment:N, event:N or request:ID."
        ),
    ] = None,
    at: Annotated[
        str | None,
        typer.Option("--at", help="Instead of TARGET: what was serving at this time (ISO 8601; no offset means UTC)."),
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="With --at: only this model.")] = None,
    up: Annotated[bool, typer.Option("--up", help="Only where it came from.")] = False,
    down: Annotated[bool, typer.Option("--down", help="Only what it fed.")] = False,
    depth: Annotated[int | None, typer.Option(min=1, help="Stop after this many steps.")] = None,
    as_json: JSON = False,
    html: Annotated[
        Path | None, typer.Option("--html", help="Also write the graph as a self-contained HTML page.")
    ] = None,
) -> None:
    """Show where an artifact came from and what it fed, from the lineage ledger."""
    # here: `conveyor --help` imports every command module and stays fast
    from conveyor.render import lineage_text

    ws = workspace(ctx)
    found = ws.lineage(target, at=at, model=model, up=up, down=down, depth=depth)
    start = found.start
    if html is not None:
        from conveyor.lineage_html import lineage_page

        with progress("Auditing the record the page shows...", quiet=as_json):
            verdict = _page_verdict(ws, start)
        from conveyor.registry.pages import publish

        page = lineage_page(found.walks, start.label, start.note, verdict, root=ws.root)
        inside = html.resolve().is_relative_to(ws.stores.reports.resolve())  # then the reports' index lists it
        publish(html, page, ws.stores.reports if inside else None)
    if as_json:
        emit_json(found.to_dict())
        return
    out(f"{start.label}" + (f": {start.note}" if start.note else ""))
    for walk in found.walks:
        for line in lineage_text(walk, start.label if len(start.digests) == 1 else None):
            out(line)
    if html is not None:
        out(f"Graph: {html}")


def _page_verdict(ws: Any, start: Any) -> tuple[bool, str]:
    """The audit a lineage page shows: a registered version's whole record when it starts from
    one, else the ledger's chain."""
    # here: `conveyor --help` imports every command module and stays fast
    from conveyor.render import audit_verdict

    if start.version:
        return audit_verdict(ws.audit(start.version))
    chain = ws.audit_ledger().chain
    if chain.ok:
        return True, f"the ledger's chain of {chain.events:,} events is intact"
    return False, f"the ledger's chain is broken at event #{chain.broken_at}: {chain.reason}"


def audit(
    ctx: typer.Context,
    ref: Annotated[str | None, typer.Argument(help="MODEL/VERSION or MODEL@ALIAS: re-verify its whole record.")] = None,
    ledger_only: Annotated[
        bool, typer.Option("--ledger", help="Check the ledger's hash chain, event by event.")
    ] = False,
    seal: Annotated[
        bool, typer.Option("--seal", help="With --ledger: sign a checkpoint of the verified chain.")
    ] = False,
    against: Annotated[
        list[Path] | None,
        typer.Option(
            "--against",
            help="With --ledger: also hold the chain to this seal file, kept outside the ledger's database.",
        ),
    ] = None,
    export: Annotated[
        Path | None, typer.Option("--export", help="With MODEL/VERSION: write an evidence bundle (.tar.gz).")
    ] = None,
    bundle: Annotated[Path | None, typer.Option("--bundle", help="Verify an evidence bundle, offline.")] = None,
    pinned: Annotated[
        str | None,
        typer.Option("--fingerprint", help="With --bundle: the key fingerprint the bundle must be signed by."),
    ] = None,
    as_json: JSON = False,
) -> None:
    """Check that the record is intact: a model version end to end, the ledger's chain, or an evidence bundle.

    Exit code 0 when every link holds, 1 when one does not (each link says why)."""
    # here: `conveyor --help` imports every command module and stays fast
    from conveyor.policies.errors import ConveyorError

    if [ref is not None, bundle is not None, ledger_only].count(True) != 1:
        raise ConveyorError(
            "Say what to audit: MODEL/VERSION, --ledger or --bundle FILE (one of them).",
            hint="e.g. `conveyor audit loan-default/1`, `conveyor audit --ledger`, `conveyor audit --bundle evidence.tar.gz`.",
        )
    pairs = (
        (seal, ledger_only, "--seal goes with --ledger"),
        (bool(against), ledger_only, "--against goes with --ledger"),
        (export is not None, ref is not None, "--export goes with MODEL/VERSION"),
        (pinned is not None, bundle is not None, "--fingerprint goes with --bundle"),
    )
    for given, needs, option in pairs:
        if given and not needs:
            raise ConveyorError(f"{option}.", hint="See `conveyor audit --help`.")
    if bundle is not None:
        _audit_bundle(bundle, pinned, as_json)
    elif ledger_only:
        _audit_ledger(ctx, seal, against or [], as_json)
    else:
        _audit_version(ctx, str(ref), export, as_json)


def _print_links(links: list[Any], verdict: str) -> None:
    for link in links:
        out(f"{'PASS' if link.ok else 'FAIL'}  {link.name:11s} {link.detail}")
    out(verdict)


def _audit_version(ctx: typer.Context, ref: str, export: Path | None, as_json: bool) -> None:
    with progress(f"Auditing {ref}...", quiet=as_json):
        report = workspace(ctx).audit(ref, export=export)
    v = report.verification
    if as_json:
        emit_json(report.to_dict())
    else:
        name = f"{v.name} version {v.version}" if v.version else ref
        _print_links(
            report.links,
            f"{name}: {'every link verified' if report.ok else 'NOT verified'} "
            f"({len(report.events)} ledger events on its record).",
        )
        if report.evidence is not None:
            out(
                f"Evidence bundle: {report.evidence} (verify offline: conveyor audit --bundle {report.evidence.name} "
                f"--fingerprint {report.evidence_key})"
            )
    if not report.ok:
        raise typer.Exit(1)


def _audit_ledger(ctx: typer.Context, seal: bool, against: list[Path], as_json: bool) -> None:
    with progress("Checking the ledger's chain" + (" and sealing it..." if seal else "..."), quiet=as_json):
        result = workspace(ctx).audit_ledger(seal=seal, against=against)
    if as_json:
        emit_json(result.to_dict())
        if not result.ok:
            raise typer.Exit(1)
        return
    report = result.chain
    report.raise_if_broken()
    head = f", head {report.head[:16]}…" if report.head else ""
    out(f"Ledger intact: {report.events:,} events, every link verified{head}.")
    newest = result.newest_seal
    if result.sealed is not None:
        out(f"Sealed at event #{result.sealed.seq:,} with key {result.sealed.signer}.")
        out(f"A copy of the seal: {result.seal_file} (keep one outside the ledger's database; see the README).")
    elif newest is not None:
        since = report.events - newest.seq
        out(
            f"Held to every seal; the newest seals event #{newest.seq:,} ({newest.time}): "
            + (f"{since:,} event(s) recorded since." if since else "nothing recorded since.")
        )
    else:
        out("No seal yet: `conveyor audit --ledger --seal` signs a checkpoint that later audits hold the ledger to.")


def _audit_bundle(bundle: Path, pinned: str | None, as_json: bool) -> None:
    # here: `conveyor --help` imports every command module and stays fast
    from conveyor.api import verify_bundle
    from conveyor.registry.evidence import describe

    report = verify_bundle(bundle, fingerprint=pinned)
    if as_json:
        emit_json(report.to_dict())
    else:
        _print_links(report.links, describe(report))
    if not report.ok:
        raise typer.Exit(1)


@export_app.command("openlineage")
def export_openlineage(
    ctx: typer.Context,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write JSON lines to this file.")] = None,
    url: Annotated[
        str | None,
        typer.Option("--url", help="POST to this OpenLineage endpoint (e.g. Marquez at http://127.0.0.1:5000)."),
    ] = None,
    namespace: Annotated[
        str | None, typer.Option(help="OpenLineage namespace (default: conveyor/<model name>).")
    ] = None,
    since: Annotated[int, typer.Option("--since", min=1, help="Start at this ledger event.")] = 1,
    as_json: JSON = False,
) -> None:
    """Export the ledger as OpenLineage run events: one per event, datasets named by digest."""
    # here: `conveyor --help` imports every command module and stays fast
    from conveyor.policies.errors import ConveyorError
    from conveyor.registry.openlineage import export_ledger

    if (output is None) == (url is None):
        raise ConveyorError(
            "Say where the events go: --output FILE or --url URL (one of them).",
            hint="e.g. `conveyor export openlineage -o lineage.jsonl`.",
        )
    ws = workspace(ctx)
    namespace = namespace or f"conveyor/{ws.model_name}"
    with ws.stores.ledger() as ledger:
        count = export_ledger(ledger, namespace, since, output=output, url=url)
    if as_json:
        emit_json({"events": count, "output": str(output) if output else None, "url": url, "namespace": namespace})
        return
    out(
        f"{count:,} OpenLineage run events {'written to ' + str(output) if output else 'sent to ' + str(url)} (namespace {namespace})."
    )


@export_app.command("intoto")
def export_intoto(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="MODEL (every version), MODEL/VERSION or MODEL@ALIAS.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write the statements to.")],
    as_json: JSON = False,
) -> None:
    """Write each version's signed in-toto statements as they are: the provenance (DSSE) and the signature bundle."""
    # here: `conveyor --help` imports every command module and stays fast
    from conveyor.registry.models import export_statements

    written, versions = export_statements(workspace(ctx).stores.mlflow(), ref, output)
    if as_json:
        emit_json({"statements": written, "versions": versions, "output": str(output)})
        return
    out(f"{written} statements of {versions} version(s) written to {output}.")
