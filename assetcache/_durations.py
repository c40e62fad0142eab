"""Durations as people type them: ``30d``, ``12h``, ``90m``, ``45s``, ``1d12h``.

>>> parse_duration("1d12h")
129600.0
>>> format_duration(129600)
'1d12h'
"""

from __future__ import annotations

import re

UNITS = {"w": 7 * 86400.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)([wdhms])")
_HINT = "use a number and a unit (w, d, h, m, s), e.g. 30d, 12h, 90m, 45s or 1d12h"


def parse_duration(text: str) -> float:
    """Seconds in ``text``; raises ``ValueError`` naming the input and the expected form."""
    raw = text
    text = text.strip().lower().replace(" ", "")
    if not text:
        raise ValueError(f"empty duration: {_HINT}")
    pos, total, seen = 0, 0.0, set()
    while pos < len(text):
        match = _PART.match(text, pos)
        if match is None:
            raise ValueError(f"invalid duration {raw!r}: {_HINT}")
        unit = match.group(2)
        if unit in seen:
            raise ValueError(f"invalid duration {raw!r}: unit {unit!r} given twice")
        seen.add(unit)
        total += float(match.group(1)) * UNITS[unit]
        pos = match.end()
    return total


def format_duration(seconds: float) -> str:
    """The largest unit and the next: ``29d23h``, ``5h12m``, ``40s``; ``-2h`` when past."""
    if seconds < 0:
        return "-" + format_duration(-seconds)
    whole = int(seconds)
    order = "dhms"
    for i, unit in enumerate(order):
        size = int(UNITS[unit])
        if whole >= size or unit == "s":
            text = f"{whole // size}{unit}"
            if unit != "s":
                smaller = order[i + 1]
                rest = (whole % size) // int(UNITS[smaller])
                if rest:
                    text += f"{rest}{smaller}"
            return text
    raise AssertionError("unreachable")
