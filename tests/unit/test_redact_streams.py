"""Stateful redaction: canaries planted in realistic messages of every protocol never survive, whichever
way the byte stream is cut into events (every cut into two events, sampled cuts into three), in clear or
in base64. The events go through the agent's own path: DataEventEncoder with the agent's Redactors.
"""

import base64
import random
import time

import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

from producers.ebpf.events import DATA_HEADER_SIZE, Clock, DataEventEncoder, DataEventHeader
from schemas.catalog import SOCKET_DATA
from tests.redaction_messages import STREAMS, http_form_posts, mysql_handshake_response, mysql_packet, resp
from tracetap.redact import RedactionRules, Redactors, StreamRedactor, redact

RULES = RedactionRules(extra_headers=("X-Custom-Secret",), extra_keys=("x-custom-key",))
RUN = 8  # no run of this many canary bytes may survive
canaries = st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789", min_size=12, max_size=24).map(str.encode)


_HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
HUFFMAN_RUN = 6  # HPACK's Huffman code packs about 1.4 characters in a byte


def _runs(secret: bytes) -> set[bytes]:
    """Every RUN-byte run of the secret in clear and in each of the three base64 alignments, and every
    HUFFMAN_RUN-byte run of its HPACK Huffman coding at each of the eight bit alignments."""
    runs = {secret[i:i + RUN] for i in range(len(secret) - RUN + 1)}
    for pad in (b"", b"x", b"xy"):
        encoded = base64.b64encode(pad + secret)[4:-4]  # the characters that depend on the secret alone
        runs |= {encoded[i:i + RUN] for i in range(len(encoded) - RUN + 1)}
    for pad_chars in range(8):  # '0' is a 5-bit code: 0..7 of them start the secret at every bit offset
        encoded = _HUFFMAN.encode(b"0" * pad_chars + secret)[pad_chars * 5 // 8 + 1:-1]
        runs |= {encoded[i:i + HUFFMAN_RUN] for i in range(len(encoded) - HUFFMAN_RUN + 1)}
    return runs


def _redact_events(chunks: list[bytes], rules: RedactionRules = RULES) -> bytes:
    redactor = StreamRedactor(rules)
    out = [redactor.redact(chunk)[0] for chunk in chunks]
    assert [len(o) for o in out] == [len(c) for c in chunks]
    return b"".join(out)


def _assert_no_canary_survives(output: bytes, secrets: list[bytes], cuts: tuple[int, ...]) -> None:
    for secret in secrets:
        for run in _runs(secret):
            assert run not in output, f"{run!r} of secret {secret!r} survived cuts {cuts}: {output!r}"


def _cut(stream: bytes, cuts: tuple[int, ...]) -> list[bytes]:
    edges = (0, *cuts, len(stream))
    return [stream[a:b] for a, b in zip(edges, edges[1:])]


def _distinct(draw_list: list[bytes]) -> bool:
    return len({s[:RUN] for s in draw_list}) == len(draw_list)


def _foreign(secrets: list[bytes], build) -> bool:
    """No run of a canary occurs in the message's own text (a canary 'xxxxorization' would match a header name)."""
    template = build([b"\0" * len(s) for s in secrets])
    return not any(run in template for s in secrets for run in _runs(s))


@pytest.mark.parametrize("name", STREAMS)
# No shrinking: one example runs every cut, so shrinking a failure would take minutes; the message says it all.
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(data=st.data())
def test_planted_canaries_never_survive_any_cut_into_two_or_three_events(name, data):
    build, count, _ = STREAMS[name]
    secrets = data.draw(st.lists(canaries, min_size=count, max_size=count).filter(_distinct))
    assume(_foreign(secrets, build))
    stream = build(secrets)
    for cut in range(len(stream) + 1):
        _assert_no_canary_survives(_redact_events(_cut(stream, (cut,))), secrets, (cut,))
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    for _ in range(60):
        a, b = sorted(rng.sample(range(len(stream) + 1), 2))
        _assert_no_canary_survives(_redact_events(_cut(stream, (a, b))), secrets, (a, b))


@pytest.mark.parametrize("name", STREAMS)
def test_in_one_event_the_secrets_go_and_what_an_sre_needs_stays(name):
    build, count, visible = STREAMS[name]
    secrets = [b"Canary%02dXq7Zr9Lw" % i for i in range(count)]
    stream = build(secrets)

    redacted, regions = redact(stream, RULES)

    assert len(redacted) == len(stream) and regions >= 1
    _assert_no_canary_survives(redacted, secrets, ())
    for text in visible:
        assert text in redacted, f"{text!r} was masked"


def _raw_event(payload: bytes, socket_ino: int, direction: int, size: int | None = None) -> bytes:
    header = DataEventHeader()
    header.enter_ns, header.exit_ns, header.pid, header.tid, header.fd = 1, 2, 10, 10, 5
    header.socket_ino, header.direction, header.protocol, header.family, header.syscall = socket_ino, direction, 6, 2, 0
    header.bytes, header.payload_len, header.lport, header.rport = size or len(payload), len(payload), 8080, 40000
    return bytes(header)[:DATA_HEADER_SIZE] + payload


def test_the_agent_path_keeps_one_stream_per_socket_direction():
    """Interleaved events of two sockets and both directions: each stream's cut secret is still masked."""
    redactors = Redactors(RULES)
    encoder = DataEventEncoder(SOCKET_DATA.schema(), "node", Clock(0), 1,
                               lambda stream, payload, size: redactors.redact(stream, payload, size)[0])
    first, second = b"GET / HTTP/1.1\r\nAuthoriz", b"ation: Bearer Sup3rSecretTok3n\r\n\r\n"
    events = [
        _raw_event(first, 1, 0), _raw_event(b"HTTP/1.1 200 OK\r\n", 1, 1), _raw_event(b"GET /x HTTP/1.1\r\n", 2, 0),
        _raw_event(second, 1, 0),
    ]
    payloads = [encoder.record(raw)[1]["payload"] for raw in events]

    assert payloads[3] == b"ation: Bearer " + b"*" * 16 + b"\r\n\r\n"
    assert len(redactors) == 3


def test_a_rule_that_raises_masks_the_whole_event_and_the_stream_goes_on(monkeypatch, caplog):
    """Fail closed: a bug in a rule costs that event's payload (masked whole, counted, logged once), never a secret."""
    redactors = Redactors(RULES)
    redactors.redact(("s", 0), b"GET / HTTP/1.1\r\n")
    real = StreamRedactor.redact

    def broken(self, payload, size=None):
        if b"boom" in payload:
            raise IndexError("index out of range")
        return real(self, payload, size)

    monkeypatch.setattr(StreamRedactor, "redact", broken)
    assert redactors.redact(("s", 0), b"boom Authorization: Bearer abc") == (b"*" * 30, 1)
    assert redactors.redact(("s", 0), b"boom again") == (b"*" * 10, 1)
    assert redactors.failures == 2 and sum("redaction failed" in r.message for r in caplog.records) == 1
    assert redactors.redact(("s", 0), b"Authorization: Bearer Sup3rSecretTok3n\r\n")[0] == b"Authorization: Bearer " + b"*" * 16 + b"\r\n"


def test_an_http_streams_bytes_after_a_cut_short_capture_are_masked_whole():
    """The capture kept a 16-byte prefix of a 100-byte write: the header these bytes end may have begun in the 84
    unseen ones, so they are masked whole, until a message starts."""
    redactor = StreamRedactor(RULES)
    redactor.redact(b"POST /a HTTP/1.1", 100)

    assert redactor.redact(b"ization: Bearer x\r\n") == (b"*" * 19, 1)
    assert redactor.redact(b"more: x\r\n") == (b"*" * 9, 1)
    request = b"GET /b HTTP/1.1\r\nX-Api-Key: k3yk3yk3y\r\nAccept: */*\r\n\r\n"
    assert redactor.redact(request) == (request.replace(b"k3yk3yk3y", b"*" * 9), 1)
    # Seen from a message start, events are joined again.
    assert redactor.redact(b"GET /c HTTP/1.1\r\nAuthoriz") == (b"GET /c HTTP/1.1\r\nAuthoriz", 0)
    assert redactor.redact(b"ation: Bearer t0k3nt0k3n\r\n\r\n") == (b"ation: Bearer " + b"*" * 10 + b"\r\n\r\n", 1)


def test_an_http_streams_bytes_after_a_byte_count_are_masked_whole():
    """A server reading 7 bytes at a time, one of whose reads went out as a byte count (the kernel sends each
    message's head, then counts): the value after `X-Api-Key` lost its name."""
    redactors = Redactors(RULES)
    assert redactors.redact(("s", 0), b"GET /a ") == (b"GET /a ", 0)
    redactors.skip(("s", 0), 7)

    assert redactors.redact(("s", 0), b": Cn01Z") == (b"*" * 7, 1)
    assert redactors.redact(("s", 0), b"HTTP/1.1 200 OK\r\n") == (b"HTTP/1.1 200 OK\r\n", 0)


def test_a_redis_streams_bytes_after_a_byte_count_are_redacted_as_they_come():
    redactors = Redactors(RULES)
    redactors.redact(("r", 0), resp(b"SET", b"k", b"v" * 2000)[:1024])
    redactors.skip(("r", 0), 990)

    assert redactors.redact(("r", 0), resp(b"GET", b"k")) == (resp(b"GET", b"k"), 0)


def test_a_secret_the_capture_cut_short_stays_masked_for_its_known_length():
    """A PostgreSQL password message of 41 bytes whose first write moved 30 and was captured to 12 bytes: the
    next write's 11 bytes are the rest of the message, masked by its length."""
    message = b"p" + (40).to_bytes(4, "big") + b"A" * 35 + b"\0"
    redactor = StreamRedactor(RULES)

    assert redactor.redact(message[:12], 30) == (message[:5] + b"*" * 7, 1)
    assert redactor.redact(message[30:] + b"Q\0\0\0\x05\0") == (b"*" * 11 + b"Q\0\0\0\x05\0", 1)


def test_a_form_body_that_ends_an_event_does_not_mask_the_next_request():
    stream = http_form_posts([b"pw1pw1pw1pw1", b"cs1cs1cs1cs1", b"pd1pd1pd1pd1"])
    cut = stream.index(b"GET /orders")
    redactor = StreamRedactor(RULES)
    redactor.redact(stream[:cut])

    assert redactor.redact(stream[cut:]) == (stream[cut:], 0)


def test_a_mysql_server_reading_the_header_first_still_masks_the_auth_response():
    packet = mysql_handshake_response(b"app", b"Sup3rSecretScrambl3")
    redactor = StreamRedactor(RULES)

    assert redactor.redact(packet[:4]) == (packet[:4], 0)
    body, regions = redactor.redact(packet[4:])
    assert regions == 1 and b"Sup3rSecret" not in body and b"app\0" in body


def test_a_mysql_command_packet_is_not_mistaken_for_authentication():
    stream = mysql_handshake_response(b"app", b"x" * 20) + mysql_packet(0, b"\x03SELECT 'visible'")

    redacted, _ = redact(stream, RULES)

    assert redacted.endswith(b"\x03SELECT 'visible'")


def test_redis_config_get_is_left_alone():
    command = resp(b"CONFIG", b"GET", b"requirepass")

    assert redact(command, RULES) == (command, 0)


def test_sql_without_a_password_clause_is_left_alone():
    query = b"Q\0\0\0\x2bSELECT name FROM users WHERE id = '42'\0"

    assert redact(query, RULES) == (query, 0)


def test_many_streams_are_bounded_and_the_oldest_forgotten_first():
    redactors = Redactors(RULES, max_streams=64)
    for stream in range(200):
        redactors.redact(stream, b"x")

    assert len(redactors) <= 64 and redactors.evicted >= 136 and 199 in redactors._streams


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=600), min_size=1, max_size=6), st.lists(st.integers(0, 4096), min_size=6, max_size=6))
def test_any_events_keep_their_length_and_change_only_to_the_mask_byte(chunks, extra):
    redactor = StreamRedactor(RULES)
    for chunk, more in zip(chunks, extra):
        redacted, _ = redactor.redact(chunk, len(chunk) + more % 3 * more)
        assert len(redacted) == len(chunk)
        assert all(after in (before, ord("*")) for before, after in zip(chunk, redacted))


