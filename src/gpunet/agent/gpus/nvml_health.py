"""Health readings from NVML: ECC counters, retired pages, row remapping, XID events, clocks
event (throttle) reasons, temperature against the slowdown threshold, NVLink state.

Every query is optional: a GPU or driver that does not support one leaves that key out
(not measured), it never reads as zero.
"""

from __future__ import annotations

import contextlib
from typing import Any


class XidWatch:
    """XID events through an NVML event set, drained without waiting."""

    def __init__(self, nv: Any, handles: list[Any]) -> None:
        self.nv = nv
        self.set: Any = None
        try:
            self.set = nv.nvmlEventSetCreate()
            for h in handles:
                with contextlib.suppress(nv.NVMLError):
                    nv.nvmlDeviceRegisterEvents(h, nv.nvmlEventTypeXidCriticalError, self.set)
        except nv.NVMLError:
            self.set = None

    def drain(self) -> dict[int, list[int]]:
        """GPU index -> XIDs seen since the last call."""
        out: dict[int, list[int]] = {}
        if self.set is None:
            return out
        nv = self.nv
        for _ in range(1000):  # bounded: a storm of events cannot hold the heartbeat
            try:
                e = nv.nvmlEventSetWait(self.set, 0)
            except nv.NVMLError:
                break  # NVML_ERROR_TIMEOUT: nothing more
            if e.eventType == nv.nvmlEventTypeXidCriticalError:
                idx = nv.nvmlDeviceGetIndex(e.device)
                out.setdefault(int(idx), []).append(int(e.eventData))
        return out

    def close(self) -> None:
        if self.set is not None:
            with contextlib.suppress(Exception):
                self.nv.nvmlEventSetFree(self.set)


def _try(nv: Any, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except nv.NVMLError:
        return None


def read(nv: Any, index: int, h: Any, xids: list[int]) -> dict[str, Any]:
    """One GPU's reading as a dict of core.health.HealthReading fields."""
    out: dict[str, Any] = {"index": index, "xids": xids}
    unc, cor = nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_MEMORY_ERROR_TYPE_CORRECTED
    vol, agg = nv.NVML_VOLATILE_ECC, nv.NVML_AGGREGATE_ECC
    get_ecc = nv.nvmlDeviceGetTotalEccErrors
    for key, kind, counter in (
        ("ecc_uncorrected_volatile", unc, vol),
        ("ecc_corrected_volatile", cor, vol),
        ("ecc_uncorrected_aggregate", unc, agg),
        ("ecc_corrected_aggregate", cor, agg),
    ):
        v = _try(nv, get_ecc, h, kind, counter)
        if v is not None:
            out[key] = int(v)
    sram = _try(nv, nv.nvmlDeviceGetMemoryErrorCounter, h, unc, agg, nv.NVML_MEMORY_LOCATION_SRAM)
    if sram is not None:
        out["ecc_sram_uncorrected_aggregate"] = int(sram)
    sbe = _try(
        nv,
        nv.nvmlDeviceGetRetiredPages,
        h,
        nv.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS,
    )
    dbe = _try(
        nv, nv.nvmlDeviceGetRetiredPages, h, nv.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR
    )
    if sbe is not None:
        out["retired_pages_sbe"] = len(sbe)
    if dbe is not None:
        out["retired_pages_dbe"] = len(dbe)
    pending = _try(nv, nv.nvmlDeviceGetRetiredPagesPendingStatus, h)
    if pending is not None:
        out["retired_pages_pending"] = bool(pending)
    remap = _try(nv, nv.nvmlDeviceGetRemappedRows, h)
    if remap is not None:
        _corr, unc_rows, is_pending, failed = remap
        out["row_remap_uncorrectable"] = int(unc_rows)
        out["row_remap_pending"] = bool(is_pending)
        out["row_remap_failure"] = bool(failed)
    reasons_fn = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
        nv, "nvmlDeviceGetCurrentClocksThrottleReasons", None
    )
    if reasons_fn is not None:
        mask = _try(nv, reasons_fn, h)
        if mask is not None:
            out["throttle_reasons"] = int(mask)
    temp = _try(nv, nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU)
    slow = _try(nv, nv.nvmlDeviceGetTemperatureThreshold, h, nv.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN)
    if temp is not None:
        out["temperature_c"] = float(temp)
    if slow is not None:
        out["slowdown_temp_c"] = float(slow)
    down, seen = 0, False
    for link in range(int(getattr(nv, "NVML_NVLINK_MAX_LINKS", 0))):
        state = _try(nv, nv.nvmlDeviceGetNvLinkState, h, link)
        if state is None:
            continue  # no such link on this GPU
        seen = True
        down += int(state == nv.NVML_FEATURE_DISABLED)
    if seen:
        out["nvlink_links_down"] = down
    return out
