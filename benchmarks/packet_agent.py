"""Benchmark: the packet agent (`tracetap agent packets --read`) on a recorded pcap, against tshark alone.

Needs root-free tools only: tshark/dumpcap (make setup), and to record the pcap `nginx`, `wrk` and `dnsmasq`
(apt-get install -y nginx-light wrk dnsmasq). The pcap (HTTP keep-alive and close, DNS over UDP, on loopback)
is recorded once into the work directory, then replayed in alternating rounds:

  baseline  tshark -T fields with the agent's fields and preferences, output to /dev/null
  ek        tshark -T ek with the same fields, output to /dev/null (what the agent's tshark does)
  raw       the agent with --raw: pyshark -> EK lines -> PacketSummary -> Avro -> Kafka (tracetap-bench.raw.packets),
            until every record is acknowledged
  spans     the agent in-collector (its default): EK lines -> PacketSummary -> NIC spans on the node (the core's
            FlowPacketAssembler) -> Avro -> Kafka (tracetap-bench.raw.spans)

It prints packets/s per mode (medians), each against the baseline, the in-collector agent's records per
packet, and a cProfile of the raw mode's sender work.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import os
import pstats
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from producers.common import open_emitter  # noqa: E402
from producers.packets.agent import PacketAgent  # noqa: E402
from producers.packets.capture import tshark_parameters  # noqa: E402
from producers.packets.summary import TSHARK_FIELDS, TSHARK_PREFS  # noqa: E402
from schemas.catalog import NODE_SPANS, PACKETS  # noqa: E402
from tracetap.config import load_settings  # noqa: E402

BENCH_PREFIX = "tracetap-bench."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def record_pcap(workdir: Path, packets: int) -> Path:
    pcap = workdir / "mixed.pcapng"
    http_port, dns_port = free_port(), free_port()
    root = workdir / "nginx"
    (root / "logs").mkdir(parents=True, exist_ok=True)
    (root / "index.html").write_text("<html>" + "x" * 600 + "</html>\n")
    (root / "nginx.conf").write_text(f"""worker_processes 1; daemon off; error_log {root}/error.log; pid {root}/nginx.pid;
