"""Redis RESP2 and RESP3: commands (arrays of bulk strings, or inline), replies of every type, pipelines
(each message's size says where the next starts), error replies."""

from __future__ import annotations

from tracetap.protocols.base import NEED_MORE, ErrorClass, Message, Parse, Status, malformed
from tracetap.redact import redis as redact_redis

_MAX_DEPTH = 16
_MAX_ELEMENTS = 1 << 20
_SIMPLE = b"+-:_,#(!="  # types whose payload is one line (bulk errors ! and verbatim = carry a length)
_AGGREGATES = b"*%~>|"  # arrays, maps, sets, pushes, attributes
_COMMAND_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_.-")


# Commands sent inline (telnet-style, `redis-cli` health checks, load balancer probes): enough to tell Redis off its ports.
_INLINE = frozenset((b"PING", b"INFO", b"AUTH", b"HELLO", b"SELECT", b"QUIT", b"ECHO", b"DBSIZE", b"MONITOR", b"GET", b"SET",
                     b"DEL", b"EXISTS", b"KEYS", b"INCR", b"TTL", b"TYPE", b"CLIENT", b"CONFIG", b"COMMAND"))


class _Cut(Exception):
    """The value runs past the captured bytes."""


class _Bad(Exception):
    pass


class Redis:
    name = "REDIS"
    symbols = ("REDIS",)
    redaction = (redact_redis.scans,)
    ports = frozenset({6379, 6380, 26379})

    def detect(self, first: bytes, port: int) -> bool:
        if first[:1] == b"*" and b"\r\n$" in first[:16]:
            return True
        if port in self.ports:
            return first[:1].isalpha()
        # an inline command on any port: one of the commands people type, a line of printable text
        line = first[:max(first.find(b"\r\n", 0, 512), 0)]
        command = line.split(None, 1)[0].upper() if line.strip() else b""
        return command in _INLINE and line.isascii() and line.decode().isprintable()

    def parse_request(self, data: bytes, final: bool) -> Parse:
        if not data:
            return NEED_MORE
        if data[:1] != b"*":
            return _inline(data, final)
        try:
            end, args = _bulk_array(data)
        except _Cut:
            return self._partial_command(data) if final else NEED_MORE
        except _Bad as exc:
            return malformed(str(exc))
        if not isinstance(args, list) or not args or not all(isinstance(a, bytes) for a in args):
            return malformed("a Redis command is an array of bulk strings")
        return _command(args, end)

    def _partial_command(self, data: bytes) -> Parse:
        """A command cut by the capture: the name and first key are usually within the prefix."""
        args: list[bytes] = []
        offset = data.find(b"\r\n") + 2
        while len(args) < 2 and offset > 1:
            try:
                offset, value = _value(data, offset, 1, collect=True)
            except (_Cut, _Bad):
                break
            if not isinstance(value, bytes):
                break
            args.append(value)
        return _command(args, None) if args else malformed("Redis command cut before its name")

    def parse_response(self, data: bytes, final: bool) -> Parse:
        if not data:
            return NEED_MORE
        try:
            end, _ = _value(data, 0, 0, collect=False)
        except _Cut:
            if not final:
                return NEED_MORE
            end = None
        except _Bad as exc:
            return malformed(str(exc))
        kind = data[:1]
        message = None
        error = None
        if kind in (b"-", b"!"):
            line_end = data.find(b"\r\n")
            text = data[1:line_end if line_end != -1 else len(data)]
            if kind == b"!":  # bulk error: length line, then the text
                text = data[line_end + 2:end - 2 if end else len(data)] if line_end != -1 else b""
            message = text.decode("utf-8", errors="replace")[:256]
            error = ErrorClass.SERVER_ERROR
        return Parse(Status.MESSAGE, Message(is_request=False, size=end, response_message=message, error_class=error))


