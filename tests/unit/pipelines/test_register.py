"""Registration: only a model whose files verify is registered; a refusal leaves the registry empty."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.pipelines.register import register_verified
from conveyor.policies.errors import SignatureInvalid
from conveyor.policies.signing import SigningPolicy
from conveyor.registry.keys import load_or_create_key
from conveyor.registry.signing import sign_model
from conveyor.registry.workspace import Workspace


def test_an_unsigned_or_changed_model_is_refused_and_nothing_is_registered(tmp_path: Path) -> None:
    ws = Workspace.open(tmp_path, home=str(tmp_path / ".conveyor"))
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.skops").write_bytes(b"weights")
    keys = tmp_path / "keys"
    with pytest.raises(SignatureInvalid, match="Refused to register m: the signature check failed") as caught:
        register_verified("m", str(folder), SigningPolicy(), root=tmp_path, keys_dir=keys, tags={})
    assert "Nothing was registered" in caught.value.hint
    sign_model(folder, load_or_create_key(keys).private_path)
    (folder / "model.skops").write_bytes(b"weights, changed after signing")
    with pytest.raises(SignatureInvalid, match="signature check failed"):
        register_verified("m", str(folder), SigningPolicy(), root=tmp_path, keys_dir=keys, tags={})
    assert ws.mlflow().search_registered_models() == []
