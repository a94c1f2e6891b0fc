"""MySQL forms a stateless parser must recognise from their structure, with bytes built by hand per the documented
layouts: query attributes (COM_QUERY with CLIENT_QUERY_ATTRIBUTES, as MySQL 8.0.23+ and mysql-connector-python's
cmd_query write it), compressed packets, COM_FIELD_LIST responses, multi-result responses, error classes, and
detection on any port (no false positives on random bytes or on the other protocols' recorded messages)."""

import random
import struct
import time
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzzing import bound_s, fastest, mutate, seed_messages
from tests.parser_seeds import SEEDS
from tracetap.protocols.base import Status
from tracetap.protocols.mysql import MYSQL
from tracetap.redact import StreamRedactor

ANY_PORT = 40000


def packet(payload: bytes, sequence: int = 0) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes((sequence,)) + payload


def compressed(inner: bytes, sequence: int = 0, deflate: bool = True) -> bytes:
    """One compressed packet: compressed length, compressed sequence, uncompressed length (0: stored), payload."""
    if not deflate:
        return len(inner).to_bytes(3, "little") + bytes((sequence,)) + bytes(3) + inner
    body = zlib.compress(inner)
    return len(body).to_bytes(3, "little") + bytes((sequence,)) + len(inner).to_bytes(3, "little") + body


def lenenc_string(value: bytes) -> bytes:
    return bytes((len(value),)) + value


def column(name: bytes) -> bytes:
    """A ColumnDefinition41: catalog "def", schema, table, org table, name, org name, fixed fields."""
    return (lenenc_string(b"def") + lenenc_string(b"shop") + lenenc_string(b"t") + lenenc_string(b"t") + lenenc_string(name)
            + lenenc_string(name) + b"\x0c" + struct.pack("<HIBHB", 33, 80, 0xFD, 0, 0) + b"\0\0")


EOF_PACKET = b"\xfe\0\0\x02\0"  # warnings 0, status AUTOCOMMIT


def result_set(rows: list[bytes], first_sequence: int = 1) -> bytes:
    packets = [b"\x01", column(b"name"), EOF_PACKET, *(lenenc_string(r) for r in rows), EOF_PACKET]
    return b"".join(packet(p, (first_sequence + i) & 0xFF) for i, p in enumerate(packets))


def query(text: bytes, attributes: bytes = b"") -> bytes:
    return packet(b"\x03" + attributes + text)


# query attributes ------------------------------------------------------------------------------------------------
def test_a_query_with_the_attributes_prefix_and_no_attributes_reports_its_statement():
    data = query(b"SELECT * FROM t WHERE id = 5", b"\x00\x01")  # parameter_count 0, parameter_set_count 1
    message = MYSQL.parse_request(data, False).message
    assert (message.request_type, message.request_resource, message.size) == ("SELECT", "SELECT * FROM t WHERE id = ?", len(data))
    assert MYSQL.detect(data, ANY_PORT)


def test_query_attributes_are_walked_to_the_statement_and_trace_context_is_kept():
    names = [b"traceparent", b"tenant", b"gone", b"at"]
    traceparent = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    types = [b"\xfe\x00", b"\x08\x00", b"\x06\x00", b"\x0c\x00"]  # STRING, LONGLONG, NULL, DATETIME
    null_bitmap = bytes((0b0100,))  # the third is NULL: no value
    values = lenenc_string(traceparent) + struct.pack("<q", 42) + b"\x07" + struct.pack("<HBBBBB", 2024, 5, 1, 12, 30, 0)
    attributes = b"\x04\x01" + null_bitmap + b"\x01" + b"".join(t + lenenc_string(n) for t, n in zip(types, names)) + values
    data = query(b"UPDATE t SET name = 'bob' WHERE id = 7", attributes)
    message = MYSQL.parse_request(data, False).message
    assert (message.request_type, message.request_resource) == ("UPDATE", "UPDATE t SET name = ? WHERE id = ?")
    assert message.trace_headers == (("traceparent", traceparent.decode()),)
    assert MYSQL.detect(data, ANY_PORT)


