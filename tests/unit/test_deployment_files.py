"""infra/docker-compose.yml cannot run here (no Docker engine): check what can be checked statically."""

import re
from pathlib import Path

import pytest
import yaml

from infra.components import versions

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "infra" / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
ONE_SHOT = {name for name, s in SERVICES.items() if s.get("restart") in (None, "no", "on-failure")}


def _image(name):
    return SERVICES[name]["image"]


def test_server_images_match_the_local_stack_versions():
    v = versions()
    assert _image("kafka") == f"apache/kafka:{v['kafka']}"
    assert _image("registry") == f"apicurio/apicurio-registry:{v['apicurio']}"
    assert _image("elasticsearch").endswith(f"elasticsearch:{v['elasticsearch']}")
    assert _image("kibana").endswith(f"kibana:{v['elasticsearch']}")


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_image_is_pinned(name):
    image = SERVICES[name].get("image", "")
    if "build" in SERVICES[name] or image.startswith("${"):
        return  # built from the repo's Dockerfile
    assert re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest"), image


@pytest.mark.parametrize("name", sorted(n for n, s in SERVICES.items() if "profiles" not in s))
def test_every_long_running_server_has_a_healthcheck(name):
    if name in ONE_SHOT:
        return
    assert "healthcheck" in SERVICES[name]


def test_no_secret_is_written_into_the_file():
    checked = 0
    for name, service in SERVICES.items():
        env = service.get("environment") or {}
        items = env.items() if isinstance(env, dict) else (e.split("=", 1) for e in env)
        for key, value in items:
            if re.search(r"PASSWORD|API_KEY|SECRET", key) and value:
                assert str(value).startswith("${") and ":?" in str(value), f"{name}.{key} must come from the environment"
                checked += 1
    assert checked >= 3  # Elasticsearch, Kibana, the registry database and the tracetap services all take one


def test_the_image_fetches_the_flink_connector_the_local_stack_uses():
    dockerfile = (ROOT / "Dockerfile").read_text()
    v = versions()
    assert f"ARG FLINK_KAFKA_CONNECTOR_VERSION={v['flink.kafka.connector']}\n" in dockerfile
    assert f"ARG KAFKA_VERSION={v['kafka']}\n" in dockerfile


def test_the_flink_cluster_runs_from_the_tracetap_image_and_the_job_is_submitted_to_it():
    for name in ("flink-jobmanager", "flink-taskmanager"):
        assert "build" in SERVICES[name] and SERVICES[name]["entrypoint"][1:] == ["/src/infra/flink-cluster.sh", name.split("-")[1]]
    job = SERVICES["streams-flink"]["command"]
    assert job[:2] == ["streams", "flink"] and job[job.index("--jobmanager") + 1] == "flink-jobmanager:8081"
    assert "pipeline-flink" in SERVICES["topics"]["profiles"] and "pipeline-flink" in SERVICES["sink-elasticsearch"]["profiles"]
