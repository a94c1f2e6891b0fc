"""A component whose Kafka is not there, or whose topics are not applied yet, stops at start with one line
naming what is missing and the fix: exit 69 for a server that does not answer, 78 for missing topics.
(The agents' cases, which need root, are in tests/e2e/test_agent_requirements.py.)"""

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.recording import free_port

REPO = Path(__file__).resolve().parents[2]
COMMANDS = {
    "faust": ["streams", "faust", "--web-port", "0"],
    "flink": ["streams", "flink", "--bounded"],
    "sink": ["sink", "elasticsearch", "--exit-when-idle", "1"],
    "topics apply": ["topics", "apply"],
}


def _start(args, env):
    return subprocess.Popen([sys.executable, "-m", "cli.main", *args], cwd=REPO, env=dict(os.environ, **env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish_all(processes, timeout_s):
    """Run side by side (each waits out the check's timeout); returns name -> (code, stderr lines, seconds)."""
    started = time.monotonic()
    results = {}
    for name, process in processes.items():
        _, err = process.communicate(timeout=timeout_s)
        results[name] = (process.returncode, err.strip().splitlines(), time.monotonic() - started)
    return results


def test_with_kafka_unreachable_each_command_exits_69_with_one_line(stack):
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    env = {"TRACETAP_KAFKA__BOOTSTRAP_SERVERS": address}
    results = _finish_all({name: _start(args, env) for name, args in COMMANDS.items()}, timeout_s=90)
    for name, (code, lines, seconds) in results.items():
        assert code == 69, (name, lines)
        assert len(lines) == 1 and lines[0].startswith(f"tracetap: Kafka at {address} did not answer within 10 s"), (name, lines)
        assert "tracetap stack status" in lines[0] and "Connection refused" in lines[0], (name, lines)
        assert seconds < 45, (name, seconds)  # the 10 s check and the imports, not a hang


def test_before_topics_apply_the_stream_jobs_and_the_sink_exit_78_naming_the_topics(settings):
    prefix = f"{settings.topics.prefix}never-applied."
    env = {"TRACETAP_TOPICS__PREFIX": prefix}
    results = _finish_all({name: _start(COMMANDS[name], env) for name in ("faust", "flink", "sink")}, timeout_s=90)
    for name, (code, lines, _) in results.items():
        assert code == 78, (name, lines)
        assert len(lines) == 1 and "do not exist on Kafka at 127.0.0.1:9092" in lines[0], (name, lines)
        assert "run `tracetap topics apply`" in lines[0], (name, lines)
    assert "11 of the 11 topics this needs" in results["faust"][1][0] and f"({prefix}raw.socket-data, " in results["faust"][1][0]
    assert "7 of the 7 topics this needs" in results["sink"][1][0] and f"({prefix}spans, " in results["sink"][1][0]
