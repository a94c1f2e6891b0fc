"""HTTP secrets: credential headers (the scheme stays), cookie values, userinfo and secret query parameters
in URLs, and secret keys of form and JSON bodies. The URL and body rules match wherever the text appears
(a request line, a body, a JSON string holding a URL), so they need no knowledge of the message framing.
"""

from __future__ import annotations

import functools
import re
from typing import Any, NamedTuple

from tracetap.redact.base import BLANK, Scan, Until, Window, line_end, run_end, strip

AUTHORIZATION_HEADERS = ("authorization", "x-forwarded-authorization")
PROXY_AUTHORIZATION_HEADERS = ("proxy-authorization",)
CREDENTIAL_HEADERS = ("x-api-key", "api-key", "x-auth-token", "x-vault-token", "private-token", "x-amz-security-token")
# Query parameters, form fields and JSON keys whose values are secrets; matched lowercased, so camelCase
# spellings are listed lowercased (accessToken -> accesstoken).
SECRET_KEYS = (
    "access_token", "accesstoken", "refresh_token", "refreshtoken", "id_token", "api_key", "apikey", "api-key",
    "token", "auth_token", "password", "passwd", "pwd", "secret", "client_secret", "clientsecret", "sig",
    "signature", "x-amz-signature", "x-amz-credential", "x-amz-security-token", "private_token",
)

# The scheme stays visible only when credentials follow it on the same line; a long or odd first word is
# more likely a bare token than a scheme, so it is masked with the rest.
_AUTH_SCHEME = re.compile(rb"[A-Za-z][A-Za-z0-9._-]{0,23}[ \t]+(?=[^ \t])")
# Set-Cookie attributes whose values are not secret and help debugging; anything else is masked.
_SET_COOKIE_PUBLIC = frozenset({b"path", b"domain", b"expires", b"max-age", b"samesite", b"priority"})
_SET_COOKIE_FLAGS = frozenset({b"secure", b"httponly", b"partitioned"})
_LINE_END = Until(b"\r\n")
_COOKIE_END = Until(b";\r\n")
_PARAM_END = b"& \t\r\n#\"'<>"  # what ends a query or form value (a form body may also just end)
_PARAM_STARTS = frozenset(b"?&;\n\r \t\"'")
_AUTHORITY_END = b"/?# \"'<>\\" + bytes(range(0x20)) + b"\x7f"  # control bytes never occur in an authority (RFC 3986)
_JSON_VALUE_END = b",}] \t\r\n"
_AUTHORITY_RUN = re.compile(rb"[^/?# \"'<>\\\x00-\x1f\x7f]*")
_PARAM_RUN = re.compile(rb"[^& \t\r\n#\"'<>]*")
_JSON_VALUE_RUN = re.compile(rb"[^,}\] \t\r\n]*")
_HTTP_MESSAGE_STARTS = (b"GET ", b"POST ", b"PUT ", b"DELETE ", b"HEAD ", b"PATCH ", b"OPTIONS ", b"CONNECT ", b"TRACE ", b"HTTP/")


def starts_a_message(data: bytes) -> bool:
    return data.startswith(_HTTP_MESSAGE_STARTS)


class HeaderNames(NamedTuple):
    """The headers to mask (name -> "credential" | "cookie" | "set-cookie") and their patterns, compiled once."""

    kinds: dict[str, str]
    after_newline: re.Pattern[bytes]
    at_start: re.Pattern[bytes]


def header_names(kinds: dict[str, str]) -> HeaderNames:
    # Literal alternatives after "\n", longest first: the engine finds newlines at C speed; no nested quantifiers.
    names = b"|".join(re.escape(n.encode()) for n in sorted(kinds, key=len, reverse=True))
    return HeaderNames(dict(kinds), re.compile(rb"\n(" + names + rb")[ \t]*:[ \t]*"), re.compile(rb"(" + names + rb")[ \t]*:[ \t]*"))


def headers(w: Window, names: HeaderNames) -> None:
    """Mask the values of the named headers."""
    kinds = names.kinds
    if not kinds or b":" not in w.data:
        return
    matches = list(names.after_newline.finditer(w.lower))
    if w.fresh:
        first = names.at_start.match(w.lower)
        if first:
            matches.insert(0, first)
    for match in matches:
        kind = kinds[match.group(1).decode()]
        lines, open_ = _header_lines(w.data, match.end())
        if open_:
            w.keep(match.start())  # the rest of this header arrives in the next event: rescan it whole
        if kind == "cookie":
            for start, end in lines:
                _cookie_values(w, start, end, open_)
        elif kind == "set-cookie":
            _set_cookie_values(w, lines, open_)
        else:
            _credentials(w, lines, open_)


def _header_lines(data: bytes, start: int) -> tuple[list[tuple[int, int]], bool]:
    """The value's span on its line and on each obs-fold continuation line; True if the last one is cut."""
    lines: list[tuple[int, int]] = []
    while True:
        end, eol = line_end(data, start)
        if eol == len(data):  # no newline: the value runs on into the next event
            lines.append((start, end))
            return lines, True
        lines.append(strip(data, start, end))
        if eol + 1 >= len(data) or data[eol + 1] not in BLANK:
            return lines, False
        start = eol + 1


