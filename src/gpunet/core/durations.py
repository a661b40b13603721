"""Durations written the way people type them: ``90m``, ``12h``, ``30d``, ``2w``, ``45s``."""

from __future__ import annotations

import re
from datetime import timedelta

from gpunet.errors import ValidationFailed

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_PATTERN = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
# a token living longer than this is a typo, not a plan (and keeps datetimes in range)
MAX_DURATION = timedelta(days=3650)


def parse_duration(text: str, field: str) -> timedelta:
    """``text`` as a positive duration: a whole number and one unit (s, m, h, d or w).
    Errors name ``field`` and say what is accepted."""
    m = _PATTERN.match(text or "")
    if m is None:
        raise ValidationFailed(
            field, f"{text!r} is not a duration: use a whole number and a unit, e.g. 90m, 12h, 30d"
        )
    amount = int(m.group(1))
    if amount <= 0:
        raise ValidationFailed(field, f"{text!r} must be longer than zero")
    if amount > MAX_DURATION.total_seconds() // _UNITS[m.group(2)]:
        raise ValidationFailed(field, f"{text!r} is longer than {MAX_DURATION.days} days")
    return timedelta(seconds=amount * _UNITS[m.group(2)])
