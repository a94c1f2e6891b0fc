"""TLS records where only ciphertext shows: at a NIC, or at a socket whose process's TLS the agent does not probe.

What can be read without keys is the record layer (RFC 8446 section 5: a content type, a version, a length) and
the ClientHello, which is plaintext (its server name, SNI). So a TLS "request" is the client's run of application
data records up to the server's answer, and the "response" is the server's run: a span of an exchange's timing,
sizes and TCP sequence numbers, which is what the four-point path needs from a NIC (the process taps read the same
exchange in plaintext from OpenSSL, `producers/ebpf/tls.py`, with the sequence number of the same first
ciphertext byte). Handshake flights expect no answer of their own: the ClientHello, and the client's second
flight (TLS 1.2's key exchange, change cipher spec and Finished; TLS 1.3's change cipher spec and encrypted
Finished), which ends with the record after its ChangeCipherSpec, so the first request after a handshake starts
a span of its own even when it follows in the same turn.
"""

from __future__ import annotations

from typing import Any

from tracetap.protocols.base import NEED_MORE, Message, Parse, Status, malformed

HANDSHAKE, CHANGE_CIPHER_SPEC, ALERT, APPLICATION_DATA = 22, 20, 21, 23
MAX_RECORD = 16384 + 2048  # TLSCiphertext.length at most (RFC 8446 section 5.2)
_HEADER = 5
_CLIENT_HELLO, _SERVER_HELLO = 1, 2
_SNI, _SUPPORTED_VERSIONS = 0, 43
TLS13 = 0x0304
# A TLS 1.3 alert is encrypted as application data: its type and two bytes plus an AEAD tag of 16 (AES-GCM, ChaCha20):
# 19 bytes no request can be (HTTP's shortest is longer)
_ENCRYPTED_ALERT = 1 + 2 + 16


def _record(data: bytes, at: int) -> tuple[int, int] | None:
    """(content type, length) of a plausible record header at `at`, or None."""
    if len(data) < at + _HEADER:
        return None
    kind, major, minor = data[at], data[at + 1], data[at + 2]
    length = data[at + 3] << 8 | data[at + 4]
    if kind not in (HANDSHAKE, CHANGE_CIPHER_SPEC, ALERT, APPLICATION_DATA) or major != 3 or minor > 4 or not 0 < length <= MAX_RECORD:
        return None
    return kind, length


def _headers_tile(data: bytes) -> bool:
    """Every record header the bytes hold is plausible (the last record may be cut)."""
    at = 0
    while at + _HEADER <= len(data):
        header = _record(data, at)
        if header is None:
            return False
        at += _HEADER + header[1]
    return True


def _extensions(data: bytes, at: int) -> tuple[int, int]:
    """(start, end) of a hello's extensions block whose length field is at `at`."""
    return at + 2, min(len(data), at + 2 + int.from_bytes(data[at:at + 2], "big"))


def server_hello_version(data: bytes) -> int | None:
    """The version a ServerHello record selected (its supported_versions extension: TLS 1.3; else its legacy
    version field), when its bytes hold it; never raises."""
    try:
        if data[_HEADER] != _SERVER_HELLO:
            return None
        at = _HEADER + 4
        legacy = int.from_bytes(data[at:at + 2], "big")
        at += 2 + 32  # version, random
        at += 1 + data[at] + 2 + 1  # session id, cipher suite, compression method
        at, end = _extensions(data, at)
        while at + 4 <= end:
            kind, size = int.from_bytes(data[at:at + 2], "big"), int.from_bytes(data[at + 2:at + 4], "big")
            if kind == _SUPPORTED_VERSIONS and size == 2 and at + 6 <= end:
                return int.from_bytes(data[at + 4:at + 6], "big")
            at += 4 + size
        return legacy
    except IndexError:
        return None


def server_name(data: bytes) -> str | None:
    """The SNI host name of a ClientHello record, when its bytes hold it; never raises."""
    try:
        at = _HEADER + 4 + 2 + 32  # record header, handshake header, client_version, random
        at += 1 + data[at]  # session id
        at += 2 + int.from_bytes(data[at:at + 2], "big")  # cipher suites
        at += 1 + data[at]  # compression methods
        at, end = _extensions(data, at)
        while at + 4 <= end:
            kind, size = int.from_bytes(data[at:at + 2], "big"), int.from_bytes(data[at + 2:at + 4], "big")
            if kind == _SNI and at + 9 <= end and data[at + 6] == 0:  # server_name_list, host_name entry
                length = int.from_bytes(data[at + 7:at + 9], "big")
                name = data[at + 9:at + 9 + length]
                if len(name) == length and name.isascii() and name.replace(b"-", b"").replace(b".", b"").isalnum():
                    return name.decode()
                return None
            at += 4 + size
    except IndexError:
        return None
    return None


