"""What every engine does around the core, written once: the topics a job reads and writes (declared from
the catalog), the record kind of each raw topic, and the wait for a registry that does not answer. The
Faust and Flink files only adapt these to their engine (streams/edge.py holds the state encodings and the guard around the core).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from schemas.catalog import (ALERTS, DEAD_LETTER, NETWORK_METRICS, NODE_SPANS, PACKETS, PATHS, RED_METRICS, SOCKET_DATA, SOCKET_LIFECYCLE,
                             SPANS)

log = logging.getLogger("tracetap.streams")

# Keyed by flow id: the flow stage reads them as they are partitioned. The agents' spans (in-collector) go through it
# unchanged, so they meet the spans it assembles from raw events in the same conversation stage.
RAW_INPUTS = (SOCKET_DATA, PACKETS, SOCKET_LIFECYCLE, NODE_SPANS)
OUTPUTS = (SPANS, PATHS, RED_METRICS, NETWORK_METRICS, ALERTS, DEAD_LETTER)
_KINDS = {SOCKET_DATA.name: "socket_data", PACKETS.name: "packet", SOCKET_LIFECYCLE.name: "lifecycle",
          NODE_SPANS.name: "span"}  # FlowStage's record methods


def raw_kinds(prefix: str) -> dict[str, str]:
    """Each raw topic's full name -> the kind of record it holds (socket_data, packet, lifecycle, span)."""
    return {spec.full_name(prefix): _KINDS[spec.name] for spec in RAW_INPUTS}


def registry_waits() -> Iterator[float]:
    """Seconds to wait before each retry of a registry that does not answer: 1, 2, 4 ... then every 30 s.
    Waited out, never dead-lettered: the record is fine, the registry is not there yet."""
    delay = 1.0
    while True:
        yield delay
        delay = min(delay * 2, 30.0)


def log_registry_wait(delay_s: float, exc: Exception) -> None:
    log.error("registry unavailable, retrying in %.0f s error=%s", delay_s, exc)
