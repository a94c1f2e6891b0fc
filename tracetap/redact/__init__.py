"""Same-length masking of secrets in captured socket payloads, before they leave the node.

Redaction is stateful per socket direction (`StreamRedactor`): each event is scanned together with the
tail of the one before, length-framed protocols are walked across events, and a secret that runs past
the end of an event is masked on into the next. So a secret is masked whichever way its bytes were cut
into syscalls. Lengths never change, so byte counts and TCP sequence arithmetic stay valid. What a redactor
cannot join is bytes it never saw (a syscall sent as a byte count, a payload cut to its prefix): after them, an
HTTP stream's payload that does not start a message is masked whole, since a header's name may have gone by unseen.

A rule is a function of a `Window`; each protocol module in tracetap/protocols declares its own (`redaction`),
whose scans live here, one module per protocol.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass
from typing import Any, Hashable

from tracetap.redact import http
from tracetap.redact.base import Mask, Scan, Until, Window

log = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class RedactionRules:
    """Which secrets to mask (all by default), extra names to treat as secret, and the mask byte."""

    http_authorization: bool = True  # Authorization, X-Forwarded-Authorization (the scheme stays); HTTP/2 too
    http_proxy_authorization: bool = True
    http_credential_headers: bool = True  # X-Api-Key, Api-Key, X-Auth-Token, ... and extra_headers
    http_cookie: bool = True
    http_set_cookie: bool = True
    url_userinfo: bool = True  # scheme://user:password@host (the user stays)
    secret_params: bool = True  # key=value of secret keys in query strings and form bodies (the key stays)
    json_secrets: bool = True  # "key": value of secret keys in JSON
    sql_passwords: bool = True  # literals after PASSWORD / IDENTIFIED in any SQL text
    redis_auth: bool = True  # AUTH, HELLO AUTH, CONFIG SET requirepass|masterauth, MIGRATE AUTH, ACL SETUSER
    mysql_password: bool = True  # handshake and COM_CHANGE_USER auth responses, the auth exchange after them
    postgres_password: bool = True  # PasswordMessage, SASLInitialResponse, SASLResponse
    kafka_sasl: bool = True  # SaslAuthenticate auth bytes, raw tokens after a v0 SaslHandshake
    extra_headers: tuple[str, ...] = ()  # more credential header names (case-insensitive)
    extra_keys: tuple[str, ...] = ()  # more secret query, form and JSON keys (case-insensitive)
    mask_byte: int = ord("*")

    def __post_init__(self) -> None:
        if not 0 <= self.mask_byte <= 255:
            raise ValueError(f"mask_byte must be a byte value (0-255), got {self.mask_byte}")
        object.__setattr__(self, "extra_headers", tuple(h.lower() for h in self.extra_headers))
        object.__setattr__(self, "extra_keys", tuple(k.lower() for k in self.extra_keys))


DEFAULT_RULES = RedactionRules()
# The rules a user can switch off by name (`agent.redact_disable`).
SWITCHES = tuple(f.name for f in dataclasses.fields(RedactionRules) if f.type in ("bool", bool))

TAIL_BYTES = 64  # carried by default: a header name or keyword cut between two events is found whole
MAX_CARRY_BYTES = 4096  # what a rule may ask to see again (a long header line, a cut command); bounds the rescans


@functools.lru_cache(maxsize=32)
def _plan(rules: RedactionRules, http_only: bool = False) -> tuple[Scan, ...]:
    """The scans these rules run: each protocol module declares its redaction (`redaction`, rules shared by a family
    such as SQL's declared by each of its members, run once), resolved once per rules.

    `http_only`: the plan for a stream that began with an HTTP message, where no Redis, SQL or binary
    protocol can appear (the HTTP rules still cover its bodies)."""
    from tracetap.protocols import all_protocols  # the protocol modules import their rules from this package
    from tracetap.protocols.http1 import HTTP1

    declared = HTTP1.redaction if http_only else tuple(dict.fromkeys(rule for p in all_protocols() for rule in p.redaction))
    return tuple(scan for rule in declared for scan in rule(rules))


class StreamRedactor:
    """Redaction of one socket direction: feed it that direction's events in order."""

    __slots__ = ("_rules", "_scans", "_tail", "_tail_fresh", "_stream_at", "_carries", "_state", "_http", "_unseen")

    def __init__(self, rules: RedactionRules = DEFAULT_RULES) -> None:
        self._rules = rules
        self._scans = _plan(rules)
        self._tail = b""
        self._tail_fresh = True  # the tail (or, with none, the next event) starts at a line start
        self._stream_at = 0  # stream offset of the next event's first byte
        self._carries: list[Mask] = []  # secrets the last event cut, to mask on into this one
        self._state: dict[str, Any] = {}
        self._http = False  # the stream began with an HTTP/1 message
        self._unseen = False  # bytes of the stream went by uncaptured since its last message start

    def redact(self, payload: bytes, size: int | None = None) -> tuple[bytes, int]:
        """Mask the secrets in one event's captured payload; return (same-length payload, regions masked).

        `size` is how many bytes the syscall moved (more than `len(payload)` when the capture kept a prefix).
        Never raises; when nothing is masked the payload object itself is returned.
        """
        moved = size if size is not None and size > len(payload) else len(payload)
        cut_short = moved > len(payload)  # what follows this prefix was not captured
        if self._unseen and self._http and payload:
            if not http.starts_a_message(payload):
                return self._mask_blind(payload, moved)
            self._unseen = False
        spans: list[tuple[int, int]] = []
        carried = self._carry_in(payload, moved, cut_short, spans) if self._carries else []
        tail = self._tail
        data = tail + payload if tail else payload
        if self._stream_at == 0 and http.starts_a_message(payload):
            self._scans = _plan(self._rules, http_only=True)
            self._http = True
        window = Window(data, len(tail), self._stream_at - len(tail), self._tail_fresh, self._state)
        for scan in self._scans:
            scan(window)
        new_at = len(tail)
        for start, end, more in window.masks:
            if end > new_at:
                spans.append((max(start, new_at) - new_at, end - new_at))
            if more and end == len(data):
                _carry_out(carried, more, moved - len(payload), cut_short)
        self._carries = carried
        self._stream_at += moved
        self._keep_tail(window, data, cut_short)
        self._unseen = cut_short
        if not spans:
            return payload, 0
        return mask(payload, spans, self._rules.mask_byte)

    def _mask_blind(self, payload: bytes, moved: int) -> tuple[bytes, int]:
        """An HTTP stream's bytes after some it never saw, not at a message start: whatever named them as secret
        (`Authorization: Bearer ` in the unseen bytes) is unknown, so all of them are masked."""
        self._stream_at += moved
        self._carries = []
        self._tail, self._tail_fresh = b"", False
        return bytes((self._rules.mask_byte,)) * len(payload), 1

    def _carry_in(self, payload: bytes, moved: int, cut_short: bool, spans: list[tuple[int, int]]) -> list[Mask]:
        """Mask the start of this event for the secrets the last one cut; return those still running."""
        still: list[Mask] = []
        for carry in self._carries:
            more = carry.more
            if isinstance(more, int):
                spans.append((0, min(more, len(payload))))
                if more > moved:
                    still.append(Mask(0, 0, more - moved))
            elif isinstance(more, Until):
                if more.not_before_message and http.starts_a_message(payload):
                    continue
                stop = _first_of(payload, more.stop)
                spans.append((0, len(payload) if stop == -1 else stop))
                if stop == -1 and not cut_short:
                    still.append(carry)
        return still

    def _keep_tail(self, window: Window, data: bytes, cut_short: bool) -> None:
        if cut_short:  # the next event does not follow these bytes: nothing to join
            self._tail, self._tail_fresh = b"", True
            return
        start = max(0, len(data) - TAIL_BYTES)
        if window.keep_from is not None:
            start = min(start, max(window.keep_from, len(data) - MAX_CARRY_BYTES))
        self._tail_fresh = start == 0 and window.fresh
        self._tail = data[start:]


def _carry_out(carried: list[Mask], more: int | Until, uncaptured: int, cut_short: bool) -> None:
    if isinstance(more, int):
        if more > uncaptured:  # the bytes the capture dropped used up part of the secret
            carried.append(Mask(0, 0, more - uncaptured))
    elif not cut_short:  # an Until's stop byte may have been in the dropped bytes: it cannot be followed
        carried.append(Mask(0, 0, more))


def _first_of(data: bytes, stops: bytes) -> int:
    found = [i for i in (data.find(bytes((b,))) for b in stops) if i != -1]
    return min(found) if found else -1


def mask(payload: bytes, spans: list[tuple[int, int]], mask_byte: int) -> tuple[bytes, int]:
    """Overwrite the spans with the mask byte; return the payload and the number of disjoint regions."""
    fill = bytes((mask_byte,))
    pieces: list[bytes] = []
    regions = 0
    covered = 0  # end of what is already masked, so that overlapping detections count once
    for start, end in sorted(spans):
        end = min(end, len(payload))
        if end <= start or end <= covered:
            continue
        if start >= covered:
            regions += 1
            pieces.append(payload[covered:start])
        pieces.append(fill * (end - max(start, covered)))
        covered = end
    if not regions:
        return payload, 0
    pieces.append(payload[covered:])
    return b"".join(pieces), regions


class Redactors:
    """The stream redactors of a node agent, one per (socket, direction), bounded in number."""

    def __init__(self, rules: RedactionRules = DEFAULT_RULES, max_streams: int = 65_536) -> None:
        self.rules = rules
        self._streams: dict[Hashable, StreamRedactor] = {}
        self._max_streams = max_streams
        self.evicted = 0  # streams forgotten for room (their next event starts without a tail)
        self.failures = 0  # events whose redaction raised (their payload was masked whole)

    def redact(self, stream: Hashable, payload: bytes, size: int | None = None) -> tuple[bytes, int]:
        """The stream's redactor on one event. Should a rule ever raise, the whole payload is masked (nothing
        unredacted leaves), the stream starts again with a new redactor, and the error is counted and logged once."""
        redactor = self._streams.get(stream)
        if redactor is None:
            if len(self._streams) >= self._max_streams:
                self._evict()
            redactor = self._streams[stream] = StreamRedactor(self.rules)
        try:
            return redactor.redact(payload, size)
        except Exception:  # a bug in a rule must cost one event's payload, never a secret or the capture
            self.failures += 1
            if self.failures == 1:
                log.error("redaction failed; the event's payload is masked whole", exc_info=True)
            self._streams[stream] = StreamRedactor(self.rules)
            return bytes((self.rules.mask_byte,)) * len(payload), 1 if payload else 0

    def skip(self, stream: Hashable, size: int) -> None:
        """`size` bytes of the stream went by without their payload (an event sent as a byte count): what the
        stream's redactor carries is not joined across them, and a secret running on is counted down by them."""
        redactor = self._streams.get(stream)
        if redactor is not None and size > 0:
            redactor.redact(b"", size)

    def close(self, streams: list[Hashable]) -> None:
        for stream in streams:
            self._streams.pop(stream, None)

    def __len__(self) -> int:
        return len(self._streams)

    def _evict(self) -> None:
        # Dicts keep insertion order: the oldest eighth goes, so eviction is rare and cheap.
        for stream in list(self._streams)[: max(1, self._max_streams // 8)]:
            del self._streams[stream]
            self.evicted += 1


def redact(payload: bytes, rules: RedactionRules = DEFAULT_RULES) -> tuple[bytes, int]:
    """Mask one payload on its own, as the first bytes of a stream (see StreamRedactor for streams)."""
    return StreamRedactor(rules).redact(payload)


def redact_text(text: str, rules: RedactionRules = DEFAULT_RULES) -> str:
    """Mask a decoded field (the packet agent's HTTP request target): URL credentials and secret parameters."""
    if not text:
        return text
    masked, regions = redact(text.encode("utf-8", "surrogateescape"), rules)
    return masked.decode("utf-8", "surrogateescape") if regions else text
