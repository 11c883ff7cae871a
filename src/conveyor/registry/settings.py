"""Conveyor's settings: one object, looked up in one order.

Each field comes from, first to last: the environment (``CONVEYOR_<FIELD>``), the ``settings:``
section of the project file (``conveyor.yaml``), the default here. Every embedded store lives
under ``home`` (``.conveyor/`` in the project) unless a URL points elsewhere.

``ClientSettings`` are what a command needs to reach a running service: from the environment only
(an admin key does not belong in a project file). These two classes declare every ``CONVEYOR_*``
variable Conveyor reads; nothing else reads one.

Nothing happens at import. ``read_settings()`` reads them; the ``Workspace``
(``registry.workspace``) is built from them and is what every entry point uses.
"""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from conveyor.policies.errors import ConfigInvalid
from conveyor.policies.loading import read_yaml_mapping

__all__ = ["FLOW_MODES", "SERVER_SETTINGS", "ClientSettings", "Settings", "read_client_settings", "read_settings"]


def _default_actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


class Settings(BaseSettings):
    """Where Conveyor keeps its stores and who it says is acting."""

    model_config = SettingsConfigDict(env_prefix="CONVEYOR_", extra="forbid")

    project_file: Path = Path("conveyor.yaml")
    home: Path = Path(".conveyor")
    ledger_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite in home")
    mlflow_tracking_uri: str | None = Field(None, description="default: SQLite in home")
    actor: str = Field(default_factory=_default_actor)
    prefect_api_url: str | None = Field(
        None,
        validation_alias=AliasChoices("CONVEYOR_PREFECT_API_URL", "PREFECT_API_URL", "prefect_api_url"),
        description="a Prefect server; default: none (flows run their stages in this process)",
    )
    flows: Literal["auto", "prefect", "direct"] = Field(
        "auto", description="auto: Prefect flow runs when a Prefect server is set, stages in process otherwise"
    )
    profile: Literal["embedded", "servers"] = Field(
        "embedded",
        description="embedded: every store in home; servers: the stores below, each on its server (all required)",
    )
    work_pool: str | None = Field(None, description="the Prefect work pool whose workers run the flows (servers)")
    redis_url: str | None = Field(None, description="Redis: Feast's online store, the serving replicas' shared state")
    object_store_url: str | None = Field(
        None, description="an S3-compatible object store's endpoint (credentials: AWS_ACCESS_KEY_ID/SECRET)"
    )
    bucket: str | None = Field(None, description="the object store's bucket: the DVC remote, Feast's offline files")
    feature_registry_url: str | None = Field(None, description="Feast's SQL registry (SQLAlchemy URL)")
    feature_engine: Literal["file", "duckdb"] = Field(
        "file", description="the engine of Feast's point-in-time joins: its file store (pandas) or DuckDB"
    )
    service_run: str | None = Field(
        None,
        description="the service run a serving worker belongs to (set by `conveyor serve`; workers share its state)",
    )

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        if self.profile == "servers":
            self._check_servers()
        self.project_file = self.project_file.expanduser().absolute()
        if not self.home.is_absolute():
            # A relative home sits beside the project file, wherever the command runs from.
            self.home = self.project_file.parent / self.home
        if self.ledger_url is None:
            self.ledger_url = f"sqlite:///{self.home / 'ledger.db'}"
        if self.mlflow_tracking_uri is None:
            self.mlflow_tracking_uri = f"sqlite:///{self.home / 'mlflow.db'}"
        return self

    def _check_servers(self) -> None:
        """The server profile names a server for every store: what is missing or embedded is an error."""
        problems = [f"CONVEYOR_{name.upper()} is not set" for name in SERVER_SETTINGS if getattr(self, name) is None]
        if self.ledger_url and self.ledger_url.startswith("sqlite"):
            problems.append("the ledger is a SQLite file (CONVEYOR_LEDGER_URL: a PostgreSQL URL)")
        if self.mlflow_tracking_uri and not self.mlflow_tracking_uri.startswith(("http://", "https://")):
            problems.append("MLflow's tracking store is not a server (CONVEYOR_MLFLOW_TRACKING_URI: http(s)://...)")
        if problems:
            raise ConfigInvalid(
                f"The server profile (CONVEYOR_PROFILE=servers) needs a server for every store: {'; '.join(problems)}.",
                hint='Set them in the environment or the project file\'s `settings:` (README: "Server profile"); '
                "`bash scripts/with-servers.sh CMD` runs CMD with a local set of them. Without the profile, "
                "every store is embedded in .conveyor/.",
            )

    @property
    def servers(self) -> bool:
        return self.profile == "servers"

    @property
    def project_root(self) -> Path:
        return self.project_file.parent

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _ProjectFileSection(settings_cls, init_settings, env_settings))


class _ProjectFileSection(PydanticBaseSettingsSource):
    """The ``settings:`` mapping of the project file, when the file exists."""

    def __init__(self, settings_cls: type[BaseSettings], *earlier: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self._earlier = earlier

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything is read at once in __call__

    def __call__(self) -> dict[str, Any]:

        chosen: dict[str, Any] = {}
        for source in self._earlier:
            chosen.update(source())
        path = Path(chosen.get("project_file", "conveyor.yaml"))
        if not path.is_file():
            return {}
        document = read_yaml_mapping(path, ConfigInvalid, missing_hint="", example="the demo's conveyor.yaml")
        section = document.get("settings")
        if section is None:
            return {}
        if not isinstance(section, dict):
            raise ConfigInvalid(
                f"`settings` in {path} must be a mapping of setting names to values.",
                hint=f"Known settings: {', '.join(Settings.model_fields)}.",
            )
        return section


def read_settings(**overrides: Any) -> Settings:
    """The settings, with ``overrides`` first in line (e.g. from ``--config``); ``None`` values are skipped."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"`{'.'.join(map(str, e['loc']))}`: {e['msg']}" for e in exc.errors())
        raise ConfigInvalid(
            f"Conveyor's settings are invalid: {problems}.",
            hint=f"Settings come from CONVEYOR_<NAME> variables or the `settings:` section of the "
            f"project file; known names: {', '.join(Settings.model_fields)}.",
        ) from None


FLOW_MODES = ("auto", "prefect", "direct")
# What the server profile requires, beside a PostgreSQL ledger and an MLflow server.
SERVER_SETTINGS = (
    "ledger_url",
    "mlflow_tracking_uri",
    "prefect_api_url",
    "work_pool",
    "redis_url",
    "object_store_url",
    "bucket",
    "feature_registry_url",
)


class ClientSettings(BaseSettings):
    """How a command reaches a running service's admin API: ``CONVEYOR_SERVICE_URL``, ``CONVEYOR_ADMIN_KEY``."""

    model_config = SettingsConfigDict(env_prefix="CONVEYOR_", extra="ignore")

    service_url: str = Field("http://127.0.0.1:3000", description="the service `conveyor canary` talks to")
    admin_key: SecretStr | None = Field(None, description="an admin API key (`conveyor api-key create NAME --admin`)")


def read_client_settings() -> ClientSettings:
    """The client settings from the environment (both are text: any value is taken as given)."""
    return ClientSettings()
