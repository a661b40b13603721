"""The double-entry ledger: accounts, transactions of postings, and the rules that make them.

Every movement of credits is a :class:`Txn` whose postings sum to exactly zero. Balances are
never stored: they are the sum of an account's postings. Amounts are :class:`~decimal.Decimal`
quantized to :data:`QUANTUM` (one micro-credit); floats never enter.

Ledger accounts are named by strings:

- ``wallet:<account id>``: a gpunet account's spendable credits (users pay from it, owners
  are paid into it). Never negative.
- ``hold:<attempt id>``: credits set aside when an attempt starts. Never negative; zero once
  the attempt is settled.
- ``network:fee``: the network's cut of every sale. Never negative.
- ``external:grants``: where granted credits come from. Its balance is minus every credit
  ever granted, so the sum over all accounts is always zero and the credits inside the
  network change only by grants.

Metering: an attempt is charged ``seconds x rate / 3600`` where ``rate`` is the sum of its
GPUs' prices per GPU-hour and ``seconds`` are whole seconds of running time; the charge is
rounded half-up to one micro-credit. The network fee is ``charge x fee_rate`` rounded the same
way and the owner gets the rest, so no rounding ever creates or destroys credits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum

from gpunet.errors import ValidationFailed

QUANTUM = Decimal("0.000001")
ZERO = Decimal(0)
FEE_ACCOUNT = "network:fee"
GRANTS_ACCOUNT = "external:grants"


class AccountKind(StrEnum):
    WALLET = "wallet"
    HOLD = "hold"
    FEE = "network"
    GRANTS = "external"


# kinds whose balance may never be below zero (the grant source is the only one that may)
NON_NEGATIVE = frozenset({AccountKind.WALLET, AccountKind.HOLD, AccountKind.FEE})


class TxnKind(StrEnum):
    GRANT = "grant"
    HOLD = "hold"  # wallet -> hold when an attempt starts (or a long attempt's hold is topped up)
    SETTLE = "settle"  # hold -> owner wallet + fee (+ the rest back to the payer when final)
    REFUND = "refund"  # hold -> payer wallet: the attempt was lost to a host fault


def wallet(account_id: str) -> str:
    return f"wallet:{account_id}"


def hold_account(attempt_id: str) -> str:
    return f"hold:{attempt_id}"


def kind_of(account: str) -> AccountKind:
    prefix = account.split(":", 1)[0]
    try:
        return AccountKind(prefix)
    except ValueError:
        raise ValidationFailed("account", f"unknown ledger account {account!r}") from None


# Amounts are stored as NUMERIC(20, 6) on PostgreSQL (14 digits before the point) and as
# int64 micro-credits on SQLite (about 9.2e12). One amount may have 12 digits before the
# point, which leaves both stores room for sums of many of them.
AMOUNT_DIGITS = 12
AMOUNT_LIMIT = Decimal(10) ** AMOUNT_DIGITS


def q(amount: Decimal) -> Decimal:
    """Round to one micro-credit, half up."""
    return amount.quantize(QUANTUM, rounding=ROUND_HALF_UP)


@dataclass(frozen=True, slots=True)
class Posting:
    account: str
    amount: Decimal  # positive: credit flows into the account


@dataclass(frozen=True, slots=True)
class Txn:
    ref: str  # unique per movement: the same cause can never post twice
    kind: TxnKind
    postings: tuple[Posting, ...]
    memo: str = ""

    def total(self) -> Decimal:
        return sum((p.amount for p in self.postings), ZERO)


def make_txn(ref: str, kind: TxnKind, postings: Iterable[Posting], memo: str = "") -> Txn:
    """A transaction of non-zero, quantized postings that sum to zero (else ValidationFailed)."""
    ps = tuple(p for p in postings if p.amount != ZERO)
    for p in ps:
        kind_of(p.account)
        if not isinstance(p.amount, Decimal) or p.amount != q(p.amount):
            raise ValidationFailed("amount", f"{p.amount!r} is not a Decimal in micro-credits")
    txn = Txn(ref, kind, ps, memo)
    if txn.total() != ZERO:
        raise ValidationFailed("postings", f"transaction {ref} does not balance: {txn.total()}")
    return txn


def parse_amount(value: str | Decimal | int, field: str = "amount") -> Decimal:
    """A user-typed amount: a finite decimal with at most six decimal places."""
    try:
        d = Decimal(str(value).strip())
    except ArithmeticError:
        raise ValidationFailed(field, f"{value!r} is not a number") from None
    if not d.is_finite():
        raise ValidationFailed(field, f"{value!r} is not a finite number")
    if abs(d) >= AMOUNT_LIMIT:
        raise ValidationFailed(
            field, f"{value!r} is too large: at most {AMOUNT_DIGITS} digits before the point"
        )
    if d != q(d):
        raise ValidationFailed(field, "at most 6 decimal places")
    return q(d)


def grant(account_id: str, amount: Decimal, ref: str, memo: str = "") -> Txn:
    if amount <= ZERO:
        raise ValidationFailed("amount", "a grant must be positive")
    return make_txn(
        ref,
        TxnKind.GRANT,
        [Posting(GRANTS_ACCOUNT, -amount), Posting(wallet(account_id), amount)],
        memo or "credits granted",
    )


def charge_for(seconds: int, rate_per_hour: Decimal) -> Decimal:
    """What ``seconds`` of running time cost at ``rate_per_hour`` (all the attempt's GPUs)."""
    if seconds < 0:
        raise ValidationFailed("seconds", "must not be negative")
    return q(Decimal(seconds) * rate_per_hour / Decimal(3600))


def metered_seconds(elapsed_s: float) -> int:
    """Whole seconds of running time, rounded half up (never negative)."""
    return int(Decimal(str(max(0.0, elapsed_s))).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def hold_amount(rate_per_hour: Decimal, hold_hours: Decimal) -> Decimal:
    return q(rate_per_hour * hold_hours)


def fee_split(charge: Decimal, fee_rate: Decimal) -> tuple[Decimal, Decimal]:
    """(owner's share, network fee) of a charge; they add up to the charge exactly."""
    if not ZERO <= fee_rate <= 1:
        raise ValidationFailed("fee_rate", "must be between 0 and 1")
    fee = q(charge * fee_rate)
    return charge - fee, fee


def place_hold(payer: str, attempt_id: str, amount: Decimal, ref: str) -> Txn:
    """Move ``amount`` from the payer's wallet to the attempt's hold."""
    if amount < ZERO:
        raise ValidationFailed("amount", "a hold must not be negative")
    return make_txn(
        ref,
        TxnKind.HOLD,
        [Posting(wallet(payer), -amount), Posting(hold_account(attempt_id), amount)],
        f"hold for attempt {attempt_id}",
    )


@dataclass(frozen=True, slots=True)
class Settlement:
    txn: Txn
    charged: Decimal  # what the payer paid in this settlement
    owner_share: Decimal
    fee: Decimal


def settle(
    *,
    ref: str,
    payer: str,
    owner: str,
    attempt_id: str,
    hold_balance: Decimal,
    charge: Decimal,
    fee_rate: Decimal,
    final: bool,
) -> Settlement:
    """Pay ``charge`` out of the attempt's hold to the owner and the network fee; when
    ``final``, release what is left of the hold to the payer. The charge is capped at the
    hold: an attempt can never take credits its payer did not set aside."""
    if charge < ZERO:
        raise ValidationFailed("charge", "must not be negative")
    charged = min(charge, hold_balance)
    owner_share, fee = fee_split(charged, fee_rate)
    hold = hold_account(attempt_id)
    rest = hold_balance - charged if final else ZERO
    postings = [
        Posting(hold, -(charged + rest)),
        Posting(wallet(owner), owner_share),
        Posting(FEE_ACCOUNT, fee),
        Posting(wallet(payer), rest),
    ]
    memo = f"{'final' if final else 'interim'} settlement of attempt {attempt_id}"
    return Settlement(make_txn(ref, TxnKind.SETTLE, postings, memo), charged, owner_share, fee)


def refund(*, ref: str, payer: str, attempt_id: str, hold_balance: Decimal, reason: str) -> Txn:
    """The attempt was lost to a host fault: its hold goes back to the payer, uncharged."""
    return make_txn(
        ref,
        TxnKind.REFUND,
        [Posting(hold_account(attempt_id), -hold_balance), Posting(wallet(payer), hold_balance)],
        f"refund of attempt {attempt_id}: {reason}",
    )


def balances(postings: Iterable[Posting]) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for p in postings:
        out[p.account] = out.get(p.account, ZERO) + p.amount
    return out


def verify(
    txn_totals: Mapping[str, Decimal],
    account_balances: Mapping[str, Decimal],
    closed_holds: Iterable[str] = (),
) -> list[str]:
    """Every violated invariant, as one line each (empty: the ledger is sound).

    ``txn_totals``: each transaction's ref -> the sum of its postings. ``account_balances``:
    each account -> the sum of its postings. ``closed_holds``: hold accounts of attempts that
    are settled, which must be empty."""
    problems = [f"transaction {ref} does not balance: {t}" for ref, t in txn_totals.items() if t]
    total = ZERO
    for account, bal in sorted(account_balances.items()):
        total += bal
        try:
            kind = kind_of(account)
        except ValidationFailed:
            problems.append(f"unknown ledger account {account!r}")
            continue
        if kind in NON_NEGATIVE and bal < ZERO:
            problems.append(f"account {account} is negative: {bal}")
        if kind is AccountKind.GRANTS and bal > ZERO:
            problems.append(f"account {account} is positive: {bal}")
        if bal != q(bal):
            problems.append(f"account {account} has sub-micro-credit balance {bal}")
    if total != ZERO:
        problems.append(f"the balances sum to {total}, not 0")
    for hold in closed_holds:
        bal = account_balances.get(hold, ZERO)
        if bal != ZERO:
            problems.append(f"settled attempt's {hold} still holds {bal}")
    return problems
