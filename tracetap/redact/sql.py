"""Passwords in SQL text (MySQL COM_QUERY, PostgreSQL Query and Parse): every string literal that starts
within a short window after the words PASSWORD or IDENTIFIED is masked (`ALTER ROLE app PASSWORD '…'`,
`CREATE USER … IDENTIFIED BY '…'`, `SET PASSWORD FOR u = '…'`, `OPTIONS (password '…')`).
"""

from __future__ import annotations

import re
from typing import Any

from tracetap.redact.base import Scan, Until, Window

_KEYWORDS = (b"password", b"identified")
WINDOW_BYTES = 160  # `SET PASSWORD FOR 'user'@'host' = PASSWORD('…')` fits; a statement end stops it sooner
_WORD = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789_$")
# Between the keyword and a literal only words, blanks and `= ( , @ . ` may stand; anything else ends it.
_BETWEEN = re.compile(rb"[a-z0-9_$ \t\r\n=(,@.`]*")


def passwords(w: Window) -> None:
    data, lower = w.data, w.lower
    if b"passw" not in lower and b"identif" not in lower:
        return
    size = len(data)
    scanned_to = 0  # literals already handled: overlapping windows do not rescan them
    for keyword in _KEYWORDS:
        at = lower.find(keyword)
        while at != -1:
            after = at + len(keyword)
            if (at == 0 or lower[at - 1] not in _WORD) and (after >= size or lower[after] not in _WORD):
                scanned_to = max(scanned_to, _literals(w, at, after, min(size, after + WINDOW_BYTES), scanned_to))
            at = lower.find(keyword, after)
        scanned_to = 0


def _literals(w: Window, keyword_at: int, pos: int, limit: int, scanned_to: int) -> int:
    """Mask each quoted literal starting in [pos, limit); return where scanning stopped."""
    data, lower = w.data, w.lower
    if pos < limit and data[pos] in b"'\"":
        return pos  # a quote right after the word: a JSON key or quoted identifier, not a password clause
    pos = max(pos, scanned_to)
    while pos < limit:
        pos = _BETWEEN.match(lower, pos, limit).end()
        if pos >= limit:
            if limit == len(data):
                w.keep(keyword_at)  # the statement goes on in the next event
            return pos
        quote = data[pos]
        if quote not in b"'\"":
            return pos  # a statement end, an operator: the password clause is over
        start = pos + 1
        end = _literal_end(data, start, quote)
        if end == len(data):
            w.keep(keyword_at)
            w.mask(start, end, Until(bytes((quote,))))
            return end
        w.mask(start, end)
        pos = end + 1
    return pos


def _literal_end(data: bytes, start: int, quote: int) -> int:
    """Index of the quote closing a literal ('' doubles a quote, backslash escapes one), or len(data)."""
    pos = start
    size = len(data)
    while pos < size:
        byte = data[pos]
        if byte == 0x5C:  # MySQL's backslash escape
            pos += 2
        elif byte == quote:
            if pos + 1 < size and data[pos + 1] == quote:
                pos += 2
            else:
                return pos
        else:
            pos += 1
    return size


def scans(rules: Any) -> tuple[Scan, ...]:
    """The SQL protocols' rule: literals after PASSWORD / IDENTIFIED in any statement (switch `sql_passwords`)."""
    return (passwords,) if rules.sql_passwords else ()
