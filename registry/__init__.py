"""Model registry, signing, provenance, and the lineage ledger with its queries."""

__all__ = ["digests", "ledger", "lineage"]
