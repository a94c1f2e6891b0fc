"""Benchmark: raw events/s end to end through the Flink job (parallelism 1 and 2) and the Faust job, on the
same input in the same run, with the Flink job's checkpoint durations and state sizes.

Input: N protocol-exact socket data events (benchmarks.core_pipeline.timed_events: keep-alive HTTP, Redis,
DNS over UDP on 200 sockets, 1 ms apart) in the raw topics of a bench prefix. Each engine reads all of them
from the earliest offset into output topics of its own prefix (a copy of the input, so their outputs never
mix). Every engine's rate is events / (wall time from its first consumed record to its last output): the
Faust job's from its stats page, polled; the Flink job's (bounded: it stops at the latest offsets) from the
lines its lateness check and its keyed stages write into Flink's log (first_input_unix_s, last_output_unix_s),
the earliest first and the latest last over the subtasks. The Flink job's whole run (JVM, mini-cluster and
Python worker start-up included) is printed too. The baseline is the core alone: the same stages in one
process, no engine.

With --baseline-tree DIR (another checkout, e.g. before a change), each engine also runs from that tree on a
copy of its own, alternating with this tree in the same run, and the ratios of this tree to it are printed.

With --session, the Flink job at parallelism 1 and 2 on a session cluster of two one-slot TaskManagers
(scaling); with --distribution, at parallelism 4 on two two-slot TaskManagers, the records each subtask of
each stage read (Flink's REST API) and the busiest subtask's share.

    .venv/bin/python benchmarks/stream_jobs.py --events 40000
    .venv/bin/python benchmarks/stream_jobs.py --events 40000 --session
    .venv/bin/python benchmarks/stream_jobs.py --events 40000 --distribution
    .venv/bin/python benchmarks/stream_jobs.py --events 20000 --baseline-tree ../main
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from confluent_kafka.admin import AdminClient  # noqa: E402

from benchmarks.core_pipeline import timed_events  # noqa: E402
from cli.main import read_settings, state_dir  # noqa: E402
from schemas.catalog import SOCKET_DATA, SPANS  # noqa: E402
from schemas.kafka import client_config  # noqa: E402
from schemas.producer import AvroProducer  # noqa: E402
from schemas.registry import SchemaRegistry  # noqa: E402
from schemas.topics import apply_catalog  # noqa: E402

BENCH_PREFIX = "tracetap-bench."
STAGE_FLAGS = ["--trace-gap-s", "1", "--idle-flush-s", "3", "--window-s", "10"]


def seed(settings, admin, registry, events: int) -> None:
    apply_catalog(admin, registry, settings.topics.prefix, settings.topics.replication_factor)
    producer = AvroProducer(settings, registry)
    for key, r in timed_events(events, time.time_ns() - 600_000_000_000, spacing=1000, host="bench"):  # 1 ms apart
        producer.produce(SOCKET_DATA, key, r)
    producer.flush(120)


def prefixed(settings, prefix: str):
    return dataclasses.replace(settings, topics=dataclasses.replace(settings.topics, prefix=prefix))


def env_for(settings, root: Path = ROOT) -> dict[str, str]:
    return dict(os.environ, TRACETAP_TOPICS__PREFIX=settings.topics.prefix, TRACETAP_LOG__LEVEL="WARNING", PYTHONPATH=str(root))


def run_flink(settings, parallelism: int, workdir: Path, root: Path = ROOT, jobmanager: str | None = None) -> dict:
    app_id = f"bench-flink-{uuid.uuid4().hex[:6]}"
    checkpoints = workdir / app_id
    remote = ["--target", "remote", "--jobmanager", jobmanager] if jobmanager else []
    command = [sys.executable, "-m", "cli.main", "streams", "flink", "--bounded", "--app-id", app_id, "--parallelism", str(parallelism),
               "--checkpoint-interval-s", "10", "--checkpoint-dir", str(checkpoints), *remote, *STAGE_FLAGS]
    started = time.monotonic()
    done = subprocess.run(command, cwd=root, env=env_for(settings, root), capture_output=True, text=True, timeout=1800)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"flink job failed: {done.stdout[-1500:]} {done.stderr[-3000:]}")
    job = re.search(r"job (\w+) finished in ([\d.]+) s", done.stdout)
    log_dirs = [workdir / "cluster"] if jobmanager else [state_dir(settings, dict(os.environ)) / "logs" / "flink"]
    checkpoints_done, first_input_s, last_output_s = [], [], []
    for log in (log for log_dir in log_dirs for log in log_dir.rglob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            hit = re.search(rf"Completed checkpoint (\d+) for job {job[1]} \((\d+) bytes, checkpointDuration=(\d+) ms", line)
            if hit:
                checkpoints_done.append((int(hit[1]), int(hit[2]), int(hit[3])))
            hit = re.search(rf"app_id={app_id} (first_input|last_output)_unix_s=([\d.]+)", line)
            if hit:
                (first_input_s if hit[1] == "first_input" else last_output_s).append(float(hit[2]))
    if not first_input_s or not last_output_s:
        raise RuntimeError(f"flink job {app_id}: no first_input_unix_s or last_output_unix_s line in {log_dirs} "
                           f"(a tree whose streams/flink_job.py does not write them cannot be timed)")
    result = {"run_s": max(last_output_s) - min(first_input_s), "job_s": float(job[2]), "wall_s": wall,
              "checkpoints": sorted(checkpoints_done)}
    if jobmanager:
        result["distribution"] = distribution(jobmanager, job[1])
    return result


def distribution(jobmanager: str, job_id: str) -> dict[str, list[int]]:
    """Records each subtask of each stage read, from the session cluster's REST API."""
    def get(path):
        with urllib.request.urlopen(f"http://{jobmanager}{path}", timeout=10) as response:
            return json.load(response)

    table = {}
    for vertex in get(f"/jobs/{job_id}")["vertices"]:
        if "stage" in vertex["name"]:
            subtasks = get(f"/jobs/{job_id}/vertices/{vertex['id']}")["subtasks"]
            table[vertex["name"].split(" -> ")[0]] = [t["metrics"]["read-records"] for t in subtasks]
    return table


