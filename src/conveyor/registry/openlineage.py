"""The ledger as OpenLineage run events, for Marquez and every other OpenLineage consumer.

Each ledger event becomes one ``COMPLETE`` run event (``FAIL`` for refusals and failures): the
job is the event's kind in the project's namespace, the run id is derived from the event's hash
(exporting twice gives the same ids), inputs and outputs are datasets named by their digests,
and a ``conveyor`` run facet carries the event's sequence number, hashes, actor and details, so
a consumer can re-check the chain.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import attr
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import RunFacet, job_type_job
from openlineage.client.serde import Serde

from conveyor.policies.errors import ConveyorError
from conveyor.registry.ledger import Ledger, LedgerEvent

__all__ = [
    "ConveyorRunFacet",
    "export_ledger",
    "post_events",
    "run_events",
    "write_events",
]

_RUN_IDS = uuid.UUID("6f1c1a52-5d0e-4c53-9d0b-2f4a0a3e9c11")  # the namespace run ids are derived in
_FAILED = ("failed", "refused", "rolled_back")
_SCHEMA = "urn:conveyor:openlineage:ConveyorRunFacet:1"


def _producer() -> str:
    try:
        return f"urn:conveyor:{metadata.version('conveyor')}"
    except metadata.PackageNotFoundError:
        return "urn:conveyor"


@attr.define
class ConveyorRunFacet(RunFacet):
    """The ledger event behind a run: where it sits in the chain, and what it recorded."""

    seq: int
    hash: str
    prevHash: str
    actor: str
    kind: str
    details: dict[str, Any]

    @staticmethod
    def _get_schema() -> str:
        return _SCHEMA


def run_events(events: Iterable[LedgerEvent], namespace: str) -> Iterator[RunEvent]:
    """One OpenLineage run event per ledger event."""
    producer = _producer()
    for event in events:
        state = RunState.FAIL if event.kind.endswith(_FAILED) else RunState.COMPLETE
        facet = ConveyorRunFacet(
            seq=event.seq,
            hash=event.hash,
            prevHash=event.prev_hash,
            actor=event.actor,
            kind=event.kind,
            details=event.details,
            producer=producer,
        )
        job_type = job_type_job.JobTypeJobFacet(
            processingType="BATCH", integration="CONVEYOR", jobType=event.kind.split(".")[0].upper(), producer=producer
        )
        yield RunEvent(
            eventTime=event.time.replace("Z", "+00:00"),
            producer=producer,
            eventType=state,
            run=Run(runId=str(uuid.uuid5(_RUN_IDS, event.hash)), facets={"conveyor": facet}),
            job=Job(namespace=namespace, name=event.kind, facets={"jobType": job_type}),
            inputs=[InputDataset(namespace=namespace, name=d) for d in event.inputs],
            outputs=[OutputDataset(namespace=namespace, name=d) for d in event.outputs],
        )


def write_events(events: Iterable[RunEvent], path: Path) -> int:
    """Write run events as JSON lines (atomically); returns how many."""
    partial = path.with_name(path.name + ".partial")
    count = 0
    with partial.open("w", encoding="utf-8") as handle:
        for event in events:
            handle.write(Serde.to_json(event) + "\n")
            count += 1
    partial.replace(path)
    return count


def post_events(events: Iterable[RunEvent], url: str, *, endpoint: str = "api/v1/lineage", timeout: float = 5.0) -> int:
    """POST run events to an OpenLineage endpoint (e.g. Marquez); returns how many were accepted."""
    from openlineage.client.transport.http import HttpConfig, HttpTransport

    transport = HttpTransport(
        HttpConfig(url=url, endpoint=endpoint, timeout=timeout, retry={"total": 2, "backoff_factor": 0.2})
    )
    count = 0
    try:
        for event in events:
            transport.emit(event)
            count += 1
    except Exception as exc:  # requests' and the transport's own errors
        raise ConveyorError(
            f"The OpenLineage endpoint {url} refused or did not answer after {count} events: {exc}.",
            hint="Check the URL (e.g. http://127.0.0.1:5000 for Marquez) and that it is running; or write a file with --output.",
        ) from None
    finally:
        transport.close() if hasattr(transport, "close") else None
    return count


def export_ledger(
    ledger: Ledger, namespace: str, since: int = 1, *, output: Path | None = None, url: str | None = None
) -> int:
    """The ledger's events from ``since`` on as OpenLineage run events, to ``output`` (JSON lines) or POSTed to ``url``."""
    events = run_events(ledger.iter_events(since), namespace)
    return write_events(events, output) if output is not None else post_events(events, str(url))
