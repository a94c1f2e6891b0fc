"""`tracetap`: the command tree. Each command reads the settings once and hands sections to the edges.

Exit codes: 0 success; 1 failure; 2 bad usage; 69 a server is unavailable (or an agent's records did not
all reach it); 78 bad configuration (settings, credentials, missing topics); 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import json
import logging
import os
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli import logs
from infra.demo_services import SCENARIOS
from tracetap.config import Settings, describe, load_settings
from tracetap.errors import ConfigError, NotProvisioned, ServerUnavailable, TracetapError

if TYPE_CHECKING:
    from producers.emitter import Emitter

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69  # sysexits EX_UNAVAILABLE
EXIT_CONFIG = 78  # sysexits EX_CONFIG
EXIT_INTERRUPTED = 130

log = logging.getLogger("tracetap.cli")


def read_settings(config_path: str | None, environ: dict[str, str]) -> Settings:
    """The settings from --config (or $TRACETAP_CONFIG, or ./tracetap.toml if present) plus TRACETAP_* variables."""
    path = config_path or environ.get("TRACETAP_CONFIG")
    if path is None and Path("tracetap.toml").is_file():
        path = "tracetap.toml"
    data = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError("--config", f"{path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from None
    return load_settings(data, environ)


def state_dir(settings: Settings, environ: dict[str, str]) -> Path:
    """stack.state_dir, or /var/lib/tracetap for root, or $XDG_STATE_HOME/tracetap: never inside the repo."""
    if settings.stack.state_dir is not None:
        return settings.stack.state_dir.expanduser().resolve()
    if os.geteuid() == 0:
        return Path("/var/lib/tracetap")
    base = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "tracetap"


def _progress(line: str) -> None:
    print(f"  {line}", flush=True)


# stack ------------------------------------------------------------------------------------------
def _stack(settings: Settings, args: argparse.Namespace):
    from infra.stack import LocalStack

    return LocalStack(settings.stack, state_dir(settings, dict(os.environ)), progress=_progress)


def cmd_stack_install(settings: Settings, args: argparse.Namespace) -> int:
    stack = _stack(settings, args)
    if not stack.install():
        print(f"servers already installed under {stack.state / 'dist'}")
    return EXIT_OK


def cmd_stack_up(settings: Settings, args: argparse.Namespace) -> int:
    import time

    started = time.monotonic()
    stack = _stack(settings, args)
    print(f"starting the local stack (state in {stack.state})", flush=True)
    statuses = stack.up()
    _print_status(statuses)
    print(f"stack up in {time.monotonic() - started:.1f} s")
    return EXIT_OK


def cmd_stack_down(settings: Settings, args: argparse.Namespace) -> int:
    stopped = _stack(settings, args).down()
    print("stopped: " + ", ".join(stopped) if stopped else "nothing was running")
    return EXIT_OK


def cmd_stack_status(settings: Settings, args: argparse.Namespace) -> int:
    statuses = _stack(settings, args).status()
    if args.json:
        print(json.dumps([{"component": s.name, "ports": s.ports, "pid": s.pid, "healthy": s.health.ok,
                           "detail": s.health.detail, "url": s.url} for s in statuses]))
    else:
        _print_status(statuses)
    return EXIT_OK if all(s.health.ok for s in statuses) else EXIT_UNAVAILABLE


def cmd_stack_logs(settings: Settings, args: argparse.Namespace) -> int:
    from infra.stack import stream_log

    files = _stack(settings, args).log_files()
    names = [args.component] if args.component else list(files)
    for name in names:
        if len(names) > 1:
            print(f"==> {files[name]} <==")
        stream_log(files[name], follow=args.follow and len(names) == 1, lines=args.lines)
    return EXIT_OK


def _print_status(statuses) -> None:
    print(f"{'component':<14} {'ports':<12} {'pid':>7}  {'health':<8} detail")
    for s in statuses:
        ports = ",".join(str(p) for p in s.ports)
        print(f"{s.name:<14} {ports:<12} {s.pid or '-':>7}  {'up' if s.health.ok else 'DOWN':<8} {s.health.detail}  {s.url}")


# topics -----------------------------------------------------------------------------------------
def cmd_topics_apply(settings: Settings, args: argparse.Namespace) -> int:
    from confluent_kafka.admin import AdminClient

    from schemas.kafka import client_config
    from schemas.preflight import check_kafka
    from schemas.registry import SchemaRegistry
    from schemas.topics import apply_catalog

    check_kafka(settings.kafka)
    admin = AdminClient(client_config(settings.kafka))
    results = apply_catalog(admin, SchemaRegistry(settings.registry), settings.topics.prefix, settings.topics.replication_factor)
    for r in results:
        print(f"  {r.topic:<34} {r.action:<10} schema id {r.schema_id}")
    return EXIT_OK


def cmd_topics_list(settings: Settings, args: argparse.Namespace) -> int:
    from schemas.catalog import CATALOG, markdown_table

    if args.markdown:
        print(markdown_table(settings.topics.prefix))
        return EXIT_OK
    for spec in CATALOG:
        print(f"{spec.full_name(settings.topics.prefix):<34} {spec.partitions:>2}p  {spec.cleanup_policy:<8} {spec.value_schema:<30} {spec.description}")
    return EXIT_OK


# config -----------------------------------------------------------------------------------------
def cmd_config_show(settings: Settings, args: argparse.Namespace) -> int:
    shown = describe(settings)
    shown["stack"]["state_dir"] = str(state_dir(settings, dict(os.environ)))
    print(json.dumps(shown, indent=2))
    return EXIT_OK


# sink and demo ------------------------------------------------------------------------------------
def cmd_sink_elasticsearch(settings: Settings, args: argparse.Namespace) -> int:
    from sinks.elasticsearch import run_sink

    report = run_sink(settings, topics=args.topic or None, group_id=args.group, stop_when_idle_s=args.exit_when_idle)
    print(report.summary())
    return EXIT_OK


def cmd_kibana_import(settings: Settings, args: argparse.Namespace) -> int:
    from sinks.kibana import import_saved_objects, saved_objects, to_ndjson

    objects = saved_objects(settings.elasticsearch.index_prefix)
    answer = import_saved_objects(args.url, to_ndjson(objects), settings.elasticsearch, space=args.space)
    print(f"imported {answer.get('successCount', len(objects))} saved objects into {args.url}"
          + (f" (space {args.space})" if args.space else "") + ": data views, saved searches, the RED dashboard")
    return EXIT_OK


def cmd_kibana_export(settings: Settings, args: argparse.Namespace) -> int:
    from sinks.kibana import saved_objects, to_ndjson

    sys.stdout.write(to_ndjson(saved_objects(settings.elasticsearch.index_prefix)))
    return EXIT_OK


def cmd_trace(settings: Settings, args: argparse.Namespace) -> int:
    import elastic_transport

    from cli.waterfall import assemble, html_page, html_waterfall, rows_of, text_waterfall
    from sinks.elasticsearch import es_client

    es = es_client(settings.elasticsearch)
    try:
        trace = assemble(es, settings.elasticsearch, args.id, args.max_rounds)
    except elastic_transport.ConnectionError as exc:
        raise ServerUnavailable(f"Elasticsearch at {', '.join(settings.elasticsearch.hosts)} does not answer: {exc}") from None
    if not trace.spans:
        print(f"tracetap: no span has the span id or trace id {args.id} in {settings.elasticsearch.index_prefix}-spans-*",
              file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(trace.spans, indent=1))
        return EXIT_OK
    rows = rows_of(trace.spans)
    services = sorted({s[f] for s in trace.spans for f in ("client_workload", "server_workload") if s.get(f)})
    first = min(r.start_ns for r in rows)
    took_ms = (max(r.start_ns + r.duration_ns for r in rows) - first) / 1e6
    trace_ids = sorted({s["trace_id"] for s in trace.spans if s.get("trace_id")})
    header = (f"trace {', '.join(trace_ids) or '?'}: {len(trace.spans)} spans, {took_ms:.2f} ms, services {', '.join(services) or '?'}"
              f" ({trace.rounds} search rounds{'' if trace.complete else ', cut short: raise --max-rounds'})")
    print(header)
    print("\n".join(text_waterfall(rows)))
    if args.html:
        Path(args.html).write_text(html_page(f"trace {args.id}", f"<p>{html.escape(header)}</p>{html_waterfall(rows)}"))
        print(f"HTML: {args.html}")
    return EXIT_OK


def cmd_profile(settings: Settings, args: argparse.Namespace) -> int:
    import elastic_transport

    from cli.profile import output_format, profile_stacks, render, seconds, selection_title, span_selection
    from sinks.elasticsearch import es_client
    from tracetap.profiles import OFF_CPU, ON_CPU, Selection, hotspots

    kind = OFF_CPU if args.off_cpu else ON_CPU
    try:
        since_s = seconds(args.since)
    except ValueError as exc:
        print(f"tracetap profile: --since: {exc}", file=sys.stderr)
        return EXIT_USAGE
    es = es_client(settings.elasticsearch)
    try:
        if args.span:
            selection, span = span_selection(es, settings.elasticsearch, args.span, kind)
            context = (f"span {args.span}: {span.get('request_type') or ''} {span.get('request_resource') or ''} "
                       f"{span['duration_ns'] / 1e6:.1f} ms at {span.get('tap_side')}, {span.get('comm')} pid {span.get('pid')} thread {span.get('tid')}")
        else:
            now = time.time_ns()
            selection = Selection(kind, now - int(since_s * 1e9), now, workload=args.workload, host=args.host, pid=args.pid, tid=args.tid)
            context = f"last {args.since}"
        stacks, records = profile_stacks(es, settings.elasticsearch, selection)
    except elastic_transport.ConnectionError as exc:
        raise ServerUnavailable(f"Elasticsearch at {', '.join(settings.elasticsearch.hosts)} does not answer: {exc}") from None
    title = selection_title(selection)
    if not stacks:
        print(f"tracetap: no {title} in {settings.elasticsearch.index_prefix}-profiles-* ({context}); is the eBPF agent "
              "running with agent.profiling and the sink indexing the profiles topic?", file=sys.stderr)
        return EXIT_FAILURE
    total = sum(stacks.values())
    hz = max((r["sample_hz"] for r in records), default=0)
    amount = f"{total} samples ({total / hz:.2f} s of CPU at {hz} Hz)" if kind == ON_CPU else f"{total / 1e9:.3f} s blocked"
    processes = sorted({f"{r['comm']} {r['pid']}" + (f" ({r['workload']})" if r.get("workload") else "") for r in records})
    to_stdout = args.format and not args.output  # the graph itself goes to stdout: the summary to stderr
    out = sys.stderr if to_stdout else sys.stdout
    print(f"{title}, {context}: {amount} in {len(stacks)} stacks, {len(records)} windows of {', '.join(processes[:8])}"
          + (f" and {len(processes) - 8} more" if len(processes) > 8 else ""), file=out)
    for frame, value in hotspots(stacks, kind, args.top):
        print(f"  {value / total:6.1%}  {frame}", file=out)
    fmt = output_format(args.output, args.format)
    text = render(stacks, kind, fmt, title, subtitle=context)
    if args.output:
        Path(args.output).write_text(text)
        print(f"{fmt}: {args.output}")
    elif to_stdout:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from cli.demo import DemoOptions, run_demo

    unknown = sorted(set(args.scenario) - set(SCENARIOS))
    if unknown:
        print(f"tracetap demo: unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}", file=sys.stderr)
        return EXIT_USAGE
    scenarios = [s for s in SCENARIOS if s in args.scenario] if args.scenario else list(SCENARIOS)
    options = DemoOptions(scenarios=scenarios, engine=args.engine, start_stack=not args.no_stack, traffic_s=args.traffic_s,
                          settle_timeout_s=args.settle_timeout_s, report=Path(args.report) if args.report else None,
                          keep_topics=args.keep_topics)
    results = run_demo(settings, state_dir(settings, dict(os.environ)), options, progress=_progress)
    return EXIT_OK if all(f.found for f in results.findings) else EXIT_FAILURE


# stream jobs --------------------------------------------------------------------------------------
def cmd_streams_faust(settings: Settings, args: argparse.Namespace) -> int:
    import faust

    from streams.faust_app import FaustOptions, build_app
    from tracetap.stages import StageConfig

    streams = _stream_settings(settings, args)  # a bad value stops the run before anything is contacted
    _check_stream_topics(settings)
    options = FaustOptions(app_id=args.app_id, web_port=args.web_port, batch_events=streams.faust_batch_events,
                           batch_within_s=streams.faust_batch_within_s, idle_flush_s=streams.idle_flush_s,
                           stages=StageConfig.from_settings(streams))
    app, stats = build_app(settings, options)
    print(f"faust worker {args.app_id}: raw topics -> spans, paths, metrics, alerts; stats on http://127.0.0.1:{args.web_port}/tracetap/stats/",
          flush=True)
    code = 0
    workdir = state_dir(settings, dict(os.environ)) / "faust" / args.app_id
    workdir.mkdir(parents=True, exist_ok=True)
    worker = faust.Worker(app, loglevel=(args.log_level or settings.log.level).lower(), quiet=True, redirect_stdouts=False,
                          workdir=str(workdir))
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code or 0
    print("consumed " + ", ".join(f"{k}={v}" for k, v in sorted(stats.consumed.items())) + "; produced "
          + ", ".join(f"{k}={v}" for k, v in sorted(stats.produced.items())) + f"; dead_letters={sum(stats.dead_letters.values())}"
          + "".join(f" {k}={v}" for k, v in sorted(stats.dead_letters.items()))
          + f" late={sum(stats.late.values())} replayed_skipped={stats.replayed} offset_gaps={stats.offset_gaps} offset_gaps_unfilled={stats.offset_gaps_unfilled}", flush=True)
    return EXIT_OK if code == 0 else EXIT_FAILURE


def _check_stream_topics(settings: Settings) -> None:
    from schemas.catalog import STREAM_TOPICS
    from schemas.preflight import check_kafka

    check_kafka(settings.kafka, [spec.full_name(settings.topics.prefix) for spec in STREAM_TOPICS])


def _stream_settings(settings: Settings, args: argparse.Namespace) -> Any:
    """The `[streams]` section with this run's command-line flags over it."""
    flags = {name: getattr(args, name) for name in ("window_s", "slow_ms", "trace_gap_s", "idle_flush_s")}
    flags["flink_parallelism"] = getattr(args, "parallelism", None)
    flags["flink_checkpoint_interval_s"] = getattr(args, "checkpoint_interval_s", None)
    streams = dataclasses.replace(settings.streams, **{k: v for k, v in flags.items() if v is not None})
    streams.validate()
    return streams