def _credentials(w: Window, lines: list[tuple[int, int]], open_: bool) -> None:
    start, end = lines[0]
    scheme = _AUTH_SCHEME.match(w.data, start, end)
    spans = [(scheme.end() if scheme else start, end), *lines[1:]]
    for i, (s, e) in enumerate(spans):
        w.mask(s, e, _LINE_END if open_ and i == len(spans) - 1 else None)


def _cookie_values(w: Window, start: int, end: int, open_: bool) -> None:
    """Cookie: `a=1; b=2` → the values; a part without '=' is a nameless cookie value, masked whole."""
    parts = _parts(w.data, start, end)
    for i, (part_start, part_end) in enumerate(parts):
        equals = w.data.find(b"=", part_start, part_end)
        last_open = open_ and i == len(parts) - 1 and part_end == len(w.data)
        s, e = strip(w.data, part_start if equals == -1 else equals + 1, part_end) if not last_open else (
            part_start if equals == -1 else equals + 1, part_end)
        w.mask(s, e, _COOKIE_END if last_open else None)


def _set_cookie_values(w: Window, lines: list[tuple[int, int]], open_: bool) -> None:
    """Set-Cookie: mask the cookie's value and any attribute not known to be public."""
    data, lower = w.data, w.lower
    first = True
    for line_start, line_end_ in lines:
        for start, end in _parts(data, line_start, line_end_):
            cut = open_ and end == len(data)
            equals = data.find(b"=", start, end)
            if first:
                first = False
                w.mask(start if equals == -1 else equals + 1, end, _COOKIE_END if cut else None)
            elif cut:
                w.mask(start if equals == -1 else equals + 1, end, _COOKIE_END)  # too little to tell: mask
            elif equals == -1:
                if lower[start:end] not in _SET_COOKIE_FLAGS:
                    w.mask(start, end)
            elif lower[start:equals].rstrip(BLANK) not in _SET_COOKIE_PUBLIC or data.find(b"=", equals + 1, end) != -1:
                # A second '=' means servers or proxies joined cookies with commas ("Path=/, b=2"): mask.
                w.mask(*strip(data, equals + 1, end))


def _parts(data: bytes, start: int, end: int) -> list[tuple[int, int]]:
    """The ';'-separated parts of [start, end), blanks trimmed, empty ones dropped."""
    parts: list[tuple[int, int]] = []
    while start < end:
        semicolon = data.find(b";", start, end)
        stop = end if semicolon == -1 else semicolon
        part = strip(data, start, stop) if stop < len(data) else (strip(data, start, stop)[0], stop)
        if part[0] < part[1]:
            parts.append(part)
        if semicolon == -1:
            break
        start = semicolon + 1
    return parts


# --- URLs ---------------------------------------------------------------------------------------------


def url_userinfo(w: Window) -> None:
    """`scheme://user:password@host`: the password (or a userinfo without one, which is a token) is masked."""
    data = w.data
    at = data.find(b"://")
    while at != -1:
        start = at + 3
        end = run_end(_AUTHORITY_RUN, data, start)
        size = len(data)
        authority_cut = end == size
        sign = data.rfind(b"@", start, end)
        if sign != -1:
            colon = data.find(b":", start, sign)
            w.mask(colon + 1 if colon != -1 else start, sign)
        elif authority_cut:
            # Cut before any '@': user:password and host:port look alike, so mask after the colon (or all).
            w.keep(at)
            colon = data.find(b":", start, end)
            w.mask(colon + 1 if colon != -1 else start, end, Until(b"@" + _AUTHORITY_END))
        at = data.find(b"://", end)


@functools.lru_cache(maxsize=16)
def _key_pattern(keys: tuple[str, ...], suffix: bytes) -> re.Pattern[bytes]:
    return re.compile(rb"(?:" + b"|".join(re.escape(k.encode()) for k in keys) + rb")" + suffix)


_KEY_HINTS = ("token", "key", "pass", "pwd", "secret", "sig", "credential")


@functools.lru_cache(maxsize=16)
def _key_hints(keys: tuple[str, ...]) -> re.Pattern[bytes]:
    """Substrings one of which every key contains: one search before the key regexes run."""
    hints = {next((h for h in _KEY_HINTS if h in key), key) for key in keys}
    return re.compile(b"|".join(re.escape(h.encode()) for h in sorted(hints)))


def _has_key(w: Window, keys: tuple[str, ...]) -> bool:
    known = w.hints.get(keys)
    if known is None:
        known = w.hints[keys] = _key_hints(keys).search(w.lower) is not None
    return known


