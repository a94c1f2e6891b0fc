"""Profiles from `tracetap agent ebpf` to the profiles topic, the Elasticsearch index and `tracetap profile`.

A C program with known CPU shares and a thread asleep 1 s (tests/e2e/test_profiler.py's) runs in a pod (a named
network namespace) the agent is told to watch, and the same program runs outside it at the same time. The topic
holds the pod's process only, tagged with its workload, with the shares and the second of sleep; the sink indexes
the records; `tracetap profile` draws them as a flame graph (SVG), speedscope JSON and folded text.
"""

import json
import os
import re
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from schemas.catalog import PROFILES
from schemas.serde import AvroDeserializer
from tests.e2e.test_ebpf_agent import REPO, running_agent
from tests.e2e.test_profiler import PROGRAM
from tests.kafka_helpers import read_until_idle
from tracetap.profiles import OFF_CPU, ON_CPU

HOST = os.uname().nodename


def _start(command):
    program = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert program.stdout.readline() == "ready\n"
    return program


@pytest.fixture(scope="module")
def run(own_topics, registry, tmp_path_factory):
    directory = tmp_path_factory.mktemp("profiles")
    (directory / "shares.c").write_text(PROGRAM)
    binary = str(directory / "shares")
    subprocess.run(["gcc", "-O0", "-fno-omit-frame-pointer", "-pthread", "-o", binary, str(directory / "shares.c")], check=True)
    pod = f"tt-prof-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", pod], check=True)
    programs = []
    try:
        env = {"TRACETAP_AGENT__PROFILE_WINDOW_S": "2", "TRACETAP_AGENT__PROFILE_OFF_CPU": "true", "TRACETAP_AGENT__INCLUDE_NETNS": pod}
        with running_agent(own_topics, env):
            programs = [_start(["ip", "netns", "exec", pod, binary]), _start([binary])]  # `ip netns exec` execs: same pid
            for program in programs:
                assert program.stdout.readline() == "done\n"
            # the agent's last window is read when it stops, while the programs still live (symbols come from their maps)
        for program in programs:
            program.communicate("\n", timeout=10)
        decode = AvroDeserializer(registry)
        records = [(m.key().decode(), decode(m.value())) for m in read_until_idle(own_topics, PROFILES.full_name(own_topics.topics.prefix))]
        yield {"pod": pod, "inside": programs[0].pid, "outside": programs[1].pid, "records": records, "settings": own_topics}
    finally:
        for program in programs:
            if program.poll() is None:
                program.kill()
        subprocess.run(["ip", "netns", "delete", pod], check=False)


def _stacks(records, kind, pid):
    field = "samples" if kind == ON_CPU else "off_cpu_ns"
    return [(s["tid"], s["stack"], s[field]) for _, r in records if r["kind"] == kind and r["pid"] == pid for s in r["stacks"]]


def test_the_pod_s_process_is_profiled_with_its_workload_and_shares(run):
    mine = [(key, r) for key, r in run["records"] if r["pid"] == run["inside"]]
    assert mine, f"no profile of pid {run['inside']} among {sorted({r['pid'] for _, r in run['records']})}"
    for key, record in mine:
        assert key == f"{HOST}|{run['inside']}"
        assert (record["workload"], record["comm"], record["host"], record["sample_hz"]) == (run["pod"], "shares", HOST, 99)
        assert record["netns_inode"] == os.stat(f"/run/netns/{run['pod']}").st_ino
        assert record["window_start"] < record["window_end"]
        assert record["profile_id"] == f"{HOST}|{run['inside']}|{record['kind']}|{record['window_start']}"
    on_cpu = _stacks(run["records"], ON_CPU, run["inside"])
    total = sum(n for _, _, n in on_cpu)
    assert total == sum(r["total_samples"] for _, r in mine if r["kind"] == ON_CPU)
    heavy = sum(n for _, stack, n in on_cpu if ";heavy;" in stack)
    light = sum(n for _, stack, n in on_cpu if ";light;" in stack)
    assert total >= 150  # 3 s at 99 Hz (297), with room for a busy machine
    assert abs(heavy / (heavy + light) - 0.75) <= 0.10, (heavy, light)


def test_the_sleeping_thread_shows_its_second_off_cpu(run):
    asleep = [(tid, ns) for tid, stack, ns in _stacks(run["records"], OFF_CPU, run["inside"]) if "clock_nanosleep" in stack]
    assert len({tid for tid, _ in asleep}) == 1 and asleep[0][0] != run["inside"]  # the second thread, not main
    assert 0.95e9 <= sum(ns for _, ns in asleep) <= 1.2e9


def test_processes_outside_the_watched_namespaces_are_not_profiled(run):
    assert all(r["workload"] == run["pod"] for _, r in run["records"])
    assert not [r for _, r in run["records"] if r["pid"] == run["outside"]]


def _tracetap(settings, *args):
    env = dict(os.environ, TRACETAP_TOPICS__PREFIX=settings.topics.prefix,
               TRACETAP_ELASTICSEARCH__INDEX_PREFIX=settings.elasticsearch.index_prefix)
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def indexed(run):
    sink = _tracetap(run["settings"], "sink", "elasticsearch", "--topic", "profiles", "--exit-when-idle", "3")
    assert sink.returncode == 0, sink.stderr[-2000:]
    assert f"profiles={len(run['records'])})" in sink.stdout
    return run


def test_tracetap_profile_draws_the_workload_s_flame_graph(indexed, tmp_path):
    output = tmp_path / "flame.svg"
    result = _tracetap(indexed["settings"], "profile", "--workload", indexed["pod"], "--since", "10m", "--output", str(output))
    assert result.returncode == 0, result.stderr
    assert f"on-CPU profile of workload {indexed['pod']}" in result.stdout and "burn" in result.stdout  # where the samples were
    svg = ET.parse(output).getroot()
    assert svg.tag == "{http://www.w3.org/2000/svg}svg"
    titles = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}title")]
    heavy = next(t for t in titles if t.startswith("heavy "))
    light = next(t for t in titles if t.startswith("light "))
    share = [float(re.search(r"([0-9.]+)%\)$", t).group(1)) for t in (heavy, light)]  # "heavy (212 samples, 70.20%)"
    assert abs(share[0] / sum(share) - 0.75) <= 0.10, (heavy, light)


def test_tracetap_profile_gives_a_thread_s_off_cpu_time_as_speedscope(indexed):
    tids = {tid for tid, stack, _ in _stacks(indexed["records"], OFF_CPU, indexed["inside"]) if "clock_nanosleep" in stack}
    result = _tracetap(indexed["settings"], "profile", "--pid", str(indexed["inside"]), "--tid", str(tids.pop()), "--off-cpu",
                       "--since", "10m", "--format", "speedscope")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)  # the summary went to stderr
    frames = [f["name"] for f in document["shared"]["frames"]]
    profile = document["profiles"][0]
    assert profile["unit"] == "nanoseconds" and "__x64_sys_clock_nanosleep_[k]" in frames
    asleep = sum(w for s, w in zip(profile["samples"], profile["weights"]) if "__x64_sys_clock_nanosleep_[k]" in (frames[i] for i in s))
    assert 0.95e9 <= asleep <= 1.2e9


def test_tracetap_profile_says_when_there_is_nothing_to_draw(indexed, tmp_path):
    result = _tracetap(indexed["settings"], "profile", "--workload", "no-such-pod", "--output", str(tmp_path / "none.svg"))
    assert result.returncode == 1 and "no on-CPU profile of workload no-such-pod" in result.stderr
    assert not Path(tmp_path / "none.svg").exists()
