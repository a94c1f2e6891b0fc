"""tracetap's one typed configuration: sections of frozen dataclasses, built from a file's
mapping plus environment overrides (`TRACETAP_<SECTION>__<FIELD>`).

Pure: the CLI reads the file and the environment and hands both here; components receive a section.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from tracetap.errors import ConfigError
from tracetap.redact import SWITCHES as REDACTION_SWITCHES, RedactionRules

ENV_PREFIX = "TRACETAP_"
ENV_SEPARATOR = "__"


class Secret(str):
    """A credential: usable as a string, never shown by repr() or in `config show`."""

    def __repr__(self) -> str:
        return "Secret('****')"

    def reveal(self) -> str:
        """The plain text, for the one call that hands it to a client library."""
        return str.__str__(self)


KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "OAUTHBEARER")


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """Kafka client settings; schemas/kafka.py turns them into librdkafka, aiokafka and Java client properties."""

    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    ssl_ca_location: Path | None = None
    ssl_certificate_location: Path | None = None
    ssl_key_location: Path | None = None
    ssl_key_password: Secret | None = None
    # Any other librdkafka property, passed through unchanged (e.g. {"linger.ms": "20"}).
    client_properties: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        if not self.bootstrap_servers.strip():
            raise ConfigError("kafka.bootstrap_servers", "must name at least one host:port")
        if self.security_protocol not in KAFKA_SECURITY_PROTOCOLS:
            raise ConfigError("kafka.security_protocol", f"{self.security_protocol!r} is not one of {', '.join(KAFKA_SECURITY_PROTOCOLS)}")
        uses_sasl = self.security_protocol.startswith("SASL_")
        if uses_sasl and self.sasl_mechanism is None:
            raise ConfigError("kafka.sasl_mechanism", f"required with security_protocol={self.security_protocol}")
        if self.sasl_mechanism is not None and self.sasl_mechanism not in KAFKA_SASL_MECHANISMS:
            raise ConfigError("kafka.sasl_mechanism", f"{self.sasl_mechanism!r} is not one of {', '.join(KAFKA_SASL_MECHANISMS)}")
        if uses_sasl and self.sasl_mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            if not self.sasl_username or not self.sasl_password:
                raise ConfigError("kafka.sasl_username", f"{self.sasl_mechanism} needs sasl_username and sasl_password (set TRACETAP_KAFKA__SASL_PASSWORD)")
        if bool(self.ssl_certificate_location) != bool(self.ssl_key_location):
            raise ConfigError("kafka.ssl_certificate_location", "a client certificate needs both ssl_certificate_location and ssl_key_location")


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    """A Confluent-compatible schema registry (Confluent, Apicurio's ccompat API, Redpanda, Karapace)."""

    url: str = "http://127.0.0.1:8081/apis/ccompat/v7"
    basic_auth_user_info: Secret | None = None  # "user:password"
    ssl_ca_location: Path | None = None
    ssl_certificate_location: Path | None = None
    ssl_key_location: Path | None = None
    # Register missing schemas on first use; turn off where a separate team owns the registry.
    auto_register: bool = True

    def validate(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError("registry.url", f"{self.url!r} must start with http:// or https://")
        if self.basic_auth_user_info is not None and ":" not in self.basic_auth_user_info:
            raise ConfigError("registry.basic_auth_user_info", "must be 'user:password'")


@dataclass(frozen=True, slots=True)
class ElasticsearchSettings:
    hosts: list[str] = field(default_factory=lambda: ["http://127.0.0.1:9200"])
    api_key: Secret | None = None
    username: str | None = None
    password: Secret | None = None
    ca_certs: Path | None = None
    verify_certs: bool = True
    request_timeout_s: float = 30.0
    index_prefix: str = "tracetap"
    replicas: int = 0  # per index; 0 suits one node, 1 a cluster
    bulk_actions: int = 500  # documents per bulk request
    bulk_concurrency: int = 2  # bulk requests in flight at once
    # Days each record type is kept (daily indices older than this are deleted by the sink); 0 keeps them forever.
    retention_days: dict[str, int] = field(default_factory=lambda: {"spans": 7, "paths": 7, "metrics.red": 30,
                                                                    "metrics.network": 30, "alerts": 90, "profiles": 7})

    def validate(self) -> None:
        if not self.hosts:
            raise ConfigError("elasticsearch.hosts", "must name at least one URL")
        for host in self.hosts:
            if not host.startswith(("http://", "https://")):
                raise ConfigError("elasticsearch.hosts", f"{host!r} must start with http:// or https://")
        if self.api_key and (self.username or self.password):
            raise ConfigError("elasticsearch.api_key", "set either api_key or username/password, not both")
        if bool(self.username) != bool(self.password):
            raise ConfigError("elasticsearch.username", "basic auth needs both username and password")
        if self.request_timeout_s <= 0:
            raise ConfigError("elasticsearch.request_timeout_s", "must be > 0")
        for name in ("replicas", "bulk_actions", "bulk_concurrency"):
            if getattr(self, name) < (0 if name == "replicas" else 1):
                raise ConfigError(f"elasticsearch.{name}", "must be >= 1" if name != "replicas" else "must be >= 0")
        for kind, days in self.retention_days.items():
            if days < 0:
                raise ConfigError(f"elasticsearch.retention_days.{kind}", "must be >= 0 (0 keeps the indices forever)")


@dataclass(frozen=True, slots=True)
class TopicSettings:
    # Prepended to every catalog name, e.g. "tracetap." + "spans".
    prefix: str = "tracetap."
    replication_factor: int = 1

    def validate(self) -> None:
        if self.replication_factor < 1:
            raise ConfigError("topics.replication_factor", "must be >= 1")


@dataclass(frozen=True, slots=True)
class StackSettings:
    """The local stack: real servers as processes, all state under one directory."""

    # None: /var/lib/tracetap for root, else $XDG_STATE_HOME/tracetap (resolved by the CLI).
    state_dir: Path | None = None
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    registry_port: int = 8081
    elasticsearch_port: int = 9200
    elasticsearch_transport_port: int = 9300
    kafka_heap_mb: int = 1024
    registry_heap_mb: int = 512
    elasticsearch_heap_mb: int = 1024
    start_timeout_s: float = 180.0
    java_home: Path | None = None

    def validate(self) -> None:
        for name in ("kafka_port", "kafka_controller_port", "registry_port", "elasticsearch_port", "elasticsearch_transport_port"):
            port = getattr(self, name)
            if not 1 <= port <= 65535:
                raise ConfigError(f"stack.{name}", f"{port} is not a TCP port (1-65535)")
        ports = [self.kafka_port, self.kafka_controller_port, self.registry_port, self.elasticsearch_port, self.elasticsearch_transport_port]
        if len(set(ports)) != len(ports):
            raise ConfigError("stack", f"the ports must all differ, got {ports}")
        for name in ("kafka_heap_mb", "registry_heap_mb", "elasticsearch_heap_mb"):
            if getattr(self, name) < 128:
                raise ConfigError(f"stack.{name}", "must be at least 128")
        if self.start_timeout_s <= 0:
            raise ConfigError("stack.start_timeout_s", "must be > 0")


REDACTION_RULES = REDACTION_SWITCHES  # the rules `agent.redact_disable` can name


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """Node agents: what to capture, what to leave alone, how much to buffer."""

    host: str | None = None  # node name in every event; None: the machine's hostname
    payload_bytes: int = 1024  # payload prefix captured per syscall, and per message head for HTTP/1 and Redis
    ring_buffer_pages: int = 2048  # BPF ring buffer size in 4 KiB pages (a power of two)
    buffer_records: int = 100_000  # in-process buffer that rides out a broker outage
    stats_interval_s: float = 10.0
    resource_interval_s: float = 10.0  # full rescan of processes, namespaces and addresses
    exclude_pids: list[int] = field(default_factory=list)
    exclude_ports: list[int] = field(default_factory=list)
    # The pipeline's own Kafka, registry and Elasticsearch ports are excluded in the kernel by default.
    exclude_pipeline_ports: bool = True
    include_netns: list[str] = field(default_factory=list)  # `ip netns` names or inode numbers; empty: all
    exclude_comms: list[str] = field(default_factory=list)  # process names (comm, 15 characters at most)
    include_cgroups: list[str] = field(default_factory=list)  # cgroup v2 directories (relative: under /sys/fs/cgroup); empty: all
    redact_disable: list[str] = field(default_factory=list)  # names from REDACTION_RULES
    redact_headers: list[str] = field(default_factory=list)  # more credential header names to mask
    redact_keys: list[str] = field(default_factory=list)  # more secret query, form and JSON keys to mask
    # Assemble spans on the node (the stream jobs' flow stage) and send one per request to raw.spans; false: every
    # syscall's data to raw.socket-data (forensics, replays), assembled by the stream jobs.
    in_collector: bool = True
    # CPU the eBPF agent may use, in cores: a CFS quota on its own cgroup, and the budget its flow shedding
    # keeps to. None: no quota (flows are still shed when events are lost).
    cpu_budget_cores: float | None = None
    # Hook syscalls with the two raw tracepoints (sys_enter/sys_exit, x86_64) instead of one tracepoint per
    # syscall and direction: cheaper per call. false, or another architecture: per-syscall tracepoints.
    raw_syscall_hooks: bool = True
    # Payloads of sockets whose first bytes no parser could claim (forensics). false: after those first bytes,
    # such sockets' events carry byte counts only (they give no spans either way).
    unknown_protocol_payloads: bool = False
    # Payloads of a message's later syscalls on TCP (a body, the rest of a result set: syscalls in the same direction
    # as the last that do not start a message). false: byte counts only; the spans are the same.
    continuation_payloads: bool = False
    # TLS plaintext: uprobes on OpenSSL's SSL_read/SSL_write[_ex] in every libssl the node's processes map; the
    # ciphertext syscalls of those calls are not sent. Statically linked TLS (Go, BoringSSL, Java) is not seen.
    tls_plaintext: bool = True
    tls_rescan_s: float = 5.0  # how often processes started since the last look are checked for a libssl not probed yet
    # Profiles to the profiles topic, by process, thread and stack, one record per process, kind and window: on-CPU
    # samples (cpu-clock, profile_hz per CPU), and with profile_off_cpu the time threads spend blocked (blocks of at
    # least profile_min_block_ms). Off-CPU costs about 2 us per context switch in which a thread sleeps, so it is
    # opt-in: on a node switching 25,000 times a second it takes 5% of a core (include_cgroups narrows it in the kernel).
    profiling: bool = True
    profile_hz: int = 99
    profile_off_cpu: bool = False
    profile_window_s: float = 10.0
    profile_min_block_ms: float = 1.0

    def redaction_rules(self) -> RedactionRules:
        return RedactionRules(**{rule: False for rule in self.redact_disable}, extra_headers=tuple(self.redact_headers),
                              extra_keys=tuple(self.redact_keys))

    def validate(self) -> None:
        if not 16 <= self.payload_bytes <= 8192:
            raise ConfigError("agent.payload_bytes", f"{self.payload_bytes} is not within 16..8192")
        pages = self.ring_buffer_pages
        if pages < 8 or pages & (pages - 1):
            raise ConfigError("agent.ring_buffer_pages", f"{pages} is not a power of two >= 8")
        if self.buffer_records < 1:
            raise ConfigError("agent.buffer_records", "must be >= 1")
        if not 0.1 <= self.tls_rescan_s <= 3600:
            raise ConfigError("agent.tls_rescan_s", f"{self.tls_rescan_s} is not within 0.1..3600 seconds")
        if not 1 <= self.profile_hz <= 10_000:
            raise ConfigError("agent.profile_hz", f"{self.profile_hz} is not within 1..10000 samples per second")
        if not 0.5 <= self.profile_window_s <= 3600:
            raise ConfigError("agent.profile_window_s", f"{self.profile_window_s} is not within 0.5..3600 seconds")
        if not 0.01 <= self.profile_min_block_ms <= 60_000:
            raise ConfigError("agent.profile_min_block_ms", f"{self.profile_min_block_ms} is not within 0.01..60000 ms")
        if self.cpu_budget_cores is not None and not 0.01 <= self.cpu_budget_cores <= 1024:
            raise ConfigError("agent.cpu_budget_cores", f"{self.cpu_budget_cores} is not within 0.01..1024 cores")
        for port in self.exclude_ports:
            if not 1 <= port <= 65535:
                raise ConfigError("agent.exclude_ports", f"{port} is not a TCP/UDP port")
        unknown = set(self.redact_disable) - set(REDACTION_RULES)
        if unknown:
            raise ConfigError("agent.redact_disable", f"unknown rules {sorted(unknown)}; known: {', '.join(REDACTION_RULES)}")


@dataclass(frozen=True, slots=True)
class TapSpec:
    """One capture interface: `interface[@netns]=tap_point[/workload[@address]]`, e.g. `veth-c@pod-client=client-nic/frontend`.

    `pod-nic/<workload>@<address>` taps a workload's own NIC, which carries its calls out (client side) and the
    requests it serves (server side): each flow's packets are labelled client-nic or server-nic by whether
    the workload's address is the client of that flow."""

    interface: str
    tap_point: str
    netns: str | None = None  # an `ip netns` name; None: the agent's own namespace
    workload: str | None = None
    address: str | None = None  # the workload's address, for a pod-nic tap

    @classmethod
    def parse(cls, text: str) -> TapSpec:
        where, sep, label = text.partition("=")
        interface, _, netns = where.strip().partition("@")
        tap_point, _, owner = label.strip().partition("/")
        workload, _, address = owner.partition("@")
        if not sep or not interface or not tap_point:
            raise ConfigError("packets.taps", f"{text!r} is not interface[@netns]=tap_point[/workload[@address]], e.g. eth0=node-nic")
        if tap_point == POD_NIC and not address:
            raise ConfigError("packets.taps", f"{text!r}: a pod-nic tap needs the workload's address, e.g. veth1=pod-nic/web@10.77.0.10")
        return cls(interface, tap_point, netns or None, workload or None, address or None)


POD_NIC = "pod-nic"


@dataclass(frozen=True, slots=True)
class PacketSettings:
    """The packet agent (tshark through pyshark); host, buffering, stats and port exclusions come from [agent]."""

    taps: list[str] = field(default_factory=list)  # TapSpec texts; the agent needs one at least for a live capture
    capture_filter: str = ""  # BPF, ANDed with the exclusion of the pipeline's own ports
    snaplen: int = 1024  # bytes kept per packet; HTTP and DNS headers fit, bodies are cut (and flagged truncated)
    tshark_path: Path | None = None  # None: tshark on PATH
    # Assemble NIC spans on the node and send one per request to raw.spans; false: one summary per packet to raw.packets
    # (for security teams, forensics and replays), assembled by the stream jobs.
    in_collector: bool = True

    def tap_specs(self) -> list[TapSpec]:
        return [TapSpec.parse(text) for text in self.taps]

    def validate(self) -> None:
        specs = self.tap_specs()
        seen = set()
        for spec in specs:
            if (spec.netns, spec.interface) in seen:
                raise ConfigError("packets.taps", f"{spec.interface}@{spec.netns or 'host'} is listed twice")
            seen.add((spec.netns, spec.interface))
        if not 64 <= self.snaplen <= 262_144:
            raise ConfigError("packets.snaplen", f"{self.snaplen} is not within 64..262144")


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """The stream jobs (Faust and Flink): the core's event-time and window tunables, then each engine's own.
    A command-line flag of `tracetap streams` overrides the value here for one run."""

    window_s: float = 10.0  # RED, network and DNS metric windows
    slow_ms: float = 1000.0  # a request slower than this raises SLOW_REQUEST
    trace_gap_s: float = 5.0  # event time after a trace's last span before it is complete and emitted
    max_out_of_order_s: float = 2.0  # the watermark's bound: how far behind the latest event time an event may come
    allowed_lateness_s: float = 5.0  # past the watermark, still counted; later still is dead-lettered as LATE
    request_timeout_s: float = 30.0  # a request without a response becomes a TIMEOUT span after this
    idle_flush_s: float = 10.0  # no input for this long (processing time): emit what waits for the watermark
    faust_batch_events: int = 1000  # records a Faust agent takes per batch ...
    faust_batch_within_s: float = 0.5  # ... or what arrived within this long
    flink_parallelism: int = 2
    flink_checkpoint_interval_s: float = 10.0  # 0: no checkpoints (then at-least-once, not transactional)
    flink_source_idle_timeout_s: float = 60.0  # a partition without records this long stops holding the watermark back (README: why not less)
    flink_bundle_size: int = 100_000  # records a Python operator takes before it ends a bundle (and commits its state) ...
    flink_bundle_time_s: float = 1.0  # ... or this long
    flink_watermark_interval_s: float = 1.0  # how often the sources emit a watermark, and the keyed stages' tick

    def validate(self) -> None:
        for name in ("window_s", "slow_ms", "trace_gap_s", "request_timeout_s", "idle_flush_s", "faust_batch_within_s",
                     "flink_source_idle_timeout_s", "flink_bundle_time_s", "flink_watermark_interval_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"streams.{name}", "must be > 0")
        for name in ("max_out_of_order_s", "allowed_lateness_s", "flink_checkpoint_interval_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"streams.{name}", "must be >= 0")
        for name in ("faust_batch_events", "flink_parallelism", "flink_bundle_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"streams.{name}", "must be >= 1")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str = "INFO"
    format: str = "text"

    def validate(self) -> None:
        if self.level.upper() not in LOG_LEVELS:
            raise ConfigError("log.level", f"{self.level!r} is not one of {', '.join(LOG_LEVELS)}")
        if self.format not in LOG_FORMATS:
            raise ConfigError("log.format", f"{self.format!r} is not one of {', '.join(LOG_FORMATS)}")


@dataclass(frozen=True, slots=True)
class Settings:
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    elasticsearch: ElasticsearchSettings = field(default_factory=ElasticsearchSettings)
    topics: TopicSettings = field(default_factory=TopicSettings)
    stack: StackSettings = field(default_factory=StackSettings)
    agent: AgentSettings = field(default_factory=AgentSettings)
    packets: PacketSettings = field(default_factory=PacketSettings)
    streams: StreamSettings = field(default_factory=StreamSettings)
    log: LogSettings = field(default_factory=LogSettings)

    def validate(self) -> None:
        for section in dataclasses.fields(self):
            getattr(self, section.name).validate()


def load_settings(file_data: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build and validate Settings: defaults, then the file's values, then TRACETAP_* variables."""
    merged: dict[str, dict[str, Any]] = {}
    for section, values in (file_data or {}).items():
        if section not in _SECTIONS:
            raise ConfigError(section, f"unknown section; known: {', '.join(_SECTIONS)}")
        if not isinstance(values, Mapping):
            raise ConfigError(section, "must be a table of settings")
        merged.setdefault(section, {}).update(values)
    for name, value in (environ or {}).items():
        if not name.startswith(ENV_PREFIX) or ENV_SEPARATOR not in name:
            continue
        section, _, key = name[len(ENV_PREFIX):].lower().partition(ENV_SEPARATOR)
        if section not in _SECTIONS:
            raise ConfigError(name, f"unknown section {section!r}; known: {', '.join(_SECTIONS)}")
        merged.setdefault(section, {})[key] = _EnvText(value)
    sections = {name: _build_section(name, cls, merged.get(name, {})) for name, cls in _SECTIONS.items()}
    settings = Settings(**sections)
    settings.validate()
    return settings


def describe(settings: Settings) -> dict[str, dict[str, Any]]:
    """The effective settings as plain data for display, with secrets masked."""
    out: dict[str, dict[str, Any]] = {}
    for section in dataclasses.fields(settings):
        values = {}
        for f in dataclasses.fields(getattr(settings, section.name)):
            value = getattr(getattr(settings, section.name), f.name)
            if isinstance(value, Secret):
                value = "****"
            elif isinstance(value, Path):
                value = str(value)
            values[f.name] = value
        out[section.name] = values
    return out


class _EnvText(str):
    """A value that came from an environment variable, so it is text to be parsed."""


_SECTIONS: dict[str, type] = typing.get_type_hints(Settings)


def _build_section(section: str, cls: type, values: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, raw in values.items():
        if key not in known:
            close = [k for k in known if k.startswith(key[:4])]
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{section}.{key}", f"unknown setting{hint}")
        kwargs[key] = _coerce(f"{section}.{key}", hints[key], raw)
    return cls(**kwargs)


def _coerce(name: str, hint: Any, raw: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if raw is None or (isinstance(raw, _EnvText) and raw == ""):
            return None
        return _coerce(name, args[0], raw)
    from_env = isinstance(raw, _EnvText)
    try:
        if hint is bool:
            if isinstance(raw, bool):
                return raw
            if from_env and raw.lower() in ("1", "true", "yes", "on"):
                return True
            if from_env and raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{raw!r} is not a boolean (true/false)")
        if hint in (int, float):
            if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
                raise ValueError(f"{raw!r} is not a number")
            kind = "a whole number" if hint is int else "a number"
            if hint is int and isinstance(raw, float):
                raise ValueError(f"{raw!r} is not {kind}")
            try:
                return hint(raw)
            except ValueError:
                raise ValueError(f"{raw!r} is not {kind}") from None
        if hint in (str, Secret, Path):
            if not isinstance(raw, str):
                raise ValueError(f"{raw!r} is not a string")
            return hint(raw)
        if origin is list:
            item = typing.get_args(hint)[0]
            if from_env:
                raw = [part.strip() for part in raw.split(",") if part.strip()]
            if not isinstance(raw, list):
                raise ValueError(f"{raw!r} is not a list")
            if item is int:
                try:
                    if any(isinstance(x, (bool, float)) for x in raw):
                        raise ValueError
                    return [int(x) for x in raw]
                except (ValueError, TypeError):
                    raise ValueError(f"{raw!r} is not a list of whole numbers") from None
            if not all(isinstance(x, str) for x in raw):
                raise ValueError(f"{raw!r} is not a list of strings")
            return list(raw)
        if origin is dict:
            if from_env:
                raw = json.loads(raw)
            if not isinstance(raw, Mapping):
                raise ValueError(f"{raw!r} is not a table")
            value_type = typing.get_args(hint)[1]
            return {str(k): _coerce(f"{name}.{k}", value_type, v) if value_type is not str else str(v) for k, v in raw.items()}
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        raise ConfigError(name, str(exc)) from None
    raise ConfigError(name, f"unsupported setting type {hint!r}")
