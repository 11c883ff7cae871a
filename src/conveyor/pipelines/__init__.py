"""Conveyor's flows and their stages: one module per stage, a plain function each."""

__all__ = [
    "datasets",
    "deployments",
    "evaluate",
    "features",
    "loop",
    "pool",
    "register",
    "release",
    "retraining",
    "sign",
    "train",
    "training",
    "validate",
]
