"""Conveyor's exceptions: one tree, one module.

    ConveyorError                  a user-facing failure: what failed, why, what to do
    ├── ConfigInvalid              the project config (conveyor.yaml) is wrong
    ├── PolicyInvalid              a policy file is malformed
    ├── DataInvalid                a data file cannot be read or does not match the config
    ├── ValidationFailed           data failed its expectation suite
    ├── GateFailed                 a promotion or release gate refused
    ├── SignatureInvalid           a signature or provenance statement does not verify
    ├── RegistryError              the model registry refused or lacks something
    ├── LedgerError                the lineage ledger cannot be read or written
    │   └── LedgerCorrupt          the hash chain is broken
    ├── NotFound                   an artifact, digest or model that is not known
    │   ├── NothingToActOn         no champion yet to check or judge (exit 3, like "not enough data")
    │   └── UnknownKey             no API key of that name
    ├── RollbackPerformed          a release was rolled back (the caller decides how loud)
    ├── RequestRefused             a request a service refuses (its HTTP status per refusal)
    ├── LoadRefused                a version a service will not load (it did not verify, or would not start)
    └── ModelFailed                a served model failed to answer (error, timeout, crash, overload, contract)

The command line prints a ``ConveyorError`` as one paragraph and exits with ``exit_code``; a
service answers one with ``http_status`` (as BentoML's exceptions carry ``error_code``), in the
shape its clients read: the OpenAI error object on ``/v1/``, ``{"error": ...}`` elsewhere. Any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

from http import HTTPStatus

__all__ = [
    "ConfigInvalid",
    "ConveyorError",
    "DataInvalid",
    "GateFailed",
    "LedgerCorrupt",
    "LedgerError",
    "LoadRefused",
    "ModelFailed",
    "NotFound",
    "NothingToActOn",
    "PolicyInvalid",
    "RegistryError",
    "RequestRefused",
    "RollbackPerformed",
    "SignatureInvalid",
    "UnknownKey",
    "ValidationFailed",
]


class ConveyorError(Exception):
    """A failure the user can act on.

    ``message`` says what failed and why; ``hint`` says what to do about it.
    """

    exit_code: int = 1
    http_status: int = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message


class ConfigInvalid(ConveyorError):
    """The project config is missing, unreadable or wrong."""

    exit_code = 2


class PolicyInvalid(ConveyorError):
    """A policy file is malformed; policies never fall back to silent defaults."""

    exit_code = 2


class DataInvalid(ConveyorError):
    """A data file is unreadable, empty or does not match the project config."""

    http_status = HTTPStatus.BAD_REQUEST


class ValidationFailed(ConveyorError):
    """Data failed its expectation suite."""


class GateFailed(ConveyorError):
    """A promotion or release gate refused; the reasons are in the message."""


class SignatureInvalid(ConveyorError):
    """A signature or provenance statement does not verify."""


class RegistryError(ConveyorError):
    """The model registry refused an operation or lacks what was asked for."""

    exit_code = 2


class LedgerError(ConveyorError):
    """The lineage ledger cannot be opened, read or written."""

    exit_code = 2


class LedgerCorrupt(LedgerError):
    """The ledger's hash chain is broken at a named event."""

    exit_code = 1


class NotFound(ConveyorError):
    """An artifact, digest or model that nothing knows about."""

    http_status = HTTPStatus.NOT_FOUND


class NothingToActOn(NotFound):
    """What a check needs is not there yet (no champion): not a finding, not a usage mistake."""

    exit_code = 3


class RollbackPerformed(ConveyorError):
    """A release was rolled back; the message carries the figures that caused it."""


class UnknownKey(NotFound):
    """No API key of that name in the project's key file."""

    exit_code = 2

    def __init__(self, name: str) -> None:
        super().__init__(f"No API key is named {name!r}.", hint="`conveyor api-key list` shows the names.")
        self.name = name


class RequestRefused(ConveyorError):
    """A request a service refuses: ``http_status`` and a message that says why; for OpenAI's
    clients also the error's ``kind`` (its ``type``), the field at fault (``param``) and a
    ``code``; ``close``: the connection is closed after the answer (a body not read whole)."""

    http_status: int = HTTPStatus.BAD_REQUEST

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str | None = None,
        param: str | None = None,
        code: str | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.http_status = status
        self.kind, self.param, self.code, self.close = kind, param, code, close


class LoadRefused(ConveyorError):
    """A version a service will not load: it did not verify, its files cannot be read, or its
    process did not start. The service keeps serving what it had."""

    http_status = HTTPStatus.SERVICE_UNAVAILABLE


class ModelFailed(ConveyorError):
    """A served model failed to answer; ``kind`` is error, timeout, crash, overload or contract
    (its answer broke the output contract)."""

    http_status = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind
