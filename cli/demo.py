"""`tracetap demo [SCENARIO ...]`: the seed's four case studies, live, on a simulated cluster.

    1/7 local stack                Kafka, the registry and Elasticsearch (or the configured ones, --no-stack)
    2/7 topics                     this run's own topics (<topics.prefix>demo.<run>.), deleted at the end
    3/7 cluster                    network namespaces as pods on a bridge, dnsmasq as kube-dns, redis, the services
    4/7 agents                     the eBPF agent on the pods' processes, the packet agent on the pods' veths
    5/7 stream job and sink        Faust or Flink (--engine), the Elasticsearch sink
    6/7 traffic                    background requests plus each scenario's trigger, from the node namespace
    7/7 findings                   read back from Elasticsearch, reported in the terminal and in an HTML file

Everything runs as the user would run it: the agents, the stream job and the sink are `tracetap` processes with
environment overrides, their logs in <state>/logs/demo/. Everything started is stopped and the cluster torn
down, also on Ctrl-C, SIGTERM or a failure; the Elasticsearch documents stay, for Kibana.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cli.demo_report import Findings, Results, html_report, text_report
from schemas.catalog import ALERTS, PATHS, PROFILES, RED_METRICS, SPANS
from infra.demo_services import PODS, SCENARIOS, STORM_NAME, TLS_PORT, start_workloads
from sinks.elasticsearch import es_client, index_name
from tracetap.config import Settings
from tracetap.errors import TracetapError

Progress = Callable[[str], None]
ROOT = Path(__file__).resolve().parent.parent

@dataclass(frozen=True)
class DemoOptions:
    scenarios: list[str]
    engine: str = "faust"  # or "flink"
    start_stack: bool = True
    traffic_s: float = 20.0
    settle_timeout_s: float = 150.0  # after the traffic: how long the findings may take to reach Elasticsearch
    report: Path | None = None  # default <state>/demo/report.html
    keep_topics: bool = False


class _Children:
    """The demo's tracetap processes: started with a log file each, stopped in reverse order."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs, self.env = logs, env
        self.running: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")
        process = subprocess.Popen([sys.executable, "-m", "cli.main", *args], cwd=ROOT, env=self.env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.running.append((name, process))
        return process

    def wait_for(self, name: str, text: str, timeout_s: float) -> None:
        """Until the process's log shows `text`; a process that exits or takes too long fails the demo."""
        process = dict(self.running)[name]
        deadline = time.monotonic() + timeout_s
        while text not in self.log(name):
            if process.poll() is not None:
                raise TracetapError(f"{name} exited with {process.returncode} before it was ready: {self.tail(name)}")
            if time.monotonic() > deadline:
                raise TracetapError(f"{name} was not ready within {timeout_s:.0f} s: {self.tail(name)}")
            time.sleep(0.2)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def tail(self, name: str, lines: int = 8) -> str:
        return " | ".join(self.log(name).strip().splitlines()[-lines:])

    def stop(self, name: str, timeout_s: float = 30.0) -> int | None:
        for i, (n, process) in enumerate(self.running):
            if n == name:
                del self.running[i]
                return _stop(process, timeout_s)
        return None

    def stop_all(self) -> None:
        while self.running:
            self.stop(self.running[-1][0], timeout_s=15.0)


def _stop(process: subprocess.Popen, timeout_s: float) -> int | None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return process.wait()


def run_demo(settings: Settings, state_dir: Path, options: DemoOptions, progress: Progress) -> Results:
    """Stage the scenarios, observe them with the real pipeline, and return the findings read from Elasticsearch."""
    from confluent_kafka.admin import AdminClient

    from infra.cluster import Cluster
    from schemas.kafka import client_config
    from schemas.preflight import check_kafka
    from schemas.registry import SchemaRegistry
    from schemas.topics import apply_catalog

    if os.geteuid() != 0:
        raise TracetapError("the demo needs root: it creates network namespaces and loads eBPF programs (run it with sudo)")
    started = time.monotonic()
    since_ns = time.time_ns()
    run = uuid.uuid4().hex[:6]
    prefix = f"{settings.topics.prefix}demo.{run}."  # the run's own topics: no earlier run's events replay into it
    app_id = f"tracetap-demo-{run}"  # the stream job's group (Faust's own topics start with it too)
    logs = state_dir / "logs" / "demo"
    logs.mkdir(parents=True, exist_ok=True)

    def step(n: int, text: str) -> None:
        print(f"{n}/7 {text}  [{time.monotonic() - started:.0f} s]", flush=True)

    if options.start_stack:
        from infra.stack import LocalStack

        step(1, "local stack")
        LocalStack(settings.stack, state_dir, progress=progress).up()
    else:
        step(1, "using the configured servers (--no-stack)")

    step(2, f"topics {prefix}* and their schemas")
    check_kafka(settings.kafka)
    admin, registry = AdminClient(client_config(settings.kafka)), SchemaRegistry(settings.registry)
    created = apply_catalog(admin, registry, prefix, settings.topics.replication_factor)
    progress(f"{len(created)} topics, value schemas registered with BACKWARD compatibility")

    # The partner's name resolves (as an external name does through the cluster DNS's upstream): each lookup is
    # three NXDOMAINs down the search path, then the answer, as in the seed's storm.
    cluster = Cluster(list(PODS), extra_hosts={STORM_NAME: "192.0.2.10"})
    env = dict(os.environ, TRACETAP_TOPICS__PREFIX=prefix, TRACETAP_AGENT__INCLUDE_NETNS=",".join(PODS), TRACETAP_LOG__FORMAT="text",
               TRACETAP_AGENT__PROFILE_OFF_CPU="true")  # the slow-backend finding shows where oms-app waited
    children = _Children(logs, env)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        step(3, f"cluster: {len(PODS)} pods on {cluster.subnet}, their Services' ClusterIPs on {cluster.service_subnet} (DNAT, as kube-proxy), "
                "kube-dns with ndots:5, redis, the services")
        cluster.up()
        workloads = start_workloads(cluster, storm="dns-storm" in options.scenarios, tls_dir=state_dir / "demo" / "tls" / run)
        progress(", ".join(f"{name} {pod.address} (Service {pod.cluster_ip})" for name, pod in cluster.members.items()))

        step(4, "agents: eBPF on the pods' processes, packets on their veths")
        # Every pod's veth, as pod-nic taps (one tshark: they are all in the node namespace); TCP to the services
        # and redis (DNS is the eBPF agent's: the storm's packets would only add load here).
        env["TRACETAP_PACKETS__TAPS"] = ",".join(f"{pod.veth}@{cluster.node}=pod-nic/{name}@{pod.address}" for name, pod in cluster.members.items())
        env["TRACETAP_PACKETS__CAPTURE_FILTER"] = f"tcp port 8080 or tcp port {TLS_PORT} or tcp port 6379"
        children.start("agent-ebpf", ["agent", "ebpf"])
        children.start("agent-packets", ["agent", "packets"])
        children.wait_for("agent-ebpf", "capturing", 120)
        progress(f"eBPF agent capturing in {len(PODS)} pods")
        children.wait_for("agent-packets", "capturing", 60)
        progress(f"packet agent capturing on {len(cluster.members)} veths in {cluster.node}")

        step(5, f"stream job ({options.engine}) and Elasticsearch sink")
        stats_port = None
        stages = ["--window-s", "5", "--slow-ms", "1000", "--trace-gap-s", "1", "--idle-flush-s", "3"]
        if options.engine == "flink":
            children.start("streams", ["streams", "flink", "--app-id", app_id, "--parallelism", "1", "--checkpoint-interval-s", "2",
                                       "--checkpoint-dir", str(state_dir / "flink" / app_id), *stages])
            children.wait_for("streams", "flink job", 120)
        else:
            stats_port = _free_port()
            children.start("streams", ["streams", "faust", "--app-id", app_id, "--web-port", str(stats_port), *stages])
            children.wait_for("streams", "faust worker", 60)
        children.start("sink", ["sink", "elasticsearch", "--group", f"{app_id}-sink"])  # not Faust's group: its own protocol
        children.wait_for("sink", "partitions assigned", 60)
        progress(f"{options.engine} job {app_id} and the sink are running; logs in {logs}")

        step(6, f"traffic for {options.traffic_s:.0f} s: background orders + {', '.join(options.scenarios)}")
        web, retail = cluster.members["web"].address, cluster.members["retail"].address
        load = cluster.run(cluster.node, [sys.executable, "-m", "infra.demo_services", "traffic", "--web", web, "--retail", retail,
                                          "--seconds", str(options.traffic_s), *[a for s in options.scenarios for a in ("--scenario", s)]],
                           timeout_s=options.traffic_s + 60)
        if load.returncode != 0:
            raise TracetapError(f"the traffic client failed: {load.stderr.strip()[-500:]}")
        answers = json.loads(load.stdout)
        progress("answers: " + "; ".join(f"{kind} " + ", ".join(f"{n}x {status}" for status, n in sorted(seen.items()))
                                         for kind, seen in sorted(answers.items())))
        for name, process in workloads.items():
            if name.startswith("tpp-pay"):
                _stop(process, 5)  # the storm ends with the traffic
        time.sleep(2)
        for agent in ("agent-packets", "agent-ebpf"):
            if children.stop(agent, 60) not in (None, 0):
                raise TracetapError(f"{agent} failed: {children.tail(agent)}")
            progress(f"{agent}: {children.tail(agent, 1)}")

        step(7, "findings, read back from Elasticsearch")
        es = es_client(settings.elasticsearch)
        findings = Findings(es, settings.elasticsearch, since_ns)
        results = _settle(es, findings, options, f"{settings.elasticsearch.index_prefix}-*", progress)
        if not all(f.found for f in results.findings):  # what the stream job held then, while it still runs
            if stats_port is not None:
                progress(f"stream job's stats: {_job_stats(stats_port)}")
            progress(f"stream job's last log lines ({logs / 'streams.log'}):\n  " + children.tail("streams", 25).replace(" | ", "\n  "))
    except KeyboardInterrupt:
        print("interrupted: stopping the demo's processes and tearing the cluster down", flush=True)
        raise
    finally:
        children.stop_all()
        cluster.down()
        signal.signal(signal.SIGTERM, previous)
        if not options.keep_topics:
            _delete_run(admin, registry, (prefix, f"{app_id}-"))
        shutil.rmtree(state_dir / "faust" / app_id, ignore_errors=True)
        shutil.rmtree(state_dir / "flink" / app_id, ignore_errors=True)
        shutil.rmtree(state_dir / "demo" / "tls" / run, ignore_errors=True)

    minutes = (time.monotonic() - started) / 60
    print(text_report(results), flush=True)
    report = options.report or state_dir / "demo" / "report.html"
    report.parent.mkdir(parents=True, exist_ok=True)
    hosts = settings.elasticsearch.hosts[0]
    hint = (f"Kibana: point a Kibana 8.x at {hosts} (elasticsearch.hosts), then `tracetap kibana import --url http://localhost:5601` "
            f"adds the data views ({', '.join(index_name(settings.elasticsearch, spec) for spec in (SPANS, PATHS, RED_METRICS, ALERTS, PROFILES))}), "
            "saved searches and the RED dashboard.")
    report.write_text(html_report(results, f"tracetap demo: {', '.join(options.scenarios)} ({options.engine})", minutes, hint))
    found = sum(f.found for f in results.findings)
    print(f"demo done in {minutes:.1f} min: {found} of {len(results.findings)} scenarios found in Elasticsearch. "
          f"Report: {report}", flush=True)
    print(hint, flush=True)
    return results


def _settle(es, findings: Findings, options: DemoOptions, indices: str, progress: Progress) -> Results:  # noqa: ANN001
    """Poll until every scenario's finding is in Elasticsearch and the run's document counts stop growing
    (the stream job emits the last traces and windows after its idle flush), or the timeout passes."""
    deadline = time.monotonic() + options.settle_timeout_s
    last, stable, shown = None, 0, time.monotonic()
    while True:
        es.indices.refresh(index=indices, ignore_unavailable=True, allow_no_indices=True)
        results = findings.collect(options.scenarios)
        stable = stable + 1 if results.counts == last else 0
        last = results.counts
        done = all(f.found for f in results.findings) and stable >= 2
        if done or time.monotonic() > deadline:
            progress("indexed in this run: " + ", ".join(f"{n} {k}" for k, n in results.counts.items())
                     + ("" if done else f" (stopped waiting after {options.settle_timeout_s:.0f} s)"))
            return results
        if time.monotonic() - shown >= 15:
            shown = time.monotonic()
            progress("waiting for the findings; indexed so far: " + ", ".join(f"{n} {k}" for k, n in results.counts.items()))
        time.sleep(3)


def _delete_run(admin, registry, prefixes: tuple[str, ...]) -> None:  # noqa: ANN001
    """The run's topics (the catalog's and the stream job's own) and their schemas: best effort."""
    topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefixes)]
    if topics:
        for future in admin.delete_topics(topics).values():
            try:
                future.result()
            except Exception:  # noqa: BLE001 (best effort: a leftover topic is harmless)
                pass
    for subject in registry.subjects():
        if subject.startswith(prefixes):
            try:
                registry.delete_subject(subject)
            except Exception:  # noqa: BLE001
                pass


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _job_stats(port: int) -> str:
    """The Faust job's stats page, summarised: what it has left to read, the state it holds, what it dropped."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/tracetap/stats/", timeout=10) as response:
            stats = json.loads(response.read())
    except (OSError, ValueError) as exc:
        return f"not available ({exc})"
    lag = {tp: n for tp, n in stats.get("lag", {}).items() if n}
    return (f"consumed={stats.get('consumed')} produced={stats.get('produced')} lag={lag or 0} offset_gaps={stats.get('offset_gaps')} "
            f"tables={stats.get('tables')} dead_letters={stats.get('dead_letters')} late={stats.get('late')}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


__all__ = ["DemoOptions", "SCENARIOS", "run_demo"]
