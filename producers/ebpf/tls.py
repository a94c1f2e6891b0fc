"""TLS plaintext: which OpenSSL libraries the node's processes map, and the uprobes on them.

A uprobe is set on a file (its inode), so one attach covers every process that maps that libssl, those started
later included. A library no process had mapped when the agent started (a container started since, a Python
wheel's own libssl) is found by rescanning /proc/<pid>/maps of the processes that appeared since the last scan.
Paths are opened through /proc/<pid>/root, so a container's own libssl is probed, not the host's.

The kernel side is in socket_trace.c (`struct ssl_call`): entries remember the plaintext buffer, OpenSSL's own
read/write syscalls inside the call tell the socket, the return sends the plaintext.

Statically linked TLS stacks are not libssl files and are not probed: BoringSSL inside Envoy or grpcio, Go's
crypto/tls, Java's JSSE (README, "TLS").
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("tracetap.agent.tls")

# symbol -> the BPF function its entry runs; every return runs `ssl_return`.
SSL_PROBES = {"SSL_read": "ssl_read_enter", "SSL_write": "ssl_write_enter",
              "SSL_read_ex": "ssl_read_ex_enter", "SSL_write_ex": "ssl_write_ex_enter",
              # no plaintext: their syscalls tie the SSL object to its socket (nginx reads ahead in its handshake)
              "SSL_do_handshake": "ssl_handshake_enter", "SSL_accept": "ssl_handshake_enter", "SSL_connect": "ssl_handshake_enter"}
RETURN_PROBE = "ssl_return"
# Where distributions keep the system's libssl, probed at start even before a process maps it.
SYSTEM_DIRS = ("/lib", "/usr/lib", "/lib64", "/usr/lib64", "/usr/local/lib", "/usr/local/lib64")


def is_libssl(path: str) -> bool:
    """libssl.so.3, libssl.so.1.1, a wheel's vendored libssl-1a2b3c4d.so.3 (auditwheel renames it so)."""
    name = path.rsplit("/", 1)[-1]
    return name.startswith("libssl") and ".so" in name


def mapped_libraries(pid: int, proc: Path = Path("/proc")) -> set[str]:
    """The libssl paths a process maps, as seen from its own mount namespace."""
    found = set()
    try:
        with open(proc / str(pid) / "maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                path = line.rstrip("\n").split(None, 5)[-1] if line.count(" ") >= 5 else ""
                if path.startswith("/") and is_libssl(path) and not path.endswith(" (deleted)"):
                    found.add(path)
    except OSError:  # the process ended, or is not ours to read
        pass
    return found


def system_libraries(dirs: Iterable[str] = SYSTEM_DIRS) -> set[str]:
    """libssl files in the system's library directories and their first-level subdirectories (x86_64-linux-gnu)."""
    found = set()
    for top in dirs:
        for directory in (Path(top), *_subdirs(Path(top))):
            try:
                names = os.listdir(directory)
            except OSError:
                continue
            found.update(os.path.realpath(directory / name) for name in names if is_libssl(name))
    return found


def _subdirs(path: Path) -> list[Path]:
    try:
        return [p for p in path.iterdir() if p.is_dir() and not p.is_symlink()]
    except OSError:
        return []


@dataclass
class SslProbes:
    """Attaches the OpenSSL uprobes to each libssl file once (by device and inode), at start and on each rescan.

    `attach(path, symbol, fn_name, retprobe)` is the BPF object's uprobe call; it raises for a missing symbol
    (SSL_read_ex and SSL_write_ex came with OpenSSL 1.1.1)."""

    attach: Callable[[str, str, str, bool], None]
    proc: Path = Path("/proc")
    files: dict[tuple[int, int], str] = field(default_factory=dict)  # (st_dev, st_ino) -> the path it was probed at
    _pids: set[int] = field(default_factory=set)

    def start(self) -> None:
        for path in sorted(system_libraries()):
            self._probe(path)
        self.rescan()
        log.info("tls probes attached libraries=%d paths=%s", len(self.files), sorted(self.files.values()))

    def rescan(self) -> int:
        """Probe the libssl files of processes that appeared since the last scan; how many new files."""
        try:
            pids = {int(name) for name in os.listdir(self.proc) if name.isdigit()}
        except OSError:
            return 0
        before = len(self.files)
        for pid in sorted(pids - self._pids):
            for path in mapped_libraries(pid, self.proc):
                self._probe(str(self.proc / str(pid) / "root") + path)
        self._pids = pids
        added = len(self.files) - before
        if added:
            log.info("tls probes attached new_libraries=%d libraries=%d", added, len(self.files))
        return added

    def _probe(self, path: str) -> None:
        try:
            st = os.stat(path)
        except OSError:
            return
        key = (st.st_dev, st.st_ino)
        if key in self.files:
            return
        self.files[key] = path  # once, whatever the outcome: a file without the symbols is not tried again
        attached = []
        for symbol, entry in SSL_PROBES.items():
            try:
                self.attach(path, symbol, entry, False)
                self.attach(path, symbol, RETURN_PROBE, True)
                attached.append(symbol)
            except Exception as exc:  # bcc raises Exception for a symbol the file does not export
                log.debug("tls probe not attached path=%s symbol=%s error=%s", path, symbol, exc)
        if not attached:
            log.info("tls library without OpenSSL's calls path=%s", path)
