"""The error the service answers a caller with: an HTTP status and a message that says why."""

from __future__ import annotations

__all__ = ["ClientError"]


class ClientError(Exception):
    """A request the service refuses: ``status`` is the HTTP status, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
