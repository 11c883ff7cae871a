"""Conveyor's flows and their stages: one module per stage, a plain function each."""

__all__ = ["datasets", "demo", "demo_data"]
