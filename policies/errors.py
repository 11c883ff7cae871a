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
    │   └── NothingToActOn         no champion yet to check or judge (exit 3, like "not enough data")
    └── RollbackPerformed          a release was rolled back (the caller decides how loud)

The command line prints a ``ConveyorError`` as one paragraph and exits with ``exit_code``;
any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "ConfigInvalid",
    "ConveyorError",
    "DataInvalid",
    "GateFailed",
    "LedgerCorrupt",
    "LedgerError",
    "NotFound",
    "NothingToActOn",
    "PolicyInvalid",
    "RegistryError",
    "RollbackPerformed",
    "SignatureInvalid",
    "ValidationFailed",
]


class ConveyorError(Exception):
    """A failure the user can act on.

    ``message`` says what failed and why; ``hint`` says what to do about it.
    """

    exit_code: int = 1

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


class NothingToActOn(NotFound):
    """What a check needs is not there yet (no champion): not a finding, not a usage mistake."""

    exit_code = 3


class RollbackPerformed(ConveyorError):
    """A release was rolled back; the message carries the figures that caused it."""
