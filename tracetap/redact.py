"""Same-length masking of secrets in captured socket payloads: HTTP credentials and cookies, Redis AUTH,
MySQL and PostgreSQL passwords. The node agent runs every captured prefix through `redact` before emitting
it; lengths never change, so byte counts and TCP sequence arithmetic stay valid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class RedactionRules:
    """Which secrets to mask (all by default) and the byte that replaces them."""

    http_authorization: bool = True
    http_proxy_authorization: bool = True
    http_cookie: bool = True
    http_set_cookie: bool = True
    redis_auth: bool = True
    mysql_password: bool = True
    postgres_password: bool = True
    mask_byte: int = ord("*")

    def __post_init__(self) -> None:
        if not 0 <= self.mask_byte <= 255:
            raise ValueError(f"mask_byte must be a byte value (0-255), got {self.mask_byte}")


DEFAULT_RULES = RedactionRules()

_Span = tuple[int, int]

# Matched against the lowercased payload at line starts: at offset 0, since a prefix may start mid-headers,
# and after any newline, since pipelined messages put headers after earlier bodies. Two patterns rather
# than a lookbehind because a leading literal "\n" lets the regex engine skip ahead quickly.
_HTTP_NAMES = rb"(proxy-authorization|authorization|set-cookie|cookie)[ \t]*:[ \t]*"
_HTTP_HEADER_AT_START = re.compile(_HTTP_NAMES)
_HTTP_HEADER = re.compile(rb"\n" + _HTTP_NAMES)
# The scheme stays visible only when credentials follow it on the same line; a long or odd first word is
# more likely a bare token than a scheme, so it is masked with the rest.
_AUTH_SCHEME = re.compile(rb"[A-Za-z][A-Za-z0-9._-]{0,23}[ \t]+(?=[^ \t])")
# Set-Cookie attributes whose values are not secret and help debugging; anything else is masked.
_SET_COOKIE_PUBLIC = frozenset({b"path", b"domain", b"expires", b"max-age", b"samesite", b"priority"})
_SET_COOKIE_FLAGS = frozenset({b"secure", b"httponly", b"partitioned"})
_BLANK = b" \t"

_RESP_AUTH = re.compile(rb"\*([0-9]{1,9})\r\n\$4\r\nauth\r\n")
_RESP_HELLO = re.compile(rb"\*([0-9]{1,9})\r\n\$5\r\nhello\r\n")
_RESP_MAX_ARGS = 16  # AUTH takes 2 and HELLO 6 at most; the cap bounds work on garbage counts
# Inline commands (`AUTH secret`, `HELLO 3 AUTH user secret`): everything after AUTH to the end of line.
_INLINE_HELLO = re.compile(rb"[ \t]*hello[ \t].*[ \t]")

_MYSQL_PROTOCOL_41 = 0x0000_0200
_MYSQL_SECURE_CONNECTION = 0x0000_8000
_MYSQL_AUTH_LENENC = 0x0020_0000
_MYSQL_FIXED = 4 + 4 + 4 + 1 + 23  # header, capabilities, max packet, charset, filler
# MySQL zero-fills 23 bytes; MariaDB puts its extended capabilities in the last 4, so only 19 must be zero.
_MYSQL_FILLER = bytes(19)
_MYSQL_LENENC_WIDTH = {0xFC: 2, 0xFD: 3, 0xFE: 8}

_PG_FRONTEND_TYPES = frozenset(b"BCcDdEFfHPpQSX")
_PG_PASSWORD = 0x70  # 'p': PasswordMessage, SASLInitialResponse, SASLResponse (and GSSResponse)
_PG_MAX_PASSWORD_MESSAGE = 64 * 1024
_PG_MAX_MESSAGE = 1 << 30  # the server's own limit; larger lengths mean we are not at a message boundary


def redact(payload: bytes, rules: RedactionRules = DEFAULT_RULES) -> tuple[bytes, int]:
    """Mask secrets in a captured payload prefix; return (same-length payload, regions masked).

    The payload may be cut anywhere, hold several pipelined messages or be garbage; this never raises.
    When nothing is masked the payload object itself is returned.
    """
    # Every parser sits behind a cheap `in` check or byte test, so the common payload (no secret) costs one
    # lowercase copy and a few C-speed scans.
    spans: list[_Span] = []
    http = rules.http_authorization or rules.http_proxy_authorization or rules.http_cookie or rules.http_set_cookie
    if http or rules.redis_auth:
        # One lowercase copy makes every later name check case-insensitive; offsets are unchanged.
        lowered = payload.lower()
        has_auth = b"auth" in lowered  # in both "authorization" and Redis AUTH
        if http and (has_auth or b"cookie" in lowered):
            spans += _http_spans(payload, lowered, rules)
        if rules.redis_auth and has_auth:
            spans += _redis_spans(payload, lowered)
    if rules.mysql_password and len(payload) > _MYSQL_FIXED and payload[3] in (1, 2):
        spans += _mysql_spans(payload)
    if rules.postgres_password and len(payload) >= 5 and payload[0] in _PG_FRONTEND_TYPES:
        spans += _postgres_spans(payload)
    if not spans:
        return payload, 0
    return _mask(payload, spans, rules.mask_byte)


def _mask(payload: bytes, spans: list[_Span], mask_byte: int) -> tuple[bytes, int]:
    fill = bytes((mask_byte,))
    pieces: list[bytes] = []
    regions = 0
    covered = 0  # end of what is already masked, so that overlapping detections count once
    for start, end in sorted(spans):
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


# --- HTTP/1.x ------------------------------------------------------------------------------------------


def _http_spans(payload: bytes, lowered: bytes, rules: RedactionRules) -> list[_Span]:
    enabled = {
        b"authorization": rules.http_authorization,
        b"proxy-authorization": rules.http_proxy_authorization,
        b"cookie": rules.http_cookie,
        b"set-cookie": rules.http_set_cookie,
    }
    spans: list[_Span] = []
    first = _HTTP_HEADER_AT_START.match(lowered)
    for match in ([first] if first else []) + list(_HTTP_HEADER.finditer(lowered)):
        name = match.group(1)
        if not enabled[name]:
            continue
        lines = _header_lines(payload, match.end())
        if name == b"cookie":
            for start, end in lines:
                spans += _cookie_values(payload, start, end)
        elif name == b"set-cookie":
            spans += _set_cookie_values(payload, lowered, lines)
        else:
            spans += _credentials(payload, lines)
    return spans


def _header_lines(payload: bytes, start: int) -> list[_Span]:
    """The header value's span on its line, then on each obs-fold continuation line (starting SP/HT)."""
    lines: list[_Span] = []
    while True:
        end, eol = _line_end(payload, start)
        lines.append(_strip(payload, start, end))
        if eol + 1 >= len(payload) or payload[eol + 1] not in _BLANK:
            return lines
        start = eol + 1


