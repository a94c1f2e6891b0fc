"""Real database servers for tests, started as processes from Debian's packages on free ports."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator

from tests.recording import free_port, wait_for_port


@contextlib.contextmanager
def postgres(auth: str = "trust", user: str = "tracetap", password: str | None = None) -> Iterator[int]:
    """A postgres on 127.0.0.1 (its port); `auth` is initdb's method (trust, md5, scram-sha-256)."""
    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    assert binaries, "PostgreSQL is installed by make setup (Debian package postgresql)"
    bindir = os.path.dirname(binaries[-1])
    data = tempfile.mkdtemp(prefix="tracetap-pg-")  # not under pytest's root-only tmp: postgres refuses to run as root
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    command = [*as_postgres, f"{bindir}/initdb", "-D", data, "-U", user, f"--auth={auth}"]
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
    with tempfile.NamedTemporaryFile("w", prefix="tracetap-pgpw-") as pwfile:  # initdb wants an empty data directory
        if password is not None:
            pwfile.write(password)
            pwfile.flush()
            os.chmod(pwfile.name, 0o644)
            command.append(f"--pwfile={pwfile.name}")
        subprocess.run(command, check=True, capture_output=True)
    port = free_port()
    server = subprocess.Popen([*as_postgres, f"{bindir}/postgres", "-D", data, "-p", str(port), "-k", data,
                               "-c", "listen_addresses=127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        time.sleep(0.5)
        yield port
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(data, ignore_errors=True)


@contextlib.contextmanager
def mariadb(data: str) -> Iterator[int]:
    """A mariadbd with its data in `data` (its port); root logs in with a password set by the test."""
    assert shutil.which("mariadbd"), "MariaDB is installed by make setup (Debian package mariadb-server)"
    subprocess.run(["mariadb-install-db", f"--datadir={data}", "--user=root", "--auth-root-authentication-method=normal",
                    "--skip-test-db"], check=True, capture_output=True)
    port = free_port()
    server = subprocess.Popen(["mariadbd", f"--datadir={data}", "--user=root", f"--port={port}", "--bind-address=127.0.0.1",
                               f"--socket={data}/mysqld.sock", "--skip-networking=0", f"--pid-file={data}/mysqld.pid"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield port
    finally:
        server.terminate()
        server.wait(30)