def _command(args: list[bytes], size: int | None) -> Parse:
    name = args[0].upper()
    if not name or not all(c in _COMMAND_CHARS for c in name):
        return malformed(f"{args[0][:20]!r} is not a Redis command name")
    command = name.decode()
    key = None
    if len(args) > 1 and command not in ("AUTH", "HELLO"):  # never carry a credential into a span
        key = args[1][:256].decode("utf-8", errors="replace")
    return Parse(Status.MESSAGE, Message(is_request=True, size=size, request_type=command, request_resource=key))


def _inline(data: bytes, final: bool) -> Parse:
    end = data.find(b"\n")
    if end == -1:
        if not final and len(data) < 64 * 1024:
            return NEED_MORE
        end = len(data) - 1
    words = data[:end + 1].split()
    if not words:
        return malformed("empty inline Redis command")
    return _command(words, end + 1)


def _bulk_array(data: bytes) -> tuple[int, list[bytes]]:
    """A command: an array of bulk strings, read without recursion (the hot path of every request)."""
    end = data.find(b"\r\n", 1, 24)
    if end == -1:
        raise _Cut if len(data) < 24 else _Bad("RESP array length line too long")
    count = _integer(data[1:end])
    if not 0 < count <= _MAX_ELEMENTS:
        raise _Bad(f"a command of {count} arguments")
    offset, args = end + 2, []
    for _ in range(count):
        if offset >= len(data):
            raise _Cut
        if data[offset] != 0x24:  # '$'
            raise _Bad("a Redis command is an array of bulk strings")
        end = data.find(b"\r\n", offset + 1, offset + 24)
        if end == -1:
            raise _Cut if len(data) - offset < 24 else _Bad("RESP bulk length line too long")
        length = _integer(data[offset + 1:end])
        if length < 0:
            raise _Bad(f"bulk length {length} in a command")
        start, offset = end + 2, end + 4 + length
        if offset > len(data):
            raise _Cut
        if data[offset - 2:offset] != b"\r\n":
            raise _Bad("bulk string not followed by CRLF")
        args.append(data[start:start + length])
    return offset, args


def _line(data: bytes, offset: int) -> tuple[bytes, int]:
    end = data.find(b"\r\n", offset)
    if end == -1:
        if len(data) - offset > 64 * 1024:
            raise _Bad("a RESP line longer than 64 KiB")
        raise _Cut
    return data[offset:end], end + 2


def _integer(text: bytes) -> int:
    if len(text) > 20:  # int() is quadratic in digits and refuses more than 4,300: no RESP length is that long
        raise _Bad(f"{text[:20]!r}... is not a RESP length")
    try:
        return int(text)
    except ValueError:
        raise _Bad(f"{text[:20]!r} is not a RESP length") from None


def _value(data: bytes, offset: int, depth: int, collect: bool) -> tuple[int, object]:
    """(offset after one RESP value, the value when collecting bulk strings/arrays else None)."""
    if depth > _MAX_DEPTH:
        raise _Bad("RESP nesting deeper than 16")
    if offset >= len(data):
        raise _Cut
    kind = data[offset:offset + 1]
    line, after = _line(data, offset + 1)
    if kind in b"$!=" and kind:
        length = _integer(line)
        if length == -1:
            return after, None
        if length < 0:
            raise _Bad(f"negative bulk length {length}")
        end = after + length + 2
        if end > len(data):
            raise _Cut
        if data[end - 2:end] != b"\r\n":
            raise _Bad("bulk string not followed by CRLF")
        return end, data[after:after + length] if collect else None
    if kind and kind in _SIMPLE:
        return after, line if collect else None
    if kind and kind in _AGGREGATES:
        count = _integer(line)
        if count == -1:
            return after, None
        if not 0 <= count <= _MAX_ELEMENTS:
            raise _Bad(f"aggregate of {count} elements")
        items = []
        for _ in range(count * (2 if kind in b"%|" else 1)):
            after, item = _value(data, after, depth + 1, collect)
            if collect:
                items.append(item)
        return after, items if collect else None
    raise _Bad(f"{kind!r} is not a RESP type")


REDIS = Redis()
