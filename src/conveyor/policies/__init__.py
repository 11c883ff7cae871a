"""Rules as data: the project config, policy files, and the errors every layer raises.

Importing this package is cheap; the submodules load what they need when they are used.
"""

from conveyor.policies.errors import (
    ConfigInvalid,
    ConveyorError,
    DataInvalid,
    GateFailed,
    LedgerCorrupt,
    LedgerError,
    NotFound,
    PolicyInvalid,
    RegistryError,
    RollbackPerformed,
    SignatureInvalid,
    ValidationFailed,
)

__all__ = [
    "ConfigInvalid",
    "ConveyorError",
    "DataInvalid",
    "GateFailed",
    "LedgerCorrupt",
    "LedgerError",
    "NotFound",
    "PolicyInvalid",
    "RegistryError",
    "RollbackPerformed",
    "SignatureInvalid",
    "ValidationFailed",
]
