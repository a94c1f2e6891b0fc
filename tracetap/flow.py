"""Flow identity: one direction-independent id per L4 conversation.

Every raw topic is keyed by it, so all four tap points of a request land in the same partition.
"""

from __future__ import annotations

from typing import NamedTuple


class Endpoint(NamedTuple):
    ip: str
    port: int


def flow_id(l4_protocol: str, a: Endpoint, b: Endpoint) -> str:
    """Return the same id for (a→b) and (b→a): `proto|lo_ip|lo_port|hi_ip|hi_port`.

    The lower endpoint comes first, so both directions and every tap point agree without
    knowing which side is the client. '|' separates fields because IPv6 addresses contain ':'.
    """
    lo, hi = (a, b) if _sort_key(a) <= _sort_key(b) else (b, a)
    return f"{l4_protocol.lower()}|{lo.ip}|{lo.port}|{hi.ip}|{hi.port}"


def _sort_key(endpoint: Endpoint) -> tuple[str, int]:
    return (endpoint.ip, endpoint.port)
