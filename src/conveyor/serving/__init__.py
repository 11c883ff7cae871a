"""The model service: champion and canary behind one endpoint, verified loading, analysis and rollback."""

__all__ = ["auth", "canary", "core", "gateway", "metrics", "models", "router", "schema", "service", "tabular"]
