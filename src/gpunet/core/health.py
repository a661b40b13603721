"""GPU health rules: readings (ECC, retired pages, row remapping, XIDs, throttle reasons,
temperature, NVLink) -> healthy | degraded | failed, with the reasons and whether the work
running on the GPU must stop.

The rules are the shipped reference tables (``data/gpus/health_thresholds.csv``,
``xid_catalog.csv`` and ``nvml_throttle_reasons.csv``); :func:`evaluate` is pure.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any

from gpunet.errors import ValidationFailed


class Health(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    FAILED = "failed"


# actions after which the work on the GPU cannot go on: the GPU must be reset or the host
# rebooted, so running attempts are stopped and re-queued elsewhere
STOP_ACTIONS = frozenset({"RESET_GPU", "REBOOT"})
# severities that change the verdict (info findings are reported, nothing more)
_STATUS_OF = {"critical": Health.FAILED, "warning": Health.DEGRADED}


@dataclass(frozen=True, slots=True)
class HealthReading:
    """What one GPU's counters say now. None: not measured (never zero)."""

    index: int
    ecc_uncorrected_volatile: int | None = None
    ecc_corrected_volatile: int | None = None
    ecc_uncorrected_aggregate: int | None = None
    ecc_corrected_aggregate: int | None = None
    ecc_sram_uncorrected_aggregate: int | None = None
    retired_pages_sbe: int | None = None
    retired_pages_dbe: int | None = None
    retired_pages_pending: bool | None = None
    row_remap_pending: bool | None = None
    row_remap_failure: bool | None = None
    row_remap_uncorrectable: int | None = None
    xids: tuple[int, ...] = ()  # XID events seen since the previous reading
    throttle_reasons: int | None = None  # NVML clocks-event reasons bitmask
    temperature_c: float | None = None
    slowdown_temp_c: float | None = None  # the model's HW-slowdown threshold
    nvlink_links_down: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HealthReading:
        """From an agent's JSON; unknown keys are ignored, bad values name the field."""
        known = {f.name for f in fields(cls)}
        kw: dict[str, Any] = {k: v for k, v in d.items() if k in known}
        try:
            kw["index"] = int(kw["index"])
            kw["xids"] = tuple(int(x) for x in kw.get("xids") or ())
        except (KeyError, TypeError, ValueError):
            raise ValidationFailed(
                "health", "each reading needs an index and integer xids"
            ) from None
        for k, v in kw.items():
            if k not in ("index", "xids") and v is not None and not isinstance(v, int | float):
                raise ValidationFailed(f"health.{k}", "must be a number, a boolean or null")
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["xids"] = list(self.xids)
        return d


@dataclass(frozen=True, slots=True)
class Threshold:
    metric: str
    comparison: str
    threshold: float | None
    threshold_set: frozenset[int]
    severity: str
    action: str


@dataclass(frozen=True, slots=True)
class XidInfo:
    xid: int
    mnemonic: str
    meaning: str
    action: str  # empty: the catalog gives none
    severity: str


@dataclass(frozen=True, slots=True)
class HealthRules:
    thresholds: dict[str, Threshold]
    xids: dict[int, XidInfo]
    throttle_names: dict[int, str]  # bit -> name


@dataclass(frozen=True, slots=True)
class Finding:
    metric: str
    value: Any
    severity: str  # critical | warning | info
    action: str
    reason: str


@dataclass(frozen=True, slots=True)
class Verdict:
    status: Health
    findings: tuple[Finding, ...] = ()
    stop_running: bool = False

    @property
    def reasons(self) -> list[str]:
        return [f.reason for f in self.findings if f.severity in _STATUS_OF]

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "stop_running": self.stop_running,
            "findings": [asdict(f) for f in self.findings],
        }


def _rows(name: str) -> list[dict[str, str]]:
    text = resources.files("gpunet.data").joinpath(f"gpus/{name}").read_text()
    return list(csv.DictReader(text.splitlines()))


# the metrics of health_thresholds.csv this module evaluates (the rows for specific cloud
# VM sizes, NCCL and copy-bandwidth gates need measurements the agent does not take)
_METRICS = (
    "ecc_uncorrected_volatile_total",
    "ecc_corrected_volatile_total",
    "ecc_dram_errors_any (corrected or uncorrected; volatile or aggregate)",
    "ecc_sram_uncorrected_aggregate",
    "retired_pages_single_bit",
    "retired_pages_double_bit",
    "retired_pages_pending",
    "row_remap_pending",
    "row_remap_failure",
    "row_remap_uncorrectable",
    "xid_repeat_count_same_xid",
    "clocks_event_reasons_active",
    "temperature_margin_to_slowdown",
    "nvlink_links_down",
)


@cache
def load_rules() -> HealthRules:
    """The shipped rules."""
    thresholds: dict[str, Threshold] = {}
    for r in _rows("health_thresholds.csv"):
        if r["metric"] in _METRICS and r["metric"] not in thresholds:
            thresholds[r["metric"]] = Threshold(
                metric=r["metric"],
                comparison=r["comparison"],
                threshold=float(r["threshold"]) if r["threshold"].strip() else None,
                threshold_set=frozenset(
                    int(x, 16) for x in r["threshold_set"].split("|") if x.strip()
                ),
                severity=r["severity"],
                action=r["action"],
            )
    missing = set(_METRICS) - set(thresholds)
    assert not missing, f"health_thresholds.csv lacks {missing}"
    xids = {
        int(r["xid"]): XidInfo(
            int(r["xid"]), r["mnemonic"], r["meaning"], r["action"], r["severity"]
        )
        for r in _rows("xid_catalog.csv")
    }
    names = {
        int(r["bit_value_int"]): (r["nvml_name"] or r["legacy_name"])
        .replace("nvmlClocksEventReason", "")
        .replace("nvmlClocksThrottleReason", "")
        for r in _rows("nvml_throttle_reasons.csv")
    }
    return HealthRules(thresholds, xids, names)


