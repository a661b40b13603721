"""Budgets and quotas: per-account caps on concurrent GPUs and on credits spent per month."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class QuotaUse:
    gpus: int  # GPUs held by the account's active attempts
    month_spend: Decimal  # credits charged this calendar month, plus those still on hold


def quota_block(
    max_gpus: int | None,
    monthly_spend: Decimal | None,
    use: QuotaUse,
    gpus: int,
    hold: Decimal,
) -> str | None:
    """Why starting ``gpus`` GPUs with a hold of ``hold`` would break a cap now, or None."""
    if max_gpus is not None and use.gpus + gpus > max_gpus:
        return (
            f"waiting for quota: {use.gpus} GPUs in use + {gpus} asked exceeds the cap of "
            f"{max_gpus} concurrent GPUs"
        )
    if monthly_spend is not None and use.month_spend + hold > monthly_spend:
        return (
            f"waiting for budget: {use.month_spend} spent or held this month + a hold of {hold} "
            f"exceeds the monthly cap of {monthly_spend}"
        )
    return None


def credits_block(
    balance: Decimal, hold: Decimal, rate: Decimal, hold_hours: Decimal
) -> str | None:
    """Why an account with ``balance`` credits cannot place a hold of ``hold``, or None."""
    if hold > 0 and balance < hold:
        return (
            f"waiting for credits: starting holds {hold} ({hold_hours} h at {rate}/h) "
            f"but the balance is {balance}"
        )
    return None


def never_fits_quota(max_gpus: int | None, gpus: int) -> str | None:
    """A job that asks more GPUs than its account may ever hold at once can never start."""
    if max_gpus is not None and gpus > max_gpus:
        return f"the job asks {gpus} GPUs but the account may use at most {max_gpus} at once"
    return None
