# syntax=docker/dockerfile:1
#
# tracetap: one image for every tracetap command (topics, sinks, stream jobs, agents).
#
#   docker build -t tracetap:local .
#   docker run --rm tracetap:local config show
#
# infra/docker-compose.yml builds this image and runs each command as its own service.

# The Flink job's Kafka connector, from Maven Central (the versions of infra/pom.xml; a test keeps them equal).
FROM maven:3.9-eclipse-temurin-17 AS flink-connector
ARG FLINK_KAFKA_CONNECTOR_VERSION=3.4.0-1.20
ARG KAFKA_VERSION=3.9.1
RUN set -eux; \
    mvn -B -q -ntp dependency:copy -Dartifact=org.apache.flink:flink-connector-kafka:${FLINK_KAFKA_CONNECTOR_VERSION} -DoutputDirectory=/flink-lib; \
    mvn -B -q -ntp dependency:copy -Dartifact=org.apache.kafka:kafka-clients:${KAFKA_VERSION} -DoutputDirectory=/flink-lib

FROM python:3.11-slim-bookworm

LABEL org.opencontainers.image.title="tracetap" \
      org.opencontainers.image.description="Zero-code observability pipeline on Kafka: eBPF and packet agents, Avro contracts, stream jobs, Elasticsearch sink." \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# System packages the agents need, from Debian bookworm:
#   tshark                      packet capture and dissection for `tracetap agent packets` (pyshark drives it)
#   python3-bpfcc, bpfcc-tools  BCC, the eBPF toolkit behind `tracetap agent ebpf`
#   openjdk-17-jre-headless     Java for `tracetap streams flink` (PyFlink's client) and the Flink cluster
#                               compose runs from this image (infra/flink-cluster.sh)
# BCC is packaged for Debian's own /usr/bin/python3 only. It is pure Python over libbcc (ctypes), and
# bookworm's python3 is 3.11 as well, so linking the package into this image's site-packages lets
# /usr/local/bin/python import it; the `import bcc` below fails the build if that ever stops holding.
# Versions are not pinned: they follow bookworm's point and security updates on each rebuild.
# hadolint ignore=DL3008
RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        tshark \
        python3-bpfcc \
        bpfcc-tools \
        openjdk-17-jre-headless; \
    rm -rf /var/lib/apt/lists/*; \
    ln -s /usr/lib/python3/dist-packages/bcc /usr/local/lib/python3.11/site-packages/bcc; \
    python -c "import bcc"

# The project itself. Every dependency ships wheels for CPython 3.11, so no compiler is needed.
WORKDIR /src
COPY . .
RUN set -eux; \
    pip install --no-cache-dir .; \
    tracetap --help > /dev/null

COPY --from=flink-connector /flink-lib /opt/tracetap/flink-lib

# Run from a neutral directory: the CLI reads ./tracetap.toml when present.
WORKDIR /var/lib/tracetap

# No USER: the image runs as root on purpose. `tracetap agent ebpf` loads eBPF programs and attaches
# kprobes/uprobes through BCC, which in practice needs uid 0 and not just capabilities: it reads
# root-only host files (tracefs under /sys/kernel/debug, symbol addresses in /proc/kallsyms, other
# processes' /proc/<pid>/maps for uprobes) and compose runs it privileged in the host PID namespace.
# `tracetap agent packets` likewise opens raw sockets through dumpcap. The other services share the
# image and are confined by the container instead: no added capabilities, compose network only.

# The sink and the stream jobs shut down cleanly on SIGINT (KeyboardInterrupt: flush, commit offsets,
# close the consumer); with the default SIGTERM `docker stop` would skip that.
STOPSIGNAL SIGINT

ENTRYPOINT ["tracetap"]
CMD ["--help"]