def test_bytes_that_do_not_walk_to_sql_text_are_read_as_a_plain_statement():
    data = query(b"SELECT 1", b"\x02\x01\x00\x01\xfe\x00\x05abc")  # names cut short: the walk cannot land on text
    message = MYSQL.parse_request(data, False).message
    assert message.request_type == "QUERY" and message.size == len(data)
    assert not MYSQL.detect(data, ANY_PORT)


# the compressed protocol -----------------------------------------------------------------------------------------
def test_a_compressed_packet_holding_a_whole_result_set_is_one_response_sized_in_wire_bytes():
    wire = compressed(result_set([b"alice", b"bob"]), sequence=1)
    message = MYSQL.parse_response(wire, False).message
    assert (message.size, message.response_code) == (len(wire), 0)
    assert ("mysql.compressed", "true") in message.attributes


def test_a_response_spread_over_compressed_packets_waits_for_the_one_where_it_ends():
    inner = result_set([b"x" * 200 for _ in range(150)])
    wire = compressed(inner[:10_000], 1) + compressed(inner[10_000:20_000], 2) + compressed(inner[20_000:], 3)
    first_two = len(wire) - len(compressed(inner[20_000:], 3))
    assert MYSQL.parse_response(wire[:first_two], False).status is Status.NEED_MORE
    cut = MYSQL.parse_response(wire[:first_two], True).message  # the capture ends here: what the prefix shows
    assert (cut.size, cut.response_code) == (None, 0)
    assert MYSQL.parse_response(wire, False).message.size == len(wire)
    # what follows the response (the next one, pipelined) is not part of it
    assert MYSQL.parse_response(wire + compressed(packet(b"\x00\x00\x00\x02\x00\x00\x00", 1), 4, deflate=False), False).message.size == len(wire)


def test_one_large_query_across_two_compressed_packets():
    text = b"INSERT INTO t VALUES ('" + b"y" * 40_000 + b"')"
    inner = query(text)
    wire = compressed(inner[:20_000]) + compressed(inner[20_000:], 1)
    head = len(compressed(inner[:20_000]))
    assert MYSQL.detect(wire[:head], ANY_PORT) is False  # the command is not whole in the first packet
    assert MYSQL.parse_request(wire[:head], False).status is Status.NEED_MORE
    message = MYSQL.parse_request(wire, False).message
    assert (message.request_type, message.size) == ("INSERT", len(wire))
    assert message.request_resource.startswith("INSERT INTO t VALUES (?")  # the literal, masked (cut at mask_sql's limit)


def test_small_packets_travel_stored_and_are_read_and_detected_too():
    ping = compressed(packet(b"\x0e"), deflate=False)
    message = MYSQL.parse_request(ping, False).message
    assert (message.request_type, message.size) == ("PING", 12) and MYSQL.detect(ping, ANY_PORT)
    ok = compressed(packet(b"\x00\x00\x00\x02\x00\x00\x00", 1), 1, deflate=False)
    assert MYSQL.parse_response(ok, False).message.size == len(ok)


def test_a_compressed_header_read_alone_waits_for_its_payload():
    """mariadbd reads a compressed packet's 7-byte header, then its payload: the header alone is no command."""
    query = compressed(packet(b"\x03CREATE DATABASE shop"))
    assert MYSQL.parse_request(query[:7], False).status is Status.NEED_MORE
    whole = MYSQL.parse_request(query, False).message
    assert (whole.request_resource, whole.size) == ("CREATE DATABASE shop", len(query))
    assert MYSQL.parse_request(packet(b"\x0e"), False).message.request_type == "PING"  # a short plain packet, whole


def test_a_plain_ok_is_not_read_as_a_stored_compressed_packet():
    ok = packet(b"\x00\x00\x00\x00\x00\x00\x00", 2)  # affected rows, insert id and status 0: bytes 4..6 are zero
    message = MYSQL.parse_response(ok, False).message
    assert message.size == len(ok) and ("mysql.compressed", "true") not in message.attributes