events {{ worker_connections 1024; }}
http {{ access_log off; server {{ listen 127.0.0.1:{http_port}; root {root}; }} }}
""")
    procs = [subprocess.Popen(["nginx", "-c", str(root / "nginx.conf"), "-p", str(root)], stderr=subprocess.DEVNULL),
             subprocess.Popen(["dnsmasq", "--no-daemon", f"--port={dns_port}", "--listen-address=127.0.0.1", "--bind-interfaces",
                               "--no-resolv", "--no-hosts", "--local=/bench.test/", "--address=/svc.bench.test/127.0.0.1", "--pid-file="],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    time.sleep(0.5)
    dumpcap = subprocess.Popen(["dumpcap", "-q", "-i", "lo", "-f", f"port {http_port} or port {dns_port}", "-c", str(packets), "-w", str(pcap)],
                               stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    stop = threading.Event()

    def dns_loop() -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(1)
        qid = 0
        while not stop.is_set():
            qid = (qid + 1) & 0xFFFF
            name = "svc.bench.test" if qid % 3 else f"n{qid}.bench.test"  # a third NXDOMAIN
            q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0\0\1\0\1"
            s.sendto(q, ("127.0.0.1", dns_port))
            try:
                s.recv(512)
            except TimeoutError:
                pass

    dns = threading.Thread(target=dns_loop, daemon=True)
    dns.start()
    try:
        while dumpcap.poll() is None:
            for close in (False, True):
                if dumpcap.poll() is not None:
                    break
                extra = ["-H", "Connection: close"] if close else []
                subprocess.run(["wrk", "-t1", "-c4", "-d2s", *extra, f"http://127.0.0.1:{http_port}/"], capture_output=True)
    finally:
        stop.set()
        for p in procs:
            p.terminate()
            p.wait(10)
    return pcap


def baseline(pcap: Path, output: str) -> float:
    args = ["tshark", "-n", "-r", str(pcap), "-T", output, *tshark_parameters()]
    for name, value in TSHARK_PREFS.items():
        args += ["-o", f"{name}:{value}"]
    started = time.perf_counter()
    subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def agent_run(settings, pcap: Path, in_collector: bool) -> tuple[float, int, int]:
    """(seconds, packets read, records delivered) of one replay."""
    settings = dataclasses.replace(settings, packets=dataclasses.replace(settings.packets, in_collector=in_collector))
    emitter = open_emitter(settings, "packets-bench", (NODE_SPANS if in_collector else PACKETS,))
    agent = PacketAgent.for_files(settings, [pcap], "lo=bench")
    started = time.perf_counter()
    stats = agent.run(emitter)
    emitter.close()
    elapsed = time.perf_counter() - started
    totals = emitter.totals()
    expected = stats.spans if in_collector else stats.packets
    if totals["delivered"] != expected or totals.get("unreadable_packets") or totals.get("unassembled_packets"):
        print(f"  warning: delivered {totals['delivered']} of {expected} records; {totals}")
    return elapsed, stats.packets, totals["delivered"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=200_000, help="packets to record (default 200000)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pcap", type=Path, help="replay this file instead of recording one")
    ap.add_argument("--no-profile", action="store_true")
    args = ap.parse_args()
    for tool in ("tshark", "dumpcap") + (() if args.pcap else ("nginx", "wrk", "dnsmasq")):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found (make setup installs tshark; apt-get install -y nginx-light wrk dnsmasq)")
    workdir = Path(tempfile.mkdtemp(prefix="tracetap-bench-packets-"))
    pcap = args.pcap or record_pcap(workdir, args.packets)
    count = int(subprocess.run(["capinfos", "-c", "-M", str(pcap)], capture_output=True, text=True).stdout.split()[-1])
    print(f"tracetap packet agent benchmark: {pcap} ({count:,} packets, {pcap.stat().st_size / 1e6:.1f} MB), {os.cpu_count()} cpus, "
          f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    from schemas.registry import SchemaRegistry
    from schemas.topics import apply_catalog
    from confluent_kafka.admin import AdminClient
    from schemas.kafka import client_config

    base = load_settings({}, dict(os.environ))
    settings = dataclasses.replace(base, topics=dataclasses.replace(base.topics, prefix=BENCH_PREFIX))
    apply_catalog(AdminClient(client_config(settings.kafka)), SchemaRegistry(settings.registry), BENCH_PREFIX, 1)

    rates: dict[str, list[float]] = {"baseline (tshark -T fields)": [], "tshark -T ek": [], "agent --raw -> Kafka": [],
                                     "agent in-collector -> Kafka": []}
    per_packet = []
    for round_ in range(1, args.rounds + 1):
        fields_s, ek_s = baseline(pcap, "fields"), baseline(pcap, "ek")
        raw_s, raw_read, _ = agent_run(settings, pcap, in_collector=False)
        spans_s, spans_read, spans = agent_run(settings, pcap, in_collector=True)
        for name, seconds in zip(rates, (fields_s, ek_s, raw_s, spans_s)):
            rates[name].append(count / seconds)
        per_packet.append(spans / spans_read)
        print(f"round {round_}: fields {count / fields_s:,.0f}/s, ek {count / ek_s:,.0f}/s, raw {raw_read / raw_s:,.0f}/s "
              f"({raw_read:,} read), in-collector {spans_read / spans_s:,.0f}/s ({spans:,} spans from {spans_read:,} packets)")
    medians = {name: statistics.median(values) for name, values in rates.items()}
    base_rate = medians["baseline (tshark -T fields)"]
    for name, value in medians.items():
        print(f"  {name:30s} {value:10,.0f} packets/s  {value / base_rate:5.2f}x baseline")
    ratio = medians["agent in-collector -> Kafka"] / base_rate
    records = statistics.median(per_packet)
    print(f"in-collector agent/baseline {ratio:.2f} (goal >= 0.80: {'met' if ratio >= 0.8 else 'NOT met'}); "
          f"records to Kafka per packet {records:.3f} (goal <= 0.2: {'met' if records <= 0.2 else 'NOT met'})")
    if not args.no_profile:
        profile_sender(pcap)
    return 0


def profile_sender(pcap: Path, lines_max: int = 50_000) -> None:
    """Where the Python side's time goes: the sender thread's per-line work (parse, summarise, Avro), profiled
    on EK lines tshark wrote beforehand, so tshark's own time is not in it."""
    from producers.packets.summary import PacketSummaryDecoder
    from tracetap.config import TapSpec

    args = ["tshark", "-n", "-r", str(pcap), "-c", str(lines_max), "-T", "ek", *tshark_parameters()]
    for name, value in TSHARK_PREFS.items():
        args += ["-o", f"{name}:{value}"]
    lines = [line for line in subprocess.run(args, capture_output=True, check=True).stdout.splitlines() if not line.startswith(b'{"index"')]
    decoder = PacketSummaryDecoder("bench", [TapSpec("lo", "bench")], schema=PACKETS.schema())
    started = time.perf_counter()
    for line in lines:
        decoder.encode(line)
    per_line_us = (time.perf_counter() - started) / len(lines) * 1e6
    profile = cProfile.Profile()
    profile.enable()
    for line in lines:
        decoder.encode(line)
    profile.disable()
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(10)
    print(f"\n-- sender work per EK line (parse + summarise + Avro, no Kafka): {per_line_us:.1f} us "
          f"= {1e6 / per_line_us:,.0f} lines/s on one core; cProfile of {len(lines):,} lines:")
    print("\n".join(line for line in out.getvalue().splitlines()[6:22] if line.strip()))


if __name__ == "__main__":
    sys.exit(main())
