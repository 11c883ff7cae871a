"""The registry views answer alike: the fast reader of MLflow's tables and MLflow's own client, on a
real store with a real registered model; an unknown schema revision falls back to the client."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.policies.errors import NotFound
from conveyor.registry.signing import model_files
from conveyor.registry.store import MlflowView, SqlView, registry_view


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    import mlflow
    from mlflow import MlflowClient
    from sklearn.linear_model import LogisticRegression

    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("e", artifact_location=(folder / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.sklearn.log_model(
            LogisticRegression().fit([[0], [1]], [0, 1]), name="model", pip_requirements=["scikit-learn"]
        )
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("m")
    for _ in range(2):
        version = client.create_model_version("m", info.model_uri, tags={"conveyor.version_digest": "sha256:x"})
    client.set_registered_model_alias("m", "champion", "1")
    client.set_model_version_tag("m", version.version, "extra", "yes")
    return uri


def test_the_fast_reader_is_used_for_the_embedded_store(store: str) -> None:
    assert isinstance(registry_view(store), SqlView)


def test_both_views_resolve_tag_and_fetch_alike(store: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    fast, slow = SqlView.open(store), MlflowView(MlflowClient(tracking_uri=store, registry_uri=store))
    assert fast is not None
    for ref in ("m/1", "m/2", "m@champion"):
        assert fast.resolve(ref) == slow.resolve(ref)
    assert fast.tags("m", "2") == slow.tags("m", "2") == {"conveyor.version_digest": "sha256:x", "extra": "yes"}
    ours, theirs = fast.fetch("m", "1", tmp_path / "a"), slow.fetch("m", "1", tmp_path / "b")
    assert (ours, theirs) == (tmp_path / "a", tmp_path / "b")  # the files land in the folder given, as MLflow's do
    assert model_files(ours) == model_files(theirs) and model_files(ours)
    for ref in ("m/3", "m@canary", "nobody/1"):
        for view in (fast, slow):
            with pytest.raises(NotFound, match=f"The registry has no {ref}"):
                view.resolve(ref)


def test_another_schema_revision_or_store_is_not_read_directly(store: str, tmp_path: Path) -> None:
    import shutil
    import sqlite3

    copy = tmp_path / "mlflow.db"
    shutil.copy(store.removeprefix("sqlite:///"), copy)
    with sqlite3.connect(copy) as db:
        db.execute("UPDATE alembic_version SET version_num = 'something-newer'")
    assert SqlView.open(f"sqlite:///{copy}") is None
    assert SqlView.open("http://127.0.0.1:5000") is None
    assert SqlView.open(f"sqlite:///{tmp_path / 'absent.db'}") is None
