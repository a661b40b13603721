"""Billing in the store: post ledger transactions, hold at attempt start, settle at the end.

Every function here takes the caller's session, so the postings commit in the same database
transaction as the state change that causes them (an attempt starting, finishing or being
lost). Each transaction's ``ref`` is unique in the store: an attempt has one hold
(``hold:<attempt>``) and one final settlement (``close:<attempt>``), so a retried request, a
late report or a restarted coordinator can never bill twice. A final settlement that moves
nothing (a free hold, nothing left) is still written, with no postings, as the attempt's
closing mark.

How many seconds are billed (core.billing_time): the running time the attempt's agent measured
on its monotonic clock, never more than the coordinator's wall time from assigning the attempt
to receiving its final report, never less than what interim settlements already billed (those
run only up to the node's last heartbeat). So neither side can inflate the bill: a coordinator
restart or a report stuck in the network bills nothing extra, and an agent cannot claim more
time than the coordinator saw pass. A lost attempt whose success arrives late and is kept is
billed its measured time anew (``bill_late_success``), as far as the payer's wallet covers it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import func, insert, literal, select
from sqlalchemy.orm import Session

from gpunet.core import ledger as L
from gpunet.core.billing_time import billable_seconds, interim_seconds
from gpunet.core.jobs import AttemptState, JobState
from gpunet.core.quotas import never_fits_quota
from gpunet.core.scheduling.model import AccountView
from gpunet.store.db import Database
from gpunet.store.row_locks import locked
from gpunet.store.tables import (
    AccountQuota,
    Attempt,
    AttemptCharge,
    Job,
    LedgerPosting,
    LedgerTxn,
)
from gpunet.util import now, utc


@dataclass(frozen=True, slots=True)
class Terms:
    """The network's market settings, fixed on each attempt when it starts."""

    fee_rate: Decimal = Decimal("0.10")
    hold_hours: Decimal = Decimal("1")


def post(s: Session, txn: L.Txn, attempt_id: str | None = None) -> None:
    """Write a balanced transaction; its unique ref makes a second post of it fail."""
    post_many(s, [(txn, attempt_id)])


def post_many(s: Session, txns: Sequence[tuple[L.Txn, str | None]]) -> None:
    """Write balanced transactions (each with its attempt) in two INSERT statements whatever
    their number, without ORM objects: the scheduler pass posts one hold per placement."""
    if not txns:
        return
    at = now()
    ids = s.scalars(
        insert(LedgerTxn).returning(LedgerTxn.id, sort_by_parameter_order=True),
        [
            {
                "ref": t.ref,
                "kind": t.kind.value,
                "memo": t.memo,
                "attempt_id": aid,
                "created_at": at,
            }
            for t, aid in txns
        ],
    ).all()
    postings = [
        {"txn_id": txn_id, "account": p.account, "amount": p.amount}
        for txn_id, (t, _aid) in zip(ids, txns, strict=True)
        for p in t.postings
    ]
    if postings:  # a settlement of nothing has none (an empty list would insert a bare row)
        s.execute(insert(LedgerPosting), postings)


def balance(s: Session, account: str) -> Decimal:
    total = s.scalar(select(func.sum(LedgerPosting.amount)).where(LedgerPosting.account == account))
    return L.q(Decimal(total)) if total is not None else L.ZERO


