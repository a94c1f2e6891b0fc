"""The local stack's three servers: how each is laid out, configured, started and health-checked.

All three run from artifacts that Maven resolved from Maven Central (see infra/pom.xml) on the
machine's Java 17. Versions live in the pom; this module reads them from there.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import urllib.error
import urllib.request
import uuid
import base64
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from tracetap.config import StackSettings

# Elasticsearch refuses to run as root; as root we run it as this system user.
ES_SYSTEM_USER = "tracetap-es"


@cache
def versions() -> dict[str, str]:
    """Versions pinned in infra/pom.xml: kafka, apicurio, elasticsearch, flink.kafka.connector."""
    pom = ET.fromstring(resources.files("infra").joinpath("pom.xml").read_bytes())
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    props = pom.find("m:properties", ns)
    assert props is not None
    return {name: props.findtext(f"m:{name}.version", namespaces=ns) or "" for name in ("kafka", "apicurio", "elasticsearch", "flink.kafka.connector")}


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str


class Component:
    name: str  # also the prefix of its settings: <name>_heap_mb, <name>_port
    dist_name: str  # unpacked folder under <state>/dist, suffixed with the version
    version_key: str  # key in versions()

    def __init__(self, stack: StackSettings, state_dir: Path, java_home: Path) -> None:
        self.settings = stack
        self.state = state_dir
        self.java_home = java_home

    # Layout -----------------------------------------------------------------------------
    @property
    def heap_mb(self) -> int:
        return getattr(self.settings, f"{self.name}_heap_mb")

    @property
    def dist(self) -> Path:
        return self.state / "dist" / f"{self.dist_name}-{versions()[self.version_key]}"

    @property
    def data_dir(self) -> Path:
        return self.state / "data" / self.name

    @property
    def conf_dir(self) -> Path:
        return self.state / "conf" / self.name

    @property
    def log_file(self) -> Path:
        return self.state / "logs" / f"{self.name}.log"

    @property
    def pid_file(self) -> Path:
        return self.state / "run" / f"{self.name}.pid"

    @property
    def ports(self) -> list[int]:
        raise NotImplementedError

    @property
    def url(self) -> str:
        raise NotImplementedError

    # Lifecycle ----------------------------------------------------------------------------
    def installed(self) -> bool:
        return self.dist.is_dir()

    def prepare(self) -> None:
        """Write configuration and initialise storage; idempotent."""

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["JAVA_HOME"] = str(self.java_home)
        return env

    def run_as(self) -> str | None:
        return None

    def health(self) -> Health:
        raise NotImplementedError

    @property
    def java(self) -> str:
        return str(self.java_home / "bin" / "java")


class Kafka(Component):
    name = "kafka"
    dist_name = "kafka"
    version_key = "kafka"

    @property
    def ports(self) -> list[int]:
        return [self.settings.kafka_port, self.settings.kafka_controller_port]

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.settings.kafka_port}"

    def installed(self) -> bool:
        return (self.dist / "libs").is_dir() and any((self.dist / "libs").glob("kafka_2.13-*.jar"))

    def prepare(self) -> None:
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        (self.conf_dir / "server.properties").write_text(_render("kafka-server.properties", {
            "port": self.settings.kafka_port,
            "controller_port": self.settings.kafka_controller_port,
            "data_dir": self.data_dir,
        }))
        (self.conf_dir / "log4j.properties").write_text(_render("kafka-log4j.properties", {}))
        if not (self.data_dir / "meta.properties").exists():
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            subprocess.run(
                [self.java, "-cp", f"{self.dist / 'libs'}/*", f"-Dlog4j.configuration=file:{self.conf_dir / 'log4j.properties'}",
                 "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(self.conf_dir / "server.properties")],
                check=True, capture_output=True, timeout=120)

    def command(self) -> list[str]:
        return [self.java, f"-Xms{min(self.heap_mb, 512)}m", f"-Xmx{self.heap_mb}m", "-XX:+UseG1GC",
                "-Djava.awt.headless=true", f"-Dlog4j.configuration=file:{self.conf_dir / 'log4j.properties'}",
                f"-Dkafka.logs.dir={self.state / 'logs'}",
                "-cp", f"{self.dist / 'libs'}/*", "kafka.Kafka", str(self.conf_dir / "server.properties")]

    def health(self) -> Health:
        from confluent_kafka.admin import AdminClient  # only the health check needs a client
        admin = AdminClient({"bootstrap.servers": self.url, "socket.timeout.ms": 2000, "log_level": 0,
                             "logger": _SilentLogger()})
        try:
            metadata = admin.list_topics(timeout=2)
        except Exception as exc:  # KafkaException while the broker boots
            return Health(False, f"no metadata yet ({exc})")
        return Health(bool(metadata.brokers), f"{len(metadata.brokers)} broker, {len(metadata.topics)} topics")


class Registry(Component):
    name = "registry"
    dist_name = "apicurio-registry"
    version_key = "apicurio"

    @property
    def ports(self) -> list[int]:
        return [self.settings.registry_port]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.registry_port}/apis/ccompat/v7"

    def installed(self) -> bool:
        return (self.dist / f"apicurio-registry-app-{versions()['apicurio']}-runner.jar").is_file()

    def command(self) -> list[str]:
        db = self.data_dir / "registry"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = {
            "quarkus.http.host": "127.0.0.1",
            "quarkus.http.port": self.settings.registry_port,
            "quarkus.banner.enabled": "false",
            "quarkus.http.access-log.enabled": "false",
            "quarkus.log.level": "WARN",
            "quarkus.log.category.\"io.quarkus\".level": "INFO",
            "apicurio.storage.kind": "sql",
            "apicurio.storage.sql.kind": "h2",
            # WRITE_DELAY=0: a schema acknowledged before a crash must survive it.
            "apicurio.datasource.url": f"jdbc:h2:file:{db};WRITE_DELAY=0",
            "apicurio.datasource.username": "sa",
            "apicurio.datasource.password": "sa",
            "apicurio.datasource.jdbc.initial-size": 2,
            "apicurio.datasource.jdbc.min-size": 2,
            "apicurio.datasource.jdbc.max-size": 10,
            "apicurio.storage.snapshot.location": self.data_dir / "snapshots",
            "apicurio.import.work-dir": self.data_dir / "import",
        }
        return [self.java, "-Xms64m", f"-Xmx{self.heap_mb}m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                *(f"-D{k}={v}" for k, v in props.items()),
                "-jar", str(self.dist / f"apicurio-registry-app-{versions()['apicurio']}-runner.jar")]

    def health(self) -> Health:
        status, body = _http_get(f"{self.url}/subjects")
        if status == 200:
            return Health(True, f"ccompat API answers, {len(json.loads(body))} subjects")
        return Health(False, f"ccompat API: {body[:120] if status else body}")


class Elasticsearch(Component):
    name = "elasticsearch"
    dist_name = "elasticsearch"
    version_key = "elasticsearch"

    @property
    def ports(self) -> list[int]:
        return [self.settings.elasticsearch_port, self.settings.elasticsearch_transport_port]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.elasticsearch_port}"

    def installed(self) -> bool:
        return (self.dist / "bin" / "elasticsearch").is_file()

    def prepare(self) -> None:
        # The server writes its keystore next to its config: give it a fresh copy on every start.
        shutil.rmtree(self.conf_dir, ignore_errors=True)
        shutil.copytree(self.dist / "config", self.conf_dir)
        (self.conf_dir / "elasticsearch.yml").write_text(_render("elasticsearch.yml", {
            "port": self.settings.elasticsearch_port,
            "transport_port": self.settings.elasticsearch_transport_port,
            "data_dir": self.data_dir,
            "logs_dir": self.state / "logs" / "elasticsearch",
        }))
        (self.conf_dir / "jvm.options.d").mkdir(exist_ok=True)
        (self.conf_dir / "jvm.options.d" / "heap.options").write_text(f"-Xms{self.heap_mb}m\n-Xmx{self.heap_mb}m\n")
        for path in (self.data_dir, self.state / "logs" / "elasticsearch", self.state / "tmp" / "elasticsearch"):
            path.mkdir(parents=True, exist_ok=True)
        user = self.run_as()
        if user:
            ids = pwd.getpwnam(user)
            for root in (self.conf_dir, self.data_dir, self.state / "logs" / "elasticsearch", self.state / "tmp" / "elasticsearch"):
                _chown_tree(root, ids.pw_uid, ids.pw_gid)

    def command(self) -> list[str]:
        return [str(self.dist / "bin" / "elasticsearch")]

    def env(self) -> dict[str, str]:
        env = super().env()
        env.update({"ES_JAVA_HOME": str(self.java_home), "ES_PATH_CONF": str(self.conf_dir),
                    "ES_TMPDIR": str(self.state / "tmp" / "elasticsearch")})
        env.pop("ES_JAVA_OPTS", None)
        return env

    def run_as(self) -> str | None:
        return ES_SYSTEM_USER if os.geteuid() == 0 else None

    def health(self) -> Health:
        status, body = _http_get(f"{self.url}/_cluster/health?wait_for_status=yellow&timeout=1s")
        if status != 200:
            return Health(False, body[:120] if status else body)
        cluster = json.loads(body)
        return Health(cluster["status"] in ("green", "yellow"), f"cluster {cluster['status']}")


def _render(template: str, values: dict[str, object]) -> str:
    text = resources.files("infra").joinpath("templates", template).read_text()
    return text.format(**values)


def _http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        return 0, f"not answering ({getattr(exc, 'reason', exc)})"


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            os.chown(os.path.join(base, name), uid, gid, follow_symlinks=False)


class _SilentLogger:
    """librdkafka logs every refused connection while the broker boots; health checks stay quiet."""

    def log(self, *args: object) -> None:
        pass
