"""One format per kind of quantity, for everything the CLI prints for people.

``--json`` prints the coordinator's answers untouched; these rules are for tables and lines:

- **timestamps**: local time with its zone, ``2026-01-01 10:00:00 CET``; ``gpunet --utc``
  (or ``GPUNET_UTC=1``) prints them in UTC, ``2026-01-01 09:00:00 UTC``.
- **credits**: exact to the ledger's six places, with at least two decimals and no trailing
  zeros beyond them: ``100.00``, ``2.50``, ``0.000028`` (a tiny amount is never shown as 0.00).
  Credits per hour are the same number followed by ``/h``.
- **measured quantities** (kWh, kg CO2e, hours): three significant digits, never an exponent:
  ``0.42 kWh``, ``0.00000200 kWh`` is ``0.000002 kWh``, ``1234 kWh`` keeps its integer digits.
- **percent**: one decimal place, ``87.5%``; **GB**: up to one decimal, ``80 GB``, ``79.6 GB``.
- **durations**: ``4.2 s`` under a minute, then ``2m 05s``, ``1h 02m 03s``, ``3d 04h``.
- **bytes**: binary units with three significant digits, ``512 B``, ``1.5 KiB``, ``3.21 GiB``.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

UTC_ENV = "GPUNET_UTC"
_SIX = Decimal("0.000001")


def use_utc() -> bool:
    """Whether timestamps are printed in UTC (``--utc`` or ``GPUNET_UTC=1``)."""
    return os.environ.get(UTC_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def parse_time(value: str) -> datetime | None:
    """An ISO 8601 timestamp as an aware datetime (naive ones are UTC); None if not one."""
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def when(value: str | datetime | None) -> str:
    """A timestamp in local time (or UTC with ``--utc``), to the second, with its zone."""
    if value is None or value == "":
        return "-"
    dt = value if isinstance(value, datetime) else parse_time(value)
    if dt is None:
        return str(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    local = dt.astimezone(UTC) if use_utc() else dt.astimezone()
    zone = "UTC" if use_utc() else (local.strftime("%Z") or local.strftime("%z"))
    return f"{local:%Y-%m-%d %H:%M:%S} {zone}"


def looks_like_time(s: str) -> bool:
    """Whether ``s`` is an ISO 8601 timestamp as the coordinator writes them."""
    return len(s) >= 19 and s[4:5] == "-" and s[7:8] == "-" and s[10:11] == "T"


def _decimal(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        return None
    return d if d.is_finite() else None


def credits(value: Any) -> str:
    """An amount of credits: six places at most, two at least (see the module's rules)."""
    d = _decimal(value)
    if d is None:
        return "-" if value is None or value == "" else str(value)
    q = d.quantize(_SIX, rounding=ROUND_HALF_EVEN)
    text = f"{q:f}"
    whole, _, frac = text.partition(".")
    frac = frac.rstrip("0").ljust(2, "0")
    if whole in ("-0",) and set(frac) == {"0"}:
        whole = "0"
    return f"{whole}.{frac}"


def per_hour(value: Any) -> str:
    """Credits per hour: ``2.50/h``; ``free`` when there is no price."""
    return "free" if value is None or value == "" else f"{credits(value)}/h"


def significant(value: Any, digits: int = 3) -> str:
    """A measured number to ``digits`` significant digits, in plain notation (no exponent)."""
    d = _decimal(value)
    if d is None:
        return "-"
    if d == 0:
        return "0"
    exp = d.adjusted()  # the power of ten of the leading digit
    places = max(digits - 1 - exp, 0)
    q = d.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN)
    text = f"{q:f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def kwh(value: Any) -> str:
    return f"{significant(value)} kWh"


def co2e(value: Any) -> str:
    return f"{significant(value)} kg CO2e"


def hours(value: Any) -> str:
    return f"{significant(value)} h"


def percent(value: Any) -> str:
    """A percentage given in percent (87.5 -> ``87.5%``)."""
    d = _decimal(value)
    return "-" if d is None else f"{float(d):.1f}%"


def fraction(value: Any) -> str:
    """A fraction given in 0..1 as a percentage (0.875 -> ``87.5%``)."""
    d = _decimal(value)
    return "-" if d is None else percent(d * 100)


def gb(value: Any) -> str:
    d = _decimal(value)
    if d is None:
        return "-"
    text = f"{float(d):.1f}"
    return f"{text[:-2] if text.endswith('.0') else text} GB"


def number(value: Any, decimals: int = 1) -> str:
    """A plain measured number (a temperature, watts, a score) to ``decimals`` places."""
    d = _decimal(value)
    return "-" if d is None else f"{float(d):.{decimals}f}"


def duration(seconds: Any) -> str:
    """Seconds as ``4.2 s``, ``2m 05s``, ``1h 02m 03s`` or ``3d 04h``."""
    d = _decimal(seconds)
    if d is None:
        return "-"
    s = float(d)
    if abs(s) < 60:
        return f"{s:.1f} s"
    total = round(s)
    days, rest = divmod(total, 86400)
    h, rest = divmod(rest, 3600)
    m, sec = divmod(rest, 60)
    if days:
        return f"{days}d {h:02d}h"
    if h:
        return f"{h}h {m:02d}m {sec:02d}s"
    return f"{m}m {sec:02d}s"


def size(value: Any) -> str:
    """Bytes in binary units: ``512 B``, ``1.5 KiB``, ``3.21 GiB``."""
    d = _decimal(value)
    if d is None:
        return "-"
    n = float(d)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{significant(n)} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def items(values: Any) -> str:
    """A list as ``a, b``; empty: ``-`` (never a Python list)."""
    if not values:
        return "-"
    return ", ".join(str(v) for v in values)
