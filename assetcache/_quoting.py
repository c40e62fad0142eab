"""Showing names safely: in text rows, in CSV fields, in JSON strings.

A file name can hold any byte but ``/`` and NUL: tabs and newlines that would
forge a row, ESC sequences that would drive the terminal, bytes that are not
UTF-8. Every renderer of the CLI goes through here:

- :func:`quote` shows a name as git's ``core.quotePath`` does: unchanged when
  it is plain, else in double quotes with C escapes (``\\t``, ``\\n``, ``\\r``,
  ``\\"``, ``\\\\``, ...) and octal escapes (``\\033``, ``\\351``) for the other
  control characters and for bytes that are not UTF-8. Printable non-ASCII
  text stays as it is (git with ``core.quotePath=false``), except the Unicode
  controls that reorder or break lines (C1 controls, bidi overrides, line and
  paragraph separators), which are escaped too.
- :func:`clean` escapes the same characters in a message without quoting it.
- :func:`csv_line` quotes every CSV field that needs it (a bare ``\\r``
  included); :func:`json_list` writes a list of names as one unambiguous
  field (a JSON array).
- In JSON, a name that is not UTF-8 keeps each undecodable byte 0xNN as the
  escape ``\\udcNN`` (PEP 383, "surrogateescape"): ``os.fsencode(name)`` gives
  the exact bytes back.

Pure functions, no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

_C_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\v": "\\v",
    "\f": "\\f",
    "\r": "\\r",
    '"': '\\"',
    "\\": "\\\\",
}

#: Characters that make a name need quoting: C0 and C1 controls, DEL, the quote
#: and the backslash, surrogates (undecodable bytes), and Unicode format
#: characters that reorder text or break lines.
_UNSAFE = "\x00-\x1f\x7f-\x9f\ud800-\udfff\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ufeff"
_NEEDS_QUOTES = re.compile(f'[{_UNSAFE}"\\\\]')
_CONTROL = re.compile(f"[{_UNSAFE}]")
_CSV_SPECIAL = re.compile('[,"\r\n]')
_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape_char(match: re.Match[str]) -> str:
    ch = match.group()
    simple = _C_ESCAPES.get(ch)
    if simple is not None:
        return simple
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte of a file name
        return f"\\{code - 0xDC00:03o}"
    raw = ch.encode("utf-8", "surrogatepass")
    return "".join(f"\\{b:03o}" for b in raw)


def needs_quoting(name: str) -> bool:
    return _NEEDS_QUOTES.search(name) is not None


def any_needs_quoting(names: list[str]) -> bool:
    """Whether any of ``names`` needs quoting: one scan of them all ("/" cannot
    make a name need quoting, so it joins them)."""
    return _NEEDS_QUOTES.search("/".join(names)) is not None


def quote(name: str) -> str:
    """``name`` as git shows a path: as is when plain, else ``"..."`` with escapes."""
    if _NEEDS_QUOTES.search(name) is None:
        return name
    return '"' + _NEEDS_QUOTES.sub(_escape_char, name) + '"'


def clean(text: str) -> str:
    """A message with its control characters (and undecodable bytes) escaped, not quoted."""
    if _CONTROL.search(text) is None:
        return text
    return _CONTROL.sub(_escape_char, text)


def csv_field(value: object) -> str:
    """One CSV field (RFC 4180): quoted when it holds a comma, a quote, CR or LF,
    or begins or ends with a space."""
    text = "" if value is None else str(value)
    if text and (_CSV_SPECIAL.search(text) or text[0] == " " or text[-1] == " "):
        return '"' + text.replace('"', '""') + '"'
    return text


def csv_line(values: Iterable[object]) -> str:
    return ",".join(csv_field(v) for v in values)


def json_string_safe(text: str) -> str:
    """JSON text with lone surrogates written as ``\\udcNN`` escapes (valid UTF-8 out)."""
    if _SURROGATE.search(text) is None:
        return text
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def json_list(names: Iterable[str]) -> str:
    """A list of names as one field: a JSON array (no separator a name could hold)."""
    return json_string_safe(json.dumps(list(names), ensure_ascii=False))
