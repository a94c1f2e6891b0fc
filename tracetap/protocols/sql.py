"""SQL text for spans: literals masked (strings, numbers, hex), whitespace collapsed, and the verb."""

from __future__ import annotations

import re

_LITERALS = re.compile(r"""'(?:[^'\\]|\\.|'')*'?|"(?:[^"\\]|\\.)*"?|\b0x[0-9a-fA-F]+\b|(?<![\w$])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?\b""")
_SPACE = re.compile(r"\s+")
_MAX_STATEMENT = 1024


def mask_sql(text: str) -> str:
    """`SELECT * FROM t WHERE id = 42 AND name = 'bob'` -> `SELECT * FROM t WHERE id = ? AND name = ?`.

    Double-quoted text is masked too: MySQL reads it as a string unless ANSI_QUOTES is on.
    """
    return _SPACE.sub(" ", _LITERALS.sub("?", text[:4 * _MAX_STATEMENT])).strip()[:_MAX_STATEMENT]


def sql_verb(text: str) -> str | None:
    """The statement's first keyword, upper case (SELECT, INSERT, BEGIN, ...); None if it has none."""
    match = re.match(r"\s*(?:/\*.*?\*/\s*)*([A-Za-z]+)", text, re.S)
    return match[1].upper() if match else None