def cmd_streams_flink(settings: Settings, args: argparse.Namespace) -> int:
    from infra.stack import LocalStack
    from streams.flink_job import FlinkOptions, build_job, latest_checkpoint
    from tracetap.stages import StageConfig

    if args.from_checkpoint and args.bounded:
        print("tracetap: --from-checkpoint with --bounded: a bounded Kafka source restored from a checkpoint never finishes "
              "(FLINK-31006, open in connector 3.4); restore without --bounded", file=sys.stderr)
        return EXIT_USAGE
    if args.target == "remote" and not args.jobmanager:
        print("tracetap: --target remote needs --jobmanager HOST:PORT (the JobManager's REST endpoint)", file=sys.stderr)
        return EXIT_USAGE
    streams = _stream_settings(settings, args)  # a bad value stops the run before anything is contacted
    state = state_dir(settings, dict(os.environ))
    jars = LocalStack(settings.stack, state).flink_jars()
    if args.connector_dir:
        jars = [Path(args.connector_dir) / jar.name for jar in jars]
    missing = [jar.name for jar in jars if not jar.is_file()]
    if missing:
        raise TracetapError(f"the Flink Kafka connector is not installed ({', '.join(missing)}): run `tracetap stack install` (or make setup)")
    if args.target == "remote":  # checkpoints go where the cluster is configured to put them (state.checkpoints.dir)
        if args.from_checkpoint == "latest":
            print("tracetap: with --target remote, --from-checkpoint takes the checkpoint's path as the cluster sees it", file=sys.stderr)
            return EXIT_USAGE
        checkpoints = Path(args.checkpoint_dir) if args.checkpoint_dir else None
    else:
        checkpoints = Path(args.checkpoint_dir) if args.checkpoint_dir else state / "flink" / args.app_id / "checkpoints"
        checkpoints.mkdir(parents=True, exist_ok=True)
    restore = None
    if args.from_checkpoint == "latest":
        restore = latest_checkpoint(checkpoints)
        print(f"restoring from {restore}" if restore else f"no checkpoint under {checkpoints} yet: starting from the group's offsets", flush=True)
    elif args.from_checkpoint:
        restore = Path(args.from_checkpoint)
        if args.target == "local" and not restore.exists():
            raise TracetapError(f"--from-checkpoint {restore}: no such checkpoint")
    _check_stream_topics(settings)
    options = FlinkOptions(app_id=args.app_id, parallelism=streams.flink_parallelism, target=args.target, jobmanager=args.jobmanager,
                           checkpoint_interval_s=streams.flink_checkpoint_interval_s, checkpoint_dir=checkpoints, from_checkpoint=restore,
                           bounded=args.bounded, source_idle_timeout_s=streams.flink_source_idle_timeout_s,
                           idle_flush_s=streams.idle_flush_s, bundle_size=streams.flink_bundle_size, bundle_time_s=streams.flink_bundle_time_s,
                           watermark_interval_s=streams.flink_watermark_interval_s, profile=args.profile,
                           stages=StageConfig.from_settings(streams))
    logs_dir = Path(os.environ.get("FLINK_LOG_DIR") or state / "logs" / "flink")  # the mini-cluster's own log (checkpoints,
    logs_dir.mkdir(parents=True, exist_ok=True)  # restarts, task failures, the Python workers' lines)
    os.environ["FLINK_LOG_DIR"] = str(logs_dir)
    env = build_job(settings, options, jars)
    where = f"session cluster {args.jobmanager}" if args.target == "remote" else "a local mini-cluster"
    print(f"flink job {args.app_id} on {where}, parallelism {options.parallelism}: raw topics -> spans, paths, metrics, alerts; "
          f"checkpoints every {options.checkpoint_interval_s:g} s in {checkpoints or 'the cluster state.checkpoints.dir'}; "
          f"Flink's log in {logs_dir}" + (" (bounded: stops at the latest offsets)" if args.bounded else ""),
          flush=True)
    started = time.monotonic()
    if args.target == "remote" and args.detach:
        client = env.execute_async(args.app_id)
        print(f"submitted job {client.get_job_id()}", flush=True)
        return EXIT_OK
    result = env.execute(args.app_id)
    print(f"job {result.get_job_id()} finished in {time.monotonic() - started:.1f} s", flush=True)
    return EXIT_OK