def _line_end(payload: bytes, start: int) -> _Span:
    """(end of the line's content, index of its '\\n' or the prefix length): a cut line ends at the prefix."""
    eol = payload.find(b"\n", start)
    if eol == -1:
        eol = len(payload)
    end = eol - 1 if eol > start and payload[eol - 1] == 0x0D else eol
    return end, eol


def _credentials(payload: bytes, lines: list[_Span]) -> list[_Span]:
    """Authorization values: keep the scheme word (Basic, Bearer, ...) when credentials follow it."""
    start, end = lines[0]
    scheme = _AUTH_SCHEME.match(payload, start, end)
    return [(scheme.end() if scheme else start, end), *lines[1:]]


def _cookie_values(payload: bytes, start: int, end: int) -> list[_Span]:
    """Cookie: `a=1; b=2` → the values; a part without '=' is a nameless cookie value, masked whole."""
    spans: list[_Span] = []
    for part_start, part_end in _parts(payload, start, end):
        equals = payload.find(b"=", part_start, part_end)
        spans.append(_strip(payload, part_start if equals == -1 else equals + 1, part_end))
    return spans


def _set_cookie_values(payload: bytes, lowered: bytes, lines: list[_Span]) -> list[_Span]:
    """Set-Cookie: mask the cookie's value and any attribute not known to be public."""
    spans: list[_Span] = []
    first = True
    for line_start, line_end in lines:
        for start, end in _parts(payload, line_start, line_end):
            equals = payload.find(b"=", start, end)
            if first:
                first = False
                spans.append(_strip(payload, start if equals == -1 else equals + 1, end))
            elif equals == -1:
                if lowered[start:end] not in _SET_COOKIE_FLAGS:
                    spans.append((start, end))
            elif lowered[start:equals].rstrip(_BLANK) not in _SET_COOKIE_PUBLIC or payload.find(b"=", equals + 1, end) != -1:
                # A second '=' means servers or proxies joined cookies with commas ("Path=/, b=2"): mask.
                spans.append(_strip(payload, equals + 1, end))
    return spans


