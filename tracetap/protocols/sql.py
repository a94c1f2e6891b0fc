"""SQL text for spans: literals masked (strings, numbers, hex), whitespace collapsed, and the verb."""

from __future__ import annotations

import re

# Linear: each alternative starts with a distinct character and repeats one class, so nothing backtracks far.
_LITERALS = re.compile(r"""'(?:[^'\\]|\\.|'')*'?|"(?:[^"\\]|\\.)*"?|\b0x[0-9a-fA-F]+\b|(?<![\w$])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?\b""")
_SPACE = re.compile(r"\s+")
_BLANKS = re.compile(r"\s*")
_MAX_STATEMENT = 1024
_MAX_VERB = 32  # longer than any SQL keyword; a longer word is cut, not copied whole
_ASCII_LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
# Statements' first keywords across PostgreSQL and MySQL: detection mid-connection asks for one of them.
VERBS = frozenset({"ALTER", "ANALYZE", "BEGIN", "CALL", "CHECKPOINT", "CLOSE", "CLUSTER", "COMMENT", "COMMIT", "COPY", "CREATE",
                   "DEALLOCATE", "DECLARE", "DELETE", "DESC", "DESCRIBE", "DISCARD", "DO", "DROP", "END", "EXECUTE", "EXPLAIN",
                   "FETCH", "FLUSH", "GRANT", "HANDLER", "INSERT", "KILL", "LISTEN", "LOAD", "LOCK", "MERGE", "MOVE", "NOTIFY",
                   "OPTIMIZE", "PREPARE", "REFRESH", "REINDEX", "RELEASE", "RENAME", "REPAIR", "REPLACE", "RESET", "REVOKE",
                   "ROLLBACK", "SAVEPOINT", "SELECT", "SET", "SHOW", "START", "TABLE", "TRUNCATE", "UNLISTEN", "UNLOCK",
                   "UPDATE", "USE", "VACUUM", "VALUES", "WITH", "XA"})
_TEXT_CONTROLS = frozenset(range(32)) - frozenset(b"\t\n\r")


def mask_sql(text: str) -> str:
    """`SELECT * FROM t WHERE id = 42 AND name = 'bob'` -> `SELECT * FROM t WHERE id = ? AND name = ?`.

    Double-quoted text is masked too: MySQL reads it as a string unless ANSI_QUOTES is on.
    """
    return _SPACE.sub(" ", _LITERALS.sub("?", text[:4 * _MAX_STATEMENT])).strip()[:_MAX_STATEMENT]


def sql_verb(text: str) -> str | None:
    """The statement's first keyword, upper case (SELECT, INSERT, BEGIN, ...); None if it has none.

    Leading blanks, `/* */` and `--` comments are skipped by an explicit scan: a regex with a repeated
    comment group backtracks exponentially on a run of comments that no keyword follows.
    """
    at, end = 0, len(text)
    while at < end:
        at = _BLANKS.match(text, at).end()  # \s* always matches
        if text.startswith("/*", at):
            close = text.find("*/", at + 2)
            if close == -1:
                return None
            at = close + 2
        elif text.startswith("--", at):
            newline = text.find("\n", at + 2)
            if newline == -1:
                return None
            at = newline + 1
        else:
            break
    word = at
    while word < end and word - at < _MAX_VERB and text[word] in _ASCII_LETTERS:
        word += 1
    return text[at:word].upper() if word > at else None


def looks_like_sql(raw: bytes) -> bool:
    """Do these bytes (a statement, perhaps cut by the capture) read as SQL text: UTF-8 without control characters,
    opening with a statement keyword or a parenthesis? How a capture that starts mid-connection tells a query."""
    if not raw or any(b in _TEXT_CONTROLS for b in raw[:256]):
        return False
    head = raw[:256]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:  # valid only if the cut split the last character
        if exc.reason != "unexpected end of data":
            return False
        text = head[:exc.start].decode("utf-8")
    if text.lstrip()[:1] == "(":
        return True
    return sql_verb(text) in VERBS
