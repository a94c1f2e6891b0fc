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


@contextlib.contextmanager
def nginx_h2c() -> Iterator[int]:
    """An nginx serving HTTP/2 in cleartext (prior knowledge) on 127.0.0.1 (its port): /index.html (200),
    anything missing (404), /fail (503), /teapot (418)."""
    with _nginx("http2") as port:
        yield port


@contextlib.contextmanager
def nginx_https(cert_file: str, key_file: str) -> Iterator[int]:
    """An nginx serving HTTPS/1.1 (OpenSSL, TLS 1.2 and 1.3) on 127.0.0.1 (its port), with nginx_h2c's paths."""
    tls = f"        ssl_certificate {cert_file};\n        ssl_certificate_key {key_file};\n        ssl_protocols TLSv1.2 TLSv1.3;\n"
    with _nginx("ssl", tls) as port:
        yield port


@contextlib.contextmanager
def _nginx(listen: str, server_extra: str = "") -> Iterator[int]:
    assert shutil.which("nginx"), "nginx is installed by make setup (Debian package nginx)"
    root = tempfile.mkdtemp(prefix="tracetap-nginx-")  # not under pytest's root-only tmp: nginx's workers run as www-data
    www = os.path.join(root, "www")
    os.makedirs(www, exist_ok=True)
    with open(os.path.join(www, "index.html"), "w") as f:
        f.write(f"<html><body>tracetap {listen}</body></html>\n")
    for d in (root, www):
        os.chmod(d, 0o755)
    port = free_port()
    temp = "".join(f"    {k}_temp_path {root}/{k};\n" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = os.path.join(root, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
{temp}    server {{
        listen 127.0.0.1:{port} {listen};
{server_extra}        root {www};
        location = /fail {{ return 503; }}
        location = /teapot {{ return 418; }}
        location / {{ }}
    }}
}}
""")
    server = subprocess.Popen(["nginx", "-c", conf, "-p", root], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield port
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def grpc_echo() -> Iterator[int]:
    """A grpcio server (no generated code: raw bytes in and out) on 127.0.0.1 (its port), service demo.Echo:
    Say (unary; the request b"missing" fails NOT_FOUND "no such thing"), Count (server streaming: n replies),
    Sum (client streaming), Chat (bidirectional)."""
    from concurrent import futures

    import grpc

    def say(request, context):
        if request == b"missing":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        return b"hello " + request

    def count(request, context):
        for i in range(int(request)):
            yield str(i).encode()

    def total(requests, context):
        return str(sum(int(r) for r in requests)).encode()

    def chat(requests, context):
        for r in requests:
            yield r.upper()

    handlers = {"Say": grpc.unary_unary_rpc_method_handler(say), "Count": grpc.unary_stream_rpc_method_handler(count),
                "Sum": grpc.stream_unary_rpc_method_handler(total), "Chat": grpc.stream_stream_rpc_method_handler(chat)}
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("demo.Echo", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(None)