def test_a_zlib_stream_that_does_not_inflate_to_its_length_is_unreadable_and_not_detected():
    wire = bytearray(compressed(query(b"SELECT " + b"1 + " * 30 + b"1")))
    wire[4] ^= 1  # the uncompressed length
    message = MYSQL.parse_request(bytes(wire), False).message
    assert message.size is None and ("mysql.compressed", "unreadable") in message.attributes  # skipped to the answer
    assert not MYSQL.detect(bytes(wire), ANY_PORT)
    masked = compressed(result_set([b"IDENTIFIED BY PASSWORD '*hash'"]), 1)
    masked = masked[:9] + b"*" * (len(masked) - 9)  # as redaction leaves it: the header and the zlib header
    assert MYSQL.parse_response(masked, False).message.size is None


def test_a_zip_bomb_is_inflated_only_to_the_limit_and_read_as_a_cut_message():
    inner = packet(b"\x03SELECT '" + b"\0" * (0xFFFFFF - 10) + b"'")  # one 16 MiB packet of zeros: ~16 KiB of zlib
    bomb = compressed(inner[:0xFFFFFF])
    started = time.perf_counter()
    message = MYSQL.parse_request(bomb, False).message
    assert time.perf_counter() - started < 0.5
    assert message.size is None and ("mysql.inflate_limit", "true") in message.attributes
    assert message.request_type == "SELECT"


# COM_FIELD_LIST --------------------------------------------------------------------------------------------------
def test_a_field_list_response_is_its_definitions_up_to_the_eof():
    request = packet(b"\x04items\0")
    assert MYSQL.parse_request(request, False).message.request_resource == "items" and MYSQL.detect(request, ANY_PORT)
    response = packet(column(b"id"), 1) + packet(column(b"label"), 2) + packet(EOF_PACKET, 3)
    assert MYSQL.parse_response(response, False).message.size == len(response)
    assert MYSQL.parse_response(response + query(b"SELECT 1"), False).message.size == len(response)
    assert MYSQL.parse_response(response[:-9], False).status is Status.NEED_MORE
    assert MYSQL.parse_response(response[:-9], True).message.size is None


def test_a_field_list_of_a_missing_table_is_a_client_error():
    error = packet(b"\xff\x7a\x04#42S02Table 'shop.nope' doesn't exist", 1)
    message = MYSQL.parse_response(error, False).message
    assert (message.response_code, message.error_class, message.size) == (1146, "CLIENT_ERROR", len(error))


# several results, errors -----------------------------------------------------------------------------------------
def test_results_flagged_more_results_exist_are_one_response():
    more = packet(b"\x00\x01\x00\x0a\x00\x00\x00", 1)  # OK, 1 row affected, status AUTOCOMMIT | MORE_RESULTS_EXISTS
    last = result_set([b"bob"], 2)
    message = MYSQL.parse_response(more + last, False).message
    assert (message.size, message.response_code) == (len(more + last), 0)
    assert MYSQL.parse_response(more, False).status is Status.NEED_MORE


def test_an_error_after_more_results_is_the_responses_and_rows_cut_by_an_error_report_it():
    more = packet(b"\x00\x00\x00\x0a\x00\x00\x00", 1)
    error = packet(b"\xff\x7a\x04#42S02Table 'shop.nope' doesn't exist", 2)
    message = MYSQL.parse_response(more + error, False).message
    assert (message.size, message.response_code, message.error_class) == (len(more + error), 1146, "CLIENT_ERROR")
    rows = result_set([b"a"])[:-9] + packet(b"\xff\x25\x05#70100Query execution was interrupted", 5)
    killed = MYSQL.parse_response(rows, False).message
    assert (killed.size, killed.response_code, killed.error_class) == (len(rows), 1317, "SERVER_ERROR")