def params(w: Window, keys: tuple[str, ...]) -> None:
    """`key=value` after `?`, `&`, `;`, a blank or a line start: query strings and form bodies."""
    if not keys or b"=" not in w.data or not _has_key(w, keys):
        return
    data, size = w.data, len(w.data)
    for match in _key_pattern(keys, rb"=").finditer(w.lower):
        at = match.start()
        if at > 0 and data[at - 1] not in _PARAM_STARTS or at == 0 and not w.fresh:
            continue  # a longer name ending in a key ("notoken=")
        start = match.end()
        end = run_end(_PARAM_RUN, data, start)
        body_end = _body_end(w, at)
        if body_end is None and start <= w.new_at < end and starts_a_message(data[w.new_at:w.new_at + 8]):
            body_end = w.new_at  # a form body that ended its event, joined by the tail to the next request
        if body_end is not None and body_end <= end:
            w.mask(start, max(start, body_end))  # the body ends inside the run: what follows is the next message
            continue
        if end == size:
            w.keep(at)
            w.mask(start, end, Until(_PARAM_END, not_before_message=True))
        else:
            w.mask(start, end)


def _body_end(w: Window, at: int) -> int | None:
    """Where the body holding `at` ends, if `at` follows a header block with a Content-Length in the window."""
    lower = w.lower
    blank = lower.rfind(b"\r\n\r\n", max(0, at - 8192), at)
    if blank == -1:
        return None
    header_start = max(lower.rfind(b"\r\n\r\n", max(0, blank - 8192), blank), 0)
    field = lower.rfind(b"\ncontent-length:", header_start, blank)
    if field == -1:
        return None
    digits = lower[field + 16:lower.find(b"\r", field, blank + 1)].strip(BLANK)
    if not digits.isascii() or not digits.isdigit() or len(digits) > 12:
        return None
    return blank + 4 + int(digits)


def json_values(w: Window, keys: tuple[str, ...]) -> None:
    """`"key": "value"` (or a bare number/literal value) in JSON text."""
    if not keys or b'"' not in w.data or not _has_key(w, keys):
        return
    data, size = w.data, len(w.data)
    for match in _key_pattern(keys, rb'"').finditer(w.lower):
        at = match.start()
        if at == 0 or data[at - 1] != 0x22:  # '"'
            continue
        pos = match.end()
        while pos < size and data[pos] in b" \t\r\n":
            pos += 1
        if pos == size:
            w.keep(at - 1)
            continue
        if data[pos] != 0x3A:  # ':'
            continue
        pos += 1
        while pos < size and data[pos] in b" \t\r\n":
            pos += 1
        if pos == size:
            w.keep(at - 1)
            continue
        if data[pos] == 0x22:
            start = pos + 1
            end = _json_string_end(data, start)
            if end == size:
                w.keep(at - 1)
                w.mask(start, end, Until(b'"'))
            else:
                w.mask(start, end)
        else:
            end = run_end(_JSON_VALUE_RUN, data, pos)
            w.mask(pos, end, Until(_JSON_VALUE_END) if end == size else None)


def _json_string_end(data: bytes, start: int) -> int:
    """Index of the closing quote of a JSON string starting at `start`, or len(data) if it is cut."""
    pos = start
    size = len(data)
    while True:
        quote = data.find(b'"', pos)
        if quote == -1:
            return size
        backslashes = 0
        while quote - 1 - backslashes >= start and data[quote - 1 - backslashes] == 0x5C:
            backslashes += 1
        if backslashes % 2 == 0:
            return quote
        pos = quote + 1


def header_kinds(rules: Any) -> dict[str, str]:
    """The header names the rules mask, each with how its value is masked (HTTP/1 and HTTP/2 alike)."""
    kinds: dict[str, str] = {}
    if rules.http_authorization:
        kinds.update(dict.fromkeys(AUTHORIZATION_HEADERS, "credential"))
    if rules.http_proxy_authorization:
        kinds.update(dict.fromkeys(PROXY_AUTHORIZATION_HEADERS, "credential"))
    if rules.http_credential_headers:
        kinds.update(dict.fromkeys(CREDENTIAL_HEADERS + rules.extra_headers, "credential"))
    if rules.http_cookie:
        kinds["cookie"] = "cookie"
    if rules.http_set_cookie:
        kinds["set-cookie"] = "set-cookie"
    return kinds


def secret_keys(rules: Any) -> tuple[str, ...]:
    return tuple(dict.fromkeys(SECRET_KEYS + rules.extra_keys))


def scans(rules: Any) -> tuple[Scan, ...]:
    """HTTP's rules: credential headers and cookies, URL userinfo, secret query and form parameters, JSON secrets."""
    kinds, keys = header_kinds(rules), secret_keys(rules)
    out: list[Scan] = []
    if kinds:
        names = header_names(kinds)
        out.append(lambda w: headers(w, names))
    if rules.url_userinfo:
        out.append(url_userinfo)
    if rules.secret_params:  # query strings and form bodies share one syntax
        out.append(lambda w: params(w, keys))
    if rules.json_secrets:
        out.append(lambda w: json_values(w, keys))
    return tuple(out)
