"""One format per kind of quantity: the rules of ``gpunet.cli.formats``, case by case."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from gpunet.cli import formats, output


@pytest.fixture
def zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Set the process's local zone (a POSIX rule: no time zone database needed)."""

    def set_zone(tz: str) -> None:
        monkeypatch.setenv("TZ", tz)
        time.tzset()

    monkeypatch.delenv(formats.UTC_ENV, raising=False)
    yield set_zone
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(
    ("tz", "value", "expected"),
    [
        ("CET-1", "2026-01-01T00:00:00+00:00", "2026-01-01 01:00:00 CET"),
        ("CET-1", "2026-01-01T00:00:00.123456Z", "2026-01-01 01:00:00 CET"),
        ("CET-1", "2026-01-01T00:00:00", "2026-01-01 01:00:00 CET"),  # naive: UTC
        ("EST+5", "2026-01-01T03:30:00+00:00", "2025-12-31 22:30:00 EST"),
        ("IST-5:30", "2026-06-01T12:00:00+00:00", "2026-06-01 17:30:00 IST"),
        ("EST+5", datetime(2026, 1, 1, 12, tzinfo=UTC), "2026-01-01 07:00:00 EST"),
    ],
)
def test_timestamps_are_local_with_their_zone(
    zone: Callable[[str], None], tz: str, value: Any, expected: str
) -> None:
    zone(tz)
    assert formats.when(value) == expected


def test_utc_switch(zone: Callable[[str], None], monkeypatch: pytest.MonkeyPatch) -> None:
    zone("EST+5")
    monkeypatch.setenv(formats.UTC_ENV, "1")
    assert formats.when("2026-01-01T03:30:00+00:00") == "2026-01-01 03:30:00 UTC"
    monkeypatch.setenv(formats.UTC_ENV, "0")
    assert formats.when("2026-01-01T03:30:00+00:00") == "2025-12-31 22:30:00 EST"


@pytest.mark.parametrize(("value", "expected"), [(None, "-"), ("", "-"), ("soon", "soon")])
def test_not_a_timestamp(value: Any, expected: str) -> None:
    assert formats.when(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("100", "100.00"),
        ("2.500000", "2.50"),
        ("98.5", "98.50"),
        ("0.000028", "0.000028"),  # a tiny amount is never shown as 0.00
        ("0.0000004", "0.00"),  # below the ledger's sixth place
        ("1.2345675", "1.234568"),
        ("-3.1", "-3.10"),
        ("0", "0.00"),
        (Decimal("12.340000"), "12.34"),
        (0.225, "0.225"),
        (2e-06, "0.000002"),
        (None, "-"),
    ],
)
def test_credits(value: Any, expected: str) -> None:
    assert formats.credits(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"), [("2.5", "2.50/h"), ("0.000100", "0.0001/h"), (None, "free")]
)
def test_credits_per_hour(value: Any, expected: str) -> None:
    assert formats.per_hour(value) == expected


@pytest.mark.parametrize(
    ("fn", "value", "expected"),
    [
        (formats.kwh, 2e-06, "0.000002 kWh"),
        (formats.kwh, 0.4234, "0.423 kWh"),
        (formats.kwh, 1.0, "1 kWh"),
        (formats.kwh, 1234.56, "1235 kWh"),
        (formats.kwh, 0, "0 kWh"),
        (formats.co2e, 0.31234, "0.312 kg CO2e"),
        (formats.co2e, 1.5e-07, "0.00000015 kg CO2e"),
        (formats.hours, "0.000694", "0.000694 h"),
        (formats.hours, "12.5", "12.5 h"),
        (formats.percent, 93.0, "93.0%"),
        (formats.percent, 87.46, "87.5%"),
        (formats.percent, None, "-"),
        (formats.fraction, 0.966, "96.6%"),
        (formats.fraction, 1, "100.0%"),
        (formats.gb, 80.0, "80 GB"),
        (formats.gb, 79.64, "79.6 GB"),
        (formats.gb, 0.04, "0 GB"),
        (formats.duration, 4.24, "4.2 s"),
        (formats.duration, 125, "2m 05s"),
        (formats.duration, 3723, "1h 02m 03s"),
        (formats.duration, 273600, "3d 04h"),
        (formats.duration, None, "-"),
        (formats.size, 512, "512 B"),
        (formats.size, 1536, "1.5 KiB"),
        (formats.size, 3_446_000_000, "3.21 GiB"),
        (formats.items, ["a", "b"], "a, b"),
        (formats.items, [], "-"),
    ],
)
def test_quantities(fn: Callable[[Any], str], value: Any, expected: str) -> None:
    assert fn(value) == expected


@pytest.mark.parametrize(
    "value", [2e-06, 1.5e-07, 3.6e6, 1e-12, 123456789.0, Decimal("1E-8"), Decimal("5E+3")]
)
def test_never_an_exponent(value: Any) -> None:
    for fn in (formats.credits, formats.kwh, formats.co2e, formats.significant, output.fmt):
        assert "e" not in fn(value).lower().replace("kg co2e", ""), (fn, value)


def test_fmt_fallbacks(zone: Callable[[str], None]) -> None:
    """Cells nobody formatted on purpose still follow the rules."""
    zone("CET-1")
    assert output.fmt(["node-1/0", "node-1/1"]) == "node-1/0, node-1/1"
    assert output.fmt("2026-01-01T00:00:00+00:00") == "2026-01-01 01:00:00 CET"
    assert output.fmt(61.04) == "61.0"
    assert output.fmt(None) == "-" and output.fmt(True) == "yes"