class Tls:
    name = "TLS"
    symbols = ("TLS",)
    redaction = ()  # ciphertext; the ClientHello's server name is no secret
    ports = frozenset({443, 8443, 6443, 9443})
    encrypted = True  # its spans are flagged tls

    def detect(self, first: bytes, port: int) -> bool:
        header = _record(first, 0)
        if header is None or not _headers_tile(first):
            return False
        kind, _ = header
        if kind == HANDSHAKE:  # a ClientHello, or a later flight of a capture that joined mid-handshake
            return first[2] >= 1
        return kind in (APPLICATION_DATA, CHANGE_CIPHER_SPEC) and first[1:3] == b"\x03\x03"  # TLS 1.2 and 1.3 records say 1.2

    def parse_request(self, data: bytes, final: bool) -> Parse:
        header = _record(data, 0)
        if header is None:
            return NEED_MORE if len(data) < _HEADER and not final else malformed("not a TLS record header")
        kind, length = header
        if kind == HANDSHAKE and len(data) > _HEADER and data[_HEADER] == _CLIENT_HELLO:
            if len(data) < _HEADER + length and not final:
                return NEED_MORE
            return Parse(Status.MESSAGE, Message(True, _HEADER + length, request_type="client_hello", request_domain=server_name(data),
                                                 expects_response=False))
        if kind == APPLICATION_DATA and length == _ENCRYPTED_ALERT:  # TLS 1.3's close_notify: no request
            return Parse(Status.MESSAGE, Message(True, _HEADER + length, request_type="alert", expects_response=False))
        if kind == APPLICATION_DATA:
            return Parse(Status.MESSAGE, Message(True, None, request_type="application_data"))
        return self._flight(data, final)

    def parse_response(self, data: bytes, final: bool) -> Parse:
        header = _record(data, 0)
        if header is None:
            return NEED_MORE if len(data) < _HEADER and not final else malformed("not a TLS record header")
        if header[0] == APPLICATION_DATA:
            return Parse(Status.MESSAGE, Message(False, None, request_type="application_data"))
        if header[0] == HANDSHAKE and server_hello_version(data) == TLS13:
            return Parse(Status.MESSAGE, Message(False, None, request_type="server_hello", attributes=(("tls.version", "1.3"),)))
        return Parse(Status.MESSAGE, Message(False, None, request_type="handshake"))

    def session(self) -> Session:
        return Session()

    def session_from_state(self, state: list[Any]) -> Session:
        return Session(*state)

    @staticmethod
    def _flight(data: bytes, final: bool) -> Parse:
        """A client's handshake flight after its ClientHello (or an alert): its records up to and including the one after
        a ChangeCipherSpec (the encrypted Finished), or up to application data; it expects no answer of its own."""
        at, after_ccs = 0, False
        while True:
            header = _record(data, at)
            if header is None:
                break
            kind, length = header
            if kind == APPLICATION_DATA and not after_ccs:
                break
            if at + _HEADER + length > len(data):
                if not final:
                    return NEED_MORE
                at = len(data)
                break
            at += _HEADER + length
            if after_ccs:
                break
            after_ccs = kind == CHANGE_CIPHER_SPEC
        if not at:
            return malformed("not a TLS handshake flight")
        return Parse(Status.MESSAGE, Message(True, at, request_type="handshake", expects_response=False))


TLS = Tls()


class Session:
    """What a TLS 1.3 handshake leaves to come: the server's session tickets (NewSessionTicket, RFC 8446 section 4.6.1).
    The server sends them once it reads the client's Finished, encrypted as application data no request asked for,
    and a client sends its first request right after its Finished without waiting: at a NIC the request and the
    tickets cross, and which comes first is a race (OpenSSL writes each of its two tickets on its own, so the request
    can even fall between them). So after a TLS 1.3 handshake, the first run of the server's records that follows a
    request may be tickets rather than its answer: it is `tentative`, and the assembler takes a later run after a
    pause as the answer instead (`SocketAssembler`). Only a client that sends a ChangeCipherSpec before its Finished
    (every major stack's default, for middleboxes) is followed: without one, the Finished reads as a request."""

    __slots__ = ("_tls13", "_owed", "_asked")

    def __init__(self, tls13: bool = False, owed: bool = False, asked: bool = False) -> None:
        self._tls13 = tls13  # the ServerHello selected TLS 1.3
        self._owed = owed  # the client's Finished went by: tickets may still come
        self._asked = asked  # a request went by while they might

    def accept(self, message: Message, from_client: bool) -> Message:
        kind = message.request_type
        if from_client:
            if kind == "client_hello":
                self._tls13 = self._owed = self._asked = False
            elif kind == "handshake":
                self._owed, self._asked = self._tls13, False
            elif kind == "application_data" and self._owed:
                self._asked = True
            return message
        if kind == "server_hello":
            self._tls13 = True
        elif kind == "application_data" and self._owed and self._asked:
            self._owed = self._asked = False
            return message._replace(tentative=True)
        return message

    def lost(self) -> None:
        self._owed = self._asked = False

    def to_state(self) -> list[Any]:
        return [self._tls13, self._owed, self._asked]
