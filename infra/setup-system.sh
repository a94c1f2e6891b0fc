#!/usr/bin/env bash
# Installs the Debian packages tracetap needs, only those missing (idempotent, quiet when done).
# Run as root, or with sudo available. Called by `make setup`.
set -euo pipefail

packages=(
  openjdk-17-jre-headless   # Kafka, Apicurio Registry and Elasticsearch run on Java 17
  maven                     # resolves the servers from Maven Central (infra/pom.xml)
  unzip tar                 # unpack the Elasticsearch and Apicurio archives
  iproute2                  # `ip netns` for the agent tests (the pods) and address tags
  python3-venv              # the project virtualenv
  python3-bpfcc bpfcc-tools # bcc for the eBPF agent, imported into .venv from Debian
  linux-headers-amd64       # bcc compiles against headers; struct offsets still come from BTF
  redis-server dnsmasq      # a real Redis and DNS server for the agent tests and the demo
  nftables                  # the demo cluster's Services: ClusterIPs DNATed to pods, as kube-proxy does
  tshark                    # the packet agent decodes through it (pyshark drives tshark)
  postgresql mariadb-server # real database servers for the SQL parser tests (not started as services)
  nginx-light wrk           # benchmarks/ebpf_agent.py: the agent's overhead on a web server under load
)

missing=()
for pkg in "${packages[@]}"; do
  [[ "$pkg" == \#* ]] && continue
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done

kernel_links() {
  # This kernel has no packaged headers: point bcc at Debian's newest (only macros and types it
  # needs to compile; every struct offset the agent uses is read from BTF at run time).
  [ "$(id -u)" -eq 0 ] || return 0
  local modules="/lib/modules/$(uname -r)"
  local build source
  build=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1)
  source=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1)
  if [ -n "$build" ] && [ -n "$source" ]; then
    mkdir -p "$modules"
    [ -e "$modules/build" ] || ln -sfn "$build" "$modules/build"
    [ -e "$modules/source" ] || ln -sfn "$source" "$modules/source"
  fi
  mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
  mountpoint -q /sys/kernel/debug || mount -t debugfs nodev /sys/kernel/debug 2>/dev/null || true
}

if [ ${#missing[@]} -eq 0 ]; then
  kernel_links
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
    echo "setup: missing Debian packages: ${missing[*]}; run as root: apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

echo "setup: installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Package lists older than a day may point at files the mirror no longer has.
if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -n1)" ]; then
  $sudo apt-get update -qq
fi
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
kernel_links