@pytest.mark.parametrize(("code", "sqlstate", "expected"), [
    (1146, "42S02", "CLIENT_ERROR"),  # no such table
    (1064, "42000", "CLIENT_ERROR"),  # syntax
    (1062, "23000", "CLIENT_ERROR"),  # duplicate key
    (1213, "40001", "CLIENT_ERROR"),  # deadlock: PostgreSQL's 40P01 is a client error too
    (1205, "HY000", "CLIENT_ERROR"),  # lock wait timeout: PostgreSQL's 55P03
    (1045, "28000", "CLIENT_ERROR"),  # access denied
    (1792, "25006", "CLIENT_ERROR"),  # a write in a READ ONLY transaction the client began
    (1040, "08004", "SERVER_ERROR"),  # too many connections (class 08)
    (1053, "08S01", "SERVER_ERROR"),  # shutdown in progress
    (1021, "HY000", "SERVER_ERROR"),  # disk full
    (1037, "HY001", "SERVER_ERROR"),  # out of memory
    (1194, "HY000", "SERVER_ERROR"),  # crashed table
    (1290, "HY000", "SERVER_ERROR"),  # --read-only
    (1836, "HY000", "SERVER_ERROR"),  # read-only mode
    (1969, "70100", "SERVER_ERROR"),  # max_statement_time: PostgreSQL's statement_timeout is 57014
    (1815, "HY000", "SERVER_ERROR"),  # internal error
])
def test_error_codes_are_client_or_server_errors(code, sqlstate, expected):
    error = packet(b"\xff" + struct.pack("<H", code) + b"#" + sqlstate.encode() + b"message", 1)
    message = MYSQL.parse_response(error, False).message
    assert (message.response_code, message.error_class) == (code, expected)
    assert dict(message.attributes)["sql.sqlstate"] == sqlstate


# detection -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("data", [
    query(b"select 1"), query(b"  /* hint */ SELECT 1"), query(b"(SELECT 1) UNION (SELECT 2)"), query(b"-- c\nSELECT 1"),
    packet(b"\x0e"), packet(b"\x01"), packet(b"\x1f"), packet(b"\x02shop"), packet(b"\x04items\0"),
    packet(b"\x16SELECT * FROM t WHERE id = ?"), packet(b"\x17" + struct.pack("<IBI", 1, 0, 1) + b"\x00\x01\x03\x00" + struct.pack("<i", 5)),
    packet(b"\x18\x01\0\0\0\x00\x00long data"), packet(b"\x19\x01\0\0\0"), packet(b"\x1a\x01\0\0\0"), query(b"SELECT 1") + packet(b"\x01"),  # a run of whole packets
])
def test_command_packets_are_detected_on_any_port(data):
    assert MYSQL.detect(data, ANY_PORT)


@pytest.mark.parametrize("data", [
    packet(b"\x0e\x00"),  # PING with a body
    query(b"\x80\x81 binary"),  # not text
    query(b"select 1")[:-1],  # the length disagrees with the bytes
    packet(b"\x03select 1", 1),  # not sequence 0
    packet(b"\x17" + struct.pack("<IBI", 1, 0x40, 1)),  # flags out of range
    packet(b"\x17" + struct.pack("<IBI", 1, 0, 7)),  # iteration count 7
    packet(b"\x02"),  # INIT_DB without a name
    packet(b"\x04items"),  # FIELD_LIST without its NUL
])
def test_near_misses_are_not_detected_off_the_mysql_ports(data):
    assert not MYSQL.detect(data, ANY_PORT)


def test_random_bytes_and_other_protocols_messages_are_not_detected():
    rng = random.Random(18)
    chunks = [rng.randbytes(64) for _ in range(20_000)] + [rng.randbytes(rng.randint(5, 4096)) for _ in range(2_000)]
    assert sum(MYSQL.detect(chunk, ANY_PORT) for chunk in chunks) == 0
    others = [data for name in SEEDS if name != "MYSQL" for conversation in SEEDS[name] for _, data in conversation]
    assert others and [data[:40] for data in others if MYSQL.detect(data, ANY_PORT)] == []


