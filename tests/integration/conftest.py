"""Integration tests share the root conftest's fixtures: a real Prefect API for the session, small projects on real stores."""
