"""The Workspace: the one context every entry point uses (CLI, service, flows, Python API).

A Workspace is built from the settings (environment, then the project file's ``settings:``,
then defaults; see ``registry.settings``) and owns what a command, a flow run or the service
needs to know about the project::

    ws = Workspace.open(".")          # a project folder or its conveyor.yaml
    ws.root, ws.home, ws.policies     # where things are
    ws.ledger()                       # the lineage ledger (a context manager)
    ws.mlflow()                       # an MLflow client on the project's tracking store
    ws.champion("loan-default")       # the version @champion points at, or None
    ws.policy("promotion")            # parsed, cached, with its digest
    ws.params()                       # plain strings: Prefect flow parameters, the service's environment

This module is also the only code that touches process-wide state: the tools' telemetry
switches and homes (``prepare_process``), and MLflow's process-wide tracking URI, which MLflow's
fluent API and ``models:/`` URIs read (``bind_mlflow``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar

from conveyor.policies.errors import ConfigInvalid, NotFound
from conveyor.policies.llm import is_llm_project, load_llm_project
from conveyor.policies.loading import load_policy
from conveyor.policies.project import load_project
from conveyor.registry.digests import file_digest
from conveyor.registry.loading import DEFAULT_LOADABLE
from conveyor.registry.locks import file_lock
from conveyor.registry.settings import Settings, read_settings
from conveyor.registry.store import registry_view

if TYPE_CHECKING:
    from conveyor.policies.canary import CanaryPolicy
    from conveyor.policies.drift import DriftPolicy
    from conveyor.policies.gateway import GatewayPolicy
    from conveyor.policies.llm import LlmProject
    from conveyor.policies.project import ProjectConfig
    from conveyor.policies.promotion import PromotionPolicy
    from conveyor.policies.serving import ServingPolicy
    from conveyor.policies.signing import SigningPolicy
    from conveyor.registry.ledger import Ledger
    from conveyor.registry.store import RegistryView
    from conveyor.registry.verify import VerificationReport

__all__ = ["POLICIES", "TELEMETRY_OFF", "LoadedPolicy", "Workspace", "prepare_process", "quiet_libraries"]

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

# The policy files a project may hold, by the name ``Workspace.policy`` takes.
POLICIES: dict[str, str] = {
    "promotion": "conveyor.policies.promotion:PromotionPolicy",
    "canary": "conveyor.policies.canary:CanaryPolicy",
    "serving": "conveyor.policies.serving:ServingPolicy",
    "drift": "conveyor.policies.drift:DriftPolicy",
    "signing": "conveyor.policies.signing:SigningPolicy",
    "gateway": "conveyor.policies.gateway:GatewayPolicy",
}
# Policies a project may leave out: the default is then the documented one (signing: the project key).
_OPTIONAL = {"signing", "gateway"}

Policy = TypeVar("Policy")
# The CONVEYOR_* settings the last ``prepare`` put in this process's environment (for its children).
_EXPORTED: dict[str, str] = {}
_DERIVED_FROM_HOME = ("CONVEYOR_LEDGER_URL", "CONVEYOR_MLFLOW_TRACKING_URI")


@contextmanager
def _without_stores_of_another_home(home: Any) -> Iterator[None]:
    """Opening a project with another ``home`` than the one a ``prepare`` exported: the stores that
    prepare derived from its home (ledger, tracking store) are not this one's, so they are not read.
    Settings a user set in the environment are read as always."""
    hidden: dict[str, str] = {}
    if home is not None and _EXPORTED.get("CONVEYOR_HOME") not in (None, str(home)):
        for name in _DERIVED_FROM_HOME:
            if name in os.environ and os.environ[name] == _EXPORTED.get(name):
                hidden[name] = os.environ.pop(name)
    try:
        yield
    finally:
        os.environ.update(hidden)


_mlflow_lock = threading.Lock()


@dataclass(frozen=True)
class LoadedPolicy(Generic[Policy]):
    """A policy file as it was read: the typed rules, the file and its content digest."""

    name: str
    path: Path
    digest: str | None  # None when the file is absent and the documented default applies
    value: Policy


def prepare_process(environment: dict[str, str] | None = None) -> None:
    """Telemetry off and one BLAS thread per model process; then ``environment`` on top.

    Safe to call more than once; every entry point calls it before a heavy import.
    """
    for name, value in TELEMETRY_OFF.items():
        os.environ[name] = value
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # 1.6-1.8x model throughput on 2 cores
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # not "Creating initial MLflow database tables..."
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # an MLflow server's "View run at" lines
    os.environ.update(environment or {})


# Libraries whose log lines and warnings are theirs to fix, not the user's: a command prints its
# own summary, and refusals arrive as one ConveyorError paragraph.
_CHATTY_LOGGERS = (
    "prefect",
    "mlflow",
    "great_expectations",
    "feast",
    "dvc",
    "alembic",
    "py.warnings",
    "bentoml",
    "evidently",
    "urllib3",
    "httpx",
)


def quiet_libraries() -> None:
    """Keep third-party warnings and INFO logs off the terminal (the command line calls this)."""
    import logging
    import warnings

    for category in (DeprecationWarning, FutureWarning, UserWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def _stamp(path: Path) -> str | None:
    """What tells a changed file from the one parsed before: its content address (None when absent)."""
    return file_digest(path) if path.is_file() else None


class Workspace:
    """A project and its stores: where they are, how to open them, which policies rule them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Parsed files, kept while the file on disk is unchanged (keyed by its content's hash).
        self._policies: dict[str, tuple[str | None, LoadedPolicy[Any]]] = {}
        self._projects: dict[bool, tuple[str | None, ProjectConfig]] = {}
        self.prepared = False  # ``prepare`` has run for this Workspace in this process

    # -- building one ------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path | None = None, **overrides: Any) -> Self:
        """The project at ``path`` (a folder holding ``conveyor.yaml``, or the config file itself).

        Without ``path``: ``$CONVEYOR_PROJECT_FILE``, else ``./conveyor.yaml``. ``overrides`` are
        settings (``home``, ``ledger_url``, ``mlflow_tracking_uri``, ``actor``, ...) ahead of the
        environment and the project file.
        """
        if path is not None:
            given = Path(path).expanduser()
            overrides["project_file"] = given / "conveyor.yaml" if given.is_dir() else given
        with _without_stores_of_another_home(overrides.get("home")):
            return cls(read_settings(**overrides))

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Workspace:
        """The Workspace ``params()`` describes (Prefect flow parameters); relative paths are taken
        from the working directory, where a deployment's worker runs."""
        values = {k: v for k, v in params.items() if k in Settings.model_fields and v is not None}
        for name in ("ledger_url", "mlflow_tracking_uri"):
            prefix = "sqlite:///"
            value = values.get(name)
            if isinstance(value, str) and value.startswith(prefix) and not value[len(prefix) :].startswith("/"):
                values[name] = prefix + str(Path(value[len(prefix) :]).absolute())
        for name in ("project_file", "home"):
            if name in values:
                values[name] = str(Path(values[name]).absolute())
        return cls(read_settings(**values))

    def params(self) -> dict[str, str]:
        """Every setting as a plain string: for flow parameters, or to rebuild this Workspace elsewhere."""
        s = self.settings
        values = {
            "project_file": str(s.project_file),
            "home": str(s.home),
            "ledger_url": str(s.ledger_url),
            "mlflow_tracking_uri": str(s.mlflow_tracking_uri),
            "actor": s.actor,
            "flows": s.flows,
        }
        if s.prefect_api_url:
            values["prefect_api_url"] = s.prefect_api_url
        if s.servers:
            values["profile"] = s.profile
        for name in ("work_pool", "redis_url", "object_store_url", "bucket", "feature_registry_url"):
            if getattr(s, name):
                values[name] = getattr(s, name)
        if s.feature_engine != "file":
            values["feature_engine"] = s.feature_engine
        if s.service_run:
            values["service_run"] = s.service_run
        return values

    def environment(self) -> dict[str, str]:
        """The environment a child process (the service, a flow's worker) needs to open this same
        Workspace, with the tools' homes inside ``home`` and their telemetry off."""
        home = self.home
        return {
            **TELEMETRY_OFF,
            **{f"CONVEYOR_{k.upper()}": v for k, v in self.params().items()},
            "PREFECT_HOME": str(home / "prefect"),
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",  # 20 s is tight on 2 cores
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "BENTOML_HOME": str(home / "bentoml"),
            "GX_HOME": str(home / "gx"),
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",  # a triggered flow run starts within a second
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            "TQDM_DISABLE": "1",
            **({"PREFECT_API_URL": self.prefect_api_url} if self.prefect_api_url else {}),
        }

    def prepare(self) -> Workspace:
        """Make this process ready for the heavy libraries: telemetry off, the tools' homes in
        ``home``, MLflow pointed at this project. Creates ``home``. Returns self."""
        import sys

        self.home.mkdir(parents=True, exist_ok=True)
        environment = self.environment()
        prepare_process(environment)  # MLFLOW_TRACKING_URI among them: MLflow reads it on first use
        _EXPORTED.clear()
        _EXPORTED.update({k: v for k, v in environment.items() if k.startswith("CONVEYOR_")})
        if "mlflow" in sys.modules:  # already imported (and perhaps pointed elsewhere): point it here
            self.bind_mlflow()
        self._create_mlflow_store()
        self.prepared = True
        return self

    def _create_mlflow_store(self) -> None:
        """Create an embedded MLflow store that does not exist yet, one process at a time: two
        commands that both make its tables at once fail (MLflow creates them on first use)."""
        uri = str(self.tracking_uri)
        ready = Path(uri.removeprefix("sqlite:///") + ".ready")  # written once its tables are all made
        if not uri.startswith("sqlite:///") or ready.exists():
            return
        with file_lock(self.home, "mlflow-store"):
            if ready.exists():
                return  # another process made it while this one waited
            from mlflow import MlflowClient

            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
            ready.touch()

    # -- where things are --------------------------------------------------------------------

    @property
    def project_file(self) -> Path:
        return self.settings.project_file

    @property
    def root(self) -> Path:
        return self.settings.project_root

    @property
    def home(self) -> Path:
        return self.settings.home

    @property
    def policies(self) -> Path:
        """The folder of policy files."""
        return self.root / "policies"

    @property
    def keys_dir(self) -> Path:
        return self.settings.keys_dir

    @property
    def reports(self) -> Path:
        return self.home / "reports"

    @property
    def api_keys_file(self) -> Path:
        return self.home / "serving" / "api-keys.json"

    def inference_dir(self, model: str | None = None) -> Path:
        """The inference log's folder: all models', or one model's."""
        folder = self.home / "inference"
        return folder / model if model else folder

    @property
    def ledger_url(self) -> str:
        return str(self.settings.ledger_url)

    @property
    def tracking_uri(self) -> str:
        return str(self.settings.mlflow_tracking_uri)

    @property
    def actor(self) -> str:
        return self.settings.actor

    @property
    def prefect_api_url(self) -> str | None:
        return self.settings.prefect_api_url

    @property
    def uses_prefect(self) -> bool:
        """Whether flows run as Prefect flow runs (a server is set, or ``flows: prefect``)."""
        mode = self.settings.flows
        return mode == "prefect" or (mode == "auto" and bool(self.prefect_api_url))

    # -- what it holds -----------------------------------------------------------------------

    def project(self, *, check_data: bool = False) -> ProjectConfig:
        """The project config, parsed (and with ``check_data``, its columns checked against the data)."""
        if self.is_llm:
            raise ConfigInvalid(
                f"{self.project_file} describes an LLM release (`kind: llm`), not a model trained on data.",
                hint=f"Build it with `conveyor --config {self.project_file.name} llm build`, try it with `llm ask`; "
                "`serve` runs its OpenAI-compatible gateway; verify, promote, rollback, audit and lineage work "
                "on it as on any model. Training, validation and drift take a tabular project's file "
                "(conveyor.yaml).",
            )
        stamp = _stamp(self.project_file)
        kept = self._projects.get(check_data)
        if kept is None or kept[0] != stamp or stamp is None:
            kept = (stamp, load_project(self.project_file, check_data=check_data))
            self._projects[check_data] = kept
        return kept[1]

    @property
    def model_name(self) -> str:
        return self.llm_project().name if self.is_llm else self.project().model_name

    @property
    def is_llm(self) -> bool:
        """Whether the project file describes an LLM release (``kind: llm``) rather than a tabular model."""
        return is_llm_project(self.project_file)

    def llm_project(self) -> LlmProject:
        """The LLM project config, parsed and checked (its template's variables, its files)."""
        return load_llm_project(self.project_file)

    @property
    def weights_store(self) -> Path:
        """Model weights by content address: a release names them, the store keeps them once."""
        return self.home / "weights"

    def ledger(self, actor: str | None = None) -> Ledger:
        """A new connection to the lineage ledger: ``with ws.ledger() as ledger: ...``."""
        # here: a Workspace opens without SQLAlchemy; what reads the ledger loads it
        from conveyor.registry.ledger import Ledger

        return Ledger(self.ledger_url, actor=actor or self.actor)

    def bind_mlflow(self) -> None:
        """Point MLflow's process-wide tracking URI (and so its registry) at this project's store.

        MLflow's fluent API (``start_run``, ``log_model``) and ``models:/`` downloads read them;
        this is the only place Conveyor sets them.
        """
        import mlflow

        with _mlflow_lock:  # the registry URI is left unset: MLflow then takes the tracking URI for it too
            if mlflow.get_tracking_uri() != self.tracking_uri:
                import mlflow.tracing

                mlflow.set_tracking_uri(self.tracking_uri)
                mlflow.tracing.reset()  # its exporter keeps the store it was set up with: another project's

    @cached_property
    def _client(self) -> Any:
        from mlflow import MlflowClient

        self.bind_mlflow()
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def mlflow(self) -> Any:
        """An MLflow client on this project's tracking store and registry (MLflow is bound to it too)."""
        return self._client

    @cached_property
    def _registry(self) -> RegistryView:

        return registry_view(self.tracking_uri)

    def registry(self) -> RegistryView:
        """The registry as verification reads it: resolve, tags, files (``registry.store``); fast on
        the embedded stores, MLflow's client elsewhere."""
        return self._registry

    def alias(self, alias: str, model: str | None = None) -> str | None:
        """The version ``model@alias`` points at, or None (default model: the project's)."""
        # here: registry.release builds on this module
        from conveyor.registry.release import alias as alias_of

        return alias_of(self.mlflow(), model or self.model_name, alias)

    def champion(self, model: str | None = None) -> str | None:
        """The version ``@champion`` points at, or None when there is none yet."""
        return self.alias("champion", model)

    def policy(self, name: str) -> LoadedPolicy[Any]:
        """The policy ``policies/<name>.yaml``, parsed and checked (cached), with its digest.

        A malformed file is a ``PolicyInvalid`` naming the field; a missing one too, except for
        ``signing`` (a project without one signs with, and trusts, its own key).
        """
        if name not in POLICIES:
            raise ConfigInvalid(f"There is no policy called {name!r}.", hint=f"Known policies: {', '.join(POLICIES)}.")
        stamp = _stamp(self.policies / f"{name}.yaml")
        kept = self._policies.get(name)
        if kept is None or kept[0] != stamp:
            kept = (stamp, self._load_policy(name, stamp))
            self._policies[name] = kept
        return kept[1]

    def _load_policy(self, name: str, digest: str | None) -> LoadedPolicy[Any]:
        from importlib import import_module

        module, _, cls_name = POLICIES[name].partition(":")
        model = getattr(import_module(module), cls_name)
        path = self.policies / f"{name}.yaml"
        if name in _OPTIONAL and digest is None:  # absent: the documented default
            return LoadedPolicy(name, path, None, model())
        return LoadedPolicy(name, path, digest, load_policy(path, model))

    # Typed shorthands for the policies most code reads.
    def promotion_policy(self) -> PromotionPolicy:
        return self.policy("promotion").value

    def canary_policy(self) -> CanaryPolicy:
        return self.policy("canary").value

    def serving_policy(self) -> ServingPolicy:
        return self.policy("serving").value

    def gateway_policy(self) -> GatewayPolicy:
        return self.policy("gateway").value

    def drift_policy(self) -> DriftPolicy:
        return self.policy("drift").value

    def signing(self) -> SigningPolicy:
        return self.policy("signing").value

    def loadable_types(self) -> tuple[str, ...]:
        """The types a scikit-learn model of this project may ask skops to trust (see
        ``registry.loading``): the signing policy's list, or numpy, SciPy, scikit-learn and the
        project's own estimator class."""
        listed = self.signing().loadable_types
        if listed:
            return listed
        own = (self.project().estimator.class_path,) if self.project_file.is_file() and not self.is_llm else ()
        return (*DEFAULT_LOADABLE, *own)

    def verify_ref(self, ref: str, ledger: Ledger, *, keep: Path | None = None) -> VerificationReport:
        """Every link of ``ref`` checked against this project's trust, registry and weights store
        (``registry.verify.verify_version``); with ``keep``, the verified files stay there."""
        # here: a Workspace opens without SQLAlchemy; what verifies loads it
        from conveyor.registry.verify import verify_version

        return verify_version(
            ref,
            self.signing(),
            root=self.root,
            keys_dir=self.keys_dir,
            ledger=ledger,
            keep=keep,
            registry=self.registry(),
            weights=self.weights_store,
        )

    def require_project(self) -> Workspace:
        """Raise unless the project file exists (commands that need a project call this first)."""
        if not self.project_file.is_file():
            raise NotFound(
                f"No project config at {self.project_file}.",
                hint="Run the command in a project folder, or pass --config (the demo's is conveyor.yaml).",
            )
        return self

    def __repr__(self) -> str:
        return f"Workspace({str(self.project_file)!r}, home={str(self.home)!r})"
