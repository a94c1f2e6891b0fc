"""The exception hierarchy: every error tracetap raises on purpose is a TracetapError."""

from __future__ import annotations


class TracetapError(Exception):
    """Root of tracetap's errors; the CLI turns these into one line and an exit code."""


class ConfigError(TracetapError):
    """A setting is missing, unknown or invalid."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"invalid setting {field}: {reason}")
        self.field = field
        self.reason = reason


class ServerUnavailable(TracetapError):
    """A server (Kafka, the registry, Elasticsearch) cannot be reached; retry later, do not drop data."""


class NotProvisioned(TracetapError):
    """A server answers but lacks what tracetap needs (topics); the message names the command that sets it up."""
