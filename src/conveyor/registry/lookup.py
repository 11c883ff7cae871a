"""Where a lineage query starts: whatever the auditor has in hand, turned into digests in the ledger.

A file (hashed), a digest, ``MODEL/VERSION`` or ``MODEL@ALIAS`` (through the registry's
``conveyor.version_digest`` tag), a deployment or any ledger event (``deployment:N``,
``event:N``), a request id from the inference log (``request:ID``), or a moment (``serving_at``:
the deployments that were answering then).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from conveyor.policies.errors import ConveyorError, NotFound
from conveyor.registry.digests import file_digest, is_digest, parse_digest, short
from conveyor.registry.events import EventKind
from conveyor.registry.ledger import Ledger, LedgerEvent, ledger_time
from conveyor.registry.store import registry_view

__all__ = ["DEPLOYED", "Start", "find_start", "parse_time", "serving_at"]

DEPLOYED = EventKind.MODEL_DEPLOYED
_ENDED = (EventKind.CANARY_COMPLETED, EventKind.CANARY_ROLLED_BACK)
_FORMS = (
    "a file, a sha256 digest, MODEL/VERSION, MODEL@ALIAS, deployment:N or event:N (a ledger event), "
    "or request:ID (a request id from the inference log)"
)


@dataclass(frozen=True)
class Start:
    """The digests a query starts from, and what they are, in words."""

    label: str
    digests: tuple[str, ...]
    note: str | None = None
    version: str | None = None  # ``MODEL/VERSION`` when it starts from a registered version


def find_start(target: str, ledger: Ledger, *, inference: Path | None = None, tracking_uri: str | None = None) -> Start:
    """Resolve ``target`` (see the module docstring) to the digests the ledger knows it by."""
    text = target.strip()
    path = Path(text)
    if path.is_file():
        digest = file_digest(path)
        return Start(f"{text} ({short(digest)})", (digest,))
    prefix, _, rest = text.partition(":")
    if prefix in ("deployment", "event") and rest.lstrip("#").isdigit():
        return _event_start(ledger, int(rest.lstrip("#")), prefix)
    if prefix == "request" and rest:
        return _request_start(ledger, rest, inference)
    if re.fullmatch(r"(sha256:)?[0-9a-fA-F]{64}", text):
        return Start(short(parse_digest(text)), (parse_digest(text),))
    if "@" in text or re.fullmatch(r"[^/\s]+/\d+", text):
        return _version_start(text, tracking_uri)
    raise NotFound(
        f"{target!r} is neither a file here nor anything else the ledger can be asked about.", hint=f"Pass {_FORMS}."
    )


def parse_time(text: str) -> datetime:
    """An ISO 8601 moment typed by a person (date, date and time, with or without offset; naive is UTC)."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConveyorError(
            f"{text!r} is not a time.",
            hint="Use ISO 8601, e.g. 2026-11-21T14:30 or 2026-11-21T14:30:00+01:00 (no offset means UTC).",
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def serving_at(ledger: Ledger, moment: datetime, model: str | None = None) -> Start:
    """The deployments answering at ``moment``: per model, the newest champion deployment before it and
    a canary deployed after that champion whose analysis had not ended by then."""
    until = ledger_time(moment)
    champions: dict[str, LedgerEvent] = {}
    canaries: dict[str, LedgerEvent] = {}
    ended: set[tuple[str, str]] = set()
    for event in ledger.latest([DEPLOYED, *_ENDED], limit=10_000, until=until, model=model):
        name = event.details.get("name")
        if not name:
            continue
        if event.kind in _ENDED:
            ended.add((name, str(event.details.get("version"))))
        elif event.details.get("role") == "champion":
            champions.setdefault(name, event)
        elif name not in champions and name not in canaries and (name, str(event.details.get("version"))) not in ended:
            canaries[name] = event
    chosen = [*champions.values(), *(c for n, c in canaries.items() if n in champions)]
    if not chosen:
        what = f"{model} " if model else ""
        raise NotFound(
            f"No {what}deployment is recorded at or before {until}.",
            hint="Pick a later time; `conveyor lineage MODEL@champion` shows the current champion.",
        )
    described = ", ".join(
        f"{e.details['name']} version {e.details['version']} as {e.details['role']} (deployment:{e.seq}, since {e.time})"
        for e in chosen
    )
    return Start(f"serving at {until}", tuple(_deployment_digest(e) for e in chosen), note=described)


def _event_start(ledger: Ledger, seq: int, prefix: str) -> Start:
    event = ledger.get(seq)
    if prefix == "deployment" and event.kind != DEPLOYED:
        raise NotFound(f"Ledger event #{seq} is a {event.kind}, not a deployment.", hint="Use event:N for any event.")
    note = f"#{event.seq} {event.kind} at {event.time}"
    if event.kind == DEPLOYED:
        return Start(f"deployment:{seq}", (_deployment_digest(event),), note=note)
    digests = tuple(dict.fromkeys((*event.outputs, *event.inputs)))
    if not digests:
        raise NotFound(
            f"Ledger event #{seq} ({event.kind}) names no artifact, so it has no lineage.",
            hint="Its details: `conveyor lineage event:N --json`.",
        )
    return Start(f"event:{seq}", digests, note=note)


def _deployment_digest(event: LedgerEvent) -> str:
    # Deployments recorded before they had their own digest are known by the version they served.
    return (event.outputs or event.inputs)[0]


def _request_start(ledger: Ledger, request_id: str, inference: Path | None) -> Start:
    """The deployment that answered ``request_id``, from the inference logs under ``inference`` (one
    folder per model)."""
    import pandas as pd

    # here: pandas only when the log is read (lineage does not read it)
    from conveyor.registry.inference_log import read_log

    folders = (
        sorted(p for p in inference.iterdir() if p.is_dir()) if inference is not None and inference.is_dir() else []
    )
    rows = pd.concat([read_log(folder) for folder in folders]) if folders else pd.DataFrame(columns=["request_id"])
    rows = rows[rows["request_id"] == request_id]
    if rows.empty:
        raise NotFound(
            f"No request {request_id} in the inference log{f' under {inference}' if inference else ''}.",
            hint="Request ids are in each response (`request_id`); the log keeps what the service answered.",
        )
    row = rows.iloc[0]
    note = f"answered by {row['model']} version {row['version']} ({row['served_by']}) at {row['time']}"
    # An answer from a knowledge base also starts at the documents its passages came from.
    sources = row.get("sources")
    documents = tuple(d for d in sources.split(",") if is_digest(d)) if isinstance(sources, str) else ()
    if documents:
        note += f"; from passages {row.get('passages')}"
    recorded = row.get("deployment")
    if isinstance(recorded, str) and is_digest(recorded):
        return Start(f"request:{request_id}", (recorded, *documents), note=note)
    found = serving_at(ledger, row["time"].to_pydatetime(), row["model"])  # logged before deployments had digests
    return Start(f"request:{request_id}", (*found.digests, *documents), note=note)


def _version_start(ref: str, tracking_uri: str | None) -> Start:

    if tracking_uri is None:
        from mlflow import get_tracking_uri

        tracking_uri = get_tracking_uri()
    registry = registry_view(tracking_uri)
    name, version = registry.resolve(ref)
    digest = registry.tags(name, version).get("conveyor.version_digest")
    if not digest:
        raise NotFound(
            f"{name} version {version} has no conveyor.version_digest tag.",
            hint="Only versions registered by Conveyor are in the ledger.",
        )
    return Start(f"{name}/{version}" + (f" ({ref})" if "@" in ref else ""), (digest,), version=f"{name}/{version}")