# agents -------------------------------------------------------------------------------------------
def cmd_agent_ebpf(settings: Settings, args: argparse.Namespace) -> int:
    from producers.common import agent_host, open_emitter
    from producers.ebpf.agent import EbpfAgent, check_requirements
    from schemas.catalog import NODE_SPANS, PROFILES, RESOURCES, SOCKET_DATA, SOCKET_LIFECYCLE

    check_requirements()
    if args.in_collector is not None:
        settings = dataclasses.replace(settings, agent=dataclasses.replace(settings.agent, in_collector=args.in_collector))
    if args.cpu_budget is not None:
        settings = dataclasses.replace(settings, agent=dataclasses.replace(settings.agent, cpu_budget_cores=args.cpu_budget))
        settings.agent.validate()
    host = agent_host(settings)
    data_topic = NODE_SPANS if settings.agent.in_collector else SOCKET_DATA
    if args.profiling is not None:
        settings = dataclasses.replace(settings, agent=dataclasses.replace(settings.agent, profiling=args.profiling))
    topics = (data_topic, SOCKET_LIFECYCLE, RESOURCES) + ((PROFILES,) if settings.agent.profiling else ())
    emitter = open_emitter(settings, "ebpf", topics)
    agent = EbpfAgent(settings, emitter, host)
    what = "spans (in-collector)" if settings.agent.in_collector else "socket data"
    stats = agent.run(duration_s=args.duration,
                      on_ready=lambda: print(f"capturing on {host}: {what} to {data_topic.full_name(settings.topics.prefix)}, "
                                             f"lifecycle to {SOCKET_LIFECYCLE.full_name(settings.topics.prefix)}", flush=True))
    emitter.close()
    totals = emitter.totals()
    print(f"captured {stats.data} data and {stats.lifecycle} lifecycle events, {stats.spans} spans, "
          f"lowest sample ratio {stats.min_sample_ratio:.3f}; " + ", ".join(f"{k}={v}" for k, v in sorted(totals.items())), flush=True)
    return _agent_exit(settings, emitter)


