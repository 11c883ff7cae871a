"""The ``conveyor`` command line: the front door, kept thin and fast.

Each command imports what it needs when it runs, so ``conveyor --help`` loads no heavy library.
A ``ConveyorError`` is printed as one paragraph (what failed, why, what to do) and sets the exit
code; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

if TYPE_CHECKING:
    from conveyor.settings import Settings
    from registry.ledger import Ledger

__all__ = ["app", "main"]


class _Group(TyperGroup):
    """Turns a ``ConveyorError`` anywhere below into its paragraph and exit code."""

    def invoke(self, ctx: typer.Context) -> Any:
        from policies.errors import ConveyorError

        try:
            return super().invoke(ctx)
        except ConveyorError as exc:
            _print_error(exc)
            raise typer.Exit(exc.exit_code) from None


def _print_error(exc: Any) -> None:
    from rich.console import Console
    from rich.markup import escape

    text = f"[bold red]Error:[/] {escape(exc.message)}"
    if exc.hint:
        text += f" {escape(exc.hint)}"
    Console(stderr=True, soft_wrap=True).print(text)


app = typer.Typer(
    cls=_Group,
    help="Conveyor: validated data in, signed and served models out, every step on the record.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,  # plain help: rich's help renderer alone costs ~0.2 s at start
)
config_app = typer.Typer(
    cls=_Group, help="Check the project config (conveyor.yaml).", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(config_app, name="config")
keys_app = typer.Typer(cls=_Group, help="Manage the project's signing key.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(keys_app, name="keys")
expectations_app = typer.Typer(
    cls=_Group, help="Write and review the data's expectation suite.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(expectations_app, name="expectations")
api_key_app = typer.Typer(cls=_Group, help="Manage the service's API keys.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(api_key_app, name="api-key")
canary_app = typer.Typer(
    cls=_Group, help="Watch and steer the canary of a running service.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(canary_app, name="canary")
drift_app = typer.Typer(
    cls=_Group, help="Compare live traffic with what the champion learned from.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(drift_app, name="drift")
labels_app = typer.Typer(
    cls=_Group, help="Bring ground truth to logged predictions.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(labels_app, name="labels")
export_app = typer.Typer(
    cls=_Group, help="Export the lineage record for other tools (OpenLineage, in-toto).", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(export_app, name="export")


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Project config file (default: conveyor.yaml, or $CONVEYOR_PROJECT_FILE)."),
    ] = None,
) -> None:
    ctx.obj = {"config": config}


def _settings(ctx: typer.Context) -> Settings:
    """The settings, with ``--config`` first in line; runs the bootstrap before heavy imports."""
    from conveyor.bootstrap import bootstrap, quiet_libraries
    from conveyor.settings import configure

    root = ctx.find_root()
    config = (root.obj or {}).get("config")
    settings = bootstrap(configure(project_file=config))
    quiet_libraries()
    return settings


def _ledger(settings: Settings) -> Ledger:
    from registry.ledger import Ledger

    return Ledger(str(settings.ledger_url), actor=settings.actor)


def _out(text: str = "") -> None:
    typer.echo(text)


@app.command()
def version() -> None:
    """Show Conveyor's version and the versions of the libraries it is built on."""
    from importlib import metadata

    _out(f"conveyor {metadata.version('conveyor')}")
    for name in ("prefect", "mlflow", "dvc", "feast", "great-expectations", "bentoml", "evidently",
                 "model-signing", "sigstore", "scikit-learn", "pandas"):  # fmt: skip
        try:
            _out(f"  {name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            _out(f"  {name} (not installed)")


@config_app.command("check")
def config_check(ctx: typer.Context) -> None:
    """Read the project config, check it (and its columns against the data), and summarise it."""
    from policies.project import load_project

    settings = _settings(ctx)
    project = load_project(settings.project_file)
    _out(f"{settings.project_file}: valid")
    _out(f"  model      {project.model_name} ({project.task})")
    _out(f"  data       {project.data}" + ("" if project.data.is_file() else "  (not present yet)"))
    _out(f"  entity     {project.entity_key}, time {project.event_timestamp}, target {project.target}")
    _out(f"  features   {len(project.features.numeric)} numeric, {len(project.features.categorical)} categorical")
    _out(f"  estimator  {project.estimator.class_path}")


@app.command()
def demo(
    ctx: typer.Context,
    data_only: Annotated[bool, typer.Option("--data-only", help="Only build and version the demo data.")] = False,
    no_loop: Annotated[bool, typer.Option("--no-loop", help="Stop after the first champion (no serving, drift or retraining).")] = False,
) -> None:
    """Run the bundled demo: data, a signed champion, then the whole loop.

    Serves the champion on 127.0.0.1, sends reference-period then drifted traffic, checks drift,
    adds labels, retrains on the new data, and lets the canary analysis promote or roll back the
    new model; prints a summary. The service is stopped at the end.
    """
    import time

    from pipelines.demo import prepare_demo_data
    from pipelines.training import training_flow

    settings = _settings(ctx)
    with _ledger(settings) as ledger:
        prepared = prepare_demo_data(settings.project_root, ledger)
    for item in prepared:
        ref = item.ref
        made = f"generated {item.rows:,} rows" if item.generated else "found on disk"
        recorded = "recorded as" if ref.newly_recorded else "already recorded as"
        _out(f"{ref.path.relative_to(settings.project_root)}: {made}, {ref.size:,} bytes")
        _out(f"  content  {ref.digest}")
        _out(f"  DVC md5  {ref.md5}")
        _out(f"  ledger   {recorded} event #{ref.event}")
    if data_only:
        return
    _out()
    _out("Training on the first version (validate, features, train, evaluate, sign, register)...")
    outcome = training_flow(_request(settings, prepared[0].ref.path))
    _print_outcome(outcome)
    _out()
    _out(f"Promoting {outcome.name}/{outcome.version} to champion (verify, then policies/promotion.yaml decides)...")
    from registry.release import promote as run_promotion

    with _ledger(settings) as ledger:
        _print_promotion(run_promotion(_release(settings, ledger), f"{outcome.name}/{outcome.version}", "champion"))
    if no_loop:
        return
    _out()
    _out("The loop: serve, watch for drift, retrain, canary (policies/drift.yaml, policies/canary.yaml)...")
    from pipelines.demo_loop import run_loop

    started = time.monotonic()
    steps = run_loop(_request(settings, None), prepared[0].ref.path, prepared[1].ref.path, _out)
    _out()
    _out(f"{'step':<50} {'time':>7}  outcome")
    for step in steps:
        _out(f"{step.step:<50} {step.seconds:>6.1f}s  {step.outcome}")
        for link in step.links:
            if link:
                _out(f"{'':<59}{link}")
    _out(f"{'the loop':<50} {time.monotonic() - started:>6.1f}s")
    _out()
    _out(f"Auditing {outcome.name}@champion end to end, then sealing the ledger...")
    from conveyor.lineage_html import lineage_page
    from registry.audit import audit_version
    from registry.lineage import walk

    graph = settings.home / "reports" / "lineage-champion.html"
    with _ledger(settings) as ledger:
        release = _release(settings, ledger)
        report = audit_version(f"{outcome.name}@champion", release.signing(), root=release.root, keys_dir=settings.keys_dir, ledger=ledger)
        sealed = _seal(settings, ledger)
        digest = report.verification.version_digest
        if digest:
            graph.write_text(lineage_page([walk(ledger, digest, d) for d in ("upstream", "downstream")], f"{outcome.name}@champion"), encoding="utf-8")
    failed = [link.name for link in report.links if not link.ok]
    v = report.verification
    _out(f"  {v.name} version {v.version}: {len(report.links) - len(failed)} of {len(report.links)} links verified"
         + (f"; FAILED: {', '.join(failed)}" if failed else "") + f"; ledger sealed at event #{sealed.seq:,}.")
    _out()
    first = prepared[0].ref.path.relative_to(settings.project_root)
    _out(f"MLflow UI:  .venv/bin/mlflow ui --backend-store-uri {settings.mlflow_tracking_uri} (then http://127.0.0.1:5000)")
    _out(f"Reports:    {settings.home / 'reports'}")
    _out(f"Lineage:    `conveyor lineage {first}` shows everything the first dataset fed, retraining included;")
    _out(f"            the champion's graph: {graph}")
    _out(f"Audit:      `conveyor audit {outcome.name}@champion` re-verifies every link; add `--export evidence.tar.gz` for an offline bundle.")


@expectations_app.command("init")
def expectations_init(
    ctx: typer.Context,
    data: Annotated[Path | None, typer.Option(help="Data file to learn from (default: the config's).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing suite.")] = False,
) -> None:
    """Write a starter suite from the config and the data, to review and tighten by hand."""
    from pipelines.data import read_data
    from pipelines.validate import starter_suite, suite_path
    from policies.errors import ConveyorError
    from policies.project import load_project

    settings = _settings(ctx)
    project = load_project(settings.project_file)
    target = suite_path(project, settings.project_root)
    if target.exists() and not force:
        raise ConveyorError(f"{target} already exists.", hint="Edit it, or pass --force to replace it.")
    suite = starter_suite(project, read_data((data or project.data).absolute(), project))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(suite, indent=2) + "\n")
    _out(f"Wrote {len(suite['expectations'])} expectations to {target}; review them before relying on them.")


