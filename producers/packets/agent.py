"""`tracetap agent packets`: one pyshark capture per network namespace (live) or per file (replay),
each on its own thread and event loop.

In-collector (the default), each capture thread decodes its EK lines and assembles NIC spans on the node
with the stream jobs' flow stage (producers/collector.py): one record per request to raw.spans. Raw
(`--raw`), the capture threads only move bytes: the Emitter's sender thread decodes each line into a
PacketSummary record for raw.packets.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from producers.collector import NodeCollector
from producers.common import agent_host, excluded_ports
from producers.emitter import Emitter
from producers.packets.capture import FileTapCapture, LiveTapCapture, netns_exists, netns_tools, parse_drops
from producers.packets.summary import PacketSummaryDecoder, UnreadableLine
from schemas.catalog import NODE_SPANS, PACKETS
from tracetap.config import ConfigError, Settings, TapSpec
from tracetap.errors import TracetapError
from tracetap.model import Span
from tracetap.stages import StageConfig

log = logging.getLogger("tracetap.agent.packets")

_START_TIMEOUT_S = 15.0


class CaptureError(TracetapError):
    """A capture could not start or ended with an error; the message has tshark's last words."""


@dataclass
class PacketStats:
    packets: int = 0
    spans: int = 0  # in-collector
    kernel_dropped: int = 0
    failures: list[str] = field(default_factory=list)


@dataclass
class _Source:
    """One tshark: a namespace's live interfaces, or one file."""

    name: str
    taps: list[TapSpec]
    make: Callable[[], Any]  # builds the pyshark capture, on the capture's own thread
    live: bool
    capturing: threading.Event = field(default_factory=threading.Event)  # dumpcap said "Capturing on"


class PacketAgent:
    def __init__(self, settings: Settings, sources: list[_Source]) -> None:
        self._settings = settings
        self._sources = sources
        self._host = agent_host(settings)
        self._stop = threading.Event()
        self._loops: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]]] = {}
        self._lock = threading.Lock()
        self.stats = PacketStats()
        self._collectors: list[_Assembly] = []  # in-collector: one per source

    # construction ---------------------------------------------------------------------------------
    @classmethod
    def live(cls, settings: Settings) -> PacketAgent:
        taps = settings.packets.tap_specs()
        if not taps:
            raise ConfigError("packets.taps", "name at least one interface to capture on, e.g. eth0=node-nic "
                                              "(or replay a file with --read)")
        tshark = str(settings.packets.tshark_path) if settings.packets.tshark_path else None
        if shutil.which(tshark or "tshark") is None:
            raise CaptureError("tshark is not installed (Debian: apt-get install tshark; make setup does it)")
        capture_filter = _capture_filter(settings.packets.capture_filter, excluded_ports(settings))
        wrappers = Path(tempfile.mkdtemp(prefix="tracetap-netns-"))
        by_netns: dict[str | None, list[TapSpec]] = {}
        for tap in taps:
            by_netns.setdefault(tap.netns, []).append(tap)
        sources = []
        for netns, group in by_netns.items():
            path = tshark
            if netns is not None:
                if not netns_exists(netns):
                    raise ConfigError("packets.taps", f"network namespace {netns!r} not found under /run/netns")
                path = netns_tools(netns, wrappers / netns)
            interfaces = [tap.interface for tap in group]

            def make(interfaces: list[str] = interfaces, path: str | None = path) -> Any:
                return LiveTapCapture(interfaces, capture_filter, settings.packets.snaplen, path, settings.packets.in_collector)

            sources.append(_Source(netns or "host", group, make, live=True))
        log.info("live capture taps=%s filter=%r", [t for t in settings.packets.taps], capture_filter)
        return cls(settings, sources)

    @classmethod
    def for_files(cls, settings: Settings, files: list[Path], tap_text: str) -> PacketAgent:
        tap = TapSpec.parse(tap_text)
        tshark = str(settings.packets.tshark_path) if settings.packets.tshark_path else None
        sources = []
        for path in files:
            if not path.is_file():
                raise CaptureError(f"cannot read {path}: no such file")
            payloads = settings.packets.in_collector
            sources.append(_Source(str(path), [tap], lambda path=path: FileTapCapture(path, tshark, payloads), live=False))
        return cls(settings, sources)

    # running --------------------------------------------------------------------------------------
    def run(self, emitter: Emitter, duration_s: float | None = None, on_ready: Callable[[], None] | None = None) -> PacketStats:
        """Capture until every source ends (files), stop(), a signal, or the duration; returns the counts."""
        schema = PACKETS.schema()
        decoders = [PacketSummaryDecoder(self._host, source.taps, default_tap=source.taps[0], schema=schema,
                                         rules=self._settings.agent.redaction_rules(), payloads=self._settings.packets.in_collector)
                    for source in self._sources]
        if self._settings.packets.in_collector:
            config = StageConfig.from_settings(self._settings.streams)
            self._collectors = [_Assembly(decoder, NodeCollector(lambda span: self._emit_span(emitter, span), config), emitter)
                                for decoder in decoders]
        else:
            emitter.register_raw(PACKETS, lambda raw: decoders[raw[0]].encode(raw[1:]))  # raw: source index byte + EK line
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)
        threads = [threading.Thread(target=self._capture, args=(i, source, emitter), name=f"capture-{source.name}", daemon=True)
                   for i, source in enumerate(self._sources)]
        for thread in threads:
            thread.start()
        self._wait_until_capturing(threads)
        if on_ready:
            on_ready()
        deadline = time.monotonic() + duration_s if duration_s else None
        while any(t.is_alive() for t in threads) and not self._stop.is_set():
            if deadline and time.monotonic() >= deadline:
                break
            time.sleep(0.1)
            for source, assembly in zip(self._sources, self._collectors):
                if source.live:  # a quiet tap's last response ends on the node's clock
                    assembly.tick(time.time_ns())
        self.stop()
        for thread in threads:
            thread.join(15)
        abandoned = 0
        for assembly in self._collectors:
            abandoned += assembly.flush()
        if abandoned:
            emitter.count("requests_open_at_exit", abandoned)
        if self.stats.kernel_dropped:
            emitter.count("capture_dropped", self.stats.kernel_dropped)
        return self.stats

    def _emit_span(self, emitter: Emitter, span: Span) -> None:
        with self._lock:
            self.stats.spans += 1
        emitter.offer(NODE_SPANS, span.flow_id, span.to_record())

    def _wait_until_capturing(self, threads: list[threading.Thread]) -> None:
        """Live sources are ready once dumpcap has opened every interface; a failed start ends the wait too."""
        deadline = time.monotonic() + _START_TIMEOUT_S
        for source, thread in zip(self._sources, threads):
            while source.live and not source.capturing.is_set() and thread.is_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            if source.live and not source.capturing.is_set() and thread.is_alive():
                log.warning("capture %s has not reported capturing after %.0f s", source.name, _START_TIMEOUT_S)

    def stop(self, *_: Any) -> None:
        self._stop.set()
        with self._lock:
            for loop, task in self._loops.values():
                if not loop.is_closed():
                    loop.call_soon_threadsafe(task.cancel)

    def _capture(self, index: int, source: _Source, emitter: Emitter) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        prefix = bytes([index])
        offer = emitter.offer_raw
        assembly = self._collectors[index] if self._collectors else None

        def on_batch(lines: list[bytes]) -> None:
            if not source.live:
                emitter.wait_for_room(self._stop)  # a replay waits for the sender; live capture never blocks
            if assembly is not None:
                assembly.add(lines)
            else:
                for line in lines:
                    offer(PACKETS, prefix + line)
            with self._lock:
                self.stats.packets += len(lines)

        try:
            capture = source.make()
            capture.on_stderr = lambda line: self._on_stderr(source, line)
            task = loop.create_task(capture.packets_from_tshark(on_batch))
            with self._lock:
                self._loops[index] = (loop, task)
            if self._stop.is_set():
                task.cancel()
            loop.run_until_complete(task)
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # pyshark's TSharkCrashException and friends: tshark's last line says why
            detail = capture.why_it_failed() if "capture" in locals() else ""
            message = f"capture {source.name} failed: " + (detail or f"{type(exc).__name__}: {exc}")
            log.error("%s", message)
            with self._lock:
                self.stats.failures.append(message)
        finally:
            try:
                if "capture" in locals():
                    loop.run_until_complete(capture.close_async())
            except Exception as exc:
                log.debug("closing capture %s error=%s", source.name, exc)
            if "capture" in locals():
                capture._running_processes.clear()  # reaped or gone; pyshark's __del__ would retry on a closed loop
            with self._lock:
                self._loops.pop(index, None)
                loop.close()

    def _on_stderr(self, source: _Source, line: str) -> None:
        drops = parse_drops(line)
        if line.startswith("Capturing on"):
            source.capturing.set()
        elif drops:
            interface, dropped = drops
            log.info("capture stats source=%s interface=%s kernel_dropped=%d", source.name, interface, dropped)
            with self._lock:
                self.stats.kernel_dropped += dropped
        elif line:  # fatal complaints end up in the capture's error line; the rest is chatter
            log.debug("tshark source=%s says: %s", source.name, line)


