"""Model registry, signing, provenance, the lineage ledger with its queries, and the inference log.

The inference log sits here, below both of its users: serving writes it, monitoring reads it.
"""

__all__ = ["digests", "inference_log", "ledger", "lineage"]