@app.command()
def validate(
    ctx: typer.Context,
    data: Annotated[Path | None, typer.Option(help="Validate this file instead of the config's `data`.")] = None,
    summary: Annotated[Path | None, typer.Option(help="Also write a JSON summary here (for DVC).")] = None,
) -> None:
    """Validate the data against its expectation suite; exit 1 naming every failed expectation."""
    from pipelines.training import validate_only

    settings = _settings(ctx)
    result = validate_only(_request(settings, data))
    if summary:
        summary.parent.mkdir(parents=True, exist_ok=True)
        summary.write_text(json.dumps({"success": result.success, "evaluated": result.evaluated,
                                       "report": result.digest}, indent=2) + "\n")  # fmt: skip
    _out(f"Valid: {result.evaluated} expectations met. Report: {result.report}")
    if result.docs:
        _out(f"Data Docs: {result.docs}")


def _request(settings: Settings, data: Path | None):  # noqa: ANN202 - TrainingRequest, imported lazily
    from pipelines.training import TrainingRequest

    return TrainingRequest(
        config_file=str(settings.project_file), root=str(settings.project_root), home=str(settings.home),
        ledger_url=str(settings.ledger_url), mlflow_tracking_uri=str(settings.mlflow_tracking_uri),
        actor=settings.actor, data=str(data.absolute()) if data else None,
    )  # fmt: skip