class _Assembly:
    """One source's in-collector work: its EK lines decoded and assembled into NIC spans on its capture thread;
    ticked by the main thread too (live: a quiet tap's last response ends on the node's clock), hence the lock."""

    def __init__(self, decoder: PacketSummaryDecoder, collector: NodeCollector, emitter: Emitter) -> None:
        self._decoder = decoder
        self._collector = collector
        self._emitter = emitter
        self._lock = threading.Lock()

    def add(self, lines: list[bytes]) -> None:
        decode, add = self._decoder.decode, self._collector.add
        with self._lock:
            for line in lines:
                try:
                    key, record = decode(line)
                except UnreadableLine as exc:  # counted and logged once, as the raw mode's invalid records
                    self._emitter.count("unreadable_packets")
                    log.debug("%s", exc)
                    continue
                try:
                    add("packet", key, record)
                except Exception as exc:  # a record the core refuses (the stream jobs would dead-letter it): counted
                    self._emitter.count("unassembled_packets")
                    log.debug("cannot assemble packet error=%s", exc)
            self._collector.tick()

    def tick(self, wall_ns: int) -> None:
        with self._lock:
            self._collector.tick(wall_ns)

    def flush(self) -> int:
        """At the end: what is open ends as captured; the number of requests left unanswered."""
        with self._lock:
            self._collector.flush()
            return self._collector.abandoned


def _capture_filter(user_filter: str, ports: set[int]) -> str:
    """The user's BPF filter, ANDed with the exclusion of the pipeline's own ports."""
    exclusion = " or ".join(f"port {port}" for port in sorted(ports))
    parts = [f"({user_filter})"] if user_filter.strip() else []
    if exclusion:
        parts.append(f"not ({exclusion})")
    return " and ".join(parts)
