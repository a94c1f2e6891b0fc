"""Payload redaction: secrets are masked in place, lengths never change, everything else stays byte-exact.

HTTP inputs are the bytes http.client and http.server really put on the wire; the Redis, MySQL and
PostgreSQL messages are built by hand from the protocol specifications.
"""

import base64
import dataclasses
import hashlib
import http.client
import http.cookies
import http.server
import queue
import socket
import struct
import threading

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tracetap.redact import DEFAULT_RULES, SWITCHES, RedactionRules, redact

MASK = ord("*")
RULES = list(SWITCHES)


def _after(payload: bytes, marker: bytes, length: int) -> range:
    """Positions of the `length` bytes that follow the first `marker`."""
    start = payload.index(marker) + len(marker)
    return range(start, start + length)


def _assert_masked_exactly(original: bytes, redacted: bytes, *secrets: range, mask: int = MASK) -> None:
    """Same length; every position in `secrets` holds the mask byte; every other byte is unchanged."""
    assert len(redacted) == len(original)
    secret_positions = {i for span in secrets for i in span}
    for i, (before, after) in enumerate(zip(original, redacted)):
        if i in secret_positions:
            assert after == mask, f"byte {i} of a secret survived"
        else:
            assert after == before, f"byte {i} outside the secrets changed"


# --- real HTTP bytes -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def capture_request():
    """Send a GET with http.client to a local server; return the raw request bytes the server received."""
    listener = socket.create_server(("127.0.0.1", 0))
    received: queue.Queue[bytes] = queue.Queue()

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # the listener was closed: the module is done
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                received.put(data)
                conn.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    port = listener.getsockname()[1]

    def send(headers: dict[str, str]) -> bytes:
        client = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            client.request("GET", "/orders?id=42", headers=headers)
            client.getresponse().read()
        finally:
            client.close()
        return received.get(timeout=5)

    yield send
    listener.close()


