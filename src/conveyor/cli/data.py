"""Data and training: ``init``, ``config check``, ``expectations init``, ``validate``, ``train``, ``keys``, ``version``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from conveyor.cli._common import JSON, emit_json, out, progress, sub_app, training_progress, workspace

__all__ = [
    "config_check",
    "data_pull",
    "data_push",
    "expectations_init",
    "init",
    "keys_init",
    "keys_show",
    "print_outcome",
    "register",
    "train",
    "validate",
    "version",
]

config_app = sub_app("Check the project config (conveyor.yaml).")
keys_app = sub_app("Manage the project's signing key.")
expectations_app = sub_app("Write and review the data's expectation suite.")
data_app = sub_app("Move the versioned data files to and from the DVC remote (the server profile's bucket).")


def register(app: typer.Typer) -> None:
    app.command()(init)
    app.command()(version)
    app.command()(validate)
    app.command()(train)
    app.add_typer(config_app, name="config")
    app.add_typer(keys_app, name="keys")
    app.add_typer(expectations_app, name="expectations")
    app.add_typer(data_app, name="data")


def version(as_json: JSON = False) -> None:
    """Show Conveyor's version and the versions of the libraries it is built on."""
    from importlib import metadata

    def installed(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    libraries = {name: installed(name) for name in _PLATFORM}
    if as_json:
        emit_json({"conveyor": metadata.version("conveyor"), "libraries": libraries})
        return
    out(f"conveyor {metadata.version('conveyor')}")
    for name, found in libraries.items():
        out(f"  {name} {found or '(not installed)'}")


_PLATFORM = (
    "prefect",
    "mlflow",
    "dvc",
    "feast",
    "great-expectations",
    "bentoml",
    "evidently",
    "model-signing",
    "sigstore",
    "scikit-learn",
    "pandas",
)


def init(
    from_data: Annotated[
        Path, typer.Option("--from-data", help="The CSV or Parquet file to build the project around.")
    ],
    folder: Annotated[Path, typer.Argument(help="The new project's folder (default: here).")] = Path("."),
    target: Annotated[str | None, typer.Option(help="The column to predict (asked, or guessed from its name).")] = None,
    task: Annotated[str | None, typer.Option(help="classification or regression (default: from the target).")] = None,
    entity_key: Annotated[
        str | None, typer.Option(help="The column naming each entity (default: inferred or made).")
    ] = None,
    timestamp: Annotated[str | None, typer.Option(help="The event time column (default: inferred or made).")] = None,
    name: Annotated[str | None, typer.Option(help="The model's name (default: the data file's name).")] = None,
    as_json: JSON = False,
) -> None:
    """Make a new project from a data file: config inferred, policies fitted to the task, a starter
    expectation suite the data passes, DVC set up with the data added and its stages written.
    Data with no entity key or event time gets them in a prepared copy (``row_id``, and one minute
    per row in a seeded random order). Refuses a folder that already holds a project."""
    import sys

    # here: `conveyor --help` imports every command module and stays fast
    from conveyor.pipelines.scaffold import guess_target, init_project
    from conveyor.policies.project import read_columns

    if target is None and sys.stdin.isatty() and not as_json and from_data.is_file():
        columns = read_columns(from_data)
        if guess_target(columns) is None:
            target = typer.prompt(f"Which column is the target? ({', '.join(columns)})")
    with progress(f"Making a project in {folder} from {from_data}...", quiet=as_json):
        made = init_project(
            folder, from_data, target=target, task=task, entity_key=entity_key, timestamp=timestamp, name=name
        )
    if as_json:
        emit_json(made.to_dict())
        return
    config = made.config
    out(f"Made project {config['model_name']} ({config['task']}, target {config['target']}) in {made.folder}.")
    for note in made.notes:
        out(f"  - {note}")
    for warning in made.warnings:  # also at the head of conveyor.yaml
        out(f"  WARNING: {warning}")
    out(f"  wrote {', '.join(made.written)}")
    where = "" if made.folder == Path.cwd() else f"cd {folder} && "
    out(f"Next: review conveyor.yaml and policies/, then `{where}conveyor validate && conveyor train`.")
    body = json.dumps(made.example)
    out(
        "Once it is promoted and served (`conveyor serve`, a key from `conveyor api-key create NAME`), a request "
        f'with the data\'s first complete row: curl -H "Authorization: Bearer $KEY" -H "Content-Type: application/json" '
        f"127.0.0.1:3000/predict -d '{body}'"
    )


@config_app.command("check")
def config_check(ctx: typer.Context, as_json: JSON = False) -> None:
    """Read the project config, check it (and its columns against the data), and summarise it."""
    ws = workspace(ctx)
    if ws.stores.is_llm:
        if as_json:
            emit_json(
                {
                    "file": str(ws.project_file),
                    "valid": True,
                    "kind": "llm",
                    **ws.stores.llm_project().model_dump(mode="json"),
                }
            )
            return
        _llm_config_check(ws.stores)
        return
    project = ws.stores.project(check_data=True)
    if as_json:
        emit_json(
            {
                "file": str(ws.project_file),
                "valid": True,
                "kind": "tabular",
                **project.model_dump(mode="json", by_alias=True),
            }
        )
        return
    out(f"{ws.project_file}: valid")
    out(f"  model      {project.model_name} ({project.task})")
    out(f"  data       {project.data}" + ("" if project.data.is_file() else "  (not present yet)"))
    out(f"  entity     {project.entity_key}, time {project.event_timestamp}, target {project.target}")
    f = project.features
    boolean = f"{len(f.boolean)} boolean, " if f.boolean else ""
    out(f"  features   {len(f.numeric)} numeric, {boolean}{len(f.categorical)} categorical")
    out(f"  estimator  {project.estimator.class_path}")


def _llm_config_check(ws: Any) -> None:
    """An LLM project: its schema, template variables, files, evaluation sets and guardrail policy."""
    # here: `conveyor --help` imports every command module and stays fast
    from conveyor.policies.llm import read_eval_set

    project = ws.llm_project()  # the guardrail policy is parsed with it
    cases = {p.name: len(read_eval_set(project.path(p))) for p in project.evaluation.sets}
    source = project.model.file or f"{len(project.model.parts)} parts"
    out(f"{ws.project_file}: valid (an LLM release)")
    out(f"  release    {project.name}" + (f", fallback {project.fallback}" if project.fallback else ""))
    out(
        f"  weights    {project.model.package}: {source} (sha256 {project.model.sha256[:16]}…, {project.model.licence})"
    )
    out(f"  prompt     {project.prompt.name} from {project.prompt.template} ({project.model.mode})")
    out("  sets       " + ", ".join(f"{name} ({n} cases)" for name, n in cases.items()))
    if project.knowledge is not None:
        from conveyor.pipelines.llm.knowledge import read_knowledge

        knowledge = read_knowledge(project.path(project.knowledge.documents), project.knowledge)
        out(
            f"  knowledge  {project.knowledge.documents}: {len(knowledge.documents)} documents, version "
            f"{knowledge.md5} ({'DVC-tracked' if knowledge.tracked else 'not DVC-tracked'}), BM25 top {project.knowledge.top_k}"
        )
    out(f"  guardrails {project.guardrails}")
    out(
        f"  price      {project.pricing.input_per_1k:g} / {project.pricing.output_per_1k:g} {project.pricing.currency} per 1k tokens in / out"
    )


@expectations_app.command("init")
def expectations_init(
    ctx: typer.Context,
    data: Annotated[Path | None, typer.Option(help="Data file to learn from (default: the config's).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing suite.")] = False,
    as_json: JSON = False,
) -> None:
    """Write a starter suite from the config and the data, to review and tighten by hand."""
    # here: `conveyor --help` imports every command module and stays fast
    from conveyor.pipelines.validate import write_starter_suite

    ws = workspace(ctx)
    target, suite = write_starter_suite(ws.stores.project(check_data=True), ws.root, data, force=force)
    if as_json:
        emit_json({"suite": str(target), "expectations": len(suite["expectations"])})
        return
    out(f"Wrote {len(suite['expectations'])} expectations to {target}; review them before relying on them.")


def validate(
    ctx: typer.Context,
    data: Annotated[Path | None, typer.Option(help="Validate this file instead of the config's `data`.")] = None,
    summary: Annotated[Path | None, typer.Option(help="Also write a JSON summary here (for DVC).")] = None,
    as_json: JSON = False,
) -> None:
    """Validate the data against its expectation suite; exit 1 naming every failed expectation."""
    ws = workspace(ctx)
    with progress("Validating the data (Great Expectations)...", quiet=as_json):
        result = ws.validate(data)
    found = {"success": result.success, "evaluated": result.evaluated, "report": result.digest}
    if summary:
        summary.parent.mkdir(parents=True, exist_ok=True)
        summary.write_text(json.dumps(found, indent=2) + "\n")
    if as_json:
        emit_json(
            {
                **found,
                "report_file": str(result.report),
                "page": str(result.page),
            }
        )
        return
    out(f"Valid: {result.evaluated} expectations met. Report: {result.report}")
    out(f"Page: {result.page}")


def train(
    ctx: typer.Context,
    data: Annotated[Path | None, typer.Option(help="Train on this file instead of the config's `data`.")] = None,
    metrics: Annotated[Path | None, typer.Option(help="Also write the holdout metrics here as JSON (for DVC).")] = None,
    as_json: JSON = False,
) -> None:
    """Validate, build features, train, evaluate, sign and register a model (a Prefect flow on a server)."""
    from dataclasses import asdict

    ws = workspace(ctx)
    with training_progress("Training: validate, features, train, evaluate, sign, register...", quiet=as_json):
        outcome = ws.train(data)
    if metrics:
        metrics.parent.mkdir(parents=True, exist_ok=True)
        metrics.write_text(
            json.dumps({k: round(v, 6) for k, v in outcome.metrics.items()}, indent=2, sort_keys=True) + "\n"
        )
    if as_json:
        emit_json(asdict(outcome))
        return
    print_outcome(outcome)


def print_outcome(outcome: Any) -> None:
    out(f"Registered {outcome.name} version {outcome.version} as @{outcome.alias} (signed, provenance verified).")
    out(f"  model    {outcome.model_digest}")
    out(f"  version  {outcome.version_digest}")
    out(f"  data     {outcome.data_digest}  ({outcome.rows_out:,} of {outcome.rows_in:,} rows joined)")
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in outcome.metrics.items())
    out(f"  holdout  {metrics}")
    if outcome.champion_metrics:
        known = outcome.champion_metrics
        champion = ", ".join(f"{k} {v:.4f}" for k, v in known.items() if not k.startswith("gain_"))
        out(f"  champion v{outcome.champion_version}: {champion}")
        for key in (k for k in known if k.startswith("gain_low_")):
            metric = key.removeprefix("gain_low_")
            out(f"  gain     {metric} 95% interval [{known[key]:+.4f}, {known[f'gain_high_{metric}']:+.4f}]")
    for check in outcome.behaviour:
        out(f"  behaviour {check['feature']} +{check['delta']:g} -> {check['direction']}: {check['share']:.0%} of rows")
    out(f"  report   {outcome.validation_report}")
    for warning in outcome.warnings:
        out(f"  warning  {warning}")
    out(f"Next: `conveyor lineage {outcome.version_digest}` walks back to the data.")


