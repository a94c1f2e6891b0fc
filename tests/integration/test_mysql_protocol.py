"""MySQL protocol forms beyond plain queries, against a real mariadbd: the compressed protocol (`mariadb --compress`),
multi-statements, a capture that starts after the login on a non-standard port (a pooled connection behind ProxySQL),
and COM_FIELD_LIST from a client speaking the protocol by hand. Bytes are recorded through a relay; expected values
are the statements the test ran and the bytes the server sent."""

import hashlib
import socket
import struct
import subprocess
import time

import pytest

from tests import servers
from tests.integration.test_sql_kafka_parsers import _assemble
from tests.recording import RecordingRelay
from tests.unit.test_mysql_parser import _inflated
from tracetap.assembly import SocketAssembler
from tracetap.model import SocketData
from tracetap.protocols import detect
from tracetap.protocols.mysql import MYSQL
from tracetap.redact import StreamRedactor

# mariadb sends `USE` as SELECT DATABASE() then COM_INIT_DB; DELIMITER makes the two SELECTs one COM_QUERY
SCRIPT = """CREATE DATABASE {database};
USE {database};
CREATE TABLE t (id INT, name VARCHAR(20));
INSERT INTO t VALUES (1, 'a'), (2, 'b');
SELECT REPEAT('x', 100000);
SELECT seq FROM seq_1_to_20000;
SELECT * FROM nope;
DELIMITER //
SELECT 1; SELECT name FROM t WHERE id = 2 //
DELIMITER ;
SELECT 2;
"""


def _expected(database: str) -> list[tuple]:
    return [("LOGIN", None, 0, None), ("CREATE", f"CREATE DATABASE {database}", 0, None), ("SELECT", "SELECT DATABASE()", 0, None),
            ("INIT_DB", database, 0, None), ("CREATE", "CREATE TABLE t (id INT, name VARCHAR(?))", 0, None),
            ("INSERT", "INSERT INTO t VALUES (?, ?), (?, ?)", 0, None), ("SELECT", "SELECT REPEAT(?, ?)", 0, None),
            ("SELECT", "SELECT seq FROM seq_1_to_20000", 0, None), ("SELECT", "SELECT * FROM nope", 1146, "CLIENT_ERROR"),
            ("SELECT", "SELECT ?; SELECT name FROM t WHERE id = ?", 0, None), ("SELECT", "SELECT ?", 0, None)]


@pytest.fixture(scope="module")
def mariadb(tmp_path_factory):
    with servers.mariadb(str(tmp_path_factory.mktemp("mysql"))) as port:
        yield port


def _run_script(port: int, database: str, *options: str) -> RecordingRelay:
    relay = RecordingRelay(port)
    done = subprocess.run(["mariadb", *options, "-h", "127.0.0.1", "-P", str(relay.port), "-u", "root", "--force"],
                          input=SCRIPT.format(database=database).encode(), capture_output=True, timeout=60)
    assert b"20000\n" in done.stdout and b"ERROR 1146" in done.stderr
    time.sleep(0.3)
    relay.close()
    return relay


def _answers(relay: RecordingRelay) -> list[int]:
    """Bytes the server sent after each client chunk, until the client's next one (the client waits for each answer)."""
    answers: list[int] = []
    for direction, data in relay.chunks:
        if direction == "c2s":
            answers.append(0)
        elif answers:
            answers[-1] += len(data)
    return answers


@pytest.fixture(scope="module")
def compressed(mariadb):
    return _run_script(mariadb, "zipped", "--compress")


@pytest.fixture(scope="module")
def plain(mariadb):
    return _run_script(mariadb, "shop")


def test_compressed_protocol_gives_the_spans_the_script_ran(compressed):
    chunks = compressed.chunks
    # the greeting, login and its OK are plain; every command after them is a compressed packet (3-byte length, sequence 0, 3-byte raw length)
    assert [d for d, _ in chunks[:3]] == ["s2c", "c2s", "s2c"] and chunks[2][1][4] == 0
    command = chunks[3][1]
    assert int.from_bytes(command[:3], "little") == len(command) - 7 and command[3] == 0
    assembler, spans = _assemble(compressed, 3306)
    assert assembler.protocol is MYSQL and assembler.counters.malformed == 0
    assert [(s.request_type, s.request_resource, s.response_code, s.error_class) for s in spans] == _expected("zipped")
    assert all(s.attributes.get("mysql.compressed") == "true" for s in spans[1:])
    # the big results span several compressed packets; each response is every byte the server sent for it
    answers = _answers(compressed)
    for resource in ("SELECT REPEAT(?, ?)", "SELECT seq FROM seq_1_to_20000"):
        index = next(i for i, s in enumerate(spans) if s.request_resource == resource)
        assert spans[index].response_bytes == answers[index] > 0
    assert next(s for s in spans if s.request_resource == "SELECT REPEAT(?, ?)").response_bytes < 100_000  # zlib on the wire
    nope = next(s for s in spans if s.request_resource == "SELECT * FROM nope")
    assert "doesn't exist" in nope.response_message and nope.attributes.get("sql.sqlstate") == "42S02"


