from datetime import timedelta

import pytest

from gpunet.core.durations import parse_duration
from gpunet.errors import ValidationFailed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90m", timedelta(minutes=90)),
        ("12h", timedelta(hours=12)),
        ("30d", timedelta(days=30)),
        ("2w", timedelta(weeks=2)),
        (" 45s ", timedelta(seconds=45)),
    ],
)
def test_parses_number_and_unit(text: str, expected: timedelta) -> None:
    assert parse_duration(text, "expires") == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("30", "not a duration"),
        ("1.5h", "not a duration"),
        ("-3d", "not a duration"),
        ("3y", "not a duration"),
        ("", "not a duration"),
        ("0h", "longer than zero"),
        ("99999d", "longer than 3650 days"),
    ],
)
def test_rejects_with_the_field_named(text: str, reason: str) -> None:
    with pytest.raises(ValidationFailed) as err:
        parse_duration(text, "expires")
    assert err.value.field == "expires"
    assert reason in err.value.reason
