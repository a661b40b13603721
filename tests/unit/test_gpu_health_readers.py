"""Health readings from the NVML path (with a fake pynvml module) and from simulated GPUs
with an injected fault profile."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from gpunet.agent.gpus.faults import throttle_mask
from gpunet.agent.gpus.simulated import SimulatedBackend
from gpunet.core.health import Health, HealthReading, evaluate


class FakeNVMLError(Exception):
    pass


def fake_pynvml(ecc_unc: int = 0, xids: list[int] | None = None) -> types.ModuleType:
    """The slice of pynvml the agent uses: two GPUs, GPU 1 lacks ECC and NVLink."""
    nv = types.ModuleType("pynvml")
    events = [types.SimpleNamespace(eventType=8, eventData=x, device=0) for x in xids or []]
    consts = dict(
        NVMLError=FakeNVMLError,
        NVML_MEMORY_ERROR_TYPE_UNCORRECTED=1,
        NVML_MEMORY_ERROR_TYPE_CORRECTED=0,
        NVML_VOLATILE_ECC=0,
        NVML_AGGREGATE_ECC=1,
        NVML_MEMORY_LOCATION_SRAM=9,
        NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS=0,
        NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR=1,
        NVML_TEMPERATURE_GPU=0,
        NVML_TEMPERATURE_THRESHOLD_SLOWDOWN=1,
        NVML_NVLINK_MAX_LINKS=4,
        NVML_FEATURE_DISABLED=0,
        nvmlEventTypeXidCriticalError=8,
    )
    for k, v in consts.items():
        setattr(nv, k, v)

    def no_ecc(h: int) -> None:
        if h == 1:
            raise FakeNVMLError("not supported")

    def ecc(h: int, kind: int, counter: int) -> int:
        no_ecc(h)
        return {(1, 0): ecc_unc, (0, 0): 5, (1, 1): ecc_unc, (0, 1): 40}[(kind, counter)]

    def sram(h: int, kind: int, counter: int, loc: int) -> int:
        no_ecc(h)
        return 0

    def pages(h: int, cause: int) -> list[int]:
        no_ecc(h)
        return [0x1000] * (2 if cause == 0 else 0)

    def nvlink(h: int, link: int) -> int:
        if h == 1 or link >= 2:
            raise FakeNVMLError("no such link")
        return 0 if link == 1 else 1  # link 1 is down

    def wait(s: Any, timeout: int) -> Any:
        if events:
            return events.pop(0)
        raise FakeNVMLError("timeout")

    def threshold(h: int, kind: int) -> int:
        assert kind == 1
        return 87

    funcs: dict[str, Any] = dict(
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetIndex=lambda h: h,
        nvmlDeviceGetTotalEccErrors=ecc,
        nvmlDeviceGetMemoryErrorCounter=sram,
        nvmlDeviceGetRetiredPages=pages,
        nvmlDeviceGetRetiredPagesPendingStatus=lambda h: no_ecc(h) or 0,
        nvmlDeviceGetRemappedRows=lambda h: no_ecc(h) or (3, 0, 0, 0),
        nvmlDeviceGetCurrentClocksEventReasons=lambda h: 0x1 if h == 0 else 0x40,
        nvmlDeviceGetTemperature=lambda h, k: 60 if h == 0 else 80,
        nvmlDeviceGetTemperatureThreshold=threshold,
        nvmlDeviceGetNvLinkState=nvlink,
        nvmlEventSetCreate=lambda: object(),
        nvmlDeviceRegisterEvents=lambda h, t, s: None,
        nvmlEventSetWait=wait,
        nvmlEventSetFree=lambda s: None,
    )
    for k, f in funcs.items():
        setattr(nv, k, f)
    return nv


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> Any:
    def install(**kw: Any) -> Any:
        mod = fake_pynvml(**kw)
        monkeypatch.setitem(sys.modules, "pynvml", mod)
        from gpunet.agent.gpus.nvml import NvmlBackend

        return NvmlBackend()

    return install


def test_nvml_reads_every_counter_and_leaves_out_what_a_gpu_lacks(nvml: Any) -> None:
    backend = nvml(xids=[79, 79])
    r0, r1 = backend.health(set())
    assert r0 == {
        "index": 0,
        "xids": [79, 79],
        "ecc_uncorrected_volatile": 0,
        "ecc_corrected_volatile": 5,
        "ecc_uncorrected_aggregate": 0,
        "ecc_corrected_aggregate": 40,
        "ecc_sram_uncorrected_aggregate": 0,
        "retired_pages_sbe": 2,
        "retired_pages_dbe": 0,
        "retired_pages_pending": False,
        "row_remap_uncorrectable": 0,
        "row_remap_pending": False,
        "row_remap_failure": False,
        "throttle_reasons": 0x1,
        "temperature_c": 60.0,
        "slowdown_temp_c": 87.0,
        "nvlink_links_down": 1,
    }
    # GPU 1: no ECC, no NVLink -> those keys are absent, not zero
    assert r1 == {
        "index": 1,
        "xids": [],
        "throttle_reasons": 0x40,
        "temperature_c": 80.0,
        "slowdown_temp_c": 87.0,
    }
    v0 = evaluate(HealthReading.from_dict(r0))
    assert v0.status is Health.FAILED and v0.stop_running  # XID 79, twice; a link down
    assert evaluate(HealthReading.from_dict(r1)).status is Health.DEGRADED
    # events are drained: the next reading has no XIDs
    assert backend.health(set())[0]["xids"] == []
    backend.close()


def test_nvml_uncorrected_ecc_fails(nvml: Any) -> None:
    r0 = nvml(ecc_unc=1).health(set())[0]
    v = evaluate(HealthReading.from_dict(r0))
    assert "volatile uncorrected ECC count is 1 (> 0): DRAIN" in v.reasons


def test_simulated_gpus_are_healthy_until_a_fault_is_injected(tmp_path: Path) -> None:
    faults = tmp_path / "faults.yaml"
    b = SimulatedBackend(["A100-80GB", "A100-80GB"], faults=faults)
    for r in b.health({0}):
        assert evaluate(HealthReading.from_dict(r)).status is Health.HEALTHY
    faults.write_text("gpus:\n  1: {xids: [79], ecc_uncorrected_volatile: 2}\n")
    r = b.health(set())[1]
    assert r["xids"] == [79] and r["ecc_uncorrected_volatile"] == 2
    assert b.health(set())[1]["xids"] == []  # each XID is reported once
    faults.write_text("gpus:\n  0: {throttle: [HwThermalSlowdown], temperature_c: 93}\n")
    r0, r1 = b.health(set())
    assert r0["throttle_reasons"] == 0x40 and r1["ecc_uncorrected_volatile"] == 0
    assert b.telemetry(set())[0].temperature_c == 93.0
    assert evaluate(HealthReading.from_dict(r0)).status is Health.DEGRADED


def test_a_bad_fault_profile_is_reported_and_ignored(tmp_path: Path) -> None:
    faults = tmp_path / "faults.yaml"
    faults.write_text("gpus:\n  0: {ecc: 1}\n")
    b = SimulatedBackend(["A100-80GB"], faults=faults)
    assert b.health(set())[0]["ecc_uncorrected_volatile"] == 0
    assert b.faults.error and "unknown fault keys" in b.faults.error
    with pytest.raises(ValueError, match="unknown throttle reason"):
        throttle_mask(["Sleepy"])


def test_xids_a_failed_heartbeat_did_not_deliver_ride_on_the_next() -> None:
    from gpunet.agent.loop import with_unsent_xids

    now = [{"index": 0, "xids": [13]}, {"index": 1, "xids": []}]
    assert with_unsent_xids(now, {}) == now
    merged = with_unsent_xids(now, {0: [79], 1: [48]})
    assert merged == [{"index": 0, "xids": [79, 13]}, {"index": 1, "xids": [48]}]
