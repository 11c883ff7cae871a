"""Conveyor's front door: the ``conveyor`` command line and the settings object."""

__all__ = ["bootstrap", "cli", "settings"]