@pytest.fixture(scope="module")
def capture_response():
    """Have http.server answer with Set-Cookie headers; return the raw response bytes the client received."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            cookie = http.cookies.SimpleCookie()
            cookie["id"] = self.path.partition("?")[2]
            cookie["id"]["path"] = "/"
            cookie["id"]["httponly"] = True
            cookie["id"]["max-age"] = 3600
            cookie["theme"] = "dark"
            self.send_response(200)
            for morsel in cookie.values():
                self.send_header("Set-Cookie", morsel.OutputString())
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def fetch(session_id: str) -> bytes:
        with socket.create_connection(server.server_address, timeout=5) as conn:
            conn.sendall(f"GET /login?{session_id} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
        return data

    yield fetch
    server.shutdown()
    server.server_close()


def _basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def test_a_request_without_secrets_is_returned_unchanged(capture_request):
    request = capture_request({"Accept": "application/json", "X-Request-Id": "0f9c2b7e"})

    assert redact(request) == (request, 0)


def test_authorization_keeps_the_scheme_and_masks_the_credentials(capture_request):
    credentials = _basic("alice", "s3cr3t-pa55")
    request = capture_request({"Authorization": f"Basic {credentials}"})

    redacted, regions = redact(request)

    assert regions == 1
    assert b"\r\nAuthorization: Basic " + b"*" * len(credentials) + b"\r\n" in redacted
    assert credentials.encode() not in redacted
    _assert_masked_exactly(request, redacted, _after(request, b"Authorization: Basic ", len(credentials)))


def test_cookie_keeps_the_names_and_masks_each_value(capture_request):
    request = capture_request({"Cookie": "a=1; sess=abc"})

    redacted, regions = redact(request)

    assert regions == 2
    assert b"\r\nCookie: a=*; sess=***\r\n" in redacted
    _assert_masked_exactly(request, redacted, _after(request, b"a=", 1), _after(request, b"sess=", 3))


def test_authorization_and_cookie_in_one_request_count_three_regions(capture_request):
    request = capture_request({"Authorization": f"Basic {_basic('bob', 'hunter2')}", "Cookie": "a=1; sess=abc"})

    assert redact(request)[1] == 3


def test_proxy_authorization_keeps_the_scheme_and_masks_the_credentials(capture_request):
    token = "eyJhbGciOiJIUzI1NiJ9.e30.sig"
    request = capture_request({"Proxy-Authorization": f"Bearer {token}"})

    redacted, regions = redact(request)

    assert regions == 1
    assert b"\r\nProxy-Authorization: Bearer " + b"*" * len(token) + b"\r\n" in redacted


def test_set_cookie_masks_cookie_values_and_keeps_the_attributes(capture_response):
    response = capture_response("7f3a9c1e2b")

    redacted, regions = redact(response)

    assert regions == 2
    assert b"\r\nSet-Cookie: id=**********; HttpOnly; Max-Age=3600; Path=/\r\n" in redacted
    assert b"\r\nSet-Cookie: theme=****\r\n" in redacted
    assert b"7f3a9c1e2b" not in redacted


def test_set_cookie_masks_a_cookie_joined_onto_an_attribute_with_a_comma():
    response = b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1; Path=/, b=secret; HttpOnly\r\n\r\n"

    redacted, _ = redact(response)

    assert b"secret" not in redacted
    assert b"Set-Cookie: a=*; Path=" in redacted


def test_header_names_match_case_insensitively_and_only_at_line_starts():
    payload = b"get / HTTP/1.1\r\nAUTHORIZATION: bearer tok3n\r\nx-cookie: a=keep\r\n\r\nthe cookie: a=keep\n"

    redacted, regions = redact(payload)

    assert regions == 1
    assert redacted == payload.replace(b"tok3n", b"*****")


def test_a_header_at_the_very_start_of_a_prefix_is_masked():
    redacted, regions = redact(b"Cookie: sess=abc\r\nAccept: */*\r\n\r\n")

    assert (redacted, regions) == (b"Cookie: sess=***\r\nAccept: */*\r\n\r\n", 1)


def test_an_authorization_value_without_a_scheme_is_masked_whole():
    assert redact(b"GET / HTTP/1.1\r\nAuthorization: 9f86d081884c7d659a2feaa0c55ad015\r\n\r\n")[0].count(b"*") == 32


def test_pipelined_requests_are_all_masked(capture_request):
    first = capture_request({"Authorization": "Bearer first-token"})
    second = capture_request({"Cookie": "sess=second-session"})

    redacted, regions = redact(first + second)

    assert regions == 2
    assert b"first-token" not in redacted and b"second-session" not in redacted


def test_a_header_cut_mid_value_is_masked_to_the_end_of_the_prefix(capture_request):
    request = capture_request({"Authorization": "Bearer abcdefghijklmnop"})
    cut = request[:request.index(b"abcdefghijklmnop") + 7]

    redacted, regions = redact(cut)

    assert regions == 1
    assert redacted.endswith(b"Authorization: Bearer *******")


def test_a_cut_between_cr_and_lf_leaves_the_cr():
    assert redact(b"Cookie: a=xyz\r") == (b"Cookie: a=***\r", 1)


def test_obs_fold_continuation_lines_of_a_credential_are_masked():
    payload = b"GET / HTTP/1.1\r\nAuthorization: Digest username=\"bob\",\r\n response=\"6629fae49393a053\"\r\n\r\n"

    redacted, _ = redact(payload)

    assert b"bob" not in redacted and b"6629fae49393a053" not in redacted
    assert b"Authorization: Digest " in redacted and redacted.count(b"\r\n") == payload.count(b"\r\n")


# --- Redis ---------------------------------------------------------------------------------------------


def _resp(*args: bytes) -> bytes:
    """A command as redis-py sends it: a RESP array of bulk strings, `*<n>\\r\\n` then `$<len>\\r\\n<arg>\\r\\n`."""
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in args)


def test_the_resp_helper_writes_what_redis_py_sends():
    assert _resp(b"AUTH", b"pw") == b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n"
    assert _resp(b"AUTH", b"user", b"pw") == b"*3\r\n$4\r\nAUTH\r\n$4\r\nuser\r\n$2\r\npw\r\n"


def test_redis_auth_password_is_masked_and_the_framing_kept():
    assert redact(b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n") == (b"*2\r\n$4\r\nAUTH\r\n$2\r\n**\r\n", 1)


def test_redis_auth_with_a_user_masks_the_password_and_keeps_the_user():
    payload = _resp(b"AUTH", b"default", b"correct-horse")

    redacted, regions = redact(payload)

    assert regions == 1
    assert redacted == _resp(b"AUTH", b"default", b"*************")


def test_redis_auth_after_pipelined_commands_is_masked_case_insensitively():
    payload = _resp(b"CLIENT", b"SETNAME", b"worker-1") + _resp(b"auth", b"s3cret") + _resp(b"PING")

    redacted, regions = redact(payload)

    assert regions == 1
    assert redacted == _resp(b"CLIENT", b"SETNAME", b"worker-1") + _resp(b"auth", b"******") + _resp(b"PING")


def test_redis_hello_with_auth_masks_the_password():
    payload = _resp(b"HELLO", b"3", b"AUTH", b"app", b"s3cret", b"SETNAME", b"api")

    assert redact(payload) == (_resp(b"HELLO", b"3", b"AUTH", b"app", b"******", b"SETNAME", b"api"), 1)


def test_redis_inline_auth_is_masked_to_the_end_of_the_line():
    assert redact(b"PING\r\nAUTH s3cret\r\nPING\r\n") == (b"PING\r\nAUTH ******\r\nPING\r\n", 1)


def test_redis_auth_cut_inside_the_password_is_masked_to_the_end():
    payload = _resp(b"AUTH", b"app", b"s3cret")[:-5]

    assert redact(payload) == (payload[:-3] + b"***", 1)


# --- MySQL ---------------------------------------------------------------------------------------------

CLIENT_CONNECT_WITH_DB = 0x0000_0008
CLIENT_PROTOCOL_41 = 0x0000_0200
CLIENT_SECURE_CONNECTION = 0x0000_8000
CLIENT_PLUGIN_AUTH = 0x0008_0000
CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA = 0x0020_0000
MYSQL_8_CLIENT = 0x000F_A685 | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA  # what the mysql 8 CLI advertises, roughly


def _native_password_scramble(password: bytes, nonce: bytes) -> bytes:
    """mysql_native_password: SHA1(password) XOR SHA1(nonce + SHA1(SHA1(password)))."""
    stage1 = hashlib.sha1(password).digest()
    mix = hashlib.sha1(nonce + hashlib.sha1(stage1).digest()).digest()
    return bytes(a ^ b for a, b in zip(stage1, mix))


def _handshake_response(user: bytes, auth: bytes, capabilities: int, *, sequence_id: int = 1,
                        database: bytes | None = None, filler: bytes = bytes(23)) -> bytes:
    """A HandshakeResponse41 packet (MySQL client/server protocol, connection phase):

        int<3> payload length, int<1> sequence id             -- packet header
        int<4> capability flags (CLIENT_PROTOCOL_41 set)
        int<4> max packet size, int<1> character set
        string[23] filler, all zeros
        string<NUL> user name
        auth-response: lenenc-prefixed if CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA,
                       else 1-byte length if CLIENT_SECURE_CONNECTION, else string<NUL>
        string<NUL> database                                  -- if CLIENT_CONNECT_WITH_DB
        string<NUL> auth plugin name                          -- if CLIENT_PLUGIN_AUTH
    """
    if capabilities & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
        assert len(auth) < 0xFB  # a one-byte lenenc integer is enough here
        auth_field = bytes([len(auth)]) + auth
    elif capabilities & CLIENT_SECURE_CONNECTION:
        auth_field = bytes([len(auth)]) + auth
    else:
        auth_field = auth + b"\0"
    body = struct.pack("<IIB", capabilities | (CLIENT_CONNECT_WITH_DB if database else 0), 16 * 1024 * 1024, 255)
    body += filler + user + b"\0" + auth_field
    if database:
        body += database + b"\0"
    if capabilities & CLIENT_PLUGIN_AUTH:
        body += b"mysql_native_password\0"
    return struct.pack("<I", len(body))[:3] + bytes([sequence_id]) + body


MYSQL_ENCODINGS = {
    "lenenc": MYSQL_8_CLIENT,
    "one-byte-length": CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH,
    "nul-terminated": CLIENT_PROTOCOL_41,
}


@pytest.mark.parametrize("capabilities", MYSQL_ENCODINGS.values(), ids=MYSQL_ENCODINGS.keys())
def test_mysql_handshake_response_masks_the_auth_response_only(capabilities):
    auth = b"clear-text-pw" if capabilities == CLIENT_PROTOCOL_41 else _native_password_scramble(b"pw", b"n" * 20)
    packet = _handshake_response(b"app", auth, capabilities, database=b"orders")

    length_prefix = 0 if capabilities == CLIENT_PROTOCOL_41 else 1
    start = packet.index(b"app\0") + 4 + length_prefix

    redacted, regions = redact(packet)

    assert regions == 1
    _assert_masked_exactly(packet, redacted, range(start, start + len(auth)))


def test_mysql_handshake_response_after_an_ssl_request_is_masked():
    packet = _handshake_response(b"app", b"0123456789abcdefghij", MYSQL_8_CLIENT, sequence_id=2)

    assert redact(packet)[1] == 1


def test_a_mariadb_handshake_response_with_extended_capabilities_in_the_filler_is_masked():
    # libmariadb 3.3 (recorded): 19 zero bytes, then MariaDB's extended capabilities 0x1d in the last 4
    packet = _handshake_response(b"root", b"0123456789abcdefghij", MYSQL_8_CLIENT, filler=bytes(19) + b"\x1d\x00\x00\x00")

    redacted, regions = redact(packet)

    assert regions == 1 and b"0123456789" not in redacted and b"root" in redacted


def test_mysql_handshake_response_cut_inside_the_auth_response_is_masked_to_the_end():
    packet = _handshake_response(b"app", b"0123456789abcdefghij", MYSQL_8_CLIENT)
    cut = packet[:packet.index(b"0123456789") + 5]

    assert redact(cut) == (cut[:-5] + b"*****", 1)


@pytest.mark.parametrize("packet", [
    _handshake_response(b"app", b"0123456789abcdefghij", MYSQL_8_CLIENT, sequence_id=0),
    _handshake_response(b"app", b"0123456789abcdefghij", MYSQL_8_CLIENT, filler=b"\1" + b"\0" * 22),
    _handshake_response(b"app", b"0123456789abcdefghij", MYSQL_8_CLIENT & ~CLIENT_PROTOCOL_41),
], ids=["sequence-id-0", "non-zero-filler", "no-protocol-41"])
def test_mysql_packets_that_do_not_check_out_are_left_alone(packet):
    assert redact(packet) == (packet, 0)


# --- PostgreSQL ----------------------------------------------------------------------------------------


def _password_message(password: bytes) -> bytes:
    return b"p" + struct.pack(">I", 4 + len(password) + 1) + password + b"\0"


def _sasl_initial_response(mechanism: bytes, data: bytes) -> bytes:
    body = mechanism + b"\0" + struct.pack(">i", len(data)) + data
    return b"p" + struct.pack(">I", 4 + len(body)) + body


def _sasl_response(data: bytes) -> bytes:
    return b"p" + struct.pack(">I", 4 + len(data)) + data


def test_postgres_password_message_masks_the_password_and_keeps_the_terminator():
    assert redact(_password_message(b"s3cret")) == (b"p\0\0\0\x0b******\0", 1)


def test_postgres_md5_password_is_masked():
    digest = b"md5" + hashlib.md5(hashlib.md5(b"s3cretapp").hexdigest().encode() + b"salt").hexdigest().encode()

    redacted, regions = redact(_password_message(digest))

    assert regions == 1 and digest not in redacted


def test_postgres_scram_messages_are_masked_after_the_header():
    initial = _sasl_initial_response(b"SCRAM-SHA-256", b"n,,n=,r=rOprNGfwEbeRWgbNEkqO")
    final = _sasl_response(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")

    for message in (initial, final):
        redacted, regions = redact(message)
        assert regions == 1
        _assert_masked_exactly(message, redacted, range(5, len(message)))


def test_postgres_password_after_a_complete_message_is_masked():
    payload = b"S\0\0\0\x04" + _password_message(b"s3cret")

    assert redact(payload) == (b"S\0\0\0\x04p\0\0\0\x0b******\0", 1)


def test_postgres_password_cut_inside_is_masked_to_the_end():
    assert redact(_password_message(b"s3cret")[:8]) == (b"p\0\0\0\x0b***", 1)


@pytest.mark.parametrize("payload", [
    b"p" + struct.pack(">I", 70_000) + b"x" * 100,  # length beyond any password message
    b"p" + struct.pack(">I", 2) + b"secret\0",  # length below the length field itself
    b"p\0\0\0\x08abcd",  # complete, but neither NUL-terminated nor SASL
    b"GET /p\0\0\0\x0bsecret\0",  # not at a message boundary
], ids=["too-long", "too-short", "no-terminator", "not-at-a-boundary"])
def test_postgres_look_alikes_are_left_alone(payload):
    assert redact(payload) == (payload, 0)


# --- rules ---------------------------------------------------------------------------------------------

EXAMPLES = {
    "http_authorization": b"GET / HTTP/1.1\r\nAuthorization: Basic dXNlcjpwYXNz\r\n\r\n",
    "http_proxy_authorization": b"GET http://x/ HTTP/1.1\r\nProxy-Authorization: Basic dXNlcjpwYXNz\r\n\r\n",
    "http_cookie": b"GET / HTTP/1.1\r\nCookie: sess=abc\r\n\r\n",
    "http_set_cookie": b"HTTP/1.1 200 OK\r\nSet-Cookie: sess=abc; Path=/\r\n\r\n",
    "redis_auth": _resp(b"AUTH", b"s3cret"),
    "mysql_password": _handshake_response(b"app", b"0123456789abcdefghij", MYSQL_8_CLIENT),
    "postgres_password": _password_message(b"s3cret"),
    "http_credential_headers": b"GET / HTTP/1.1\r\nX-Api-Key: k3y\r\n\r\n",
    "url_userinfo": b"GET http://app:s3cret@orders/ HTTP/1.1\r\n\r\n",
    "secret_params": b"GET /v1/orders?access_token=t0ken HTTP/1.1\r\n\r\n",
    "json_secrets": b'{"user": "app", "password": "s3cret"}',
    "sql_passwords": b"\x1b\0\0\0\x03ALTER USER app PASSWORD 'pw'",
    # SaslAuthenticate v1: size, api key 36, version 1, correlation id, client id "c", PLAIN auth bytes
    "kafka_sasl": b"\0\0\0\x1b\0\x24\0\x01\0\0\0\x02\0\x01c\0\0\0\x0a\0app\0s3cret",
}


def test_every_rule_has_an_example():
    assert set(EXAMPLES) == set(RULES)


@pytest.mark.parametrize("rule", RULES)
def test_each_rule_masks_its_example_and_can_be_switched_off(rule):
    payload = EXAMPLES[rule]

    assert redact(payload)[1] == 1
    assert redact(payload, RedactionRules(**{rule: False})) == (payload, 0)


def test_switching_off_one_http_rule_keeps_the_others(capture_request):
    request = capture_request({"Authorization": "Bearer tok3n", "Cookie": "sess=abc"})

    redacted, regions = redact(request, RedactionRules(http_cookie=False))

    assert regions == 1
    assert b"tok3n" not in redacted and b"sess=abc" in redacted


def test_the_mask_byte_is_configurable():
    assert redact(_password_message(b"pw"), RedactionRules(mask_byte=0)) == (b"p\0\0\0\x07\0\0\0", 1)


def test_a_mask_byte_outside_a_byte_is_rejected():
    with pytest.raises(ValueError):
        RedactionRules(mask_byte=256)


def test_the_default_rules_enable_everything():
    assert all(getattr(DEFAULT_RULES, rule) for rule in RULES)


# --- every cut, and properties -------------------------------------------------------------------------

CUT_TEMPLATES = {
    "authorization": (b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Basic c2VjcmV0\r\n\r\n", [b"c2VjcmV0"]),
    "cookie": (b"GET / HTTP/1.1\r\nCookie: a=v4lue1; sess=v4lue2\r\n\r\n", [b"v4lue1", b"v4lue2"]),
    "set-cookie": (b"HTTP/1.1 200 OK\r\nSet-Cookie: sess=v4lue1; Path=/\r\n\r\n", [b"v4lue1"]),
    "redis": (_resp(b"PING") + _resp(b"AUTH", b"app", b"s3cret"), [b"s3cret"]),
    "redis-inline": (b"AUTH s3cret\r\n", [b"s3cret"]),
    "mysql": (_handshake_response(b"app", b"0123456789abcdefghij", MYSQL_8_CLIENT), [b"0123456789abcdefghij"]),
    "postgres": (_password_message(b"s3cret"), [b"s3cret"]),
}


@pytest.mark.parametrize("template,secrets", CUT_TEMPLATES.values(), ids=CUT_TEMPLATES.keys())
def test_every_cut_masks_the_part_of_the_secret_the_prefix_holds(template, secrets):
    spans = [range(template.index(secret), template.index(secret) + len(secret)) for secret in secrets]
    for cut in range(len(template) + 1):
        prefix = template[:cut]
        redacted, _ = redact(prefix)
        assert len(redacted) == cut
        for span in spans:
            assert all(redacted[i] == MASK for i in span if i < cut), (cut, redacted)


protocol_fragments = st.sampled_from([
    b"\r\n", b"\n", b" ", b":", b";", b"=", b"\0", b"Authorization:", b"Proxy-Authorization: Basic ",
    b"Cookie: ", b"set-cookie:", b"*2\r\n$4\r\nAUTH\r\n", b"*6\r\n$5\r\nHELLO\r\n$1\r\n3\r\n$4\r\nAUTH\r\n",
    b"$3\r\n", b"$99999\r\n", b"AUTH ", b"hello 3 auth ", b"p\0\0\0\x0b", b"S\0\0\0\x04", b"\x30\0\0\x01",
    b"\x85\xa6\x2f\x00", bytes(23), b"\xfc\x10\x00", b"\xfe",
])
payloads = st.one_of(st.binary(max_size=4096), st.lists(st.one_of(protocol_fragments, st.binary(max_size=8))).map(b"".join))


@given(payloads)
def test_any_bytes_keep_their_length_and_change_only_to_the_mask_byte(payload):
    redacted, regions = redact(payload)

    assert len(redacted) == len(payload)
    assert all(after in (before, MASK) for before, after in zip(payload, redacted))
    assert regions >= 0 and (regions > 0 or redacted == payload)


cookie_values = st.text(alphabet="".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '";,\\'), min_size=1)


@settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(user=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E)), password=st.text(),
       first=cookie_values, second=cookie_values)
def test_random_http_secrets_never_survive(capture_request, user, password, first, second):
    credentials = _basic(user.replace(":", ""), password)
    request = capture_request({"Authorization": f"Basic {credentials}", "Cookie": f"a={first}; sess={second}"})

    redacted, regions = redact(request)

    assert regions == 3
    _assert_masked_exactly(request, redacted, _after(request, b"Authorization: Basic ", len(credentials)),
                           _after(request, b"Cookie: a=", len(first)), _after(request, b"; sess=", len(second)))


@given(user=st.binary(min_size=1), password=st.binary(min_size=1),
       form=st.sampled_from(["auth", "auth-user", "hello"]))
def test_random_redis_passwords_never_survive(user, password, form):
    command = {
        "auth": _resp(b"AUTH", password),
        "auth-user": _resp(b"AUTH", user, password),
        "hello": _resp(b"HELLO", b"3", b"AUTH", user, password),
    }[form]
    payload = _resp(b"SELECT", b"0") + command
    start = len(payload) - 2 - len(password)

    redacted, _ = redact(payload)

    _assert_masked_exactly(payload, redacted, range(start, start + len(password)))


@given(password=st.binary(min_size=1).map(lambda p: p.replace(b"\0", b"x")))
@example(password=b"://")  # once read as a URL whose authority ran on into the message's NUL
def test_random_postgres_passwords_never_survive(password):
    message = _password_message(password)

    redacted, regions = redact(message)

    assert regions == 1
    _assert_masked_exactly(message, redacted, range(5, 5 + len(password)))
