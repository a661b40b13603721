"""Admission: may an account start a job now (GPU quota, monthly budget, credits)?

The last check of the feasibility chain, as Nomad's quota iterator is: it looks at the GPUs a
job would get (their price sets the credits held when it starts) and keeps a running tally of
what the jobs admitted earlier in the same pass committed, so one pass never over-commits an
account, and a job its account cannot afford does not hold back the placeable jobs behind it.
Only accounts listed in ``Snapshot.accounts`` are checked.
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

from gpunet.core.ledger import hold_amount
from gpunet.core.quotas import QuotaUse, credits_block, quota_block
from gpunet.core.scheduling.model import AccountView, JobRequest, Snapshot


def rank(job: JobRequest) -> tuple[int, bool]:
    """Who may take GPUs from whom while running: priority first, then on-demand work over
    interruptible work. Only an interruptible job is ever stopped for another, and only for
    a job of a higher rank."""
    return (job.priority, not job.interruptible)


def outranks(a: JobRequest, b: JobRequest) -> bool:
    return rank(a) > rank(b)


def short(reason: str) -> str:
    """The reason's head, as counted in an explanation: 'waiting for credits'."""
    return reason.split(":", 1)[0]


def block_reason(acct: AccountView, gpus: int, rate: Decimal, hold_hours: Decimal) -> str | None:
    """Why ``acct`` may not start ``gpus`` GPUs costing ``rate`` per hour in all, or None."""
    hold = hold_amount(rate, hold_hours)
    use = QuotaUse(gpus=acct.gpus_in_use, month_spend=acct.month_spend)
    why = quota_block(acct.max_gpus, acct.monthly_budget, use, gpus, hold)
    if why is None and acct.balance is not None:
        why = credits_block(acct.balance, hold, rate, hold_hours)
    return why


class Tally:
    """Accounts' money and limits, less what the jobs admitted so far in this pass commit."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.accounts = dict(snapshot.accounts)
        self.hold_hours = snapshot.hold_hours

    def check(self, job: JobRequest, unit_price: Decimal | None, gpus: int) -> str | None:
        """Why ``job`` may not start on ``gpus`` GPUs of ``unit_price`` each, or None. A job
        that already holds GPUs (``running_on``) was admitted when it started."""
        return self.check_rate(job, (unit_price or Decimal(0)) * gpus, gpus)

    def check_rate(self, job: JobRequest, rate: Decimal, gpus: int) -> str | None:
        """As :meth:`check`, for ``gpus`` GPUs costing ``rate`` per hour in all (a gang's
        members may differ in price)."""
        acct = self.accounts.get(job.account)
        if acct is None or job.running_on:
            return None
        return block_reason(acct, gpus, rate, self.hold_hours)

    def commit(self, job: JobRequest, unit_price: Decimal | None, gpus: int) -> None:
        self.commit_rate(job, (unit_price or Decimal(0)) * gpus, gpus)

    def commit_rate(self, job: JobRequest, rate: Decimal, gpus: int) -> None:
        acct = self.accounts.get(job.account)
        if acct is None or job.running_on:
            return
        hold = hold_amount(rate, self.hold_hours)
        self.accounts[job.account] = replace(
            acct,
            balance=None if acct.balance is None else acct.balance - hold,
            gpus_in_use=acct.gpus_in_use + gpus,
            month_spend=acct.month_spend + hold,
        )