def test_plain_protocol_reads_a_multi_statement_as_one_response(plain):
    assembler, spans = _assemble(plain, 3306)
    assert [(s.request_type, s.request_resource, s.response_code, s.error_class) for s in spans] == _expected("shop")
    assert assembler.counters.malformed == 0
    answers = _answers(plain)
    multi = next(i for i, s in enumerate(spans) if s.request_resource == "SELECT ?; SELECT name FROM t WHERE id = ?")
    assert spans[multi].response_bytes == answers[multi]


def _after_login(relay: RecordingRelay) -> list[tuple[str, bytes]]:
    """The conversation from the first command on: a pooled connection the capture joined after its handshake."""
    chunks = relay.chunks
    assert [d for d, _ in chunks[:3]] == ["s2c", "c2s", "s2c"] and chunks[2][1][4] == 0  # greeting, login, OK
    return chunks[3:]


@pytest.mark.parametrize("recording", ["plain", "compressed"])
def test_a_capture_joining_after_the_login_on_a_proxysql_port_detects_the_queries(recording, request):
    relay = request.getfixturevalue(recording)
    chunks = _after_login(relay)
    # from its structure alone, on any port; ProxySQL's port breaks the tie with HTTP/2, whose frame check a compressed
    # packet can pass (a DATA frame header: 3-byte length, type 0, flags 0 when stored uncompressed)
    assert MYSQL.detect(chunks[0][1], 40000) and detect("TCP", chunks[0][1], 6033) is MYSQL
    assembler, spans, sent, t = SocketAssembler(), [], {"c2s": 0, "s2c": 0}, 10_000
    for direction, data in chunks:  # role UNKNOWN: the direction comes from what detection recognised
        t += 1000
        spans += assembler.add(SocketData("node", t, t + 10, 1, 1, "client", 3, direction == "c2s", len(data), "TCP", "127.0.0.1",
                                          50000, "127.0.0.1", 6033, "UNKNOWN", data, 1 + sent[direction], None))
        sent[direction] += len(data)
    spans += assembler.close(t + 1)
    assert assembler.protocol is MYSQL and assembler.counters.malformed == 0
    assert [(s.request_type, s.request_resource, s.response_code, s.error_class) for s in spans] == _expected("zipped" if recording == "compressed" else "shop")[1:]


def _packet(sock: socket.socket) -> bytes:
    header = _exactly(sock, 4)
    return header + _exactly(sock, int.from_bytes(header[:3], "little"))


def _exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        more = sock.recv(size - len(data))
        assert more, "the server closed the connection"
        data += more
    return data


def _command(sock: socket.socket, payload: bytes, field_list: bool = False) -> list[bytes]:
    """Send a command; read its answer: one OK/ERR, a result set (count, definitions, EOF, rows, EOF) or, for
    COM_FIELD_LIST, definitions up to an EOF (no CLIENT_DEPRECATE_EOF is asked for)."""
    sock.sendall(len(payload).to_bytes(3, "little") + b"\0" + payload)
    packets = [_packet(sock)]
    if packets[0][4] in (0x00, 0xFF) and not field_list:
        return packets
    eofs = 1 if field_list else 2
    while packets[-1][4] != 0xFF and sum(p[4] == 0xFE and len(p) < 13 for p in packets) < eofs:
        packets.append(_packet(sock))
    return packets


def test_com_field_list_is_read_to_its_eof_and_the_next_query_keeps_its_response(mariadb):
    relay = RecordingRelay(mariadb)
    with socket.create_connection(("127.0.0.1", relay.port)) as sock:
        _packet(sock)  # the greeting
        capabilities = 0x1 | 0x200 | 0x8000 | 0x80000  # LONG_PASSWORD, PROTOCOL_41, SECURE_CONNECTION, PLUGIN_AUTH
        login = struct.pack("<IIB", capabilities, 1 << 24, 33) + bytes(23) + b"root\0" + b"\0" + b"mysql_native_password\0"
        sock.sendall(len(login).to_bytes(3, "little") + b"\x01" + login)
        assert _packet(sock)[4] == 0  # root has no password
        _command(sock, b"\x03CREATE DATABASE catalog")
        _command(sock, b"\x03CREATE TABLE catalog.items (id INT, label VARCHAR(10), price DECIMAL(8,2))")
        _command(sock, b"\x02catalog")
        fields = _command(sock, b"\x04items\0", field_list=True)
        assert [p[4:8] for p in fields[:3]] == [b"\x03def"] * 3 and fields[3][4] == 0xFE  # three definitions, EOF
        _command(sock, b"\x03SELECT label FROM items WHERE id = 7")
        assert _command(sock, b"\x04missing\0", field_list=True)[0][4] == 0xFF
        _command(sock, b"\x03SELECT 8")
        sock.sendall(b"\x01\0\0\0\x01")  # COM_QUIT
        time.sleep(0.3)
    relay.close()
    assembler, spans = _assemble(relay, 13306)
    assert assembler.protocol is MYSQL and assembler.counters.malformed == 0
    assert [(s.request_type, s.request_resource, s.response_code, s.error_class) for s in spans[1:]] == [
        ("CREATE", "CREATE DATABASE catalog", 0, None),
        ("CREATE", "CREATE TABLE catalog.items (id INT, label VARCHAR(?), price DECIMAL(?,?))", 0, None),
        ("INIT_DB", "catalog", 0, None), ("FIELD_LIST", "items", 0, None),
        ("SELECT", "SELECT label FROM items WHERE id = ?", 0, None), ("FIELD_LIST", "missing", 1146, "CLIENT_ERROR"),
        ("SELECT", "SELECT ?", 0, None)]  # COM_QUIT expects no answer: no span
    field_list = spans[4]
    assert field_list.response_bytes == sum(len(p) for p in fields)


