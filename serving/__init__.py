"""The model service: champion and canary behind one endpoint, verified loading, the inference log."""

__all__ = ["inference_log", "router", "schema"]