def test_an_indexed_hpack_value_that_is_no_huffman_string_does_not_raise():
    """A literal with incremental indexing whose Huffman value is garbage (all ones, longer than the EOS padding):
    its size in the table is unknown, the walk goes on (hpack's decoder raises on it)."""
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    block = b"\x40\x01x\x85" + b"\xff" * 5 + b"\x40\x0dauthorization\x06secret"
    frame = len(block).to_bytes(3, "big") + b"\x01\x04" + (3).to_bytes(4, "big") + block
    redacted, regions = StreamRedactor(RULES).redact(preface + frame)
    assert b"secret" not in redacted and regions == 1


HOSTILE = {
    "password-words": b"password " * 900,
    "identified-quotes": b"IDENTIFIED BY '" * 600,
    "resp-auth": b"*9\r\n$4\r\nAUTH\r\n" * 550,
    "inline-auth-lines": b"AUTH a\r\n" * 1000,
    "userinfo": b"http://" * 1100,
    "json-keys": b'"token":' * 1000,
    "params": b"&token=" * 1100,
    "cookies": b"\nCookie: " + b"a=b;" * 2000,
    "headers": b"\nAuthorization: x" * 450,
    "backslashes": b'{"password":"' + b"\\" * 8000,
    "pg-frames": b"p\0\0\0\x05" * 1600,
    "mysql-zeros": bytes(8000),
    "kafka-frames": b"\0\0\0\x08\0\x24\0\x01" * 1000,
    "hpack-garbage": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + (b"\x00\x1f\x40\x01\x04\x00\x00\x00\x01" + b"\x40\xff\xff\xff\x0f" * 6) * 100,
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_payloads_cost_linear_time(name):
    """8 KiB of one repeated pattern, as one event and as 64 events: well under a millisecond per KiB."""
    payload = HOSTILE[name][:8192]
    started = time.perf_counter()
    redact(payload, RULES)
    redactor = StreamRedactor(RULES)
    for i in range(0, len(payload), 128):
        redactor.redact(payload[i:i + 128])
    elapsed = time.perf_counter() - started
    assert elapsed < 0.25, f"{name}: {elapsed:.3f} s for 2 x 8 KiB"