@pytest.mark.parametrize("options", ["", "--compress"])
def test_the_interactive_clients_field_lists_on_connect_are_read_whole(mariadb, options):
    """Interactive (under a pty) with --auto-rehash, mariadb lists the tables and each table's fields (COM_FIELD_LIST)."""
    database = "rehash" + options.strip("-")
    subprocess.run(["mariadb", "-h", "127.0.0.1", "-P", str(mariadb), "-u", "root", "-e",
                    f"CREATE DATABASE {database}; CREATE TABLE {database}.items (id INT, label VARCHAR(10)); "
                    f"CREATE TABLE {database}.owners (id INT)"], check=True, timeout=30)
    relay = RecordingRelay(mariadb)
    command = f"mariadb {options} --auto-rehash -h 127.0.0.1 -P {relay.port} -u root {database}"
    subprocess.run(["script", "-qc", command, "/dev/null"], input=b"SELECT 41;\nexit\n", capture_output=True, timeout=30)
    time.sleep(0.3)
    relay.close()
    assembler, spans = _assemble(relay, 3306)
    assert assembler.protocol is MYSQL and assembler.counters.malformed == 0
    assert [(s.request_type, s.request_resource, s.response_code, s.error_class) for s in spans[1:]] == [
        ("SHOW", "show databases", 0, None), ("SHOW", "show tables", 0, None), ("FIELD_LIST", "items", 0, None),
        ("FIELD_LIST", "owners", 0, None), ("SELECT", "select @@version_comment limit ?", 0, None), ("SELECT", "SELECT ?", 0, None)]
    answers = _answers(relay)
    assert [s.response_bytes for s in spans[1:]] == answers[1:-1]  # the last client chunk is COM_QUIT


def test_compressed_passwords_are_masked_before_they_leave_and_other_statements_still_parse(mariadb):
    first, second = "Zlib-secret-99", "Other-pw-77"
    script = (f"CREATE USER IF NOT EXISTS 'reporting'@'localhost' IDENTIFIED BY '{first}';\n"  # long enough to travel deflated
              f"SET PASSWORD FOR 'reporting'@'localhost' = PASSWORD('{second}');\n"
              "SHOW GRANTS FOR 'reporting'@'localhost';\nSELECT REPEAT('y', 50000);\nSELECT 1;\n")
    relay = RecordingRelay(mariadb)
    done = subprocess.run(["mariadb", "--compress", "-h", "127.0.0.1", "-P", str(relay.port), "-u", "root", "--force"],
                          input=script.encode(), capture_output=True, timeout=30)
    # the server shows the account's hash: mysql_native_password's '*' + SHA1(SHA1(password)), upper-case hex
    hashed = "*" + hashlib.sha1(hashlib.sha1(second.encode()).digest()).hexdigest().upper()
    assert hashed.encode() in done.stdout
    time.sleep(0.3)
    relay.close()
    redactors = {"c2s": StreamRedactor(), "s2c": StreamRedactor()}
    redacted = [(direction, redactors[direction].redact(data)[0]) for direction, data in relay.chunks]

    def after_login(chunks, direction):  # the compressed packets: after the greeting, the login and its OK
        return b"".join(data for d, data in chunks[3:] if d == direction)

    assert first.encode() in _inflated(after_login(relay.chunks, "c2s")) and hashed.encode() in _inflated(after_login(relay.chunks, "s2c"))
    for direction in redactors:
        stream = after_login(redacted, direction)
        for secret in (first.encode(), second.encode(), hashed.encode()):
            assert secret not in stream and secret not in _inflated(stream)
    relay.chunks[:] = redacted
    _, spans = _assemble(relay, 3306)
    kept = [(s.request_type, s.request_resource, s.response_code) for s in spans]
    assert ("SELECT", "SELECT REPEAT(?, ?)", 0) in kept and ("SELECT", "SELECT ?", 0) in kept
