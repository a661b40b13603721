"""The ledger's rules, and a stateful property test over random sequences of movements."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from gpunet.core import ledger as L
from gpunet.errors import ValidationFailed

D = Decimal
amounts = st.decimals(min_value=D("0.000001"), max_value=D("1000"), places=6)
rates = st.decimals(min_value=D("0"), max_value=D("50"), places=4)
fees = st.decimals(min_value=D("0"), max_value=D("0.5"), places=2)


def test_unbalanced_transaction_is_refused() -> None:
    with pytest.raises(ValidationFailed, match="does not balance"):
        L.make_txn("x", L.TxnKind.GRANT, [L.Posting(L.wallet("a"), D("1"))])


def test_float_like_amounts_are_refused() -> None:
    with pytest.raises(ValidationFailed, match="micro-credits"):
        L.make_txn(
            "x",
            L.TxnKind.GRANT,
            [
                L.Posting(L.wallet("a"), D("0.0000001")),
                L.Posting(L.GRANTS_ACCOUNT, D("-0.0000001")),
            ],
        )
    with pytest.raises(ValidationFailed, match="6 decimal places"):
        L.parse_amount("1.0000001")
    with pytest.raises(ValidationFailed, match="not a number"):
        L.parse_amount("ten")
    # past what the store holds: refused before rounding (which would overflow the context)
    for big in ("1e30", "-1e30", "1000000000000"):
        with pytest.raises(ValidationFailed, match="too large"):
            L.parse_amount(big, "price")
    assert L.parse_amount("999999999999.999999") == D("999999999999.999999")


def test_charge_rounds_half_up_to_micro_credits() -> None:
    assert L.charge_for(3600, D("2.5")) == D("2.500000")
    assert L.charge_for(1, D("1")) == D("0.000278")  # 1/3600 = 0.0002777...
    assert L.metered_seconds(2.5) == 3 and L.metered_seconds(-1) == 0


@given(charge=amounts, fee_rate=fees)
def test_fee_split_never_leaks(charge: Decimal, fee_rate: Decimal) -> None:
    owner, fee = L.fee_split(charge, fee_rate)
    assert owner + fee == charge and owner >= 0 and fee >= 0


def test_settle_caps_at_hold_and_releases_the_rest() -> None:
    s = L.settle(
        ref="r",
        payer="u",
        owner="o",
        attempt_id="a",
        hold_balance=D("1"),
        charge=D("3"),
        fee_rate=D("0.1"),
        final=True,
    )
    assert s.charged == D("1") and s.fee == D("0.100000") and s.owner_share == D("0.900000")
    b = L.balances(s.txn.postings)
    assert b[L.hold_account("a")] == D("-1") and L.wallet("u") not in b


def test_verify_names_each_violation() -> None:
    problems = L.verify(
        {"t1": D("0"), "t2": D("1")},
        {L.wallet("u"): D("-1"), L.GRANTS_ACCOUNT: D("0"), L.hold_account("a"): D("2")},
        closed_holds=[L.hold_account("a")],
    )
    text = "\n".join(problems)
    assert "t2 does not balance" in text
    assert "wallet:u is negative" in text
    assert "sum to 1" in text
    assert "hold:a still holds 2" in text


class LedgerMachine(RuleBasedStateMachine):
    """Random grants, holds, interim and final settlements, refunds and bad movements."""

    @initialize()
    def setup(self) -> None:
        self.txns: dict[str, L.Txn] = {}
        self.granted = D(0)
        self.open: dict[
            str, tuple[str, str, Decimal, Decimal]
        ] = {}  # att -> payer, owner, rate, fee
        self.closed: set[str] = set()
        self.n = 0

    def post(self, txn: L.Txn) -> None:
        assert txn.ref not in self.txns, "a ref posts at most once"
        assert txn.total() == 0
        self.txns[txn.ref] = txn

    def bal(self) -> dict[str, Decimal]:
        return L.balances(p for t in self.txns.values() for p in t.postings)

    def wallet_of(self, acct: str) -> Decimal:
        return self.bal().get(L.wallet(acct), D(0))

    @rule(acct=st.sampled_from(["u1", "u2", "o1"]), amount=amounts)
    def grant(self, acct: str, amount: Decimal) -> None:
        self.n += 1
        self.post(L.grant(acct, amount, f"grant:{self.n}"))
        self.granted += amount

    @rule(
        payer=st.sampled_from(["u1", "u2"]),
        rate=rates,
        hours=st.sampled_from([D("0.5"), D(1)]),
        fee=fees,
    )
    def start(self, payer: str, rate: Decimal, hours: Decimal, fee: Decimal) -> None:
        amount = L.hold_amount(rate, hours)
        if amount > self.wallet_of(payer):
            return  # the scheduler keeps such a job waiting
        self.n += 1
        att = f"att{self.n}"
        self.post(L.place_hold(payer, att, amount, f"hold:{att}"))
        self.open[att] = (payer, "o1", rate, fee)

    @precondition(lambda self: bool(self.open))
    @rule(data=st.data(), seconds=st.integers(0, 10_000), final=st.booleans())
    def settle(self, data: st.DataObject, seconds: int, final: bool) -> None:
        att = data.draw(st.sampled_from(sorted(self.open)))
        payer, owner, rate, fee = self.open[att]
        hold = self.bal().get(L.hold_account(att), D(0))
        self.n += 1
        s = L.settle(
            ref=f"settle:{self.n}",
            payer=payer,
            owner=owner,
            attempt_id=att,
            hold_balance=hold,
            charge=L.charge_for(seconds, rate),
            fee_rate=fee,
            final=final,
        )
        assert s.charged <= hold
        self.post(s.txn)
        if final:
            del self.open[att]
            self.closed.add(att)

    @precondition(lambda self: bool(self.open))
    @rule(data=st.data())
    def host_fault(self, data: st.DataObject) -> None:
        att = data.draw(st.sampled_from(sorted(self.open)))
        payer = self.open.pop(att)[0]
        before = self.wallet_of(payer)
        hold = self.bal().get(L.hold_account(att), D(0))
        self.post(
            L.refund(
                ref=f"refund:{att}", payer=payer, attempt_id=att, hold_balance=hold, reason="x"
            )
        )
        assert self.wallet_of(payer) == before + hold
        self.closed.add(att)

    @rule(amount=amounts)
    def failure_unbalanced(self, amount: Decimal) -> None:
        before = dict(self.txns)
        with pytest.raises(ValidationFailed):
            L.make_txn(
                "bad", L.TxnKind.SETTLE, [L.Posting(L.FEE_ACCOUNT, amount)], "a broken movement"
            )
        assert self.txns == before

    @invariant()
    def sound(self) -> None:
        if not hasattr(self, "txns"):
            return
        bal = self.bal()
        totals = {ref: t.total() for ref, t in self.txns.items()}
        assert L.verify(totals, bal, [L.hold_account(a) for a in self.closed]) == []
        inside = sum((b for a, b in bal.items() if a != L.GRANTS_ACCOUNT), D(0))
        assert inside == self.granted  # credits change only by grants
        assert bal.get(L.GRANTS_ACCOUNT, D(0)) == -self.granted


TestLedgerMachine = LedgerMachine.TestCase
TestLedgerMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