class SessionCluster:
    """A Flink JobManager and `taskmanagers` TaskManagers of `slots` slots each, as infra/flink-cluster.sh runs them."""

    def __init__(self, workdir: Path, taskmanagers: int, slots: int = 1) -> None:
        import socket

        def free_port() -> int:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                return s.getsockname()[1]

        self.rest, rpc, blob = free_port(), free_port(), free_port()
        common = ["jobmanager.rpc.address: 127.0.0.1", f"jobmanager.rpc.port: {rpc}", f"rest.port: {self.rest}",
                  "rest.address: 127.0.0.1", "rest.bind-address: 127.0.0.1", f"blob.server.port: {blob}",
                  "taskmanager.host: 127.0.0.1", f"taskmanager.numberOfTaskSlots: {slots}", "jobmanager.memory.process.size: 1024m",
                  "taskmanager.memory.process.size: 2048m"]
        self.processes = []
        for i, role in enumerate(["jobmanager"] + ["taskmanager"] * taskmanagers):
            props = common + ([f"taskmanager.rpc.port: {free_port()}", f"taskmanager.data.port: {free_port()}"] if i else [])
            env = dict(os.environ, FLINK_PROPERTIES="\n".join(props), PYTHON=sys.executable,
                       FLINK_LOG_DIR=str(workdir / "cluster" / f"{role}-{i}"))
            self.processes.append(subprocess.Popen(["bash", str(ROOT / "infra" / "flink-cluster.sh"), role], env=env,
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.rest}/overview", timeout=5) as response:
                    if json.load(response)["slots-total"] >= taskmanagers * slots:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.processes):
                self.stop()
                raise RuntimeError("the session cluster did not come up")
            time.sleep(1)

    @property
    def jobmanager(self) -> str:
        return f"127.0.0.1:{self.rest}"

    def stop(self) -> None:
        for process in self.processes:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def run_faust(settings, events: int, workdir: Path, root: Path = ROOT) -> dict:
    port = 6190 + os.getpid() % 500
    app_id = f"bench-faust-{uuid.uuid4().hex[:6]}"
    command = [sys.executable, "-m", "cli.main", "streams", "faust", "--app-id", app_id, "--web-port", str(port), *STAGE_FLAGS]
    log = open(workdir / f"{app_id}.log", "w")
    worker = subprocess.Popen(command, cwd=root, env=env_for(settings, root), stdout=log, stderr=subprocess.STDOUT)
    first = last_change = None
    produced_before = None
    try:
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/tracetap/stats/", timeout=5) as response:
                    stats = json.load(response)
            except OSError:
                continue
            consumed = sum(v for k, v in stats["consumed"].items() if k != "resource")
            if consumed and first is None:
                first = time.monotonic()
            produced = sum(stats["produced"].values())
            if produced != produced_before:
                produced_before, last_change = produced, time.monotonic()
            # every request/response pair is one span: done once all are out (the trace stage may not have had a batch yet)
            if (consumed >= events and stats["produced"].get("spans", 0) >= events // 2 and stats["tables"]["pending_spans"] == 0
                    and stats["tables"]["open_red_windows"] == 0 and time.monotonic() - last_change > 3):
                return {"run_s": last_change - first, "consumed": consumed, "produced": produced}
        raise RuntimeError("the Faust worker did not finish in 30 min")
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
        log.close()
        admin = AdminClient(client_config(settings.kafka))
        mine = [t for t in admin.list_topics(timeout=10).topics if t.startswith(f"{app_id}-")]
        if mine:
            for future in admin.delete_topics(mine).values():
                future.result()