def cmd_agent_packets(settings: Settings, args: argparse.Namespace) -> int:
    from producers.common import open_emitter
    from producers.packets.agent import PacketAgent
    from schemas.catalog import NODE_SPANS, PACKETS

    if args.in_collector is not None:
        settings = dataclasses.replace(settings, packets=dataclasses.replace(settings.packets, in_collector=args.in_collector))
    files = [Path(f) for f in args.read or []]
    agent = PacketAgent.for_files(settings, files, args.tap) if files else PacketAgent.live(settings)
    topic = NODE_SPANS if settings.packets.in_collector else PACKETS
    emitter = open_emitter(settings, "packets", (topic,))
    where = ", ".join(map(str, files)) if files else ", ".join(settings.packets.taps)
    what = "NIC spans (in-collector)" if settings.packets.in_collector else "packet summaries"
    stats = agent.run(emitter, duration_s=args.duration,
                      on_ready=lambda: print(f"capturing {where}: {what} to {topic.full_name(settings.topics.prefix)}", flush=True))
    emitter.close()
    totals = emitter.totals()
    print(f"read {stats.packets} packets, {stats.spans} spans; " + ", ".join(f"{k}={v}" for k, v in sorted(totals.items())), flush=True)
    code = _agent_exit(settings, emitter)
    return code if code != EXIT_OK or not stats.failures else EXIT_FAILURE


