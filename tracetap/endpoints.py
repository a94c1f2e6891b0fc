"""Low-cardinality endpoints for metrics: `GET /orders/{id}`, a DNS query type, a Redis command."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

# Anchored alternatives of one quantifier each: linear in the segment.
_ID_SEGMENT = re.compile(r"^(?:\d+|[0-9a-fA-F]{8,}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[A-Za-z0-9_-]{22,})$")
_MAX_SEGMENTS = 8


def route_template(path: str) -> str:
    """Ids collapse to {id}: numbers, hex, UUIDs and long opaque tokens; deep paths are cut at 8 segments."""
    segments = path.split("?", 1)[0].split("/")
    templated = ["{id}" if _ID_SEGMENT.match(s) else s for s in segments[:_MAX_SEGMENTS + 1]]
    if len(segments) > _MAX_SEGMENTS + 1:
        templated.append("…")
    return "/".join(templated) or "/"


_TEMPLATES: dict[str, str] = {}  # path -> template; bounded, since paths are as many as ids
_TEMPLATES_MAX = 65_536
_CACHED_PATH_MAX = 512  # longer paths (up to 8 KiB each) are templated every time: 65,536 of them would hold 512 MiB


def route(method: str | None, path: str | None) -> str:
    """An HTTP request's endpoint: `GET /orders/{id}` (HTTP/1 and HTTP/2 declare this rule)."""
    path = path or "/"
    template = _TEMPLATES.get(path)
    if template is None:
        template = route_template(path)
        if len(path) <= _CACHED_PATH_MAX:
            if len(_TEMPLATES) >= _TEMPLATES_MAX:
                _TEMPLATES.clear()
            _TEMPLATES[path] = template
    return f"{method or '?'} {template}"


def endpoint_of(protocol: str, request_type: str | None, resource: str | None) -> str | None:
    """The endpoint rule of the protocol module that declares this span protocol; by default, the request type
    (a DNS query type, a Redis command, a SQL verb, a Kafka API)."""
    rule = _rules().get(protocol)
    return rule(protocol, request_type, resource) if rule is not None else request_type


@functools.cache
def _rules() -> dict[str, Callable[[str, str | None, str | None], str | None]]:
    from tracetap.protocols import all_protocols  # the protocol modules use `route`: imported once they are loaded

    return {symbol: p.endpoint for p in all_protocols() if hasattr(p, "endpoint") for symbol in p.symbols}