# hostile input ---------------------------------------------------------------------------------------------------
HAND_BUILT = [query(b"SELECT 1", b"\x00\x01"), compressed(result_set([b"a", b"b"]), 1), compressed(packet(b"\x0e"), deflate=False),
              packet(column(b"id"), 1) + packet(EOF_PACKET, 2), packet(b"\x00\x00\x00\x0a\x00\x00\x00", 1) + result_set([b"c"], 2),
              query(b"SELECT 1", b"\x01\x01\x00\x01\xfe\x00\x02tp\x03abc")]
DONORS = HAND_BUILT + [data for _, data in seed_messages("MYSQL")]


@given(pick=st.integers(0, len(HAND_BUILT) - 1),
       ops=st.lists(st.tuples(st.integers(0, 7), st.integers(0, 1 << 20), st.integers(0, 1 << 20)), min_size=1, max_size=4))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_the_new_forms_mutated_never_raise_and_stay_linear(pick, ops):
    data = mutate(HAND_BUILT[pick], ops, DONORS)
    limit = bound_s(len(data))
    for call in (MYSQL.parse_request, MYSQL.parse_response):
        for final in (False, True):
            result, took = fastest(call, data, final, limit_s=limit)
            assert result.status is Status.MESSAGE or result.message is None
            assert took <= limit
    assert fastest(MYSQL.detect, data, ANY_PORT, limit_s=limit)[0] in (True, False)


# redaction of the compressed form --------------------------------------------------------------------------------
def _inflated(wire: bytes) -> bytes:
    """Everything a reader could inflate from the compressed packets in `wire` (a masked stream stops it)."""
    out, at = b"", 0
    while at + 7 <= len(wire):
        end = at + 7 + int.from_bytes(wire[at:at + 3], "little")
        payload = wire[at + 7:end]
        if wire[at + 4:at + 7] == b"\0\0\0":
            out += payload
        else:
            try:
                out += zlib.decompressobj().decompress(payload)
            except zlib.error:
                pass
        at = end
    return out


def _redact_events(events: list[bytes]) -> bytes:
    redactor = StreamRedactor()
    return b"".join(redactor.redact(event)[0] for event in events)


def test_a_compressed_statement_with_a_password_is_masked_however_the_events_cut_it():
    statement = query(b"CREATE USER IF NOT EXISTS 'reporting'@'localhost' IDENTIFIED BY 'Zlib-secret-99'")
    wire = compressed(statement) + compressed(query(b"SELECT name FROM users WHERE id = 1234567890"), 0)
    assert b"Zlib-secret-99" in _inflated(wire)
    for cut in range(1, len(wire)):
        redacted = _redact_events([wire[:cut], wire[cut:]])
        assert len(redacted) == len(wire) and b"Zlib-secret-99" not in _inflated(redacted), cut
    whole = _redact_events([wire])
    assert whole.endswith(compressed(query(b"SELECT name FROM users WHERE id = 1234567890"), 0))  # the next one is intact


def test_a_compressed_change_user_and_its_auth_exchange_are_masked_and_commands_after_them_are_not():
    change_user = packet(b"\x11app\0\x14" + b"S" * 20 + b"shop\0" + b"\x21\x00" + b"mysql_native_password\0")
    auth_answer = packet(b"T" * 20, 3)
    after = compressed(query(b"SELECT 1 /* after the change of user, a long enough statement */"))
    wire = compressed(change_user) + compressed(auth_answer, 2, deflate=False) + after
    redacted = _redact_events([wire])
    assert b"SSSS" not in _inflated(redacted) and b"TTTT" not in redacted and redacted.endswith(after)


def test_compressed_packets_without_secrets_pass_unchanged():
    wire = compressed(result_set([b"alice", b"bob"] * 20), 1) + compressed(packet(b"\x00\x00\x00\x02\x00\x00\x00", 2), 2, deflate=False)
    assert _redact_events([wire[:30], wire[30:]]) == wire
