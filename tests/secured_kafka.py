"""A second Kafka broker for the tests that need security: one KRaft node from the Kafka the local stack
installed, with a SASL_SSL listener (SCRAM-SHA-512 users created at format time) and an SSL listener that
requires a client certificate, a CA and certificates made by the test, on ports and a log dir of its own.
Only Kafka is secured; the registry and Elasticsearch are the stack's."""

from __future__ import annotations

import base64
import dataclasses
import re
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tests.certs import Issued, TestCA
from tests.recording import free_port

USER = "tracetap"
PASSWORD = "tracetap-secret-1"
_BROKER_USER = "broker"
_BROKER_PASSWORD = "broker-secret-1"
CLIENT_KEY_PASSWORD = "client-key-secret-1"


@dataclass
class SecuredBroker:
    port: int  # SASL_SSL
    ssl_port: int  # SSL with a client certificate
    controller_port: int
    ca: TestCA
    client: Issued  # a client certificate the CA signed, its key encrypted with CLIENT_KEY_PASSWORD
    log_file: Path
    process: subprocess.Popen

    @property
    def ca_file(self) -> Path:
        return self.ca.ca_file

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self, password: str = PASSWORD) -> dict[str, str]:
        """The TRACETAP_KAFKA__* overrides a user would set to reach this broker."""
        return {"TRACETAP_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap, "TRACETAP_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
                "TRACETAP_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512", "TRACETAP_KAFKA__SASL_USERNAME": USER,
                "TRACETAP_KAFKA__SASL_PASSWORD": password, "TRACETAP_KAFKA__SSL_CA_LOCATION": str(self.ca_file)}

    def mtls_env(self, key_password: str = CLIENT_KEY_PASSWORD) -> dict[str, str]:
        """The overrides for the SSL listener: a client certificate and its encrypted key instead of SASL."""
        return {"TRACETAP_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{self.ssl_port}", "TRACETAP_KAFKA__SECURITY_PROTOCOL": "SSL",
                "TRACETAP_KAFKA__SSL_CA_LOCATION": str(self.ca_file),
                "TRACETAP_KAFKA__SSL_CERTIFICATE_LOCATION": str(self.client.cert_file),
                "TRACETAP_KAFKA__SSL_KEY_LOCATION": str(self.client.key_file), "TRACETAP_KAFKA__SSL_KEY_PASSWORD": key_password}

    def settings(self, base, env: dict[str, str] | None = None):
        """`base` with its Kafka section pointed here (by default at the SASL_SSL listener), built through the
        environment overrides a user would set."""
        from tracetap.config import load_settings

        kafka = load_settings({}, env if env is not None else self.env()).kafka
        return dataclasses.replace(base, kafka=kafka)

    def pause(self) -> None:
        """The broker stops answering (connections stay open): an outage as clients see one."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self, timeout_s: float = 60.0) -> None:
        """It answers again (the tests after the one that paused it find it as before)."""
        self.process.send_signal(signal.SIGCONT)
        _wait_until_answering(self, timeout_s)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGCONT)
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 30) -> str:
        """The broker's complaints (ERROR lines and their causes) if it has any, else its last lines."""
        try:
            text = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        complaints = [line for line in text if re.search(r" ERROR |^Caused by", line)]
        return "\n".join((complaints or text)[-lines:])


def start_secured_broker(kafka_dist: Path, java: str, workdir: Path, timeout_s: float = 90.0) -> SecuredBroker:
    """Certificates, configuration, storage formatted with the SCRAM users, then the broker, once it answers
    a SASL_SSL client; on failure the error carries the broker's log tail."""
    workdir.mkdir(parents=True, exist_ok=True)
    ca = TestCA(workdir / "tls")
    keystore = ca.issue("broker", key_first=True).cert_file
    client = ca.issue("client", key_password=CLIENT_KEY_PASSWORD)
    port, ssl_port, controller_port = free_port(), free_port(), free_port()
    config = workdir / "server.properties"
    config.write_text(_server_properties(port, ssl_port, controller_port, workdir / "data", ca.ca_file, keystore))
    log4j = workdir / "log4j.properties"
    log4j.write_text(resources.files("infra").joinpath("templates", "kafka-log4j.properties").read_text().format())
    classpath = ["-cp", f"{kafka_dist / 'libs'}/*", f"-Dlog4j.configuration=file:{log4j}"]
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    formatted = subprocess.run([java, *classpath, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config),
                                "--add-scram", f"SCRAM-SHA-512=[name={_BROKER_USER},password={_BROKER_PASSWORD}]",
                                "--add-scram", f"SCRAM-SHA-512=[name={USER},password={PASSWORD}]"],
                               capture_output=True, text=True, timeout=120)
    if formatted.returncode != 0:
        raise RuntimeError(f"kafka-storage format failed: {formatted.stdout[-2000:]} {formatted.stderr[-2000:]}")
    log_file = workdir / "broker.log"
    with open(log_file, "w") as log:
        process = subprocess.Popen([java, "-Xms256m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                                    "-Djava.awt.headless=true", *classpath, "kafka.Kafka", str(config)],
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    broker = SecuredBroker(port, ssl_port, controller_port, ca, client, log_file, process)
    try:
        _wait_until_answering(broker, timeout_s)
    except BaseException:
        broker.stop()
        raise
    return broker


def _wait_until_answering(broker: SecuredBroker, timeout_s: float) -> None:
    from confluent_kafka.admin import AdminClient

    from tracetap.config import load_settings
    from schemas.kafka import client_config

    conf = client_config(load_settings({}, broker.env()).kafka, **{"socket.timeout.ms": 2000, "log_level": 0})
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        if broker.process.poll() is not None:
            raise RuntimeError(f"the secured broker exited with {broker.process.returncode}; its log:\n{broker.log_tail()}")
        try:
            if AdminClient(conf).list_topics(timeout=2).brokers:
                return
        except Exception as exc:  # KafkaException while it boots
            last = exc
        time.sleep(0.5)
    raise RuntimeError(f"the secured broker did not answer within {timeout_s:.0f} s (last: {last}); its log:\n{broker.log_tail()}")


def _server_properties(port: int, ssl_port: int, controller_port: int, data_dir: Path, ca_file: Path, keystore: Path) -> str:
    jaas = (f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{_BROKER_USER}" '
            f'password="{_BROKER_PASSWORD}";')
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
        f"listeners=SASL_SSL://127.0.0.1:{port},SSL://127.0.0.1:{ssl_port},CONTROLLER://127.0.0.1:{controller_port}",
        f"advertised.listeners=SASL_SSL://127.0.0.1:{port},SSL://127.0.0.1:{ssl_port}",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL",
        "listener.name.ssl.ssl.client.auth=required",
        "inter.broker.listener.name=SASL_SSL",
        "sasl.enabled.mechanisms=SCRAM-SHA-512",
        "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
        f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={jaas}",
        "ssl.keystore.type=PEM",
        f"ssl.keystore.location={keystore}",
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={ca_file}",
        f"log.dirs={data_dir}",
        "num.partitions=1",
        "auto.create.topics.enable=false",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=3",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "transaction.state.log.num.partitions=3",
        "group.initial.rebalance.delay.ms=0",
        # Its own controller must not fence it for a pause (SIGSTOP in a test): that would move every partition.
        "broker.session.timeout.ms=120000",
        "",
    ])
