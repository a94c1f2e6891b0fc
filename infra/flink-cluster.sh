#!/usr/bin/env bash
# Runs a Flink JobManager or TaskManager from the Flink distribution inside apache-flink (PyFlink), so the
# TaskManagers' Python workers run the same Python, PyFlink and tracetap as the job's client.
# infra/docker-compose.yml runs the flink-* services with it from the tracetap image; it works the same
# on a host with tracetap installed (`.venv/bin/python` first on PATH).
#
#   FLINK_PROPERTIES="jobmanager.rpc.address: localhost" infra/flink-cluster.sh jobmanager|taskmanager
#
# FLINK_PROPERTIES holds Flink settings, one "key: value" per line (as the official images take them);
# each becomes a -D dynamic property of the process.
set -euo pipefail

role=${1:?usage: flink-cluster.sh jobmanager|taskmanager}
python=${PYTHON:-python}
home=$("$python" -c 'import os, pyflink; print(os.path.dirname(os.path.abspath(pyflink.__file__)))')
args=()
while IFS= read -r line; do
  line=${line%%#*}
  [[ -z "${line//[[:space:]]/}" ]] && continue
  key=${line%%:*}
  value=${line#*:}
  args+=(-D "${key//[[:space:]]/}=${value#"${value%%[![:space:]]*}"}")
done <<< "${FLINK_PROPERTIES:-}"
# The TaskManagers start their Python workers with `python` (a job's python.executable, by default): make that
# the interpreter that has tracetap.
interpreter=$(command -v "$python")
export PATH="$(dirname "$interpreter"):$PATH"
args+=(-D "python.executable=$interpreter")
export FLINK_HOME=$home
export FLINK_CONF_DIR=${FLINK_CONF_DIR:-$home/conf}
export FLINK_LOG_DIR=${FLINK_LOG_DIR:-/tmp/flink-$role-log}
mkdir -p "$FLINK_LOG_DIR"
case $role in
  jobmanager) exec bash "$home/bin/jobmanager.sh" start-foreground "${args[@]}" ;;
  taskmanager) exec bash "$home/bin/taskmanager.sh" start-foreground "${args[@]}" ;;
  *) echo "flink-cluster.sh: unknown role $role (jobmanager or taskmanager)" >&2; exit 2 ;;
esac
