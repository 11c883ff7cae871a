"""The model service: champion and canary behind one endpoint, verified loading, the inference log."""

__all__ = ["auth", "canary", "inference_log", "router", "schema"]
