"""Text that PostgreSQL and SQLite can both store: no NUL, no lone surrogates.

JSON may carry ``\\u0000`` and unpaired ``\\udXXX`` escapes; Python accepts them, and the store
later fails on them (PostgreSQL refuses NUL in text). Request fields with either are refused,
naming the field; job output is kept instead, escaped losslessly.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

# a JSON body can only produce a NUL or a lone surrogate through these escapes (or raw bytes
# that are not UTF-8): bodies without them need no walk
SUSPECT = re.compile(rb"\\u0000|\\u[dD][89a-fA-F]")

Exempt = Callable[[str], bool]


def _problem(s: str) -> str | None:
    if "\x00" in s:
        return "must not contain NUL"
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid UTF-8"
    return None


def find_bad_text(
    obj: Any, exempt: Exempt = lambda _: False, at: str = ""
) -> tuple[str, str] | None:
    """The first string (or key) in a parsed JSON value that cannot be stored, as
    (field path, reason); paths read ``resources.gpu_models[1]``. ``exempt`` paths are skipped."""
    if isinstance(obj, str):
        if exempt(at):
            return None
        reason = _problem(obj)
        return (at or "body", reason) if reason else None
    if isinstance(obj, dict):
        for k, v in obj.items():
            path = f"{at}.{k}" if at else str(k)
            reason = _problem(k)
            if reason:
                return (at or "body", f"key {k!r} {reason}")
            found = find_bad_text(v, exempt, path)
            if found:
                return found
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found = find_bad_text(v, exempt, f"{at}[{i}]")
            if found:
                return found
    return None


def _escape_char(c: str) -> str:
    o = ord(c)
    if 0xDC80 <= o <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape): \xNN
        return f"\\x{o - 0xDC00:02x}"
    return f"\\u{o:04x}"


def lossless(s: str) -> str:
    """Job output made storable: NUL becomes ``\\x00``, bytes that were not UTF-8 ``\\xNN``,
    other lone surrogates ``\\udXXX`` (the agent's ``backslashreplace`` decoding agrees)."""
    s = s.replace("\x00", "\\x00")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return "".join(_escape_char(c) if 0xD800 <= ord(c) <= 0xDFFF else c for c in s)
    return s
