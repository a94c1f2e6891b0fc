"""Realistic client and server messages of every protocol the agent redacts, built from the protocol
specifications, with the secrets passed in (the redaction property tests plant canaries there).

Each builder returns the bytes one socket direction carries; `secrets` name which arguments are secret.
"""

from __future__ import annotations

import base64
import struct


# --- HTTP/1.1 ------------------------------------------------------------------------------------------


def http_request_headers(s: list[bytes]) -> bytes:
    return (b"GET /v1/orders?id=42&access_token=" + s[0] + b"&api_key=" + s[1] + b"&sig=" + s[2] + b" HTTP/1.1\r\n"
            b"Host: orders.default.svc.cluster.local\r\n"
            b"Authorization: Bearer " + s[3] + b"\r\n"
            b"Cookie: theme=dark; sess=" + s[4] + b"; csrf=" + s[5] + b"\r\n"
            b"X-Api-Key: " + s[6] + b"\r\n"
            b"x-vault-token: " + s[7] + b"\r\n"
            b"PRIVATE-TOKEN: " + s[8] + b"\r\n"
            b"X-Amz-Security-Token: " + s[9] + b"\r\n"
            b"X-Forwarded-Authorization: Bearer " + s[10] + b"\r\n"
            b"Api-Key: " + s[11] + b"\r\n"
            b"X-Auth-Token: " + s[12] + b"\r\n"
            b"X-Custom-Secret: " + s[13] + b"\r\n"  # the tests' configured extra header
            b"Accept: */*\r\n\r\n")


def http_basic_through_a_proxy(s: list[bytes]) -> bytes:
    basic = base64.b64encode(b"app:" + s[0])
    return (b"GET http://svc:" + s[1] + b"@payments.internal/v2/pay?password=" + s[2] + b"&X-Amz-Signature=" + s[3] +
            b"&X-Amz-Credential=" + s[4] + b" HTTP/1.1\r\n"
            b"Host: payments.internal\r\n"
            b"Proxy-Authorization: Basic " + basic + b"\r\n"
            b"User-Agent: curl/8.5.0\r\n\r\n")


def http_token_response(s: list[bytes]) -> bytes:
    body = (b'{"access_token": "' + s[0] + b'", "token_type": "Bearer", "expires_in": 3600, "refresh_token":"' + s[1] +
            b'", "id_token" : "' + s[2] + b'", "clientSecret": "' + s[3] + b'"}')
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Set-Cookie: sid=" + s[4] + b"; Path=/; Secure; HttpOnly; SameSite=Lax\r\n"
            b"Set-Cookie: remember=" + s[5] + b"; Max-Age=86400\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def http_form_posts(s: list[bytes]) -> bytes:
    """Two requests on a keep-alive connection: a login form, then a GET that must not be masked away."""
    body = b"username=bob&password=" + s[0] + b"&client_secret=" + s[1] + b"&passwd=" + s[2]
    return (b"POST /oauth/token HTTP/1.1\r\nHost: idp\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body +
            b"GET /orders HTTP/1.1\r\nHost: idp\r\n\r\n")


