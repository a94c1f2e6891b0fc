"""tshark's EK output, restricted to the fields we need (`-T ek -e ...`), to PacketSummary records.

Each EK line is {"timestamp": ..., "layers": {"ip_src": ["10.0.0.1"], ...}}: field names with dots
turned to underscores, every value a list of strings. A field tshark did not dissect is absent, and
its record field is null.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

try:  # orjson parses tshark's lines about twice as fast; json is the fallback
    from orjson import loads as _json_loads
except ImportError:  # pragma: no cover - orjson is a dependency, this keeps a broken install working
    from json import loads as _json_loads

from schemas.serde import FlatRecordWriter
from tracetap.config import TapSpec
from tracetap.flow import Endpoint, flow_id
from tracetap.redact import DEFAULT_RULES, RedactionRules, Redactors, redact_text

# What `tracetap agent packets` asks tshark for; nothing else is dissected into the output.
TSHARK_FIELDS = (
    "frame.time_epoch", "frame.interface_name", "frame.len", "frame.cap_len",
    "ip.version", "ip.src", "ip.dst", "ip.id", "ip.ttl", "ipv6.src", "ipv6.dst", "ipv6.hlim",
    "tcp.srcport", "tcp.dstport", "tcp.flags", "tcp.seq_raw", "tcp.ack_raw", "tcp.window_size_value", "tcp.len",
    "udp.srcport", "udp.dstport", "udp.length", "icmp.type", "icmpv6.type",
    "http.request.method", "http.request.uri", "http.host", "http.response.code",
    "dns.id", "dns.flags.response", "dns.qry.name", "dns.qry.type", "dns.flags.rcode", "dns.count.answers",
    "tls.handshake.extensions_server_name", "mysql.command",
    "_ws.malformed", "_ws.short",
)
# With them, in-collector: the payload, which the core's protocol modules read as the eBPF agent's syscalls.
PAYLOAD_FIELDS = ("tcp.payload", "udp.payload")
# tshark preferences: no TCP reassembly, so an HTTP status is reported on the segment that carries it
# (the one whose sequence number matches the server's write), and no sequence analysis we do not emit.
TSHARK_PREFS = {"tcp.desegment_tcp_streams": "FALSE", "tcp.analyze_sequence_numbers": "FALSE", "http.desegment_body": "FALSE"}

DNS_TYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV", 35: "NAPTR",
             41: "OPT", 64: "SVCB", 65: "HTTPS", 255: "ANY"}
DNS_RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED", 6: "YXDOMAIN",
              7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE"}
MYSQL_COMMANDS = {1: "QUIT", 2: "INIT_DB", 3: "QUERY", 4: "FIELD_LIST", 14: "PING", 22: "STMT_PREPARE", 23: "STMT_EXECUTE",
                  25: "STMT_CLOSE", 26: "STMT_RESET"}


class UnreadableLine(ValueError):
    """tshark printed something that is not an EK packet line."""


class PacketSummaryDecoder:
    """EK lines from one capture (one network namespace) to (flow key, PacketSummary record)."""

    def __init__(self, host: str, taps: list[TapSpec], default_tap: TapSpec | None = None,
                 schema: dict[str, Any] | None = None, rules: RedactionRules = DEFAULT_RULES, payloads: bool = False) -> None:
        self._host = host
        self._rules = rules  # the request target may carry credentials (userinfo, access_token=...)
        # In-collector, each packet's payload goes to the core (`payload`, not a PacketSummary field), redacted per flow
        # direction as the eBPF agent's syscalls are: no secret reaches a span, whichever way the bytes were cut.
        self._redactors = Redactors(rules) if payloads else None
        self._writer = FlatRecordWriter(schema) if schema else None
        self._taps = {tap.interface: tap for tap in taps}
        self._default_tap = default_tap or (taps[0] if len(taps) == 1 else None)
        self._clients: dict[tuple[str, str], str] = {}  # (interface, flow key) -> the flow's client address, for pod-nic taps

    def encode(self, line: bytes) -> tuple[str | None, bytes, int]:
        """(flow key, Avro body, capture time) for one EK line: the emitter's hot path (needs the schema at construction)."""
        assert self._writer is not None, "PacketSummaryDecoder.encode needs the PacketSummary schema"
        key, record = self.decode(line)
        return key, self._writer.body(record), record["time"]

    def decode(self, line: bytes) -> tuple[str | None, dict[str, Any]]:
        try:
            layers = _json_loads(line)["layers"]
        except (ValueError, KeyError, TypeError) as exc:
            raise UnreadableLine(f"not an EK packet line ({type(exc).__name__}): {line[:80]!r}") from None
        return self.summarize(layers)

    def summarize(self, layers: Mapping[str, list[str]]) -> tuple[str | None, dict[str, Any]]:
        def first(name: str) -> str | None:
            values = layers.get(name)
            return values[0] if values else None

        def number(name: str, base: int = 10) -> int | None:
            text = first(name)
            if text is None:
                return None
            try:
                return int(text, 16 if text.startswith("0x") else base)
            except ValueError:
                return None

        interface = first("frame_interface_name")
        tap = self._taps.get(interface or "") or self._default_tap
        version = number("ip_version") or (6 if "ipv6_src" in layers else None)
        src_ip = first("ip_src") or first("ipv6_src")
        dst_ip = first("ip_dst") or first("ipv6_dst")
        if "tcp_srcport" in layers:
            l4, sport, dport = "TCP", number("tcp_srcport"), number("tcp_dstport")
            payload = number("tcp_len") or 0
        elif "udp_srcport" in layers:
            l4, sport, dport = "UDP", number("udp_srcport"), number("udp_dstport")
            payload = max((number("udp_length") or 8) - 8, 0)
        else:
            l4, sport, dport = ("ICMP" if "icmp_type" in layers or "icmpv6_type" in layers else "OTHER"), None, None
            payload = 0
        frame_bytes = number("frame_len") or 0
        flags = number("tcp_flags")
        qtype, rcode, command = number("dns_qry_type"), number("dns_flags_rcode"), number("mysql_command")
        dns_response = first("dns_flags_response")
        malformed = first("_ws_malformed")
        record = {
            "host": self._host,
            "time": _epoch_ns(first("frame_time_epoch")),
            "interface": interface or (tap.interface if tap else "unknown"),
            "tap_point": tap.tap_point if tap else "unlabelled",
            "workload": tap.workload if tap else None,
            "netns": tap.netns if tap else None,
            "ip_version": version,
            "l4_protocol": l4,
            "src_ip": src_ip, "src_port": sport, "dst_ip": dst_ip, "dst_port": dport,
            "ip_id": number("ip_id"),
            "ttl": number("ip_ttl") if "ip_ttl" in layers else number("ipv6_hlim"),
            "tcp_flags": flags & 0xFF if flags is not None else None,
            "tcp_seq": number("tcp_seq_raw"), "tcp_ack": number("tcp_ack_raw"), "tcp_window": number("tcp_window_size_value"),
            "payload_bytes": payload,
            "frame_bytes": frame_bytes,
            "http_method": first("http_request_method"), "http_uri": redact_text(first("http_request_uri"), self._rules), "http_host": first("http_host"),
            "http_status": number("http_response_code"),
            "dns_id": number("dns_id"),
            "dns_is_response": None if dns_response is None else dns_response in ("1", "True", "true"),
            "dns_query_name": first("dns_qry_name"),
            "dns_query_type": None if qtype is None else DNS_TYPES.get(qtype, f"TYPE{qtype}"),
            "dns_rcode": None if rcode is None else DNS_RCODES.get(rcode, f"RCODE{rcode}"),
            "dns_answer_count": number("dns_count_answers"),
            "tls_sni": first("tls_handshake_extensions_server_name"),
            "app_command": None if command is None else MYSQL_COMMANDS.get(command, f"MYSQL_{command}"),
            "truncated": "_ws_short" in layers or (number("frame_cap_len") or frame_bytes) < frame_bytes,
            "malformed": malformed is not None,
            "malformed_reason": malformed.strip("[]") if malformed else None,
        }
        key = None
        if src_ip and dst_ip:
            key = flow_id(l4, Endpoint(src_ip, sport or 0), Endpoint(dst_ip, dport or 0))
            if tap is not None and tap.address is not None:
                record["tap_point"] = self._pod_side(tap, key, record, flags)
        if self._redactors is not None:
            record["payload"] = self._payload(layers, record)
        return key, record

    def _payload(self, layers: Mapping[str, list[str]], record: dict[str, Any]) -> bytes:
        hexed = layers.get("tcp_payload") or layers.get("udp_payload")
        try:
            payload = bytes.fromhex(hexed[0].replace(":", "")) if hexed else b""
        except ValueError:
            payload = b""
        if not payload:
            return payload
        assert self._redactors is not None
        stream = (record["interface"], record["l4_protocol"], record["src_ip"], record["src_port"], record["dst_ip"], record["dst_port"])
        masked, _ = self._redactors.redact(stream, payload, record["payload_bytes"])
        return masked

    def _pod_side(self, tap: TapSpec, key: str, record: dict[str, Any], flags: int | None) -> str:
        """On a workload's own NIC: client-nic for the flows it started, server-nic for those it serves. The client
        is the sender of a request (or of a SYN), the receiver of a response (or of a SYN-ACK); other packets take
        their flow's last answer."""
        if record["http_method"] is not None or record["dns_is_response"] is False or (flags is not None and flags & 0x12 == 0x02):
            client = record["src_ip"]
        elif record["http_status"] is not None or record["dns_is_response"] is True or (flags is not None and flags & 0x12 == 0x12):
            client = record["dst_ip"]
        else:
            client = self._clients.get((record["interface"], key))
        if client is None:
            return tap.tap_point  # not known yet (a capture that starts mid-flow): no request pairs on it
        if len(self._clients) >= 65_536:
            self._clients.clear()
        self._clients[(record["interface"], key)] = client
        return "client-nic" if client == tap.address else "server-nic"


def _epoch_ns(text: str | None) -> int:
    """'1795613964.996270229' to integer nanoseconds, without float rounding."""
    if not text:
        return 0
    seconds, _, fraction = text.partition(".")
    return int(seconds) * 1_000_000_000 + int((fraction + "000000000")[:9])
