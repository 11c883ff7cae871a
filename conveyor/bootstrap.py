"""What every entry point runs before it imports a heavy library.

It switches off every tool's telemetry (these libraries read their switches at import, so
this must come first) and points each tool's home into Conveyor's project-local home, so that
Prefect, MLflow, Feast and BentoML keep their state in ``.conveyor/`` and nowhere else.
"""

from __future__ import annotations

import os

from conveyor.settings import Settings, get_settings

__all__ = ["TELEMETRY_OFF", "bootstrap", "quiet_libraries", "tool_environment"]

# Verified switches (see LIBRARIES.md): each tool reports otherwise on import, serve or CLI.
TELEMETRY_OFF: dict[str, str] = {
    "DO_NOT_TRACK": "true",  # Prefect, Evidently (MLflow ignores the value "1")
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "BENTOML_DO_NOT_TRACK": "True",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "FEAST_USAGE": "False",
    "HF_HUB_OFFLINE": "1",
}


def tool_environment(settings: Settings) -> dict[str, str]:
    """The environment the tools need: telemetry off, homes and stores inside ``settings.home``."""
    home = settings.home
    return {
        **TELEMETRY_OFF,
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",  # 20 s is tight on 2 cores
        "MLFLOW_TRACKING_URI": str(settings.mlflow_tracking_uri),
        "BENTOML_HOME": str(home / "bentoml"),
        "GX_HOME": str(home / "gx"),
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "TQDM_DISABLE": "1",
    }


# Libraries whose log lines and warnings are theirs to fix, not the user's: a command prints its
# own summary, and refusals arrive as one ConveyorError paragraph.
_CHATTY_LOGGERS = ("prefect", "mlflow", "great_expectations", "feast", "dvc", "alembic", "py.warnings",
                   "bentoml", "evidently", "urllib3", "httpx")  # fmt: skip


def quiet_libraries() -> None:
    """Keep third-party warnings and INFO logs off the terminal (the command line calls this)."""
    import logging
    import warnings

    for category in (DeprecationWarning, FutureWarning, UserWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def bootstrap(settings: Settings | None = None) -> Settings:
    """Prepare the process for the heavy libraries; safe to call more than once."""
    settings = settings or get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    os.environ.update(tool_environment(settings))
    return settings