def _agent_exit(settings: Settings, emitter: Emitter) -> int:
    """A run whose records did not all reach Kafka fails, so a script or a supervisor sees it."""
    undelivered, invalid = emitter.undelivered(), emitter.totals().get("invalid_records", 0)
    if undelivered:
        print(f"tracetap: {sum(undelivered.values())} of {emitter.offered} captured records did not reach Kafka at "
              f"{settings.kafka.bootstrap_servers} ({', '.join(f'{k}={v}' for k, v in undelivered.items())})", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if invalid:
        print(f"tracetap: {invalid} captured records could not be encoded (invalid_records; the log names the first error)", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


# parser -------------------------------------------------------------------------------------------
def _in_collector_flags(parser: argparse.ArgumentParser, setting: str, raw: str, raw_topic: str) -> None:
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--in-collector", dest="in_collector", action="store_const", const=True,
                       help=f"assemble spans on the node and send one per request to raw.spans (the default; {setting})")
    modes.add_argument("--raw", dest="in_collector", action="store_const", const=False,
                       help=f"send {raw} to {raw_topic} instead, for forensics and replays ({setting} = false)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracetap",
        description="Zero-code observability pipeline on Kafka: agents, Avro topics, stream jobs, Elasticsearch.",
        epilog="Settings: --config FILE (TOML) or $TRACETAP_CONFIG, overridden by TRACETAP_<SECTION>__<FIELD> variables. "
               "Exit codes: 0 ok, 1 failure, 2 usage, 69 server unavailable or records undelivered, 78 bad config "
               "(settings, credentials, missing topics), 130 interrupted.")
    parser.add_argument("--config", metavar="FILE", help="TOML settings file (default: $TRACETAP_CONFIG, else ./tracetap.toml if present)")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="overrides log.level")
    parser.add_argument("--log-format", choices=["text", "json"], help="overrides log.format")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(group, name: str, handler: Callable[[Settings, argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        sub = group.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    stack = commands.add_parser("stack", help="run Kafka, the schema registry and Elasticsearch locally, as processes",
                                description="The local stack: real servers as processes, state under stack.state_dir.")
    stack_cmds = stack.add_subparsers(dest="stack_command", required=True, metavar="ACTION")
    add(stack_cmds, "install", cmd_stack_install, "fetch the servers from Maven Central if missing")
    add(stack_cmds, "up", cmd_stack_up, "start every server that is not running and wait until all are healthy")
    add(stack_cmds, "down", cmd_stack_down, "stop the servers cleanly")
    status = add(stack_cmds, "status", cmd_stack_status, "show each server's ports, pid and health (exit 69 if any is down)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    logs_cmd = add(stack_cmds, "logs", cmd_stack_logs, "print a server's log")
    logs_cmd.add_argument("component", nargs="?", choices=["kafka", "registry", "elasticsearch"], help="one server (default: all)")
    logs_cmd.add_argument("-f", "--follow", action="store_true", help="keep printing new lines (one component only)")
    logs_cmd.add_argument("-n", "--lines", type=int, default=50, help="lines to show (default 50)")

    topics = commands.add_parser("topics", help="the topic catalog", description="tracetap's topics and Avro schemas (a public API).")
    topic_cmds = topics.add_subparsers(dest="topics_command", required=True, metavar="ACTION")
    add(topic_cmds, "apply", cmd_topics_apply, "create or update every catalog topic and register its schemas (idempotent)")
    listing = add(topic_cmds, "list", cmd_topics_list, "print the catalog")
    listing.add_argument("--markdown", action="store_true", help="as the README's Markdown table")

    config = commands.add_parser("config", help="inspect the configuration", description="The effective configuration.")
    config_cmds = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    add(config_cmds, "show", cmd_config_show, "print the effective settings as JSON, secrets masked (exit 78 if invalid)")

    sink = commands.add_parser("sink", help="write output topics to a store", description="Sinks from Kafka topics.")
    sink_cmds = sink.add_subparsers(dest="sink_command", required=True, metavar="SINK")
    es = add(sink_cmds, "elasticsearch", cmd_sink_elasticsearch, "index output topics into Elasticsearch (at-least-once, idempotent ids)")
    es.add_argument("--topic", action="append", metavar="NAME", help="catalog topic name to index, e.g. spans (repeatable; default: all outputs)")
    es.add_argument("--group", default="tracetap-sink-elasticsearch", help="consumer group id")
    es.add_argument("--exit-when-idle", type=float, metavar="SECONDS", help="stop after this long with nothing to read")

    agent = commands.add_parser("agent", help="node agents that capture traffic into Kafka", description="Node agents (run as root).")
    agent_cmds = agent.add_subparsers(dest="agent_command", required=True, metavar="AGENT")
    ebpf = add(agent_cmds, "ebpf", cmd_agent_ebpf, "capture every process's socket data and TCP lifecycle with eBPF (root)")
    ebpf.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long (default: until SIGINT/SIGTERM)")
    _in_collector_flags(ebpf, "agent.in_collector", "raw socket data (every syscall's payload prefix)", "raw.socket-data")
    ebpf.add_argument("--cpu-budget", type=float, metavar="CORES",
                      help="CPU the agent may use: a CFS quota on its own cgroup, kept to by shedding whole flows (agent.cpu_budget_cores)")
    profiling = ebpf.add_mutually_exclusive_group()
    profiling.add_argument("--profile", dest="profiling", action="store_const", const=True,
                           help="send profiles to the profiles topic: on-CPU, and off-CPU with agent.profile_off_cpu (the default; agent.profiling)")
    profiling.add_argument("--no-profile", dest="profiling", action="store_const", const=False,
                           help="capture without profiling (agent.profiling = false)")
    packets = add(agent_cmds, "packets", cmd_agent_packets,
                  "decode packets at NIC tap points (packets.taps) with tshark into packet summaries (root for live capture)")
    packets.add_argument("--read", action="append", metavar="PCAP", help="replay a pcap/pcapng file instead of capturing live (repeatable)")
    packets.add_argument("--tap", default="file=replay", metavar="SPEC",
                         help="with --read: the tap the file was recorded at, as interface[@netns]=tap_point[/workload] (default file=replay)")
    packets.add_argument("--duration", type=float, metavar="SECONDS", help="live: stop after this long (default: until SIGINT/SIGTERM)")
    _in_collector_flags(packets, "packets.in_collector", "one packet summary per packet", "raw.packets")

    streams = commands.add_parser("streams", help="stream jobs: raw events to spans, paths, metrics and alerts",
                                  description="Stream jobs hosting the core (tracetap/stages.py).")
    stream_cmds = streams.add_subparsers(dest="streams_command", required=True, metavar="ENGINE")
    faust_cmd = add(stream_cmds, "faust", cmd_streams_faust, "run the pipeline as a faust-streaming worker (until SIGINT/SIGTERM)")
    faust_cmd.add_argument("--app-id", default="tracetap-streams", help="Faust app id: consumer group and table changelog prefix")
    faust_cmd.add_argument("--web-port", type=int, default=6066, help="port of the worker's web endpoint (/tracetap/stats/)")
    flink_cmd = add(stream_cmds, "flink", cmd_streams_flink,
                    "run the pipeline on Apache Flink (PyFlink): a local mini-cluster, or a session cluster with --target remote")
    flink_cmd.add_argument("--app-id", default="tracetap-streams-flink",
                           help="job name, consumer group, transactional-id prefix and checkpoint folder")
    flink_cmd.add_argument("--parallelism", type=int, help="parallelism of the job (default: streams.flink_parallelism, 2)")
    flink_cmd.add_argument("--target", choices=("local", "remote"), default="local",
                           help="local: a mini-cluster in this process (default); remote: submit to --jobmanager")
    flink_cmd.add_argument("--jobmanager", metavar="HOST:PORT", help="REST endpoint of the session cluster, with --target remote")
    flink_cmd.add_argument("--detach", action="store_true", help="with --target remote: submit and return instead of waiting")
    flink_cmd.add_argument("--checkpoint-interval-s", type=float,
                           help="checkpoint (and Kafka transaction commit) interval; 0 turns checkpoints off, and with them "
                                "exactly-once output (default: streams.flink_checkpoint_interval_s, 10)")
    flink_cmd.add_argument("--connector-dir", metavar="DIR",
                           help="where the Kafka connector jars are (default <state>/dist/flink-lib, from `tracetap stack install`)")
    flink_cmd.add_argument("--checkpoint-dir", metavar="DIR", help="where checkpoints go (default <state>/flink/<app-id>/checkpoints)")
    flink_cmd.add_argument("--from-checkpoint", metavar="PATH|latest",
                           help="restore state and offsets from a retained checkpoint (a chk-N folder), or the newest one")
    flink_cmd.add_argument("--profile", action="store_true",
                           help="profile the Python workers (cProfile) into Flink's log, <state>/logs/flink/")
    flink_cmd.add_argument("--bounded", action="store_true",
                           help="stop at the offsets that are the latest at start, flushing everything (replays, tests)")
    for cmd in (faust_cmd, flink_cmd):
        cmd.add_argument("--window-s", type=float, help="RED, network and DNS metric window (default: streams.window_s, 10 s)")
        cmd.add_argument("--slow-ms", type=float, help="a trace slower than this raises SLOW_REQUEST (default: streams.slow_ms, 1000)")
        cmd.add_argument("--trace-gap-s", type=float,
                         help="event time after a trace's last span before it is complete and emitted (default: streams.trace_gap_s, 5 s)")
        cmd.add_argument("--idle-flush-s", type=float,
                         help="with no input for this long, emit what waits for the watermark (default: streams.idle_flush_s, 10 s)")

    kibana = commands.add_parser("kibana", help="Kibana saved objects for the indices the sink writes",
                                 description="Data views, saved searches and the RED dashboard (infra/kibana/), for elasticsearch.index_prefix.")
    kibana_cmds = kibana.add_subparsers(dest="kibana_command", required=True, metavar="ACTION")
    kibana_import = add(kibana_cmds, "import", cmd_kibana_import,
                        "import them with Kibana's saved-objects API (overwriting earlier versions); Elasticsearch's credentials")
    kibana_import.add_argument("--url", required=True, help="Kibana's base URL, e.g. http://localhost:5601")
    kibana_import.add_argument("--space", help="a Kibana space id (default: the default space)")
    add(kibana_cmds, "export", cmd_kibana_export, "print them as NDJSON (for Kibana's Saved Objects > Import)")

    profile = add(commands, "profile", cmd_profile,
                  "flame graphs from the profiles index: on-CPU samples or off-CPU time of a workload, a process or a span's thread")
    profile.add_argument("--workload", metavar="W", help="the workload (pod) the processes belong to, as in the resources topic")
    profile.add_argument("--host", metavar="NODE", help="only this node's processes")
    profile.add_argument("--pid", type=int, help="only this process")
    profile.add_argument("--tid", type=int, help="only this thread")
    profile.add_argument("--span", metavar="SPAN_ID",
                         help="the process, thread and time range of this (process-side) span, instead of the options above and --since")
    profile.add_argument("--since", default="60s", metavar="DURATION", help="how far back: 90s, 5m, 2h, 1d (default 60s)")
    profile.add_argument("--off-cpu", action="store_true", help="time blocked (asleep, waiting for I/O or a lock) instead of on-CPU samples")
    profile.add_argument("--output", metavar="FILE", help="write the graph: .svg an interactive flame graph, .json speedscope, else folded text")
    profile.add_argument("--format", choices=("svg", "speedscope", "folded"), help="the output's format whatever its name (without --output: to stdout)")
    profile.add_argument("--top", type=int, default=10, help="frames listed where the threads were (default 10)")
    trace = add(commands, "trace", cmd_trace, "print a trace's waterfall from Elasticsearch: every span linked to a span id or trace id")
    trace.add_argument("id", help="a span id or a trace id (from Kibana, an alert's span_ids or trace_id)")
    trace.add_argument("--html", metavar="FILE", help="also write the waterfall as one self-contained HTML file")
    trace.add_argument("--json", action="store_true", help="print the span documents as JSON instead")
    trace.add_argument("--max-rounds", type=int, default=30, help="search rounds (hops followed each way) before stopping (default 30)")

    demo = add(commands, "demo", cmd_demo,
               "the seed's four case studies, live: a simulated cluster observed by the agents, the stream job and the sink (root)")
    demo.add_argument("scenario", nargs="*", metavar="SCENARIO",
                      help=f"which case studies to stage: {', '.join(SCENARIOS)} (default: all four)")
    demo.add_argument("--engine", choices=("faust", "flink"), default="faust", help="stream job engine (default faust)")
    demo.add_argument("--traffic-s", type=float, default=20.0, help="how long the traffic runs (default 20 s)")
    demo.add_argument("--settle-timeout-s", type=float, default=150.0,
                      help="after the traffic, how long to wait for the findings in Elasticsearch (default 150 s)")
    demo.add_argument("--report", metavar="FILE", help="the HTML report (default <state>/demo/report.html)")
    demo.add_argument("--keep-topics", action="store_true", help="keep the run's Kafka topics (<topics.prefix>demo.<run>.*) afterwards")
    demo.add_argument("--no-stack", action="store_true", help="use the configured servers instead of starting the local stack")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    environ = dict(os.environ)
    try:
        settings = read_settings(args.config, environ)
        logs.configure(args.log_level or settings.log.level, args.log_format or settings.log.format)
        return args.handler(settings, args)
    except (ConfigError, NotProvisioned) as exc:
        print(f"tracetap: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("tracetap: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except TracetapError as exc:
        print(f"tracetap: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE if _is_unavailable(exc) else EXIT_FAILURE
    except Exception as exc:  # a bug or an unexpected server answer: one line, the trace at DEBUG
        log.debug("unexpected error", exc_info=True)
        print(f"tracetap: unexpected {type(exc).__name__}: {exc} (run with --log-level DEBUG for the trace)", file=sys.stderr)
        return EXIT_FAILURE


def _is_unavailable(exc: TracetapError) -> bool:
    return isinstance(exc, ServerUnavailable)


if __name__ == "__main__":
    sys.exit(main())