@app.command()
def train(
    ctx: typer.Context,
    data: Annotated[Path | None, typer.Option(help="Train on this file instead of the config's `data`.")] = None,
    metrics: Annotated[Path | None, typer.Option(help="Also write the holdout metrics here as JSON (for DVC).")] = None,
) -> None:
    """Validate, build features, train, evaluate, sign and register a model (a Prefect flow)."""
    from pipelines.training import training_flow

    settings = _settings(ctx)
    outcome = training_flow(_request(settings, data))
    if metrics:
        metrics.parent.mkdir(parents=True, exist_ok=True)
        metrics.write_text(json.dumps({k: round(v, 6) for k, v in outcome.metrics.items()}, indent=2, sort_keys=True) + "\n")
    _print_outcome(outcome)


def _print_outcome(outcome: Any) -> None:
    _out(f"Registered {outcome.name} version {outcome.version} as @{outcome.alias} (signed, provenance verified).")
    _out(f"  model    {outcome.model_digest}")
    _out(f"  version  {outcome.version_digest}")
    _out(f"  data     {outcome.data_digest}  ({outcome.rows_out:,} of {outcome.rows_in:,} rows joined)")
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in outcome.metrics.items())
    _out(f"  holdout  {metrics}")
    if outcome.champion_metrics:
        champion = ", ".join(f"{k} {v:.4f}" for k, v in outcome.champion_metrics.items())
        _out(f"  champion v{outcome.champion_version}: {champion}")
    for check in outcome.behaviour:
        _out(f"  behaviour {check['feature']} +{check['delta']:g} -> {check['direction']}: {check['share']:.0%} of rows")
    _out(f"  report   {outcome.validation_report}")
    _out(f"Next: `conveyor lineage {outcome.version_digest}` walks back to the data.")


@keys_app.command("init")
def keys_init(ctx: typer.Context) -> None:
    """Create the project's signing key pair (EC P-256) if there is none, and show it."""
    from registry.keys import load_or_create_key

    key = load_or_create_key(_settings(ctx).keys_dir)
    _out(f"Signing key: {key.private_path} (private, mode 0600)")
    _out(f"Public key:  {key.public_path}")
    _out(f"Fingerprint: {key.fingerprint}")


@keys_app.command("show")
def keys_show(ctx: typer.Context) -> None:
    """Show the project's public key and its fingerprint."""
    from policies.errors import NotFound
    from registry.keys import PUBLIC, fingerprint

    public = _settings(ctx).keys_dir / PUBLIC
    if not public.is_file():
        raise NotFound(f"No signing key in {public.parent}.", hint="Create one with `conveyor keys init`.")
    _out(public.read_text().strip())
    _out(f"Fingerprint: {fingerprint(public.read_bytes())}")


def _release(settings: Settings, ledger: Ledger):  # noqa: ANN202 - ReleaseContext, imported lazily
    import mlflow

    from pipelines.release import release_context
    from policies.project import load_project

    mlflow.set_tracking_uri(str(settings.mlflow_tracking_uri))
    project = load_project(settings.project_file, check_data=False)
    return release_context(settings.project_root, settings.home, project, ledger, settings.project_root / "policies")


@app.command()
def verify(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="MODEL/VERSION or MODEL@ALIAS.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Verify a registered version: signature, provenance, registry tags and ledger, link by link."""
    from registry.verify import verify_version

    settings = _settings(ctx)
    with _ledger(settings) as ledger:
        release = _release(settings, ledger)
        report = verify_version(ref, release.signing(), root=release.root, keys_dir=settings.keys_dir, ledger=ledger)
    if as_json:
        _out(json.dumps(report.to_dict(), indent=2))
    else:
        for link in report.links:
            _out(f"{'PASS' if link.ok else 'FAIL'}  {link.name:10s} {link.detail}")
        _out(f"{ref}: {'verified' if report.ok else 'NOT verified'}")
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def promote(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="MODEL/VERSION or MODEL@ALIAS.")],
    to: Annotated[str, typer.Option("--to", help="canary or champion.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Decide and explain, change nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Verify, decide by policies/promotion.yaml, move the alias. Exit 0 promoted, 1 refused, 2 error."""
    from registry.release import promote as run_promotion
    from policies.errors import ConveyorError

    if to not in ("canary", "champion"):
        raise ConveyorError(f"--to must be canary or champion, not {to!r}.", hint="Promote to canary first, then to champion.")
    settings = _settings(ctx)
    with _ledger(settings) as ledger:
        outcome = run_promotion(_release(settings, ledger), ref, to, dry_run=dry_run)
    if as_json:
        _out(json.dumps(outcome.to_dict(), indent=2))
    else:
        _print_promotion(outcome)
    if not outcome.decision.ok:
        raise typer.Exit(1)


def _print_promotion(outcome: Any) -> None:
    verdict = "would be promoted" if outcome.dry_run and outcome.decision.ok else (
        "promoted" if outcome.decision.ok else "refused")  # fmt: skip
    replaced = f" (previous {outcome.target}: version {outcome.previous})" if outcome.decision.ok and outcome.previous else ""
    _out(f"{outcome.name} version {outcome.version} to {outcome.target}: {verdict}{replaced}")
    for reason in outcome.decision.reasons:
        _out(f"  - {reason}")
    if outcome.event:
        _out(f"  recorded as ledger event #{outcome.event}")


@app.command()
def rollback(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="The registered model's name.")],
) -> None:
    """Point @champion back at the champion the last promotion replaced."""
    from registry.release import rollback as run_rollback

    settings = _settings(ctx)
    with _ledger(settings) as ledger:
        current, previous = run_rollback(_release(settings, ledger), model)
    _out(f"{model}: champion rolled back from version {current} to version {previous}.")


