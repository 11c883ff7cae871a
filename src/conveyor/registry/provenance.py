"""Provenance: an in-toto Statement (SLSA provenance v1 predicate) signed as a DSSE envelope.

Subjects are the model's files with their digests; the predicate records what the model was
made from (data, validation report, config, parameters, dependency lock, code commit) and the
run that made it. Parameters are stored as strings: the in-toto protobuf turns numbers into
floats, which would change what the statement says.
"""

from __future__ import annotations

import base64
import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conveyor.policies.errors import SignatureInvalid

__all__ = [
    "Material",
    "build_statement",
    "open_envelope",
    "read_statement",
    "sign_envelope",
    "sign_statement",
    "verify_statement",
]

PAYLOAD_TYPE = "application/vnd.in-toto+json"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "urn:conveyor:training:v1"


@dataclass(frozen=True)
class Material:
    """Something the model was made from: a name (path or URI) and its digest."""

    uri: str
    digest: str  # "sha256:<hex>", or "gitCommit:<sha>"

    def descriptor(self) -> dict[str, Any]:
        algorithm, _, value = self.digest.partition(":")
        return {"uri": self.uri, "digest": {algorithm: value}}


def build_statement(
    subjects: dict[str, str],
    materials: list[Material],
    parameters: dict[str, Any],
    run: dict[str, Any],
) -> dict[str, Any]:
    """The in-toto Statement v1 for a model whose files are ``subjects`` (path -> digest)."""
    from google.protobuf import json_format
    from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
    from in_toto_attestation.v1.statement import Statement

    predicate = {
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": {k: _text(v) for k, v in sorted(parameters.items())},
            "resolvedDependencies": [m.descriptor() for m in materials],
        },
        "runDetails": {
            "builder": {"id": "urn:conveyor:builder:local"},
            "metadata": {k: _text(v) for k, v in run.items() if k in {"invocationId", "startedOn", "finishedOn"}},
            "byproducts": [
                {"name": k, "content": base64.b64encode(_text(v).encode()).decode()}
                for k, v in sorted(run.items())
                if k not in {"invocationId", "startedOn", "finishedOn"}
            ],
        },
    }
    descriptors = [
        ResourceDescriptor(name=name, digest={"sha256": digest.split(":", 1)[1]}).pb
        for name, digest in sorted(subjects.items())
    ]
    statement = Statement(descriptors, SLSA_PROVENANCE, predicate)
    statement.validate()
    return json.loads(json_format.MessageToJson(statement.pb, sort_keys=True))


def sign_statement(statement: dict[str, Any], private_key: Any, path: Path) -> Path:
    """Sign ``statement`` as a DSSE envelope with ``private_key`` and write it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(sign_envelope(statement, PAYLOAD_TYPE, private_key), sort_keys=True, indent=2))
    return path


def sign_envelope(payload: dict[str, Any], payload_type: str, private_key: Any) -> dict[str, Any]:
    """``payload`` (canonical JSON) in a DSSE envelope signed by ``private_key``."""
    from securesystemslib.dsse import Envelope
    from securesystemslib.signer import CryptoSigner

    body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    envelope = Envelope(payload=body, payload_type=payload_type, signatures={})
    envelope.sign(CryptoSigner(private_key))
    return envelope.to_dict()


def open_envelope(envelope: Any, payload_type: str, public_key_pem: bytes, what: str) -> dict[str, Any]:
    """The payload of a DSSE ``envelope`` (a dict) once its signature by ``public_key_pem`` verifies."""
    from cryptography.hazmat.primitives import serialization
    from securesystemslib.dsse import Envelope
    from securesystemslib.signer import SSlibKey

    try:
        opened = Envelope.from_dict(copy.deepcopy(envelope))  # from_dict takes the signatures' fields out of it
        key = SSlibKey.from_crypto(serialization.load_pem_public_key(public_key_pem))
        opened.verify([key], 1)
        payload = json.loads(opened.payload)
    except Exception as exc:  # securesystemslib raises VerificationError, KeyError, ValueError, ...
        raise SignatureInvalid(
            f"The {what}'s signature does not verify ({type(exc).__name__}: {exc}).",
            hint=f"The {what} was edited after signing or signed by another key: do not trust it.",
        ) from None
    if opened.payload_type != payload_type:
        raise SignatureInvalid(
            f"The {what} is a {opened.payload_type!r} envelope, not {payload_type!r}.", hint="Do not trust it."
        )
    return payload


def read_statement(path: Path) -> dict[str, Any]:
    """The statement inside an envelope, without checking its signature (for display)."""
    try:
        envelope = json.loads(path.read_text())
        return json.loads(base64.b64decode(envelope["payload"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SignatureInvalid(
            f"{path} is not a readable provenance envelope ({exc}).", hint="Do not use this model."
        ) from None


def verify_statement(path: Path, public_key_pem: bytes, files: dict[str, str]) -> dict[str, Any]:
    """Check the envelope's signature and that its subjects are exactly ``files``; return the statement."""
    if not path.is_file():
        raise SignatureInvalid(
            f"No provenance statement at {path}.", hint="Only models trained by `conveyor train` carry one."
        )
    try:
        envelope = json.loads(path.read_text())
    except ValueError:
        raise SignatureInvalid(
            f"{path} is not a readable provenance envelope.", hint="Do not use this model."
        ) from None
    statement = open_envelope(envelope, PAYLOAD_TYPE, public_key_pem, "provenance statement")
    if statement.get("predicateType") != SLSA_PROVENANCE:
        raise SignatureInvalid(
            "The provenance envelope is not an SLSA provenance statement.", hint="Do not use this model."
        )
    subjects = {s["name"]: f"sha256:{s['digest']['sha256']}" for s in statement.get("subject", [])}
    if subjects != files:
        changed = sorted(set(subjects.items()) ^ set(files.items()))
        names = sorted({name for name, _ in changed})
        raise SignatureInvalid(
            f"The provenance statement's subjects do not match the model's files: {', '.join(names)} differ.",
            hint="The model was changed after its provenance was recorded: do not use this model.",
        )
    return statement


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)
