"""Statements: what owners earned per GPU and what users spent per job, from attempt charges."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from gpunet.core.ledger import q
from gpunet.core.pricing import energy_cost_per_hour

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class ChargeView:
    attempt_id: str
    job_id: str
    gpu_prices: dict[str, Decimal]  # GPU id -> price per hour
    billed_seconds: int
    charged: Decimal
    owner_share: Decimal
    fee: Decimal
    outcome: str | None


def _share(amount: Decimal, part: Decimal, whole: Decimal) -> Decimal:
    return q(amount * part / whole) if whole else ZERO


def earnings(
    charges: list[ChargeView],
    power_w: dict[str, float | None],
    price_per_kwh: dict[str, Decimal],
) -> list[dict[str, object]]:
    """Per GPU: hours sold, revenue (the owner's share), energy cost and margin. A charge is
    split over its GPUs in proportion to their prices. Energy is charged for sold hours, at
    each GPU's own kWh price (``core.energy.gpu_kwh_price`` of its site; 0 when missing)."""
    rows: dict[str, dict[str, Decimal]] = {}
    for c in charges:
        rate = sum(c.gpu_prices.values(), ZERO)
        for gid, price in c.gpu_prices.items():
            r = rows.setdefault(gid, {"seconds": ZERO, "revenue": ZERO, "energy_cost": ZERO})
            r["seconds"] += c.billed_seconds
            r["revenue"] += _share(c.owner_share, price, rate)
    out: list[dict[str, object]] = []
    for gid in sorted(rows):
        r = rows[gid]
        hours = r["seconds"] / 3600
        kwh_price = price_per_kwh.get(gid, ZERO)
        energy = q(hours * energy_cost_per_hour(power_w.get(gid), kwh_price))
        out.append(
            {
                "gpu_id": gid,
                "hours_sold": str(hours.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)),
                "seconds_sold": int(r["seconds"]),
                "revenue": str(r["revenue"]),
                "energy_cost": str(energy),
                "margin": str(r["revenue"] - energy),
            }
        )
    return out


@dataclass(slots=True)
class _JobSpend:
    attempts: int = 0
    refunded_attempts: int = 0
    gpu_seconds: int = 0
    charged: Decimal = ZERO


def spend(charges: list[ChargeView]) -> list[dict[str, object]]:
    """Per job: priced attempts, attempts refunded (lost to a host fault), GPU-seconds
    billed and credits charged."""
    rows: dict[str, _JobSpend] = {}
    for c in charges:
        r = rows.setdefault(c.job_id, _JobSpend())
        r.attempts += 1
        r.refunded_attempts += c.outcome == "lost"
        r.gpu_seconds += c.billed_seconds * len(c.gpu_prices)
        r.charged += c.charged
    return [
        {
            "job_id": job_id,
            "attempts": r.attempts,
            "refunded_attempts": r.refunded_attempts,
            "gpu_seconds": r.gpu_seconds,
            "charged": str(r.charged),
        }
        for job_id, r in sorted(rows.items())
    ]
