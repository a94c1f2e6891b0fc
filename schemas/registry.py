"""A narrow client for a Confluent-compatible schema registry (Confluent, Apicurio ccompat, Karapace).

Wraps confluent-kafka's client so callers see our errors: a refused schema, an unknown id,
or a registry that cannot be reached (never to be confused with a bad record).
"""

from __future__ import annotations

import json
from typing import Any

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from tracetap.config import RegistrySettings
from tracetap.errors import ServerUnavailable, TracetapError

BACKWARD = "BACKWARD"


class RegistryError(TracetapError):
    """The registry answered with an error we cannot route around."""


class RegistryUnavailable(ServerUnavailable):
    """The registry could not be reached; retry later, do not dead-letter records for it."""


class IncompatibleSchema(RegistryError):
    """The registry refused a schema under its compatibility rule."""


class UnknownSchemaId(RegistryError):
    """No schema has this id."""


class SchemaRegistry:
    def __init__(self, settings: RegistrySettings) -> None:
        conf: dict[str, Any] = {"url": settings.url}
        if settings.basic_auth_user_info:
            conf["basic.auth.user.info"] = str(settings.basic_auth_user_info)
        for key, value in (
            ("ssl.ca.location", settings.ssl_ca_location),
            ("ssl.certificate.location", settings.ssl_certificate_location),
            ("ssl.key.location", settings.ssl_key_location),
        ):
            if value is not None:
                conf[key] = str(value)
        self.url = settings.url
        self._client = SchemaRegistryClient(conf)

    def register(self, subject: str, schema: dict[str, Any]) -> int:
        """Register (idempotent: the same schema gets the same id) and return the schema id."""
        return self._call(f"register a schema under {subject}", self._client.register_schema, subject, _avro(schema))

    def lookup(self, subject: str, schema: dict[str, Any]) -> int:
        return self._call(f"look up a schema under {subject}", self._client.lookup_schema, subject, _avro(schema)).schema_id

    def schema_by_id(self, schema_id: int) -> dict[str, Any]:
        registered = self._call(f"fetch schema id {schema_id}", self._client.get_schema, schema_id)
        return json.loads(registered.schema_str)

    def set_compatibility(self, subject: str, level: str = BACKWARD) -> None:
        self._call(f"set {level} compatibility on {subject}", self._client.set_compatibility, subject, level)

    def compatibility(self, subject: str) -> str:
        return self._call(f"read the compatibility of {subject}", self._client.get_compatibility, subject)

    def subjects(self) -> list[str]:
        return self._call("list subjects", self._client.get_subjects)

    def delete_subject(self, subject: str) -> None:
        """Soft-delete then hard-delete, as the Confluent API requires."""
        self._call(f"delete {subject}", self._client.delete_subject, subject, False)
        self._call(f"delete {subject} permanently", self._client.delete_subject, subject, True)

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 409:
                raise IncompatibleSchema(f"registry refused to {what}: {exc.error_message}") from None
            if exc.http_status_code == 404 and exc.error_code in (40403, 404):
                raise UnknownSchemaId(f"cannot {what}: not found ({exc.error_message})") from None
            if exc.http_status_code >= 500 or exc.http_status_code < 0:
                raise RegistryUnavailable(f"cannot {what} at {self.url}: {exc.error_message}") from None
            raise RegistryError(f"cannot {what}: HTTP {exc.http_status_code} {exc.error_message}") from None
        except (OSError, ConnectionError) as exc:
            raise RegistryUnavailable(f"cannot {what}: registry at {self.url} unreachable ({exc})") from None
        except Exception as exc:  # the HTTP client's transport errors have no common public base
            if type(exc).__module__.startswith(("httpx", "httpcore", "httpx2", "httpcore2")):
                raise RegistryUnavailable(f"cannot {what}: registry at {self.url} unreachable ({type(exc).__name__}: {exc})") from None
            raise


def _avro(schema: dict[str, Any]) -> Schema:
    return Schema(json.dumps(schema, separators=(",", ":")), "AVRO")