def _parts(payload: bytes, start: int, end: int) -> list[_Span]:
    """The ';'-separated parts of [start, end), blanks trimmed, empty ones dropped."""
    parts: list[_Span] = []
    while start < end:
        semicolon = payload.find(b";", start, end)
        stop = end if semicolon == -1 else semicolon
        part = _strip(payload, start, stop)
        if part[0] < part[1]:
            parts.append(part)
        if semicolon == -1:
            break
        start = semicolon + 1
    return parts


def _strip(payload: bytes, start: int, end: int) -> _Span:
    while start < end and payload[start] in _BLANK:
        start += 1
    while end > start and payload[end - 1] in _BLANK:
        end -= 1
    return start, end


# --- Redis ---------------------------------------------------------------------------------------------


def _redis_spans(payload: bytes, lowered: bytes) -> list[_Span]:
    spans: list[_Span] = []
    if b"\r\nauth\r\n" in lowered:  # the AUTH command and HELLO's AUTH option, as RESP bulk strings
        for match in _RESP_AUTH.finditer(lowered):
            argc = int(match.group(1))
            args = _resp_args(payload, match.end(), min(argc - 1, _RESP_MAX_ARGS))
            # AUTH user password: the user name is not secret; any other shape is masked whole.
            spans += args[1:] if argc == 3 else args
        for match in _RESP_HELLO.finditer(lowered):
            args = _resp_args(payload, match.end(), min(int(match.group(1)) - 1, _RESP_MAX_ARGS))
            i = 1  # args[0] is the protocol version; then options: AUTH user password, SETNAME name
            while i < len(args):
                option = lowered[args[i][0]:args[i][1]]
                if option == b"auth":
                    spans += args[i + 2:i + 3]
                    i += 3
                else:
                    i += 2 if option == b"setname" else 1
    word = lowered.find(b"auth")
    while word != -1:
        after = word + 4
        if lowered[after:after + 1] in (b" ", b"\t"):
            before = lowered[lowered.rfind(b"\n", 0, word) + 1:word]
            if not before.strip(_BLANK) or _INLINE_HELLO.fullmatch(before):
                spans.append(_strip(payload, after, _line_end(payload, after)[0]))
        word = lowered.find(b"auth", after)
    return spans


def _resp_args(payload: bytes, pos: int, count: int) -> list[_Span]:
    """Data spans of up to `count` bulk strings (`$<n>\\r\\n<data>\\r\\n`) from pos; a cut one ends at the prefix."""
    args: list[_Span] = []
    size = len(payload)
    for _ in range(count):
        if pos >= size or payload[pos] != 0x24:  # '$'
            break
        eol = payload.find(b"\r\n", pos + 1, pos + 13)
        digits = payload[pos + 1:eol]
        if eol == -1 or not digits.isdigit():
            break
        start = eol + 2
        end = start + int(digits)
        args.append((start, min(end, size)))
        pos = end + 2
    return args


