"""The local stack: real health, clear errors, state that survives a restart."""

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from infra import processes
from infra.stack import LocalStack, StackError
from schemas.registry import SchemaRegistry

REPO = Path(__file__).resolve().parents[2]


def test_status_reports_every_server_healthy_with_its_pid(stack):
    statuses = {s.name: s for s in stack.status()}
    assert set(statuses) == {"kafka", "registry", "elasticsearch"}
    for status in statuses.values():
        assert status.health.ok, status
        assert status.pid is not None and Path(f"/proc/{status.pid}").exists()
    assert "cluster" in statuses["elasticsearch"].health.detail


def test_a_taken_port_is_reported_with_its_owner(base_settings, tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        settings = dataclasses.replace(base_settings.stack, kafka_port=port, kafka_controller_port=port + 1 if port < 65535 else port - 1)
        stack = LocalStack(settings, tmp_path)
        for component in stack.components:  # pretend installed: the port check comes before anything starts
            component.installed = lambda: True
        with pytest.raises(StackError) as error:
            stack.up()
    message = str(error.value)
    assert f"port {port} for kafka is already in use by pid {os.getpid()}" in message
    assert "TRACETAP_STACK__KAFKA_PORT" in message


def test_a_missing_java_is_reported(base_settings, tmp_path):
    settings = dataclasses.replace(base_settings.stack, java_home=tmp_path / "no-jdk")
    with pytest.raises(StackError, match="has no bin/java"):
        LocalStack(settings, tmp_path)


def test_registry_schemas_survive_a_restart(stack, settings, registry, topics):
    subject = f"restart-{os.getpid()}-value"
    schema = {"type": "record", "name": "R", "fields": [{"name": "a", "type": "string"}]}
    schema_id = registry.register(subject, schema)
    registry.set_compatibility(subject, "BACKWARD")

    pid = processes.read_pid(stack.components[1].pid_file)
    assert stack.components[1].name == "registry" and pid is not None
    processes.stop(pid, timeout_s=30)
    stack.up()  # restarts only what is down

    fresh = SchemaRegistry(settings.registry)
    assert fresh.schema_by_id(schema_id)["name"] == "R"
    assert fresh.register(subject, schema) == schema_id
    assert fresh.compatibility(subject) == "BACKWARD"


def test_cli_status_exits_zero_when_all_are_up(stack):
    result = subprocess.run([sys.executable, "-m", "cli.main", "stack", "status", "--json"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert '"healthy": true' in result.stdout
