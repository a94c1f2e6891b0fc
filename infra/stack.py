"""`tracetap stack`: Kafka (KRaft), Apicurio Registry and Elasticsearch as local processes.

Artifacts come from Maven Central through infra/pom.xml into <state>/dist, data and logs live
under <state>, and `up` returns only when every server answers its real health check.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from infra import processes
from infra.components import ES_SYSTEM_USER, Component, Elasticsearch, Health, Kafka, Registry, versions
from tracetap.config import StackSettings
from tracetap.errors import TracetapError

log = logging.getLogger("tracetap.stack")

Progress = Callable[[str], None]


class StackError(TracetapError):
    """The local stack cannot start or stop; the message says what and how to fix it."""


@dataclass(frozen=True, slots=True)
class ComponentStatus:
    name: str
    ports: list[int]
    pid: int | None
    health: Health
    url: str


class LocalStack:
    def __init__(self, settings: StackSettings, state_dir: Path, progress: Progress | None = None) -> None:
        self.settings = settings
        self.state = state_dir
        self.progress = progress or (lambda line: None)
        java_home = self._java_home()
        self.components: list[Component] = [cls(settings, state_dir, java_home) for cls in (Kafka, Registry, Elasticsearch)]

    # install ---------------------------------------------------------------------------------
    def flink_jars(self) -> list[Path]:
        """The Kafka connector jars the PyFlink job ships (fetched by `install`)."""
        v = versions()
        lib = self.state / "dist" / "flink-lib"
        return [lib / f"flink-connector-kafka-{v['flink.kafka.connector']}.jar", lib / f"kafka-clients-{v['kafka']}.jar"]

    def install(self) -> bool:
        """Fetch and unpack the server artifacts and the Flink connector if missing; True if anything was fetched."""
        if all(c.installed() for c in self.components) and all(jar.is_file() for jar in self.flink_jars()):
            return False
        mvn = shutil.which("mvn")
        if mvn is None:
            raise StackError("mvn not found: install Maven (apt-get install maven) to fetch the servers from Maven Central")
        dist = self.state / "dist"
        dist.mkdir(parents=True, exist_ok=True)
        v = versions()
        self.progress(f"fetching Kafka {v['kafka']}, Apicurio Registry {v['apicurio']} and Elasticsearch "
                      f"{v['elasticsearch']} (and Flink's Kafka connector) from Maven Central into {dist} (about 300 MB the first time)")
        started = time.monotonic()
        with resources.as_file(resources.files("infra").joinpath("pom.xml")) as pom:
            result = subprocess.run(
                [mvn, "-B", "-q", "-ntp", "-f", str(pom), f"-Dmaven.repo.local={self.state / 'm2'}",
                 f"-Dstack.dir={dist}", f"-Dproject.build.directory={self.state / 'build'}", "generate-resources"],
                capture_output=True, text=True)
        if result.returncode != 0:
            errors = [line for line in (result.stdout + result.stderr).splitlines() if "[ERROR]" in line]
            raise StackError(f"Maven could not fetch the server artifacts: {errors[0] if errors else result.stderr.strip()[-300:]} "
                             f"(check that Maven Central is reachable; run again to resume)")
        self._unpack(dist / "archives" / f"apicurio-registry-app-{v['apicurio']}-all.tar.gz", dist / f"apicurio-registry-{v['apicurio']}")
        self._unpack(dist / "archives" / f"elasticsearch-{v['elasticsearch']}.zip", dist / f"elasticsearch-{v['elasticsearch']}")
        self.progress(f"fetched and unpacked the servers in {time.monotonic() - started:.0f} s")
        return True

    def _unpack(self, archive: Path, target: Path) -> None:
        if target.is_dir():
            return
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        if archive.name.endswith(".zip"):
            command = ["unzip", "-q", str(archive), "-d", str(partial)]
        else:
            command = ["tar", "-xzf", str(archive), "-C", str(partial)]
        if shutil.which(command[0]) is None:
            raise StackError(f"{command[0]} not found: install it (apt-get install {command[0]}) to unpack {archive.name}")
        subprocess.run(command, check=True)
        entries = list(partial.iterdir())
        source = entries[0] if len(entries) == 1 and entries[0].is_dir() else partial  # strip one top-level folder
        source.rename(target)
        shutil.rmtree(partial, ignore_errors=True)

    # up / down ---------------------------------------------------------------------------------
    def up(self) -> list[ComponentStatus]:
        self.install()
        to_start = []
        for component in self.components:
            pid = processes.read_pid(component.pid_file)
            if pid is not None:
                self.progress(f"{component.name}: already running (pid {pid})")
                continue
            for port in component.ports:
                if processes.port_in_use(port):
                    owner = processes.listener_of(port)
                    raise StackError(f"port {port} for {component.name} is already in use"
                                     f"{' by ' + owner if owner else ''}: stop that process or choose another port "
                                     f"(stack.{component.name}_port in the config, or TRACETAP_STACK__{component.name.upper()}_PORT)")
            to_start.append(component)
        if any(c.run_as() for c in to_start):
            _ensure_system_user(ES_SYSTEM_USER)
            _check_traversable(self.state)
        for component in to_start:
            component.prepare()
            pid = processes.start(component.command(), log_file=component.log_file, pid_file=component.pid_file,
                                  cwd=component.dist, env=component.env(), user=component.run_as())
            self.progress(f"{component.name}: started (pid {pid}), waiting for it to answer")
            log.debug("component started component=%s pid=%d log=%s", component.name, pid, component.log_file)
        self._wait_healthy(self.components)
        return self.status()

    def _wait_healthy(self, components: list[Component]) -> None:
        started = time.monotonic()
        deadline = started + self.settings.start_timeout_s
        waiting = {c.name: c for c in components}
        last_report = started
        while waiting:
            for name, component in list(waiting.items()):
                pid = processes.read_pid(component.pid_file)
                if pid is None or processes.exited(pid):
                    raise StackError(f"{name} exited while starting; last lines of {component.log_file}:\n{_tail(component.log_file)}")
                health = component.health()
                if health.ok:
                    self.progress(f"{name}: up after {time.monotonic() - started:.1f} s ({health.detail})")
                    del waiting[name]
            if not waiting:
                break
            now = time.monotonic()
            if now > deadline:
                names = ", ".join(waiting)
                tails = "\n".join(f"--- {c.log_file}\n{_tail(c.log_file)}" for c in waiting.values())
                raise StackError(f"{names} not healthy after {self.settings.start_timeout_s:.0f} s "
                                 f"(raise stack.start_timeout_s, or read the logs):\n{tails}")
            if now - last_report >= 10:
                self.progress(f"waiting for {', '.join(waiting)} ({now - started:.0f} s)")
                last_report = now
            time.sleep(0.5)

    def down(self) -> list[str]:
        """Stop every running component, the registry and broker last (clients go first)."""
        stopped = []
        for component in reversed(self.components):
            pid = processes.read_pid(component.pid_file)
            if pid is None:
                continue
            started = time.monotonic()
            clean = processes.stop(pid, timeout_s=60)
            component.pid_file.unlink(missing_ok=True)
            how = "stopped" if clean else "killed after 60 s"
            self.progress(f"{component.name}: {how} (pid {pid}, {time.monotonic() - started:.1f} s)")
            stopped.append(component.name)
        return stopped

    def status(self) -> list[ComponentStatus]:
        out = []
        for component in self.components:
            pid = processes.read_pid(component.pid_file)
            health = component.health() if pid is not None else Health(False, "not running")
            out.append(ComponentStatus(component.name, component.ports, pid, health, component.url))
        return out

    def log_files(self) -> dict[str, Path]:
        return {c.name: c.log_file for c in self.components}

    # java ----------------------------------------------------------------------------------------
    def _java_home(self) -> Path:
        if self.settings.java_home is not None:
            home = self.settings.java_home.expanduser()
        else:
            java = shutil.which("java")
            if java is None:
                raise StackError("java not found: install a Java 17+ runtime (apt-get install openjdk-17-jre-headless) "
                                 "or set stack.java_home")
            home = Path(os.path.realpath(java)).parent.parent
        if not (home / "bin" / "java").is_file():
            raise StackError(f"stack.java_home={home} has no bin/java")
        return home


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _ensure_system_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
        log.info("created system user user=%s reason=elasticsearch-refuses-root", name)


def _check_traversable(state: Path) -> None:
    """The unprivileged server user must reach <state>; say which parent stops it rather than chmod it."""
    for path in [state, *state.parents]:
        if path.exists() and not path.stat().st_mode & 0o001:
            raise StackError(f"{path} is not searchable by other users, so Elasticsearch (running as {ES_SYSTEM_USER}, "
                             f"it refuses root) cannot reach {state}: use a state dir under /var/lib (the default for root) "
                             f"or run chmod o+x {path}")


def stream_log(path: Path, follow: bool, lines: int = 50) -> None:
    """Print the last lines of a log and optionally follow it (`tracetap stack logs -f`)."""
    if not path.exists():
        raise StackError(f"no log at {path}: the component has not been started")
    sys.stdout.write(_tail(path, lines) + "\n")
    if not follow:
        return
    with open(path, errors="replace") as handle:
        handle.seek(0, os.SEEK_END)
        while True:
            line = handle.readline()
            if line:
                sys.stdout.write(line)
                sys.stdout.flush()
            else:
                time.sleep(0.3)