@app.command()
def lineage(
    ctx: typer.Context,
    target: Annotated[str | None, typer.Argument(
        help="A file (hashed), a sha256 digest, MODEL/VERSION, MODEL@ALIAS, deployment:N, event:N or request:ID.")] = None,
    at: Annotated[str | None, typer.Option("--at", help="Instead of TARGET: what was serving at this time (ISO 8601; no offset means UTC).")] = None,
    model: Annotated[str | None, typer.Option("--model", help="With --at: only this model.")] = None,
    up: Annotated[bool, typer.Option("--up", help="Only where it came from.")] = False,
    down: Annotated[bool, typer.Option("--down", help="Only what it fed.")] = False,
    depth: Annotated[int | None, typer.Option(min=1, help="Stop after this many steps.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    html: Annotated[Path | None, typer.Option("--html", help="Also write the graph as a self-contained HTML page.")] = None,
) -> None:
    """Show where an artifact came from and what it fed, from the lineage ledger."""
    from conveyor.render import lineage_text
    from policies.errors import ConveyorError, NotFound
    from registry.lineage import walk
    from registry.lookup import find_start, parse_time, serving_at

    if (target is None) == (at is None):
        raise ConveyorError("Say where to start: a TARGET or --at TIME (one of them).", hint="e.g. `conveyor lineage loan-default@champion` or `conveyor lineage --at 2026-11-21T14:30`.")
    settings = _settings(ctx)
    directions = ["upstream"] * (up or not down) + ["downstream"] * (down or not up)
    with _ledger(settings) as ledger:
        if at is not None:
            start = serving_at(ledger, parse_time(at), model)
        else:
            start = find_start(target, ledger, inference=settings.home / "inference", tracking_uri=str(settings.mlflow_tracking_uri))
        walks = [walk(ledger, start.digests, d, depth) for d in directions]  # type: ignore[arg-type]
    if not any(w.events for w in walks):
        raise NotFound(
            f"The ledger has no event that names {start.label}.",
            hint="It was never recorded by Conveyor, or the file changed since (new content, new "
            "digest): `conveyor demo` or `conveyor train` record data when they use it.",
        )
    if html is not None:
        from conveyor.lineage_html import lineage_page

        html.parent.mkdir(parents=True, exist_ok=True)
        html.write_text(lineage_page(walks, start.label, start.note), encoding="utf-8")
    if as_json:
        _out(json.dumps({"start": start.label, "note": start.note, "digests": list(start.digests),
                         **{w.direction: w.to_dict() for w in walks}}, indent=2))  # fmt: skip
        return
    _out(f"{start.label}" + (f": {start.note}" if start.note else ""))
    for lineage_walk in walks:
        for line in lineage_text(lineage_walk, start.label if len(start.digests) == 1 else None):
            _out(line)
    if html is not None:
        _out(f"Graph: {html}")


@app.command()
def audit(
    ctx: typer.Context,
    ref: Annotated[str | None, typer.Argument(help="MODEL/VERSION or MODEL@ALIAS: re-verify its whole record.")] = None,
    ledger_only: Annotated[bool, typer.Option("--ledger", help="Check the ledger's hash chain, event by event.")] = False,
    seal: Annotated[bool, typer.Option("--seal", help="With --ledger: sign a checkpoint of the verified chain.")] = False,
    export: Annotated[Path | None, typer.Option("--export", help="With MODEL/VERSION: write an evidence bundle (.tar.gz).")] = None,
    bundle: Annotated[Path | None, typer.Option("--bundle", help="Verify an evidence bundle, offline.")] = None,
    pinned: Annotated[str | None, typer.Option("--fingerprint", help="With --bundle: the key fingerprint the bundle must be signed by.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Check that the record is intact: a model version end to end, the ledger's chain, or an evidence bundle.

    Exit code 0 when every link holds, 1 when one does not (each link says why)."""
    from policies.errors import ConveyorError

    if [ref is not None, bundle is not None, ledger_only].count(True) != 1:
        raise ConveyorError("Say what to audit: MODEL/VERSION, --ledger or --bundle FILE (one of them).",
                            hint="e.g. `conveyor audit loan-default/1`, `conveyor audit --ledger`, `conveyor audit --bundle evidence.tar.gz`.")  # fmt: skip
    for given, needs, option in ((seal, ledger_only, "--seal goes with --ledger"), (export is not None, ref is not None, "--export goes with MODEL/VERSION"),
                                 (pinned is not None, bundle is not None, "--fingerprint goes with --bundle")):  # fmt: skip
        if given and not needs:
            raise ConveyorError(f"{option}.", hint="See `conveyor audit --help`.")
    if bundle is not None:
        _audit_bundle(bundle, pinned, as_json)
    elif ledger_only:
        _audit_ledger(ctx, seal, as_json)
    else:
        _audit_version(ctx, str(ref), export, as_json)


def _print_links(links: list[Any], verdict: str) -> None:
    for link in links:
        _out(f"{'PASS' if link.ok else 'FAIL'}  {link.name:11s} {link.detail}")
    _out(verdict)


def _audit_version(ctx: typer.Context, ref: str, export: Path | None, as_json: bool) -> None:
    import tempfile

    from registry.audit import audit_version, trusted_signers
    from registry.evidence import export_evidence
    from registry.keys import load_or_create_key

    settings = _settings(ctx)
    with _ledger(settings) as ledger, tempfile.TemporaryDirectory(prefix="conveyor-audit-") as keep:
        release = _release(settings, ledger)
        policy = release.signing()
        report = audit_version(ref, policy, root=release.root, keys_dir=settings.keys_dir, ledger=ledger, keep=Path(keep))
        written, key = None, None
        if export is not None and report.verification.version_digest is not None:
            key = load_or_create_key(settings.keys_dir)
            written = export_evidence(report, ledger, export, key=key, trusted=trusted_signers(policy, release.root, settings.keys_dir),
                                      root=release.root)  # fmt: skip
    v = report.verification
    if as_json:
        _out(json.dumps({**report.to_dict(), "evidence": str(written) if written else None}, indent=2))
    else:
        name = f"{v.name} version {v.version}" if v.version else ref
        _print_links(report.links, f"{name}: {'every link verified' if report.ok else 'NOT verified'} "
                                   f"({len(report.events)} ledger events on its record).")  # fmt: skip
        if written is not None and key is not None:
            _out(f"Evidence bundle: {written} (verify offline: conveyor audit --bundle {written.name} --fingerprint {key.fingerprint})")
    if not report.ok:
        raise typer.Exit(1)


def _audit_ledger(ctx: typer.Context, seal: bool, as_json: bool) -> None:
    from registry.seals import MILESTONE_EVERY

    settings = _settings(ctx)
    with _ledger(settings) as ledger:
        report = ledger.verify_chain(milestone_every=MILESTONE_EVERY if seal else None)
        sealed = _seal(settings, ledger, report) if seal and report.ok else None
    if as_json:
        body = {k: v for k, v in report.__dict__.items() if k != "milestones"}
        _out(json.dumps({"ledger": ledger.display_url, **body, "sealed": sealed.seq if sealed else None}, indent=2))
        if not report.ok:
            raise typer.Exit(1)
        return
    report.raise_if_broken()
    head = f", head {report.head[:16]}…" if report.head else ""
    _out(f"Ledger intact: {report.events:,} events, every link verified{head}.")
    if sealed is not None:
        _out(f"Sealed at event #{sealed.seq:,} with key {sealed.signer}.")


def _seal(settings: Settings, ledger: Ledger, verified: Any = None):  # noqa: ANN202 - registry.seals.Seal, imported lazily
    """Seal the ledger with the project key (trusted beside the keys the signing policy trusts)."""
    from policies.signing import load_signing_policy
    from registry.audit import trusted_signers
    from registry.keys import load_or_create_key
    from registry.seals import seal_ledger

    key = load_or_create_key(settings.keys_dir)
    trusted = {**trusted_signers(load_signing_policy(settings.project_root), settings.project_root, settings.keys_dir),
               key.fingerprint: key.public_path.read_bytes()}  # fmt: skip
    return seal_ledger(ledger, key.private_key(), key.fingerprint, trusted, verified=verified)


def _audit_bundle(bundle: Path, pinned: str | None, as_json: bool) -> None:
    from registry.evidence import describe, verify_evidence

    report = verify_evidence(bundle, pinned=pinned)
    if as_json:
        _out(json.dumps(report.to_dict(), indent=2))
    else:
        _print_links(report.links, describe(report))
    if not report.ok:
        raise typer.Exit(1)


@export_app.command("openlineage")
def export_openlineage(
    ctx: typer.Context,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write JSON lines to this file.")] = None,
    url: Annotated[str | None, typer.Option("--url", help="POST to this OpenLineage endpoint (e.g. Marquez at http://127.0.0.1:5000).")] = None,
    namespace: Annotated[str | None, typer.Option(help="OpenLineage namespace (default: conveyor/<model name>).")] = None,
    since: Annotated[int, typer.Option("--since", min=1, help="Start at this ledger event.")] = 1,
) -> None:
    """Export the ledger as OpenLineage run events: one per event, datasets named by digest."""
    from policies.errors import ConveyorError
    from policies.project import load_project
    from registry.openlineage import post_events, run_events, write_events

    if (output is None) == (url is None):
        raise ConveyorError("Say where the events go: --output FILE or --url URL (one of them).", hint="e.g. `conveyor export openlineage -o lineage.jsonl`.")
    settings = _settings(ctx)
    namespace = namespace or f"conveyor/{load_project(settings.project_file, check_data=False).model_name}"
    with _ledger(settings) as ledger:
        events = run_events(ledger.iter_events(since), namespace)
        count = write_events(events, output) if output is not None else post_events(events, str(url))
    _out(f"{count:,} OpenLineage run events {'written to ' + str(output) if output else 'sent to ' + str(url)} (namespace {namespace}).")


@export_app.command("intoto")
def export_intoto(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="MODEL (every version), MODEL/VERSION or MODEL@ALIAS.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write the statements to.")],
) -> None:
    """Write each version's signed in-toto statements as they are: the provenance (DSSE) and the signature bundle."""
    import tempfile

    import mlflow
    from mlflow import MlflowClient

    from registry.models import fetch_model
    from registry.signing import BUNDLE, PROVENANCE
    from registry.verify import resolve

    settings = _settings(ctx)
    mlflow.set_tracking_uri(str(settings.mlflow_tracking_uri))
    client = MlflowClient(tracking_uri=str(settings.mlflow_tracking_uri))
    if "/" in ref or "@" in ref:
        versions = [resolve(client, ref)]
    else:
        versions = [(ref, str(v.version)) for v in client.search_model_versions(f"name='{ref}'")]
    output.mkdir(parents=True, exist_ok=True)
    written = 0
    for name, version in sorted(versions, key=lambda nv: int(nv[1])):
        with tempfile.TemporaryDirectory(prefix="conveyor-intoto-") as scratch:
            folder = fetch_model(f"models:/{name}/{version}", Path(scratch))
            for source, suffix in ((PROVENANCE, "provenance.dsse.json"), (BUNDLE, "model-signature.sigstore.json")):
                if (folder / source).is_file():
                    (output / f"{name}-{version}.{suffix}").write_bytes((folder / source).read_bytes())
                    written += 1
    _out(f"{written} statements of {len(versions)} version(s) written to {output}.")


# -- serving ---------------------------------------------------------------------------------------


@app.command()
def serve(
    ctx: typer.Context,
    port: Annotated[int, typer.Option("--port", "-p", help="Port to listen on.")] = 3000,
    host: Annotated[str, typer.Option("--host", help="Address to bind (default: this machine only).")] = "127.0.0.1",
) -> None:
    """Serve @champion, and @canary when one is set, behind one endpoint (BentoML)."""
    import os
    import sys

    from conveyor.bootstrap import tool_environment
    from policies.project import load_project

    settings = _settings(ctx)
    load_project(settings.project_file, check_data=False)  # a broken config fails here, in one paragraph
    env = {**os.environ, **tool_environment(settings), "OMP_NUM_THREADS": "1",
           "CONVEYOR_PROJECT_FILE": str(settings.project_file), "CONVEYOR_HOME": str(settings.home),
           "CONVEYOR_LEDGER_URL": str(settings.ledger_url), "CONVEYOR_MLFLOW_TRACKING_URI": str(settings.mlflow_tracking_uri),
           "CONVEYOR_ACTOR": settings.actor}  # fmt: skip
    command = [sys.executable, "-m", "bentoml", "serve", "serving.service:Conveyor", "--host", host, "--port", str(port)]
    _out(f"Serving {settings.project_file.parent.name} on http://{host}:{port} (Ctrl-C stops it cleanly)")
    sys.stdout.flush()
    os.execve(sys.executable, command, env)  # BentoML owns the process: signals reach it directly


@api_key_app.command("create")
def api_key_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Who the key is for (a client, a team).")],
    admin: Annotated[bool, typer.Option("--admin", help="An admin key: /admin endpoints, `conveyor canary`.")] = False,
    rate: Annotated[float | None, typer.Option("--rate", min=0.001, help="This key's own limit, requests/s (default: policies/serving.yaml).")] = None,
    burst: Annotated[int | None, typer.Option("--burst", min=1, help="Requests at once for --rate (default: the rate).")] = None,
) -> None:
    """Create an API key; it is shown once and stored only as a salted hash."""
    from serving.auth import ApiKeys

    settings = _settings(ctx)
    key = ApiKeys(settings.home / "serving" / "api-keys.json").create(name, admin=admin, per_second=rate, burst=burst)
    _out(key)
    typer.echo(f"{'Admin' if admin else 'Predict'} key for {name!r}: keep it now, it is not shown again.", err=True)


@api_key_app.command("list")
def api_key_list(ctx: typer.Context) -> None:
    """The keys' ids, owners and roles (never the keys)."""
    from serving.auth import ApiKeys

    settings = _settings(ctx)
    for entry in ApiKeys(settings.home / "serving" / "api-keys.json").entries():
        _out(f"{entry['id']}…  {entry['name']}  {'admin' if entry['admin'] else 'predict'}")


_URL = typer.Option("--url", help="The service (default: http://127.0.0.1:3000, or $CONVEYOR_SERVICE_URL).")
_TOKEN = typer.Option("--token", help="An admin API key (default: $CONVEYOR_ADMIN_KEY).")


def _admin_call(method: str, path: str, url: str | None, token: str | None, body: dict | None = None) -> dict | None:
    """The admin endpoint's JSON answer; None when no service answers at ``url``."""
    import os

    import httpx

    from policies.errors import ConveyorError

    base = url or os.environ.get("CONVEYOR_SERVICE_URL", "http://127.0.0.1:3000")
    token = token or os.environ.get("CONVEYOR_ADMIN_KEY")
    if not token:
        raise ConveyorError("An admin API key is needed.", hint="Pass --token or set CONVEYOR_ADMIN_KEY (`conveyor api-key create NAME --admin`).")
    try:
        response = httpx.request(method, f"{base.rstrip('/')}/admin/{path}", json=body, timeout=60,
                                 headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    except httpx.TransportError:
        return None
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise ConveyorError(f"The service refused: {response.status_code} {detail}.", hint="Check the key and the canary's state.")
    return response.json()


def _print_status(status: dict) -> None:
    champion, canary, analysis = status.get("champion"), status.get("canary"), status.get("analysis", {})
    _out(f"{status['model']}: champion {champion['version'] if champion else 'none'}, "
         f"canary {canary['version'] if canary else 'none'}")  # fmt: skip
    if canary:
        _out(f"  weight {analysis['weight']:g}% (step {analysis['step'] + 1}), state {analysis['state']}, "
             f"{analysis['canary_requests']} canary requests, {analysis['canary_errors']} errors")  # fmt: skip
    verdict = analysis.get("last_verdict")
    if verdict:
        _out(f"  last verdict: {verdict['action']}: {'; '.join(verdict['reasons'])}")
    for role, version in (status.get("refused") or {}).items():
        _out(f"  refused as {role}: version {version} (did not verify; see the ledger)")


@canary_app.command("status")
def canary_status(
    ctx: typer.Context, url: Annotated[str | None, _URL] = None, token: Annotated[str | None, _TOKEN] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:  # fmt: skip
    """The canary's weight, step and last verdict (from the ledger when no service is running)."""
    status = _admin_call("GET", "status", url, token)
    if status is None:
        status = _ledger_canary_state(_settings(ctx))
    if as_json:
        _out(json.dumps(status, indent=2))
    elif "events" in status:
        _out(f"No service answered; the ledger's last canary events for {status['model']}:")
        for event in status["events"]:
            _out(f"  #{event['seq']} {event['time']} {event['kind']} version {event['version']}: {event['summary']}")
    else:
        _print_status(status)


def _ledger_canary_state(settings: Settings) -> dict:
    from policies.project import load_project

    name = load_project(settings.project_file, check_data=False).model_name
    kinds = {"model.deployed", "model.canary_rolled_back", "model.canary_completed", "model.load_refused"}
    events = []
    with _ledger(settings) as ledger:
        for event in ledger.iter_events():
            if event.details.get("name") != name:
                continue
            if event.kind in kinds or (event.kind == "model.promoted" and event.details.get("target") == "canary"):
                summary = "; ".join(event.details.get("reasons") or []) or event.details.get("role") or event.details.get("reason", "")
                events.append({"seq": event.seq, "time": str(event.time), "kind": event.kind,
                               "version": event.details.get("version"), "summary": summary})  # fmt: skip
    return {"model": name, "events": events[-10:]}


@canary_app.command("set-weight")
def canary_set_weight(
    weight: Annotated[float, typer.Argument(help="Percent of requests for the canary (0-100).")],
    hold: Annotated[bool, typer.Option("--hold", help="Stay at this weight (rollback still applies) until the next set-weight.")] = False,
    url: Annotated[str | None, _URL] = None, token: Annotated[str | None, _TOKEN] = None,
) -> None:  # fmt: skip
    """Move the canary's weight by hand; the analysis goes on from there."""
    from policies.errors import ConveyorError

    status = _admin_call("POST", "weight", url, token, {"weight": weight, "hold": hold})
    if status is None:
        raise ConveyorError("No service answered.", hint="Start it with `conveyor serve`, or pass --url.")
    _print_status(status)


@canary_app.command("abort")
def canary_abort(
    reason: Annotated[str, typer.Option("--reason", help="Why, for the ledger.")] = "no reason given",
    url: Annotated[str | None, _URL] = None, token: Annotated[str | None, _TOKEN] = None,
) -> None:  # fmt: skip
    """Roll the canary back now: weight 0, alias removed, recorded in the ledger."""
    from policies.errors import ConveyorError

    status = _admin_call("POST", "abort", url, token, {"reason": reason})
    if status is None:
        raise ConveyorError("No service answered.", hint="Start it with `conveyor serve`, or pass --url.")
    _print_status(status)


# -- monitoring ------------------------------------------------------------------------------------


def _window_option(value: str | None) -> str | None:
    from policies.drift import parse_window

    if value is not None:
        try:
            parse_window(value)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    return value


_WINDOW = Annotated[
    str | None,
    typer.Option("--window", "-w", callback=_window_option,
                 help="Traffic to check: a duration (30m, 24h, 7d) or a row count (5000); default: policies/drift.yaml."),
]  # fmt: skip


@drift_app.command("check")
def drift_check(
    ctx: typer.Context,
    window: _WINDOW = None,
    no_retrain: Annotated[bool, typer.Option("--no-retrain", help="Record a breach, but start no retraining.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Check the champion's traffic for drift (Evidently); exit 0 no drift, 1 drift, 3 not enough data.

    A drift breach starts the retraining flow (cooldown and one retraining per breach window, from
    policies/drift.yaml); the new model can at most become the canary.
    """
    from pipelines.retraining import check_drift, drift_flow

    settings = _settings(ctx)
    outcome = check_drift(_request(settings, None), window, start=False) if no_retrain else drift_flow(_request(settings, None), window)
    result = outcome.result
    if as_json:
        _out(json.dumps({**result.to_dict(), "retraining": outcome.retraining.to_dict() if outcome.retraining else None},
                        indent=2, default=str))  # fmt: skip
    else:
        _out(f"{result.model} version {result.version}, {result.window} ({result.window_rows:,} rows) against its "
             f"training set ({result.reference_rows:,} rows): {result.describe()}")  # fmt: skip
        for column in result.columns:
            if column.drifted:
                _out(f"  drifted  {column.column}: {column.method} {column.score:.4g} (threshold {column.threshold:g})")
        if result.html:
            _out(f"  report   {result.html}")
        _out(f"  result   {result.report}  ({result.report_digest})")
        if result.trigger:
            _out(f"  retraining {result.trigger}")
        _print_retraining(outcome)
    raise typer.Exit(result.exit_code)


def _print_retraining(outcome: Any) -> None:
    if outcome.started is not None and outcome.started.mode == "server":
        _out(f"  retraining requested from the Prefect server (trigger {outcome.started.trigger}, ledger event #{outcome.started.event})")
    if outcome.retraining is not None:
        r = outcome.retraining
        _out(f"  retraining {r.status}: {r.reason}")
        for reason in r.promotion_reasons:
            _out(f"    {reason}")


@app.command()
def monitor(
    ctx: typer.Context,
    window: _WINDOW = None,
    interval: Annotated[float | None, typer.Option(min=1, help="Seconds between checks (default: policies/drift.yaml).")] = None,
    checks: Annotated[int | None, typer.Option(min=1, help="Stop after this many checks (embedded mode).")] = None,
) -> None:
    """Check for drift periodically; a breach starts retraining.

    Embedded (no PREFECT_API_URL): a loop in this process. With a Prefect server (PREFECT_API_URL):
    serves two deployments there, the drift check on a schedule and the retraining with an event
    trigger, and runs their flow runs until stopped (Ctrl-C).
    """
    import os
    import time

    from pipelines.retraining import drift_flow, server_mode
    from policies.drift import load_drift_policy
    from policies.project import load_project

    settings = _settings(ctx)
    policy = load_drift_policy(settings.project_root / "policies")
    every = interval or policy.monitor.interval_seconds
    request = _request(settings, None)
    if server_mode():
        os.environ.setdefault("PREFECT_RUNNER_POLL_FREQUENCY", "1")  # a triggered run starts within a second
        from prefect import serve as serve_deployments

        from pipelines.deployments import deployments

        name = load_project(settings.project_file, check_data=False).model_name
        _out(f"Serving drift-check-{name} (every {every:g} s) and retraining-{name} (on {name}'s retraining requests) "
             f"on the Prefect server at {os.environ['PREFECT_API_URL']}; Ctrl-C stops.")  # fmt: skip
        serve_deployments(*deployments(request, name, every, window), print_starting_message=False)
        return
    done = 0
    try:
        while checks is None or done < checks:
            started = time.monotonic()
            outcome = drift_flow(request, window)
            done += 1
            result = outcome.result
            _out(f"check {done}: {result.model} v{result.version}, {result.window} ({result.window_rows:,} rows): {result.describe()}")
            if result.trigger:
                _out(f"  retraining {result.trigger}")
            _print_retraining(outcome)
            if checks is None or done < checks:
                time.sleep(max(0.0, every - (time.monotonic() - started)))
    except KeyboardInterrupt:
        _out(f"Stopped after {done} check(s).")


@labels_app.command("add")
def labels_add(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="CSV or Parquet with the entity key, event timestamp and target.")],
    no_retrain: Annotated[bool, typer.Option("--no-retrain", help="Record a breach, but start no retraining.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Join ground truth to logged predictions and check quality; a breach starts retraining.

    A labels file that also has every feature column is labelled data: the next retraining learns from it.
    """
    from pipelines.retraining import add_labels

    settings = _settings(ctx)
    outcome = add_labels(_request(settings, None), file, start=not no_retrain)
    if as_json:
        from dataclasses import asdict

        _out(json.dumps(asdict(outcome), indent=2, default=str))
        return
    kind = "labelled data (every feature present)" if outcome.complete else "labels only"
    _out(f"{file}: {outcome.rows:,} labels, {kind}, recorded as {outcome.digest}")
    _out(f"  joined   {outcome.matched:,} to logged predictions" + (f" ({outcome.joined})" if outcome.joined else ""))
    _out(f"  quality  {outcome.quality.describe()}")
    if outcome.decision is not None:
        _out(f"  retraining {'started' if outcome.decision.start else 'not started'}: {outcome.decision.reason}")
    _print_retraining(outcome)


def main() -> None:
    """The console script's entry point."""
    app()