def month_start(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def account_views(
    s: Session, gpus_in_use: Mapping[str, int], account_ids: Iterable[str], at: datetime
) -> dict[str, AccountView]:
    """What admission (core/scheduling/admission.py) needs of each account, in at most four
    grouped queries whatever the number of accounts: wallet balances, quotas, and for the
    accounts with a monthly budget the credits committed this month (charged, plus still held
    by attempts not yet settled). ``gpus_in_use``: GPUs of each account's active attempts."""
    ids = sorted(set(account_ids))
    if not ids:
        return {}
    wallets = {L.wallet(a): a for a in ids}
    bal: dict[str, Decimal] = {
        wallets[acct]: L.q(Decimal(total))
        for acct, total in s.execute(
            select(LedgerPosting.account, func.sum(LedgerPosting.amount))
            .where(LedgerPosting.account.in_(list(wallets)))
            .group_by(LedgerPosting.account)
        )
        if total is not None
    }
    quotas = {
        q.account_id: q
        for q in s.scalars(select(AccountQuota).where(AccountQuota.account_id.in_(ids)))
    }
    budgeted = [a for a, q in quotas.items() if q.monthly_spend is not None]
    spent: dict[str, Decimal] = {}
    if budgeted:
        since = month_start(at)
        for acct, charged in s.execute(
            select(AttemptCharge.payer_account_id, func.sum(AttemptCharge.charged))
            .where(AttemptCharge.payer_account_id.in_(budgeted), AttemptCharge.created_at >= since)
            .group_by(AttemptCharge.payer_account_id)
        ):
            spent[acct] = spent.get(acct, L.ZERO) + L.q(Decimal(charged or 0))
        for acct, held in s.execute(
            select(AttemptCharge.payer_account_id, func.sum(LedgerPosting.amount))
            .join(
                LedgerPosting,
                LedgerPosting.account == literal(L.hold_account("")) + AttemptCharge.attempt_id,
            )
            .where(
                AttemptCharge.payer_account_id.in_(budgeted),
                AttemptCharge.created_at >= since,
                AttemptCharge.settled_at.is_(None),
            )
            .group_by(AttemptCharge.payer_account_id)
        ):
            spent[acct] = spent.get(acct, L.ZERO) + L.q(Decimal(held or 0))
    out = {}
    for a in ids:
        q = quotas.get(a)
        out[a] = AccountView(
            id=a,
            balance=bal.get(a, L.ZERO),
            max_gpus=q.max_concurrent_gpus if q else None,
            gpus_in_use=gpus_in_use.get(a, 0),
            monthly_budget=q.monthly_spend if q else None,
            month_spend=spent.get(a, L.ZERO),
        )
    return out


def never_fits(s: Session, account_id: str, gpus: int) -> str | None:
    """Why a job of ``gpus`` GPUs could never start under its account's quota, or None."""
    # read once per session: a batch submit asks once per spec, and an absent row (no
    # quota) is not remembered by the session's identity map
    known: dict[str, int | None] = s.info.setdefault("gpunet.max_gpus", {})
    if account_id not in known:
        quota = s.get(AccountQuota, account_id)
        known[account_id] = quota.max_concurrent_gpus if quota else None
    return never_fits_quota(known[account_id], gpus)


@dataclass(frozen=True, slots=True)
class NewCharge:
    """An attempt just placed, whose terms are fixed and credits held (``open_charges``).
    ``prices``: what the job pays per hour on each of its GPUs (GpuView.rate_for: an
    interruptible job pays the interruptible price where the owner set one), as the
    scheduler's snapshot saw them; ``owner``: the node's account."""

    attempt_id: str
    job_id: str
    payer: str
    node_id: str
    owner: str
    prices: Mapping[str, Decimal | None]


def open_charges(s: Session, items: Sequence[NewCharge], terms: Terms) -> None:
    """Fix each attempt's terms and hold its credits (nothing for free GPUs), in a few INSERT
    statements whatever their number (a scheduler pass opens one per placement). The attempts'
    rows must be written already."""
    holds: list[tuple[L.Txn, str | None]] = []
    charges: list[dict[str, object]] = []
    at = now()
    for c in items:
        priced = {gid: p for gid, p in c.prices.items() if p is not None}
        if not priced:
            continue
        rate = sum(priced.values(), L.ZERO)
        held = L.hold_amount(rate, terms.hold_hours)
        charges.append(
            {
                "attempt_id": c.attempt_id,
                "job_id": c.job_id,
                "payer_account_id": c.payer,
                "owner_account_id": c.owner,
                "node_id": c.node_id,
                "gpu_prices": {gid: str(p) for gid, p in priced.items()},
                "rate_per_hour": rate,
                "fee_rate": terms.fee_rate,
                "held": held,
                "billed_seconds": 0,
                "charged": L.ZERO,
                "owner_share": L.ZERO,
                "fee": L.ZERO,
                "created_at": at,
            }
        )
        hold = L.place_hold(c.payer, c.attempt_id, held, f"hold:{c.attempt_id}")
        holds.append((hold, c.attempt_id))
    if not charges:
        return
    s.execute(insert(AttemptCharge), charges)
    post_many(s, holds)


def _locked_charge(s: Session, attempt_id: str) -> AttemptCharge | None:
    return locked(s, AttemptCharge, attempt_id, fresh=True)


def _seconds_between(start: datetime | None, end: datetime) -> float:
    if start is None:
        return 0.0
    return (utc(end) - utc(start)).total_seconds()  # type: ignore[operator]


def final_seconds(att: Attempt, billed: int, until: datetime) -> int:
    """Seconds to bill for an attempt whose final report arrived at ``until``: its measured
    running time within the coordinator's bounds (core.billing_time)."""
    # the ceiling counts from the first moment the coordinator knew of the attempt
    first = min(
        (t for t in (utc(att.created_at), utc(att.started_at)) if t is not None),
        default=None,
    )
    return billable_seconds(
        att.runtime_s,
        ceiling_s=_seconds_between(first, until),
        observed_s=_seconds_between(att.started_at, until),
        floor_s=billed,
    )


def close_charge(s: Session, att: Attempt, *, lost: bool, reason: str = "") -> None:
    """Settle an attempt that ended: bill its metered seconds, or refund a host fault.

    ``lost``: the attempt died with its host; the time since its last interim settlement is
    not charged and the whole remaining hold goes back to the payer."""
    ch = _locked_charge(s, att.id)
    if ch is None or ch.settled_at is not None:
        return
    hold = balance(s, L.hold_account(att.id))
    ref = f"close:{att.id}"
    if lost:
        post(
            s,
            L.refund(
                ref=ref,
                payer=ch.payer_account_id,
                attempt_id=att.id,
                hold_balance=hold,
                reason=reason or "lost to a host fault",
            ),
            att.id,
        )
        ch.outcome = AttemptState.LOST.value
    else:
        seconds = final_seconds(att, ch.billed_seconds, att.finished_at or now())
        _settle(s, ch, att.id, seconds, hold, ref, final=True)
        ch.outcome = att.state
    ch.settled_at = now()


def _settle(
    s: Session,
    ch: AttemptCharge,
    attempt_id: str,
    seconds: int,
    hold: Decimal,
    ref: str,
    *,
    final: bool,
) -> None:
    due = L.charge_for(seconds, ch.rate_per_hour) - ch.charged
    st = L.settle(
        ref=ref,
        payer=ch.payer_account_id,
        owner=ch.owner_account_id,
        attempt_id=attempt_id,
        hold_balance=hold,
        charge=max(due, L.ZERO),
        fee_rate=ch.fee_rate,
        final=final,
    )
    post(s, st.txn, attempt_id)
    ch.billed_seconds = seconds
    ch.charged += st.charged
    ch.owner_share += st.owner_share
    ch.fee += st.fee


def meter(s: Session, att: Attempt, last_seen: datetime | None) -> bool:
    """Interim settlement of a running attempt: bill its seconds so far, up to its node's last
    heartbeat (``last_seen``; None: not heard from since this coordinator started, so nothing
    is billed now), and top its hold back up from the payer's wallet. Returns False when the
    hold is spent and cannot be refilled (the caller stops the attempt: out of credits)."""
    ch = _locked_charge(s, att.id)
    if ch is None or ch.settled_at is not None or att.state != AttemptState.RUNNING.value:
        return True
    if att.started_at is None or last_seen is None:
        return True
    at = now()
    seconds = L.metered_seconds(
        interim_seconds(
            _seconds_between(att.started_at, at), _seconds_between(att.started_at, last_seen)
        )
    )
    if seconds <= ch.billed_seconds:
        return True
    hold = balance(s, L.hold_account(att.id))
    _settle(s, ch, att.id, seconds, hold, f"meter:{att.id}:{seconds}", final=False)
    left = balance(s, L.hold_account(att.id))
    want = ch.held - left
    if want > L.ZERO:
        top = min(want, balance(s, L.wallet(ch.payer_account_id)))
        if top > L.ZERO:
            post(
                s,
                L.place_hold(ch.payer_account_id, att.id, top, f"topup:{att.id}:{seconds}"),
                att.id,
            )
            left += top
    return left > L.ZERO


def meter_running(
    db: Database, last_seen: Callable[[str], datetime | None] = lambda node_id: None
) -> dict[str, str]:
    """Settle every running priced attempt so far (up to ``last_seen(node id)``, its node's
    last heartbeat); stop those whose payer ran out of credits. Returns {attempt id: node id}
    of the attempts told to stop."""
    from gpunet.services.jobs import move_attempt, move_job, stop_gang  # jobs imports this

    stopped: dict[str, str] = {}
    with db.transaction() as s:
        atts = list(
            s.scalars(
                select(Attempt)
                .join(AttemptCharge, AttemptCharge.attempt_id == Attempt.id)
                .where(
                    Attempt.state == AttemptState.RUNNING.value,
                    AttemptCharge.settled_at.is_(None),
                )
            )
        )
        for att in atts:
            if att.state != AttemptState.RUNNING.value:
                continue  # stopped with its gang earlier in this pass
            if meter(s, att, last_seen(att.node_id)):
                continue
            job = s.get(Job, att.job_id, with_for_update=True)
            if job is not None and job.state in (JobState.ASSIGNED.value, JobState.RUNNING.value):
                move_job(s, job, JobState.FAILED, reason="out of credits", actor="metering")
            move_attempt(att, AttemptState.STOPPING, reason="out of credits")
            stopped[att.id] = att.node_id
            stop_gang(s, att, "the job ran out of credits")  # a gang's other members too
    return stopped


def bill_late_success(s: Session, att: Attempt, until: datetime) -> None:
    """A lost attempt (its hold refunded) turned out to have succeeded and is kept: its payer
    pays the measured running time after all. A fresh hold (``late-hold:``) is taken from the
    wallet, as far as it covers what is due beyond interim settlements before the loss, and
    settled at once (``late:``) to the owner and the network: every transaction balances and
    the hold ends empty."""
    ch = _locked_charge(s, att.id)
    if ch is None or ch.outcome != AttemptState.LOST.value:
        return
    seconds = final_seconds(att, ch.billed_seconds, until)
    due = max(L.charge_for(seconds, ch.rate_per_hour) - ch.charged, L.ZERO)
    amount = min(due, balance(s, L.wallet(ch.payer_account_id)))
    if amount > L.ZERO:
        post(s, L.place_hold(ch.payer_account_id, att.id, amount, f"late-hold:{att.id}"), att.id)
    st = L.settle(
        ref=f"late:{att.id}",
        payer=ch.payer_account_id,
        owner=ch.owner_account_id,
        attempt_id=att.id,
        hold_balance=amount,
        charge=amount,
        fee_rate=ch.fee_rate,
        final=True,
    )
    post(s, st.txn, att.id)
    ch.billed_seconds = seconds
    ch.charged += st.charged
    ch.owner_share += st.owner_share
    ch.fee += st.fee
    ch.outcome = att.state
    ch.settled_at = now()