def core_alone(events: int) -> tuple[float, int]:
    """The same events through the same stage objects in one Python process, no engine: Avro decode, FlowStage
    per flow key, the keyed stages after it (KeyedPipeline, advanced every 1,000 events on the event time less
    the out-of-order bound), record building. Flink's rate against this is what the engine and its Python
    boundary (serialization to and from the JVM, keyed state, timers) cost."""
    import io

    import fastavro

    from tracetap.pipeline import KeyedPipeline
    from tracetap.stages import FlowStage, StageConfig

    schema = fastavro.parse_schema(SOCKET_DATA.schema())
    bodies = []
    for key, r in timed_events(events, time.time_ns() - 600_000_000_000, spacing=1000, host="bench"):  # as seed() makes them
        out = io.BytesIO()
        fastavro.schemaless_writer(out, schema, r)
        bodies.append((key, out.getvalue()))
    config = StageConfig()
    flows: dict[str, FlowStage] = {}
    keyed = KeyedPipeline(config)
    emitted = 0
    started = time.perf_counter()
    for i, (key, body) in enumerate(bodies):
        record = fastavro.schemaless_reader(io.BytesIO(body), schema, None)
        stage = flows.get(key) or flows.setdefault(key, FlowStage(config))
        for span in stage.socket_data(record):
            keyed.span(span)
        if i % 1000 == 999:
            keyed.engine_watermark(record["end_time"] - config.max_out_of_order_ns)
            emitted += len(keyed.advance())
    emitted += len(keyed.advance(final=True))
    return events / (time.perf_counter() - started), emitted


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=40_000, help="raw socket data events (default 40000)")
    ap.add_argument("--baseline-tree", type=Path, help="another checkout whose jobs run alternating with this tree's, as the baseline")
    ap.add_argument("--session", action="store_true",
                    help="scaling instead: the Flink job at parallelism 1 and 2 on a session cluster of 2 TaskManagers (1 slot each)")
    ap.add_argument("--distribution", action="store_true",
                    help="the records each subtask of each keyed stage reads at parallelism 4, on a session cluster of 2 TaskManagers "
                         "(2 slots each)")
    args = ap.parse_args()
    if args.distribution:
        return distribution_at_4(args.events)
    if args.baseline_tree:
        return compare_trees(args.events, args.baseline_tree.resolve())
    if args.session:
        return session_scaling(args.events)
    base = read_settings(None, dict(os.environ))
    admin, registry = AdminClient(client_config(base.kafka)), SchemaRegistry(base.registry)
    run = uuid.uuid4().hex[:6]
    workdir = Path(tempfile.mkdtemp(prefix="tracetap-bench-streams-"))
    print(f"stream jobs benchmark: {os.cpu_count()} cpus, {args.events:,} raw events, load {os.getloadavg()[0]:.2f}", flush=True)
    inputs = {}
    for name in ("faust", "flink-p1", "flink-p2"):
        inputs[name] = prefixed(base, f"{BENCH_PREFIX}{run}.{name}.")
        seed(inputs[name], admin, registry, args.events)
    print("seeded the inputs", flush=True)
    faust = run_faust(inputs["faust"], args.events, workdir)
    print(f"faust (1 worker): {args.events / faust['run_s']:,.0f} events/s ({faust['run_s']:.1f} s from first record to last output)",
          flush=True)
    run_flink_p1 = 0.0
    for p in (1, 2):
        flink = run_flink(inputs[f"flink-p{p}"], p, workdir)
        run_flink_p1 = run_flink_p1 or flink["run_s"]
        cps = flink["checkpoints"]
        cp = (f"{len(cps)} checkpoints, duration median {sorted(c[2] for c in cps)[len(cps) // 2]} ms max {max(c[2] for c in cps)} ms, "
              f"state up to {max(c[1] for c in cps) / 1e6:.2f} MB") if cps else "no checkpoint completed"
        print(f"flink p={p}: {args.events / flink['run_s']:,.0f} events/s ({flink['run_s']:.1f} s from first record to last output, "
              f"{flink['job_s']:.1f} s job with start-up); ratio to faust {faust['run_s'] / flink['run_s']:.2f}; {cp}", flush=True)
    rate, emitted = core_alone(args.events)
    print(f"the core alone (same stages, one process, no engine): {rate:,.0f} events/s ({emitted:,} records); "
          f"faust runs at {args.events / faust['run_s'] / rate:.2f}x of it, flink p=1 at {args.events / run_flink_p1 / rate:.2f}x",
          flush=True)
    admin_topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(f"{BENCH_PREFIX}{run}.")]
    for future in admin.delete_topics(admin_topics).values():
        future.result()
    print(f"output spans topic e.g. {SPANS.full_name(inputs['faust'].topics.prefix)} (deleted); workdir {workdir}")
    return 0


