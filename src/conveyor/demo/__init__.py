"""The bundled demo and the harness that runs a local service: apart from the stages they drive.

``data`` generates the demo's files, ``prepare`` versions them, ``loop`` runs the closed loop on a
served champion, ``service`` starts, drives and stops a local ``conveyor serve`` (for the demo, the
tests and the benchmarks), ``run`` is ``conveyor demo``.
"""

__all__ = ["data", "loop", "prepare", "run", "service"]
