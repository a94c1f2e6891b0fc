"""Workload names for spans, from the compacted resource topic (ResourceTag records and tombstones).

A process's workload is its own tag, else its network namespace's name (the demo's pods); an address's
workload is the tag of the namespace that owns it. Engines keep one index per partition of the table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tracetap.metrics import local_is_client
from tracetap.model import Span, TapSide


@dataclass(slots=True)
class WorkloadIndex:
    processes: dict[tuple[str, int], tuple[str | None, int | None]] = field(default_factory=dict)  # (host, pid) -> (workload, netns)
    namespaces: dict[tuple[str, int], str | None] = field(default_factory=dict)  # (host, netns inode) -> workload or name
    addresses: dict[str, str | None] = field(default_factory=dict)  # ip -> workload
    _keys: dict[str, tuple[str, Any]] = field(default_factory=dict)  # resource id -> where it is indexed, for tombstones

    def apply(self, resource_id: str, record: dict[str, Any] | None) -> None:
        """One resource-topic record; None (a tombstone) forgets the resource."""
        if record is None:
            where = self._keys.pop(resource_id, None)
            if where is not None:
                getattr(self, where[0]).pop(where[1], None)
            return
        kind, host = record["kind"], record["host"]
        if kind == "PROCESS" and record["pid"] is not None:
            key: Any = (host, record["pid"])
            self.processes[key] = (record["workload"], record["netns_inode"])
            self._keys[resource_id] = ("processes", key)
        elif kind == "NETNS" and record["netns_inode"] is not None:
            key = (host, record["netns_inode"])
            self.namespaces[key] = record["workload"] or record["netns_name"]
            self._keys[resource_id] = ("namespaces", key)
        elif kind == "IP_ADDRESS" and record["ip"]:
            workload = record["workload"] or self.namespaces.get((host, record["netns_inode"]))
            if workload is not None and record["ip"] not in ("127.0.0.1", "::1"):  # loopback belongs to every namespace
                self.addresses[record["ip"]] = workload
                self._keys[resource_id] = ("addresses", record["ip"])

    def to_state(self) -> list[Any]:
        """JSON-ready data (tuple keys as lists); `load_state` reads it back."""
        return [[[host, pid, workload, netns] for (host, pid), (workload, netns) in self.processes.items()],
                [[host, inode, name] for (host, inode), name in self.namespaces.items()], dict(self.addresses),
                {rid: [where, list(key) if isinstance(key, tuple) else key] for rid, (where, key) in self._keys.items()}]

    def load_state(self, state: list[Any]) -> None:
        processes, namespaces, addresses, keys = state
        self.processes = {(host, pid): (workload, netns) for host, pid, workload, netns in processes}
        self.namespaces = {(host, inode): name for host, inode, name in namespaces}
        self.addresses = dict(addresses)
        self._keys = {}
        for rid, (where, key) in keys.items():
            if where not in ("processes", "namespaces", "addresses"):  # the attribute a tombstone pops from
                raise ValueError(f"resource {rid!r} indexed in {where!r}")
            self._keys[rid] = (where, tuple(key) if isinstance(key, list) else key)

    def process_workload(self, host: str, pid: int | None) -> str | None:
        if pid is None:
            return None
        workload, netns = self.processes.get((host, pid), (None, None))
        return workload or (self.namespaces.get((host, netns)) if netns is not None else None)

    def tag(self, span: Span) -> Span:
        """Fill the span's client and server workloads where it has none (in place; returned for chaining)."""
        own = self.process_workload(span.host, span.pid) if span.tap_side in (TapSide.CLIENT_PROCESS, TapSide.SERVER_PROCESS) else None
        if span.tap_side is TapSide.CLIENT_PROCESS:
            span.client_workload = span.client_workload or own
        elif span.tap_side is TapSide.SERVER_PROCESS:
            span.server_workload = span.server_workload or own
        span.client_workload = span.client_workload or self.addresses.get(span.client_ip)
        span.server_workload = span.server_workload or self.addresses.get(span.server_ip)
        return span

    def pair(self, event: dict[str, Any]) -> tuple[str | None, str | None]:
        """(client, server) workloads of a lifecycle event: the local socket's process or address, the remote address."""
        own = self.process_workload(event["host"], event["pid"])
        local = own or self.addresses.get(event["local_ip"])
        remote = self.addresses.get(event["remote_ip"])
        return (local, remote) if local_is_client(event) else (remote, local)
