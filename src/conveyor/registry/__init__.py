"""Model registry, signing, provenance, the lineage ledger with its queries, and the inference log.

The inference log sits here, below both of its users: serving writes it, monitoring reads it.
Its public names load on first use (``conveyor.registry.Ledger``, ...).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor._exports import exports as _exports

if TYPE_CHECKING:
    from conveyor.registry.audit import AuditReport, audit_version
    from conveyor.registry.digests import bytes_digest, file_digest, json_digest
    from conveyor.registry.events import EventKind
    from conveyor.registry.inference_log import InferenceLog, read_log
    from conveyor.registry.ledger import ChainReport, Ledger, LedgerEvent
    from conveyor.registry.lineage import Lineage, walk
    from conveyor.registry.release import PromotionOutcome, promote, rollback
    from conveyor.registry.settings import ClientSettings, Settings, read_client_settings, read_settings
    from conveyor.registry.verify import Link, VerificationReport, verify_version
    from conveyor.registry.workspace import Workspace

__all__ = [
    "AuditReport",
    "ChainReport",
    "ClientSettings",
    "EventKind",
    "InferenceLog",
    "Ledger",
    "LedgerEvent",
    "Lineage",
    "Link",
    "PromotionOutcome",
    "Settings",
    "VerificationReport",
    "Workspace",
    "audit_version",
    "bytes_digest",
    "file_digest",
    "json_digest",
    "promote",
    "read_client_settings",
    "read_log",
    "read_settings",
    "rollback",
    "verify_version",
    "walk",
]

__getattr__ = _exports(
    __name__,
    {
        "conveyor.registry.workspace": ["Workspace"],
        "conveyor.registry.settings": ["ClientSettings", "Settings", "read_client_settings", "read_settings"],
        "conveyor.registry.ledger": ["ChainReport", "Ledger", "LedgerEvent"],
        "conveyor.registry.events": ["EventKind"],
        "conveyor.registry.digests": ["bytes_digest", "file_digest", "json_digest"],
        "conveyor.registry.verify": ["Link", "VerificationReport", "verify_version"],
        "conveyor.registry.audit": ["AuditReport", "audit_version"],
        "conveyor.registry.lineage": ["Lineage", "walk"],
        "conveyor.registry.release": ["PromotionOutcome", "promote", "rollback"],
        "conveyor.registry.inference_log": ["InferenceLog", "read_log"],
    },
)