@keys_app.command("init")
def keys_init(ctx: typer.Context, as_json: JSON = False) -> None:
    """Create the project's signing key pair (EC P-256) if there is none, and show it."""
    # here: `conveyor --help` imports every command module and stays fast
    from conveyor.registry.keys import load_or_create_key

    key = load_or_create_key(workspace(ctx).stores.keys_dir)
    if as_json:
        emit_json(
            {"private_key": str(key.private_path), "public_key": str(key.public_path), "fingerprint": key.fingerprint}
        )
        return
    out(f"Signing key: {key.private_path} (private, mode 0600)")
    out(f"Public key:  {key.public_path}")
    out(f"Fingerprint: {key.fingerprint}")


@keys_app.command("show")
def keys_show(ctx: typer.Context, as_json: JSON = False) -> None:
    """Show the project's public key and its fingerprint."""
    # here: `conveyor --help` imports every command module and stays fast
    from conveyor.registry.keys import show_public_key

    pem, fingerprint = show_public_key(workspace(ctx).stores.keys_dir)
    if as_json:
        emit_json({"public_key": pem, "fingerprint": fingerprint})
        return
    out(pem)
    out(f"Fingerprint: {fingerprint}")


@data_app.command("push")
def data_push(ctx: typer.Context, as_json: JSON = False) -> None:
    """`dvc push`: the data files DVC versions, to the remote (in the server profile, s3://BUCKET/dvc)."""
    _transfer(ctx, "push", as_json)


@data_app.command("pull")
def data_pull(ctx: typer.Context, as_json: JSON = False) -> None:
    """`dvc pull`: the versioned data files, from the remote, into this checkout (a fresh clone's first step)."""
    _transfer(ctx, "pull", as_json)


def _transfer(ctx: typer.Context, direction: str, as_json: bool) -> None:
    from dataclasses import asdict

    # here: `conveyor --help` imports every command module and stays fast
    from conveyor.pipelines.datasets import transfer_data

    ws = workspace(ctx)
    settings = ws.stores.settings
    bucket = settings.bucket if settings.servers else None
    done = transfer_data(ws.root, direction, bucket=bucket, endpoint=settings.object_store_url)
    if as_json:
        emit_json(asdict(done))
        return
    verb = "Pushed" if direction == "push" else "Pulled"
    out(f"{verb} {done.files} file(s) {'to' if direction == 'push' else 'from'} {done.remote}.")