def _breaks(t: Threshold, value: float) -> bool:
    limit = t.threshold if t.threshold is not None else 0.0
    match t.comparison:
        case ">":
            return value > limit
        case ">=":
            return value >= limit
        case "<":
            return value < limit
        case "!=":
            return value != limit
    raise ValueError(f"comparison {t.comparison!r} is not numeric")


def _check(rules: HealthRules, metric: str, value: float | None, what: str) -> Finding | None:
    if value is None:
        return None
    t = rules.thresholds[metric]
    if not _breaks(t, float(value)):
        return None
    shown = int(value) if float(value).is_integer() else round(float(value), 1)
    return Finding(
        metric,
        shown,
        t.severity,
        t.action,
        f"{what} is {shown} ({t.comparison} {t.threshold:g}): {t.action}",
    )


def throttle_bits(mask: int) -> list[int]:
    return [1 << b for b in range(mask.bit_length()) if mask & (1 << b)]


def _xid_findings(rules: HealthRules, xids: tuple[int, ...]) -> list[Finding]:
    out = []
    for xid in sorted(set(xids)):
        info = rules.xids.get(xid)
        if info is None:
            out.append(Finding("xid", xid, "warning", "", f"XID {xid}: not in the XID catalog"))
            continue
        severity = info.severity or "warning"  # catalog rows without an action: look at it
        action = info.action or "INVESTIGATE"
        out.append(
            Finding(
                "xid",
                xid,
                severity,
                action,
                f"XID {xid} {info.mnemonic} ({info.meaning}): {action}",
            )
        )
    repeat = rules.thresholds["xid_repeat_count_same_xid"]
    for xid in sorted(set(xids)):
        n = xids.count(xid)
        if _breaks(repeat, n):
            out.append(
                Finding(
                    "xid_repeat_count_same_xid",
                    n,
                    repeat.severity,
                    repeat.action,
                    f"XID {xid} seen {n} times ({repeat.comparison} {repeat.threshold:g}): "
                    f"{repeat.action}",
                )
            )
    return out


def evaluate(reading: HealthReading, rules: HealthRules | None = None) -> Verdict:
    """The verdict on one GPU's reading: the worst finding decides."""
    r = rules or load_rules()
    found: list[Finding | None] = [
        _check(
            r,
            "ecc_uncorrected_volatile_total",
            reading.ecc_uncorrected_volatile,
            "volatile uncorrected ECC count",
        ),
        _check(
            r,
            "ecc_corrected_volatile_total",
            reading.ecc_corrected_volatile,
            "volatile corrected ECC count",
        ),
    ]
    dram_any = "ecc_dram_errors_any (corrected or uncorrected; volatile or aggregate)"
    for name, value in (
        ("aggregate uncorrected ECC count", reading.ecc_uncorrected_aggregate),
        ("aggregate corrected ECC count", reading.ecc_corrected_aggregate),
    ):
        found.append(_check(r, dram_any, value, name))
    found += [
        _check(
            r,
            "ecc_sram_uncorrected_aggregate",
            reading.ecc_sram_uncorrected_aggregate,
            "aggregate uncorrected SRAM ECC count",
        ),
        _check(
            r,
            "retired_pages_single_bit",
            reading.retired_pages_sbe,
            "pages retired for single-bit errors",
        ),
        _check(
            r,
            "retired_pages_double_bit",
            reading.retired_pages_dbe,
            "pages retired for double-bit errors",
        ),
        _check(
            r,
            "retired_pages_pending",
            _flag(reading.retired_pages_pending),
            "page retirement pending",
        ),
        _check(r, "row_remap_pending", _flag(reading.row_remap_pending), "row remap pending"),
        _check(r, "row_remap_failure", _flag(reading.row_remap_failure), "row remap failure"),
        _check(
            r,
            "row_remap_uncorrectable",
            reading.row_remap_uncorrectable,
            "rows remapped for uncorrectable errors",
        ),
        _check(r, "nvlink_links_down", reading.nvlink_links_down, "NVLink links down"),
    ]
    if reading.temperature_c is not None and reading.slowdown_temp_c is not None:
        found.append(
            _check(
                r,
                "temperature_margin_to_slowdown",
                reading.slowdown_temp_c - reading.temperature_c,
                f"margin to the {reading.slowdown_temp_c:g} C slowdown threshold",
            )
        )
    if reading.throttle_reasons is not None:
        t = r.thresholds["clocks_event_reasons_active"]
        bad = [b for b in throttle_bits(reading.throttle_reasons) if b not in t.threshold_set]
        if bad:
            names = ", ".join(r.throttle_names.get(b, hex(b)) for b in bad)
            found.append(
                Finding(
                    t.metric,
                    reading.throttle_reasons,
                    t.severity,
                    t.action,
                    f"clocks held back by {names}",
                )
            )
    findings = [f for f in found if f is not None] + _xid_findings(r, reading.xids)
    status = Health.HEALTHY
    for f in findings:
        s = _STATUS_OF.get(f.severity)
        if s is Health.FAILED or (s is Health.DEGRADED and status is Health.HEALTHY):
            status = s
    stop = any(f.action in STOP_ACTIONS and f.severity == "critical" for f in findings)
    return Verdict(status, tuple(findings), stop)


def _flag(v: bool | None) -> int | None:
    return None if v is None else int(bool(v))


__all__ = [
    "Finding",
    "Health",
    "HealthReading",
    "HealthRules",
    "STOP_ACTIONS",
    "Verdict",
    "evaluate",
    "load_rules",
    "throttle_bits",
]
