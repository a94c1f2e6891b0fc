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


class InvalidEvent(TracetapError):
    """A record that fits its schema but cannot be true (a payload longer than the bytes the syscall moved, a
    request packet without addresses): the core refuses it whole; the engine dead-letters it."""


class UndecodableState(TracetapError):
    """Bytes that should hold a stage's state (or a batch for the trace stage) are not the core's encoding."""


class NotProvisioned(TracetapError):
    """A server answers but lacks what tracetap needs (topics); the message names the command that sets it up."""
