"""Admission in the planner: credits, GPU quota and monthly budget with a running tally."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from gpunet.core.scheduling import GpuView, JobRequest, NodeView, Snapshot, explain, plan
from gpunet.core.scheduling.model import AccountView

D = Decimal


def priced_fleet(n: int, price: str = "2", interruptible: str | None = None) -> Snapshot:
    nodes = tuple(NodeView(f"n{i}") for i in range(n))
    gpus = tuple(
        GpuView(
            f"n{i}/0",
            f"n{i}",
            "A100-80GB",
            80_000,
            (8, 0),
            price_per_hour=D(price),
            interruptible_price=None if interruptible is None else D(interruptible),
        )
        for i in range(n)
    )
    return Snapshot(nodes, gpus)


def job(i: int, account: str = "a", **kw: object) -> JobRequest:
    return JobRequest(id=f"j{i}", account=account, submitted_at=float(i), **kw)  # type: ignore[arg-type]


def with_accounts(snap: Snapshot, *accts: AccountView) -> Snapshot:
    return replace(snap, accounts={a.id: a for a in accts})


def test_running_tally_admits_only_what_the_balance_covers() -> None:
    # 4 free GPUs at 2/h, a hold of 1 h: 5 credits cover two starts, not three
    snap = with_accounts(priced_fleet(4), AccountView("a", balance=D("5")))
    p = plan(snap, [job(i) for i in range(4)], "fifo")
    assert sorted(pl.job_id for pl in p.placements) == ["j0", "j1"]
    exp = p.explanations["j2"]
    assert exp.placed is None
    assert exp.note.startswith("waiting for credits")
    assert "balance is 1" in exp.note
    assert exp.rejections["waiting for credits"] == 2  # the two GPUs still free
    assert "waiting for credits" in exp.summary()


def test_unfunded_head_does_not_block_a_funded_job_behind_it() -> None:
    snap = with_accounts(
        priced_fleet(1), AccountView("poor", balance=D("0")), AccountView("rich", balance=D("9"))
    )
    p = plan(snap, [job(0, "poor"), job(1, "rich")], "fifo")
    assert [pl.job_id for pl in p.placements] == ["j1"]
    assert p.explanations["j0"].note.startswith("waiting for credits")
    assert p.explanations["j0"].summary() == "0/1 GPUs fit: 1 waiting for credits"


def test_gpu_quota_counts_jobs_placed_earlier_in_the_pass() -> None:
    snap = with_accounts(
        priced_fleet(4), AccountView("a", balance=D("100"), max_gpus=3, gpus_in_use=1)
    )
    p = plan(snap, [job(i) for i in range(4)], "fifo")
    assert len(p.placements) == 2
    assert p.explanations["j2"].note.startswith("waiting for quota")
    assert "cap of 3 concurrent GPUs" in p.explanations["j2"].note


def test_monthly_budget_counts_holds_of_the_pass() -> None:
    snap = with_accounts(
        priced_fleet(4),
        AccountView("a", balance=D("100"), monthly_budget=D("10"), month_spend=D("5")),
    )
    p = plan(snap, [job(i) for i in range(4)], "fifo")
    assert len(p.placements) == 2  # 5 + 2 + 2 <= 10 < 5 + 2 + 2 + 2
    assert p.explanations["j2"].note.startswith("waiting for budget")


def test_interruptible_jobs_pay_and_are_admitted_at_the_interruptible_price() -> None:
    snap = with_accounts(
        priced_fleet(2, "2", interruptible="0.5"), AccountView("a", balance=D("1"))
    )
    p = plan(snap, [job(0, interruptible=True), job(1, interruptible=True), job(2)], "fifo")
    assert sorted(pl.job_id for pl in p.placements) == ["j0", "j1"]
    # and the price cap compares the price the job pays
    capped = plan(snap, [job(3, interruptible=True, max_price=D("1"))], "fifo")
    assert [pl.job_id for pl in capped.placements] == ["j3"]
    assert plan(snap, [job(4, max_price=D("1"))], "fifo").placements == []


def test_free_gpus_and_unlisted_accounts_are_not_checked() -> None:
    free = with_accounts(priced_fleet(2, "0"), AccountView("a", balance=D("0")))
    assert len(plan(free, [job(0), job(1)], "fifo").placements) == 2
    unlisted = priced_fleet(2)  # the simulator lists no accounts
    assert len(plan(unlisted, [job(0), job(1)], "fifo").placements) == 2


def test_explain_says_why_a_fitting_job_waits() -> None:
    snap = with_accounts(priced_fleet(1), AccountView("a", balance=D("1")))
    exp = explain(snap, job(0), "default")
    assert exp.placed is None
    assert exp.fitting_gpus == 0
    assert exp.note.startswith("waiting for credits")


@settings(max_examples=60, deadline=None)
@given(
    balances=st.lists(st.integers(0, 12), min_size=1, max_size=4),
    quota=st.one_of(st.none(), st.integers(0, 6)),
    jobs=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 2)), min_size=1, max_size=12),
    policy=st.sampled_from(["fifo", "priority", "las", "default"]),
)
def test_no_account_is_ever_over_committed(
    balances: list[int], quota: int | None, jobs: list[tuple[int, int]], policy: str
) -> None:
    nodes = tuple(NodeView(f"n{i}") for i in range(4))
    gpus = tuple(
        GpuView(f"n{i}/{k}", f"n{i}", "A100-80GB", 80_000, (8, 0), price_per_hour=D(1 + i % 2))
        for i in range(4)
        for k in range(2)
    )
    accts = {
        f"a{i}": AccountView(f"a{i}", balance=D(b), max_gpus=quota) for i, b in enumerate(balances)
    }
    snap = Snapshot(nodes, gpus, accounts=accts)
    pending = [
        JobRequest(f"j{k}", f"a{a % len(balances)}", gpu_count=n, submitted_at=float(k))
        for k, (a, n) in enumerate(jobs)
    ]
    p = plan(snap, pending, policy)
    price = {g.id: g.price_per_hour or D(0) for g in gpus}
    spent: dict[str, Decimal] = {}
    used: dict[str, int] = {}
    req = {j.id: j for j in pending}
    for pl in p.placements:
        acct = req[pl.job_id].account
        spent[acct] = spent.get(acct, D(0)) + sum(price[g] for g in pl.gpu_ids)
        used[acct] = used.get(acct, 0) + len(pl.gpu_ids)
    for a, view in accts.items():
        assert spent.get(a, D(0)) <= (view.balance or D(0))
        if quota is not None:
            assert used.get(a, 0) <= quota
    # every waiting job that a GPU was free for says why
    for j in pending:
        exp = p.explanations[j.id]
        if (
            exp.placed is None
            and exp.fitting_gpus == 0
            and any(r.startswith("waiting for") for r in exp.rejections)
        ):
            assert exp.note.startswith("waiting for")