def compare_trees(events: int, baseline: Path) -> int:
    """Each engine from the baseline tree and from this one, alternating, each on its own copy of the input."""
    base = read_settings(None, dict(os.environ))
    admin, registry = AdminClient(client_config(base.kafka)), SchemaRegistry(base.registry)
    run = uuid.uuid4().hex[:6]
    workdir = Path(tempfile.mkdtemp(prefix="tracetap-bench-streams-"))
    print(f"stream jobs, {baseline} (baseline) against {ROOT}: {os.cpu_count()} cpus, {events:,} raw events, "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    inputs = {}
    for name in (f"{e}-{t}" for e in ("faust", "flink") for t in ("base", "this")):
        inputs[name] = prefixed(base, f"{BENCH_PREFIX}{run}.{name}.")
        seed(inputs[name], admin, registry, events)
    rates: dict[str, dict[str, float]] = {"faust": {}, "flink": {}}
    for tree, root in (("base", baseline), ("this", ROOT)):
        rates["faust"][tree] = events / run_faust(inputs[f"faust-{tree}"], events, workdir, root)["run_s"]
        print(f"faust ({tree}): {rates['faust'][tree]:,.0f} events/s", flush=True)
    for tree, root in (("base", baseline), ("this", ROOT)):
        flink = run_flink(inputs[f"flink-{tree}"], 1, workdir, root)
        rates["flink"][tree] = events / flink["run_s"]
        print(f"flink p=1 ({tree}): {rates['flink'][tree]:,.0f} events/s ({flink['job_s']:.1f} s job with start-up)", flush=True)
    for engine, by_tree in rates.items():
        print(f"{engine}: this tree {by_tree['this']:,.0f} events/s, baseline {by_tree['base']:,.0f} events/s, "
              f"ratio {by_tree['this'] / by_tree['base']:.2f}")
    for future in admin.delete_topics([t for t in admin.list_topics(timeout=10).topics if t.startswith(f"{BENCH_PREFIX}{run}.")]).values():
        future.result()
    return 0



def session_scaling(events: int) -> int:
    """The Flink job at parallelism 1, then 2, on a session cluster of two one-slot TaskManagers (each its own JVM
    and Python workers), each run on its own copy of the input; with the core alone as the baseline, and the
    records each subtask of each stage read."""
    base = read_settings(None, dict(os.environ))
    admin, registry = AdminClient(client_config(base.kafka)), SchemaRegistry(base.registry)
    run = uuid.uuid4().hex[:6]
    workdir = Path(tempfile.mkdtemp(prefix="tracetap-bench-streams-"))
    print(f"stream jobs on a session cluster: {os.cpu_count()} cpus, {events:,} raw events, load {os.getloadavg()[0]:.2f}", flush=True)
    inputs = {p: prefixed(base, f"{BENCH_PREFIX}{run}.session-p{p}.") for p in (1, 2)}
    for settings in inputs.values():
        seed(settings, admin, registry, events)
    rate, _ = core_alone(events)
    print(f"the core alone (same stages, one process, no engine): {rate:,.0f} events/s", flush=True)
    cluster = SessionCluster(workdir, taskmanagers=2)
    rates = {}
    try:
        for p, settings in inputs.items():
            flink = run_flink(settings, p, workdir, jobmanager=cluster.jobmanager)
            rates[p] = events / flink["run_s"]
            print(f"flink p={p} on the session cluster: {rates[p]:,.0f} events/s ({flink['run_s']:.1f} s from first record to last "
                  f"output, {flink['job_s']:.1f} s job); {rates[p] / rate:.2f}x of the core alone", flush=True)
            for stage, counts in flink["distribution"].items():
                total = sum(counts) or 1
                print(f"  {stage:<22} records read per subtask: " + ", ".join(f"{c:,} ({c / total:.0%})" for c in counts))
    finally:
        cluster.stop()
    print(f"scaling p=2 / p=1: {rates[2] / rates[1]:.2f}x")
    for future in admin.delete_topics([t for t in admin.list_topics(timeout=10).topics if t.startswith(f"{BENCH_PREFIX}{run}.")]).values():
        future.result()
    return 0


def distribution_at_4(events: int) -> int:
    """Records read per subtask of every stage at parallelism 4, and the busiest subtask's share (the goal: at most 1.5/4)."""
    base = read_settings(None, dict(os.environ))
    admin, registry = AdminClient(client_config(base.kafka)), SchemaRegistry(base.registry)
    run = uuid.uuid4().hex[:6]
    workdir = Path(tempfile.mkdtemp(prefix="tracetap-bench-streams-"))
    settings = prefixed(base, f"{BENCH_PREFIX}{run}.p4.")
    seed(settings, admin, registry, events)
    cluster = SessionCluster(workdir, taskmanagers=2, slots=2)
    try:
        flink = run_flink(settings, 4, workdir, jobmanager=cluster.jobmanager)
    finally:
        cluster.stop()
    print(f"flink p=4 on a session cluster of 2 TaskManagers x 2 slots, {events:,} raw events: records read per subtask")
    print(f"  {'stage':<22} {'subtask 0':>10} {'subtask 1':>10} {'subtask 2':>10} {'subtask 3':>10}  busiest   <= 1.5/4")
    for stage, counts in flink["distribution"].items():
        busiest = max(counts) / (sum(counts) or 1)
        print(f"  {stage:<22} " + " ".join(f"{c:>10,}" for c in counts) + f"  {busiest:7.1%}   {'yes' if busiest <= 1.5 / 4 else 'no'}")
    for future in admin.delete_topics([t for t in admin.list_topics(timeout=10).topics if t.startswith(f"{BENCH_PREFIX}{run}.")]).values():
        future.result()
    return 0


if __name__ == "__main__":
    sys.exit(main())

