"""Process and workload tags for the compacted resources topic: pid → process facts, network
namespace → its `ip netns` name (the demo's pods), address → its namespace. Sent when they change;
a tombstone when a process or namespace goes away, so the compacted topic forgets it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from producers.emitter import Emitter
from schemas.catalog import RESOURCES

log = logging.getLogger("tracetap.resources")

_CONTAINER_ID = re.compile(r"([0-9a-f]{64})")


def scan(host: str, proc: Path = Path("/proc"), netns_dir: Path = Path("/run/netns"), pids: list[int] | None = None) -> dict[str, dict[str, Any]]:
    """The resources on this node now (or only the given pids' processes), keyed by resource id."""
    now = time.time_ns()
    names = netns_names(netns_dir)
    out: dict[str, dict[str, Any]] = {}
    boot_ns, ticks = _boot_time_ns(proc), os.sysconf("SC_CLK_TCK")
    for pid in pids if pids is not None else (int(p.name) for p in proc.iterdir() if p.name.isdigit()):
        record = _process(proc / str(pid), pid, host, names, boot_ns, ticks, now)
        if record:
            out[record["resource_id"]] = record
    if pids is not None:
        return out
    for inode, name in names.items():
        key = f"netns|{host}|{inode}"
        out[key] = _base(key, "NETNS", host, now, workload=name, netns_inode=inode, netns_name=name)
    for inode, name, address in _addresses(names):
        key = f"ip|{host}|{inode}|{address}"
        out[key] = _base(key, "IP_ADDRESS", host, now, workload=name, netns_inode=inode, netns_name=name, ip=address)
    return out


def _base(key: str, kind: str, host: str, now: int, **fields: Any) -> dict[str, Any]:
    return {"resource_id": key, "kind": kind, "host": host, "time": now, "labels": {}, **fields}


def _process(path: Path, pid: int, host: str, names: dict[int, str], boot_ns: int, ticks: int, now: int) -> dict[str, Any] | None:
    try:
        comm = (path / "comm").read_text().strip()
        cmdline = (path / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        stat = (path / "stat").read_text()
        start_ticks = int(stat[stat.rindex(")") + 2:].split()[19])  # field 22, after the comm in parentheses
        cgroup = next((line.split("::", 1)[1] for line in (path / "cgroup").read_text().splitlines() if line.startswith("0::")), None)
        netns = os.stat(path / "ns" / "net").st_ino
    except (OSError, ValueError, IndexError):
        return None  # gone while we looked, or a kernel thread
    container = _CONTAINER_ID.search(cgroup or "")
    key = f"process|{host}|{pid}"
    return _base(key, "PROCESS", host, now, workload=names.get(netns), pid=pid, comm=comm, cmdline=cmdline or None,
                 process_start_time=boot_ns + start_ticks * 1_000_000_000 // ticks, cgroup_path=cgroup,
                 container_id=container.group(1) if container else None, netns_inode=netns,
                 netns_name=names.get(netns))


def netns_names(netns_dir: Path = Path("/run/netns")) -> dict[int, str]:
    """Network namespace inode -> its `ip netns` name (the workload of the demo's pods)."""
    try:
        return {entry.stat().st_ino: entry.name for entry in netns_dir.iterdir()}
    except OSError:
        return {}


def _addresses(names: dict[int, str]) -> list[tuple[int, str | None, str]]:
    """(netns inode, netns name, address) for the root namespace and every named one."""
    out = []
    targets: list[tuple[int, str | None, list[str]]] = [(os.stat("/proc/self/ns/net").st_ino, None, ["ip", "-j", "addr", "show"])]
    targets += [(inode, name, ["ip", "-j", "-n", name, "addr", "show"]) for inode, name in names.items()]
    for inode, name, command in targets:
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=5, check=True)
            links = json.loads(result.stdout or "[]")
        except (OSError, subprocess.SubprocessError, json.JSONDecodeError):
            continue  # a namespace removed while we looked
        for link in links:
            for addr in link.get("addr_info", []):
                out.append((inode, name, addr["local"]))
    return out


def _boot_time_ns(proc: Path) -> int:
    for line in (proc / "stat").read_text().splitlines():
        if line.startswith("btime "):
            return int(line.split()[1]) * 1_000_000_000
    return 0


class ResourceTracker:
    """Rescans every interval_s; pids first seen in events are tagged within a second."""

    def __init__(self, emitter: Emitter, host: str, interval_s: float = 10.0) -> None:
        self._emitter = emitter
        self._host = host
        self._interval_s = interval_s
        self._sent: dict[str, dict[str, Any]] = {}
        self._known_pids: set[int] = set()
        self._pending: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="resources", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def note_pid(self, pid: int) -> None:
        """From the capture thread: a pid seen in an event, tagged soon if unknown."""
        if pid not in self._known_pids:
            self._pending.add(pid)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        next_full = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() >= next_full:
                    self._publish(scan(self._host), full=True)
                    next_full = time.monotonic() + self._interval_s
                elif self._pending:
                    pids, self._pending = self._pending, set()
                    self._publish(scan(self._host, pids=list(pids)), full=False)
            except Exception as exc:  # tags are best effort; capture goes on
                self._emitter.count("resource_scan_errors")
                log.warning("resource scan failed error=%s", exc)
            self._stop.wait(0.5)

    def _publish(self, current: dict[str, dict[str, Any]], full: bool) -> None:
        for key, record in current.items():
            if _changed(self._sent.get(key), record):
                self._emitter.offer(RESOURCES, key, record)
                self._sent[key] = record
        self._known_pids.update(r["pid"] for r in current.values() if r["kind"] == "PROCESS")
        if full:
            for key in [k for k in self._sent if k not in current]:
                self._emitter.offer(RESOURCES, key, None)  # tombstone: compaction drops the resource
                gone = self._sent.pop(key)
                self._known_pids.discard(gone.get("pid"))


def _changed(before: dict[str, Any] | None, after: dict[str, Any]) -> bool:
    if before is None:
        return True
    return {k: v for k, v in before.items() if k != "time"} != {k: v for k, v in after.items() if k != "time"}