# --- MySQL ---------------------------------------------------------------------------------------------


def _mysql_spans(payload: bytes) -> list[_Span]:
    """The auth-response of a HandshakeResponse41 at offset 0 (the client's first packet after the greeting).

    Sequence id 2 is accepted too: after an SSLRequest (id 1) the response travels inside TLS, which
    uprobe-based capture sees in clear.
    """
    if payload[13:13 + len(_MYSQL_FILLER)] != _MYSQL_FILLER:
        return []
    length = int.from_bytes(payload[0:3], "little")
    capabilities = int.from_bytes(payload[4:8], "little")
    # A 32-byte payload is an SSLRequest: the same fixed part with no user name and nothing secret.
    if length <= _MYSQL_FIXED - 4 or not capabilities & _MYSQL_PROTOCOL_41:
        return []
    end = min(4 + length, len(payload))
    user_end = payload.find(b"\0", _MYSQL_FIXED, end)
    if user_end == -1:
        return []  # cut inside the user name: the auth-response is not in the prefix
    pos = user_end + 1
    if capabilities & _MYSQL_AUTH_LENENC:
        if pos >= end:
            return []
        first = payload[pos]
        width = _MYSQL_LENENC_WIDTH.get(first, 0)
        if first >= 0xFB and not width:
            return []  # 0xFB (NULL) and 0xFF are not lengths
        if pos + 1 + width > end:
            return []
        size = first if not width else int.from_bytes(payload[pos + 1:pos + 1 + width], "little")
        pos += 1 + width
        return [(pos, min(pos + size, end))]
    if capabilities & _MYSQL_SECURE_CONNECTION:
        if pos >= end:
            return []
        return [(pos + 1, min(pos + 1 + payload[pos], end))]
    nul = payload.find(b"\0", pos, end)
    return [(pos, end if nul == -1 else nul)]


# --- PostgreSQL ----------------------------------------------------------------------------------------


def _postgres_spans(payload: bytes) -> list[_Span]:
    """Walk frontend messages from offset 0 and mask the body of each credible 'p' message."""
    if b"p" not in payload:
        return []
    spans: list[_Span] = []
    size = len(payload)
    pos = 0
    while pos + 5 <= size and payload[pos] in _PG_FRONTEND_TYPES:
        length = int.from_bytes(payload[pos + 1:pos + 5], "big")
        if length < 4 or length > (_PG_MAX_PASSWORD_MESSAGE if payload[pos] == _PG_PASSWORD else _PG_MAX_MESSAGE):
            break
        end = pos + 1 + length
        if payload[pos] == _PG_PASSWORD:
            spans += _postgres_password(payload, pos + 5, end)
        pos = end
    return spans


def _postgres_password(payload: bytes, start: int, end: int) -> list[_Span]:
    if end > len(payload):
        return [(start, len(payload))]  # cut inside a sane-length message: mask what is there
    body = payload[start:end]
    if body.endswith(b"\0"):
        return [(start, end - 1)]  # PasswordMessage (clear text or md5); the terminator is framing
    if body.startswith(b"c="):
        return [(start, end)]  # SASLResponse: SCRAM client-final-message "c=...,r=...,p=<proof>"
    mechanism_end = body.find(b"\0")
    if mechanism_end > 0 and len(body) >= mechanism_end + 5:
        declared = int.from_bytes(body[mechanism_end + 1:mechanism_end + 5], "big", signed=True)
        if declared == len(body) - mechanism_end - 5 or (declared == -1 and len(body) == mechanism_end + 5):
            return [(start, end)]  # SASLInitialResponse: mechanism, int32 length, initial response
    return []
