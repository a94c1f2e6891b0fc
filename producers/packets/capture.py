"""pyshark captures tuned for throughput: tshark prints only our fields as EK lines, and the parser hands
them on in batches (one per read from tshark's pipe) instead of building a pyshark Packet per packet.

pyshark still does what it is for: it starts dumpcap and tshark (live, or on a file), checks the
interfaces, applies the capture filter and preferences, and reads tshark's output on its event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyshark
from pyshark.tshark.output_parser.base_parser import BaseTsharkOutputParser

from producers.packets.summary import PAYLOAD_FIELDS, TSHARK_FIELDS, TSHARK_PREFS

log = logging.getLogger("tracetap.agent.packets")

# dumpcap's last words on SIGTERM: "Packets received/dropped on interface 'veth-c': 1234/5 (pcap:5/...)".
_DROPS = re.compile(r"received/dropped on interface '(?P<interface>[^']*)': (?P<received>\d+)/(?P<dropped>\d+)")
_TERM_GRACE_S = 3.0


class _EkLineBatches(BaseTsharkOutputParser):
    """Each 'packet' this parser returns is the list of complete EK packet lines in tshark's output so far."""

    def _parse_single_packet(self, packet: list[bytes]) -> list[bytes]:
        return packet

    def _extract_packet_from_data(self, data: bytes, got_first_packet: bool = True) -> tuple[list[bytes] | None, bytes]:
        end = data.rfind(b"\n")
        if end == -1:
            return None, data
        lines = [line for line in data[:end].split(b"\n") if line and not line.startswith(b'{"index"')]
        return lines or None, data[end + 1:]


class _Batched:
    """What both capture kinds share: our fields, our preferences, our parser, and a clean stop."""

    on_stderr: Callable[[str], None] = staticmethod(lambda line: None)
    stop_with_sigterm = True  # live: dumpcap and tshark run until told; a file's tshark ends by itself
    complaints: list[str]  # tshark's and dumpcap's own lines, for the error message

    def why_it_failed(self) -> str:
        """tshark's complaint, e.g. 'The file "x.pcap" appears to be damaged or corrupt.' (and its detail line)."""
        lines = [line.removeprefix("tshark: ").removeprefix("dumpcap: ") for line in getattr(self, "complaints", [])]
        return " ".join(lines[-2:])

    def _setup_tshark_output_parser(self) -> _EkLineBatches:
        return _EkLineBatches()  # pyshark's EK parser would also run `tshark -G elastic-mapping` first

    async def _handle_process_stderr_forever(self, stderr: Any) -> None:
        while True:
            line = await stderr.readline()
            if not line:
                break
            text = line.decode(errors="replace").strip()
            self._last_error_line = text
            if text and not text.startswith(("Running as user", "Capturing on", "File:", "Packets captured")) and not _DROPS.search(text):
                self.complaints = [*getattr(self, "complaints", [])[-4:], text]
            self.on_stderr(text)

    async def _cleanup_subprocess(self, process: Any) -> None:
        # SIGTERM first: dumpcap then reports its kernel drop counts on stderr; pyshark would SIGKILL.
        # os.kill, not process.send_signal: Popen.send_signal polls (reaps) the child first, and asyncio's
        # child watcher then reports it as an unknown child with return code 255.
        if process.returncode is None and not self.stop_with_sigterm:
            try:  # a file's tshark is finishing on its own: its exit code says whether the file was whole
                await asyncio.wait_for(process.wait(), _TERM_GRACE_S)
            except asyncio.TimeoutError:
                pass
        if process.returncode is None:
            try:
                os.kill(process.pid, signal.SIGTERM)
                await asyncio.wait_for(process.wait(), _TERM_GRACE_S)
            except (ProcessLookupError, asyncio.TimeoutError):
                pass
        await super()._cleanup_subprocess(process)  # type: ignore[misc]


def tshark_parameters(payloads: bool = False) -> list[str]:
    """tshark's field list; with `payloads`, also each packet's TCP or UDP payload (the packet agent in-collector
    reads it with the core's protocol modules)."""
    params = []
    for name in TSHARK_FIELDS + (PAYLOAD_FIELDS if payloads else ()):
        params += ["-e", name]
    return params


class LiveTapCapture(_Batched, pyshark.LiveCapture):
    def __init__(self, interfaces: list[str], capture_filter: str, snaplen: int, tshark_path: str | None, payloads: bool = False) -> None:
        self._snaplen = snaplen
        super().__init__(interface=interfaces, bpf_filter=capture_filter or None, use_ek=True, tshark_path=tshark_path,
                         override_prefs=dict(TSHARK_PREFS), custom_parameters=tshark_parameters(payloads))

    def _get_dumpcap_parameters(self) -> list[str]:
        return ["-s", str(self._snaplen)] + super()._get_dumpcap_parameters()


class FileTapCapture(_Batched, pyshark.FileCapture):
    stop_with_sigterm = False

    def __init__(self, path: Path, tshark_path: str | None, payloads: bool = False) -> None:
        super().__init__(input_file=str(path), use_ek=True, keep_packets=False, tshark_path=tshark_path,
                         override_prefs=dict(TSHARK_PREFS), custom_parameters=tshark_parameters(payloads))

    async def _get_tshark_process(self, packet_count: int | None = None, stdin: Any = None) -> Any:
        """pyshark's, less `-l`: flushing after every packet is right for a live capture's latency, and costs a
        replay through the pipe about a fifth of tshark's speed (measured: 8.2 s against 6.7 s for 200k packets)."""
        self._verify_capture_parameters()
        parameters = [self._get_tshark_path(), "-n", "-T", "ek"] + self.get_parameters(packet_count=packet_count)
        process = await asyncio.create_subprocess_exec(*parameters, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=stdin)
        self._create_stderr_handling_task(process.stderr)
        self._created_new_process(parameters, process)
        return process


def parse_drops(line: str) -> tuple[str, int] | None:
    """(interface, packets the kernel dropped) from a dumpcap statistics line, else None."""
    match = _DROPS.search(line)
    return (match["interface"], int(match["dropped"])) if match else None


def netns_tools(netns: str, directory: Path) -> str:
    """A tshark path whose tshark and dumpcap run inside `ip netns` NAME (pyshark finds dumpcap beside tshark).

    Returns the tshark wrapper's path. The wrappers are written fresh each start; root only.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for tool in ("tshark", "dumpcap"):
        wrapper = directory / tool
        wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {_shell_word(netns)} {tool} "$@"\n')
        wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(directory / "tshark")


def _shell_word(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", text):
        raise ValueError(f"network namespace name {text!r}: only letters, digits, '.', '_' and '-' are allowed")
    return text


def netns_exists(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}")
