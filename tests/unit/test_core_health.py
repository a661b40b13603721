from __future__ import annotations

import csv
from importlib import resources

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpunet.core.health import (
    STOP_ACTIONS,
    Health,
    HealthReading,
    evaluate,
    load_rules,
    throttle_bits,
)
from gpunet.errors import ValidationFailed


def _catalog() -> list[dict[str, str]]:
    text = resources.files("gpunet.data").joinpath("gpus/xid_catalog.csv").read_text()
    return list(csv.DictReader(text.splitlines()))


def test_a_clean_reading_is_healthy() -> None:
    v = evaluate(
        HealthReading(
            0,
            ecc_uncorrected_volatile=0,
            ecc_corrected_volatile=12,
            retired_pages_pending=False,
            row_remap_pending=False,
            throttle_reasons=0x1 | 0x4,  # idle + software power cap: accepted
            temperature_c=60,
            slowdown_temp_c=87,
            nvlink_links_down=0,
        )
    )
    assert v.status is Health.HEALTHY and v.findings == () and not v.stop_running


def test_nothing_measured_is_healthy_not_failed() -> None:
    assert evaluate(HealthReading(3)).status is Health.HEALTHY


def test_xid_79_fails_and_stops_running_work() -> None:
    v = evaluate(HealthReading(0, xids=(79,)))
    assert v.status is Health.FAILED and v.stop_running
    assert "XID 79" in v.reasons[0] and "FALLEN_OFF_THE_BUS" in v.reasons[0]


def test_ecc_uncorrected_fails_with_the_threshold_in_the_reason() -> None:
    v = evaluate(HealthReading(0, ecc_uncorrected_volatile=3))
    assert v.status is Health.FAILED
    assert v.reasons == ["volatile uncorrected ECC count is 3 (> 0): DRAIN"]
    assert not v.stop_running  # DRAIN: no new work, running work may finish


def test_thermal_throttling_degrades_with_the_bit_named() -> None:
    v = evaluate(HealthReading(0, throttle_reasons=0x40))
    assert v.status is Health.DEGRADED
    assert v.reasons == ["clocks held back by HwThermalSlowdown"]


def test_over_the_slowdown_temperature_fails() -> None:
    v = evaluate(HealthReading(0, temperature_c=91, slowdown_temp_c=88))
    assert v.status is Health.FAILED
    assert "margin to the 88 C slowdown threshold is -3" in v.reasons[0]


def test_row_remap_pending_needs_a_reset() -> None:
    v = evaluate(HealthReading(0, row_remap_pending=True))
    assert v.status is Health.FAILED and v.stop_running


def test_repeated_xid() -> None:
    v = evaluate(HealthReading(0, xids=(13, 13)))
    assert any(f.metric == "xid_repeat_count_same_xid" for f in v.findings)
    assert v.status is Health.FAILED


def test_info_xid_reported_but_healthy() -> None:
    v = evaluate(HealthReading(0, xids=(63,)))  # remap recorded: IGNORE per NVIDIA
    assert v.status is Health.HEALTHY and len(v.findings) == 1


def test_rules_follow_the_catalog_for_every_xid() -> None:
    rules = load_rules()
    for row in _catalog():
        v = evaluate(HealthReading(0, xids=(int(row["xid"]),)), rules)
        sev = row["severity"] or "warning"
        expected = {"critical": Health.FAILED, "warning": Health.DEGRADED}.get(sev, Health.HEALTHY)
        assert v.status is expected, row["xid"]
        assert v.stop_running == (sev == "critical" and row["action"] in STOP_ACTIONS)


readings = st.builds(
    HealthReading,
    index=st.integers(0, 7),
    ecc_uncorrected_volatile=st.none() | st.integers(0, 5),
    ecc_corrected_volatile=st.none() | st.integers(0, 10**8),
    retired_pages_sbe=st.none() | st.integers(0, 64),
    retired_pages_pending=st.none() | st.booleans(),
    row_remap_pending=st.none() | st.booleans(),
    row_remap_failure=st.none() | st.booleans(),
    xids=st.lists(st.integers(1, 180), max_size=4).map(tuple),
    throttle_reasons=st.none() | st.integers(0, 2047),
    temperature_c=st.none() | st.floats(20, 110),
    slowdown_temp_c=st.none() | st.floats(70, 100),
    nvlink_links_down=st.none() | st.integers(0, 18),
)


@given(readings)
def test_every_non_healthy_verdict_carries_reasons(r: HealthReading) -> None:
    v = evaluate(r)
    if v.status is not Health.HEALTHY:
        assert v.reasons and all(x.strip() for x in v.reasons)
    if v.stop_running:
        assert v.status is Health.FAILED
    assert HealthReading.from_dict(r.to_dict()) == r


def test_from_dict_names_the_bad_field() -> None:
    with pytest.raises(ValidationFailed) as exc:
        HealthReading.from_dict({"index": 0, "ecc_uncorrected_volatile": "lots"})
    assert exc.value.field == "health.ecc_uncorrected_volatile"
    with pytest.raises(ValidationFailed):
        HealthReading.from_dict({"xids": [79]})


def test_throttle_bits() -> None:
    assert throttle_bits(0x45) == [0x1, 0x4, 0x40]
    assert throttle_bits(0) == []
