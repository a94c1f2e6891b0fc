"""Redis passwords, in RESP arrays and inline commands: AUTH, HELLO … AUTH, CONFIG SET requirepass|
masterauth, MIGRATE … AUTH/AUTH2, ACL SETUSER … >password (and <, #, ! rules). User names stay.
"""

from __future__ import annotations

import re
from typing import Any

from tracetap.redact.base import BLANK, Scan, Until, Window, line_end

_COMMANDS = (b"auth", b"hello", b"config", b"migrate", b"acl")
_CONFIG_SECRETS = frozenset({b"requirepass", b"masterauth", b"tls-key-file-pass", b"tls-client-key-file-pass"})
MAX_ARGS = 64  # MIGRATE's AUTH comes before its KEYS list; the cap bounds work on garbage counts
_ARRAY = re.compile(rb"\*([0-9]{1,9})\r\n")
_TOKEN = re.compile(rb"[^ \t\r\n]+")
_TOKEN_END = Until(b" \t\r\n")


def passwords(w: Window) -> None:
    lower = w.lower
    if not any(command in lower for command in _COMMANDS):
        return
    if b"*" in w.data:
        _resp(w)
    _inline(w)


def _secret_args(command: bytes, args: list[bytes]) -> list[int]:
    """Indexes (into args, which start after the command) of the secret arguments."""
    if command == b"auth":
        return [1] if len(args) == 2 else list(range(len(args)))  # AUTH user pass / AUTH pass
    secret: list[int] = []
    if command == b"hello":
        i = 1  # args[0] is the protocol version; then options: AUTH user password, SETNAME name
        while i < len(args):
            if args[i] == b"auth":
                secret.append(i + 2)
                i += 3
            else:
                i += 2 if args[i] == b"setname" else 1
    elif command == b"config" and args[:1] == [b"set"]:
        secret += [i + 1 for i in range(1, len(args), 2) if args[i] in _CONFIG_SECRETS]
    elif command == b"migrate":
        for i, arg in enumerate(args):
            if arg == b"keys":
                break
            if arg == b"auth":
                secret.append(i + 1)
            elif arg == b"auth2":
                secret.append(i + 2)
    elif command == b"acl" and args[:1] == [b"setuser"]:
        secret += [i for i, arg in enumerate(args[2:], 2) if arg[:1] in (b">", b"<", b"#", b"!")]
    return secret


def _resp(w: Window) -> None:
    data, lower = w.data, w.lower
    for match in _ARRAY.finditer(data):
        argc = int(match.group(1))
        first, _ = _bulk_strings(data, match.end(), 1)
        if not first or lower[first[0][0]:first[0][1]] not in _COMMANDS:
            continue
        command = lower[first[0][0]:first[0][1]]
        args, ran_out = _bulk_strings(data, match.end(), min(argc, MAX_ARGS))
        if ran_out:
            w.keep(match.start())  # the command goes on in the next event
        values = [lower[s:min(e, len(data))] for s, e in args[1:]]
        for i in _secret_args(command, values + [b""] * (min(argc, MAX_ARGS) - len(args))):
            if i + 1 < len(args):
                start, end = args[i + 1]
                if command == b"acl":
                    start += 1  # the rule's sign stays: '>' adds, '<' removes a password
                w.mask_open(start, len(data), end)


def _bulk_strings(data: bytes, pos: int, count: int) -> tuple[list[tuple[int, int]], bool]:
    """Spans of up to `count` bulk strings (`$<n>\r\n<data>\r\n`) from pos (a cut one ends past the data), and
    whether the data ended before them: an array that stops at something else is malformed, not cut, and is not
    kept for the next event (that kept every later event's window at its longest)."""
    args: list[tuple[int, int]] = []
    size = len(data)
    for _ in range(count):
        if pos >= size:
            return args, True
        if data[pos] != 0x24:  # '$'
            return args, False
        eol = data.find(b"\r\n", pos + 1, pos + 13)
        if eol == -1:  # a length line the data cuts, or no length line at all
            rest = data[pos + 1:]
            return args, size - pos < 13 and (not rest or rest.rstrip(b"\r").isdigit())
        digits = data[pos + 1:eol]
        if not digits.isascii() or not digits.isdigit():
            return args, False
        start = eol + 2
        end = start + int(digits)
        args.append((start, end))
        if end > size:
            return args, True
        pos = end + 2
    return args, False


def _inline(w: Window) -> None:
    """Inline commands: a line whose first word is one of the commands, split on blanks."""
    data, lower = w.data, w.lower
    size = len(data)
    start = 0 if w.fresh else lower.find(b"\n") + 1
    while 0 < start < size or start == 0 and w.fresh and size:
        at = start
        while at < size and lower[at] in BLANK:
            at += 1
        word_end = _TOKEN.match(lower, at)
        command = lower[at:word_end.end()] if word_end else b""
        if command in _COMMANDS:
            _inline_line(w, command, at, line_end(data, at)[0])
        start = lower.find(b"\n", at) + 1
        if start == 0:
            break


def _inline_line(w: Window, command: bytes, at: int, end: int) -> None:
    data, lower = w.data, w.lower
    tokens = [(m.start(), m.end()) for m in _TOKEN.finditer(lower, at + len(command), end)][:MAX_ARGS]
    cut = end == len(data)
    if cut:
        w.keep(at)
    words = [lower[s:e] for s, e in tokens]
    secret = _secret_args(command, words)
    if cut and command in (b"auth", b"config", b"migrate", b"hello", b"acl") and tokens and tokens[-1][1] == end:
        # The last word may be cut: in AUTH it is always a password (AUTH pass / AUTH user pass).
        if command == b"auth" and len(tokens) <= 2:
            secret = list(range(len(tokens))) if len(tokens) == 1 else [1]
    for i in secret:
        if i < len(tokens):
            start, stop = tokens[i]
            if command == b"acl":
                start += 1
            w.mask(start, stop, _TOKEN_END if cut and stop == end else None)


def scans(rules: Any) -> tuple[Scan, ...]:
    """Redis's rule: AUTH, HELLO AUTH, CONFIG SET requirepass|masterauth, MIGRATE AUTH, ACL SETUSER (switch `redis_auth`)."""
    return (passwords,) if rules.redis_auth else ()
