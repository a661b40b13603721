"""Money over time, for the caller's own account: the dashboard's money plot."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import or_, select

from gpunet.core import ledger as L
from gpunet.services.auth import Principal
from gpunet.store.db import Database
from gpunet.store.tables import AttemptCharge, LedgerPosting, LedgerTxn
from gpunet.util import iso


def money_history(db: Database, who: Principal) -> dict[str, list[dict[str, Any]]]:
    """The wallet balance after each ledger transaction that moved it, and the credits earned
    (owner shares) and spent (charges) so far at each settled attempt. Amounts are decimal
    strings, times ISO 8601."""
    acct = who.account_id
    with db.sessions() as s:
        moves = s.execute(
            select(LedgerTxn.created_at, LedgerPosting.amount)
            .join(LedgerTxn, LedgerTxn.id == LedgerPosting.txn_id)
            .where(LedgerPosting.account == L.wallet(acct))
            .order_by(LedgerTxn.created_at, LedgerTxn.id)
        ).all()
        charges = s.execute(
            select(
                AttemptCharge.settled_at,
                AttemptCharge.owner_account_id,
                AttemptCharge.owner_share,
                AttemptCharge.payer_account_id,
                AttemptCharge.charged,
            )
            .where(
                AttemptCharge.settled_at.is_not(None),
                or_(AttemptCharge.owner_account_id == acct, AttemptCharge.payer_account_id == acct),
            )
            .order_by(AttemptCharge.settled_at)
        ).all()
    balance, earned, spent = L.ZERO, L.ZERO, L.ZERO
    out: dict[str, list[dict[str, Any]]] = {"balance": [], "earned": [], "spent": []}
    for at, amount in moves:
        balance += Decimal(amount)
        out["balance"].append({"at": iso(at), "value": str(L.q(balance))})
    for settled, owner, share, payer, charged in charges:
        if owner == acct:
            earned += Decimal(share)
            out["earned"].append({"at": iso(settled), "value": str(L.q(earned))})
        if payer == acct:
            spent += Decimal(charged)
            out["spent"].append({"at": iso(settled), "value": str(L.q(spent))})
    return out