def http_json_post(s: list[bytes]) -> bytes:
    body = (b'{"user":"bob","password":"' + s[0] + b'","api_key": "' + s[1] + b'","nested":{"secret" :"' + s[2] +
            b'","token":"' + s[3] + b'"},"x-custom-key":"' + s[4] + b'"}')
    return (b"POST /login HTTP/1.1\r\nHost: web\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


# --- Redis ---------------------------------------------------------------------------------------------


def resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def redis_resp_commands(s: list[bytes]) -> bytes:
    return b"".join([
        resp(b"AUTH", s[0]), resp(b"auth", b"app", s[1]), resp(b"HELLO", b"3", b"AUTH", b"app", s[2], b"SETNAME", b"web"),
        resp(b"CONFIG", b"SET", b"requirepass", s[3]), resp(b"config", b"set", b"maxmemory", b"1gb", b"masterauth", s[4]),
        resp(b"MIGRATE", b"10.0.0.9", b"6379", b"", b"0", b"5000", b"COPY", b"AUTH", s[5], b"KEYS", b"a", b"b"),
        resp(b"MIGRATE", b"10.0.0.9", b"6379", b"k", b"0", b"5000", b"AUTH2", b"app", s[6]),
        resp(b"ACL", b"SETUSER", b"alice", b"on", b">" + s[7], b"~cache:*", b"+@read"),
        resp(b"GET", b"orders:42"),
    ])


def redis_inline_commands(s: list[bytes]) -> bytes:
    return (b"AUTH " + s[0] + b"\r\nPING\r\nCONFIG SET requirepass " + s[1] + b"\r\n"
            b"ACL SETUSER bob on >" + s[2] + b" +@all\r\nMIGRATE 10.0.0.9 6379 k 0 1000 AUTH " + s[3] + b"\r\n"
            b"HELLO 3 AUTH app " + s[4] + b"\r\n")


# --- MySQL ---------------------------------------------------------------------------------------------

CLIENT_PROTOCOL_41 = 0x0000_0200
CLIENT_SECURE_CONNECTION = 0x0000_8000
CLIENT_PLUGIN_AUTH = 0x0008_0000
CLIENT_PLUGIN_AUTH_LENENC = 0x0020_0000
MYSQL_8_CLIENT = 0x000F_A685 | CLIENT_PLUGIN_AUTH_LENENC


def mysql_packet(sequence: int, body: bytes) -> bytes:
    return struct.pack("<I", len(body))[:3] + bytes([sequence]) + body


def mysql_handshake_response(user: bytes, auth: bytes, plugin: bytes = b"caching_sha2_password") -> bytes:
    """HandshakeResponse41: capabilities, max packet, charset, 23-byte filler, user NUL, lenenc auth, plugin NUL."""
    body = struct.pack("<IIB", MYSQL_8_CLIENT, 16 * 1024 * 1024, 255) + bytes(23) + user + b"\0"
    body += bytes([len(auth)]) + auth + plugin + b"\0"
    return mysql_packet(1, body)


def mysql_session(s: list[bytes]) -> bytes:
    """Login whose server switches to mysql_clear_password (the answer is the password in clear), then
    statements with passwords and a COM_CHANGE_USER."""
    change_user = b"\x11" + b"report\0" + bytes([len(s[2])]) + s[2] + b"orders\0" + b"\xff\x00" + b"mysql_native_password\0"
    return b"".join([
        mysql_handshake_response(b"app", s[0]),
        mysql_packet(3, s[1] + b"\0"),  # AuthSwitchResponse to mysql_clear_password
        mysql_packet(0, b"\x03CREATE USER 'report'@'%' IDENTIFIED BY '" + s[3] + b"'"),
        mysql_packet(0, b"\x03SET PASSWORD FOR 'report'@'%' = '" + s[4] + b"'"),
        mysql_packet(0, b"\x03ALTER USER app IDENTIFIED WITH caching_sha2_password BY '" + s[5] + b"'"),
        mysql_packet(0, change_user),
        mysql_packet(3, s[6]),  # the auth exchange COM_CHANGE_USER started
        mysql_packet(0, b"\x03SELECT id FROM orders WHERE id = 42"),
    ])


# --- PostgreSQL ----------------------------------------------------------------------------------------


def pg_message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack(">I", 4 + len(body)) + body


def pg_startup(user: bytes = b"app", database: bytes = b"orders") -> bytes:
    body = struct.pack(">I", 196608) + b"user\0" + user + b"\0database\0" + database + b"\0\0"
    return struct.pack(">I", 4 + len(body)) + body


def pg_password_session(s: list[bytes]) -> bytes:
    parse = b"\0" + b"CREATE USER bob PASSWORD '" + s[2] + b"'\0" + b"\0\0"
    return b"".join([
        pg_startup(),
        pg_message(b"p", s[0] + b"\0"),  # PasswordMessage, clear text
        pg_message(b"Q", b"ALTER ROLE app WITH ENCRYPTED PASSWORD '" + s[1] + b"'\0"),
        pg_message(b"P", parse), pg_message(b"B", b"\0\0\0\0\0\0\0\0"), pg_message(b"E", b"\0\0\0\0\0"), pg_message(b"S", b""),
        pg_message(b"Q", b"CREATE USER MAPPING FOR bob SERVER films OPTIONS (user 'bob', password '" + s[3] + b"')\0"),
        pg_message(b"Q", b"SELECT 1\0"),
    ])


def pg_scram_session(s: list[bytes]) -> bytes:
    first = b"n,,n=,r=" + s[0]
    final = b"c=biws,r=" + s[0] + b"srvnonce,p=" + base64.b64encode(s[1])
    return b"".join([
        pg_startup(),
        pg_message(b"p", b"SCRAM-SHA-256\0" + struct.pack(">i", len(first)) + first),
        pg_message(b"p", final),
        pg_message(b"Q", b"SELECT 1\0"),
    ])


# --- Kafka ---------------------------------------------------------------------------------------------


def kafka_request(api_key: int, version: int, correlation: int, body: bytes, flexible: bool = False) -> bytes:
    header = struct.pack(">hhih", api_key, version, correlation, 7) + b"orders-"
    if flexible:
        header += b"\0"  # no tagged fields
    frame = header + body
    return struct.pack(">i", len(frame)) + frame


def _string(value: bytes) -> bytes:
    return struct.pack(">h", len(value)) + value


def kafka_sasl_plain(s: list[bytes]) -> bytes:
    token = b"\0app\0" + s[0]
    return b"".join([
        kafka_request(18, 3, 1, b"\x08librdkafka\x062.3.0\x00", flexible=True),  # ApiVersions v3
        kafka_request(17, 1, 2, _string(b"PLAIN")),  # SaslHandshake v1
        kafka_request(36, 2, 3, bytes([len(token) + 1]) + token + b"\0", flexible=True),  # SaslAuthenticate v2
        kafka_request(3, 1, 4, struct.pack(">i", -1)),  # Metadata v1: all topics
    ])


def kafka_sasl_scram(s: list[bytes]) -> bytes:
    first = b"n,,n=app,r=" + s[0]
    final = b"c=biws,r=" + s[0] + b"server,p=" + base64.b64encode(s[1])
    return b"".join([
        kafka_request(17, 1, 1, _string(b"SCRAM-SHA-512")),
        kafka_request(36, 1, 2, struct.pack(">i", len(first)) + first),
        kafka_request(36, 1, 3, struct.pack(">i", len(final)) + final),
        kafka_request(3, 1, 4, struct.pack(">i", -1)),
    ])


def kafka_sasl_legacy(s: list[bytes]) -> bytes:
    """SaslHandshake v0, then the PLAIN token framed by its length only, then requests again."""
    token = b"\0app\0" + s[0]
    return b"".join([
        kafka_request(17, 0, 1, _string(b"PLAIN")),
        struct.pack(">i", len(token)) + token,
        kafka_request(3, 1, 2, struct.pack(">i", -1)),
    ])


# --- HTTP/2 and gRPC ------------------------------------------------------------------------------------


def h2_frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream_id.to_bytes(4, "big") + payload


def h2_client(s: list[bytes], huffman: bool = True) -> bytes:
    """A gRPC client's connection: preface, SETTINGS, three calls whose headers hpack's encoder compresses
    (indexed names, new literal names, the dynamic table, a never-indexed authorization, Huffman strings)."""
    from hpack import Encoder, NeverIndexedHeaderTuple

    encoder = Encoder()
    first = encoder.encode([(":method", "POST"), (":scheme", "http"), (":path", "/orders.Orders/Get?access_token=" + s[0].decode()),
                            (":authority", "orders:50051"), ("content-type", "application/grpc"),
                            ("authorization", "Bearer " + s[1].decode()), ("x-api-key", s[2].decode()), ("x-request-id", "r-1")], huffman=huffman)
    second = encoder.encode([(":method", "POST"), (":path", "/orders.Orders/List"), ("content-type", "application/grpc"),
                             ("authorization", "Bearer " + s[3].decode()), ("x-request-id", "r-2"), ("cookie", "sess=" + s[4].decode())], huffman=huffman)
    third = encoder.encode([(":method", "POST"), (":path", "/orders.Orders/List"), ("x-request-id", "r-3"),
                            NeverIndexedHeaderTuple("authorization", "Basic " + s[5].decode()), ("x-custom-secret", s[6].decode())],
                           huffman=huffman)
    message = b"\0\0\0\0\x05\x08\x2a\x10\x01\x18"  # a gRPC length-prefixed message
    return b"".join([
        PREFACE_H2, h2_frame(4, 0, 0, b"\0\x04\0\x40\0\0"),
        h2_frame(1, 0x04, 1, first), h2_frame(0, 0x01, 1, message),
        h2_frame(1, 0x24, 3, b"\0\0\0\0\x10" + second), h2_frame(0, 0x01, 3, message),  # with PRIORITY
        h2_frame(1, 0x0C, 5, b"\x03" + third + b"\0\0\0"), h2_frame(0, 0x01, 5, message),  # PADDED
    ])


def h2_server(s: list[bytes]) -> bytes:
    from hpack import Encoder

    encoder = Encoder()
    first = encoder.encode([(":status", "200"), ("content-type", "application/grpc"), ("set-cookie", "sid=" + s[0].decode() + "; Path=/")])
    second = encoder.encode([(":status", "200"), ("set-cookie", "sid=" + s[1].decode() + "; Path=/"), ("x-request-id", "r-2")])
    return b"".join([h2_frame(4, 0, 0, b""), h2_frame(4, 1, 0, b""), h2_frame(1, 0x04, 1, first), h2_frame(1, 0x04, 3, second)])


PREFACE_H2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


# builder -> (number of secrets, what must stay visible when the stream arrives in one piece)
STREAMS = {
    "http-request-headers": (http_request_headers, 14, [b"Authorization: Bearer ", b"Cookie: theme=", b"access_token=", b"X-Api-Key: "]),
    "http-basic-proxy": (http_basic_through_a_proxy, 5, [b"Proxy-Authorization: Basic ", b"http://svc:", b"password="]),
    "http-token-response": (http_token_response, 6, [b'"access_token": "', b"Set-Cookie: sid=", b"Path=/", b"HTTP/1.1 200 OK"]),
    "http-form-posts": (http_form_posts, 3, [b"username=bob&password=", b"GET /orders HTTP/1.1"]),
    "http-json-post": (http_json_post, 5, [b'"user":"bob"', b'"password":"']),
    "redis-resp": (redis_resp_commands, 8, [b"requirepass", b"$5\r\nalice", b"orders:42"]),
    "redis-inline": (redis_inline_commands, 5, [b"CONFIG SET requirepass ", b"PING"]),
    "mysql": (mysql_session, 7, [b"report\0", b"IDENTIFIED BY '", b"SELECT id FROM orders"]),
    "postgres-password": (pg_password_session, 4, [b"user\0app", b"ALTER ROLE app WITH ENCRYPTED PASSWORD '", b"SELECT 1"]),
    "postgres-scram": (pg_scram_session, 2, [b"SCRAM-SHA-256"[:0], b"SELECT 1"]),
    "kafka-sasl-plain": (kafka_sasl_plain, 1, [b"PLAIN", b"\0app\0"]),
    "kafka-sasl-scram": (kafka_sasl_scram, 2, [b"SCRAM-SHA-512"]),
    "kafka-sasl-legacy": (kafka_sasl_legacy, 1, [b"\0app\0"]),
    "http2-grpc-client": (h2_client, 7, [PREFACE_H2, b"\x05\x08\x2a\x10\x01\x18"]),
    "http2-grpc-client-plain": (lambda s: h2_client(s, huffman=False), 7, [b"x-request-id", b"r-2", b"/orders.Orders/List"]),
    "http2-grpc-server": (h2_server, 2, [b"\x88"]),  # ':status: 200' indexed
}
