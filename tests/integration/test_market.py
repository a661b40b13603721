"""The market through the API: prices, credits, holds, metering, refunds, quotas, statements."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select

from gpunet.core.ledger import charge_for, fee_split, metered_seconds
from gpunet.store.tables import Attempt, AttemptCharge, LedgerTxn
from gpunet.util import utc
from tests.integration.helpers import Coordinator, Node, auth, coordinator, wait_for
from tests.integration.helpers import gpu as gpu_info

D = Decimal


def _market(c: Coordinator, price: str = "3.6", credits: str = "10") -> tuple[str, str, Node]:
    user = c.token("consumer", "alice")
    provider = c.token("provider", "owner1")
    node = c.register(provider)
    r = c.c.put("/v1/prices", json={"node_id": node.id, "price": price}, headers=auth(provider))
    assert r.status_code == 200, r.text
    assert {g["price_per_hour"] for g in r.json()} == {"3.600000"} or price != "3.6"
    if credits:
        r = c.c.post(
            "/v1/credits/grant", json={"account": "alice", "amount": credits}, headers=auth(c.admin)
        )
        assert r.status_code == 201, r.text
    return user, provider, node


def _backdate_start(c: Coordinator, attempt_id: str, seconds: float) -> None:
    with c.db.transaction() as s:
        att = s.get(Attempt, attempt_id)
        assert att is not None and att.started_at is not None
        att.started_at = utc(att.started_at) - timedelta(seconds=seconds)  # type: ignore[operator]


def _get(c: Coordinator, path: str, token: str) -> dict[str, Any]:
    r = c.c.get(path, headers=auth(token))
    assert r.status_code == 200, r.text
    return dict(r.json())


def _txn_count(c: Coordinator) -> int:
    with c.db.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(LedgerTxn)) or 0)


def test_a_priced_job_is_billed_its_metered_seconds(db_url: str) -> None:
    with coordinator(db_url) as c:
        user, provider, node = _market(c)
        job = c.submit(user, {"name": "t", "command": ["true"], "max_price": "4"})
        att = c.next_start(node)
        assert _get(c, "/v1/balance", user)["held"] == "3.600000"  # one hour of one GPU
        assert c.report(node, att, "started").status_code == 200
        _backdate_start(c, att["attempt_id"], 100.4)
        assert c.report(node, att, "finished", exit_code=0).status_code == 200
        with c.db.sessions() as s:
            a = s.get(Attempt, att["attempt_id"])
            ch = s.get(AttemptCharge, att["attempt_id"])
        assert a is not None and ch is not None and a.started_at and a.finished_at
        secs = metered_seconds((utc(a.finished_at) - utc(a.started_at)).total_seconds())  # type: ignore[operator]
        assert ch.billed_seconds == secs and 100 <= secs <= 102
        cost = charge_for(secs, D("3.6"))
        owner_share, fee = fee_split(cost, D("0.10"))
        spend = _get(c, "/v1/spend", user)
        assert spend["total_charged"] == str(cost) and spend["held"] == "0.000000"
        assert spend["jobs"] == [
            {
                "job_id": job["id"],
                "attempts": 1,
                "refunded_attempts": 0,
                "gpu_seconds": secs,
                "charged": str(cost),
            }
        ]
        assert D(spend["balance"]) == D("10") - cost
        earn = _get(c, "/v1/earnings", provider)
        assert earn["total_revenue"] == str(owner_share) and D(earn["balance"]) == owner_share
        (row,) = earn["gpus"]
        assert row["seconds_sold"] == secs and row["revenue"] == str(owner_share)
        assert D(row["margin"]) == owner_share - D(row["energy_cost"]) and D(row["energy_cost"]) > 0
        # a repeated (late) finish report is refused and bills nothing more
        before = _txn_count(c)
        assert c.report(node, att, "finished", exit_code=0).status_code == 409
        assert _txn_count(c) == before
        assert _get(c, "/v1/ledger/verify", c.admin) == {"ok": True, "problems": []}


def test_an_attempt_lost_to_its_host_is_not_charged(db_url: str) -> None:
    with coordinator(db_url) as c:
        user, _provider, node = _market(c)
        job = c.submit(user, {"name": "t", "command": ["true"], "max_retries": 0})
        att = c.next_start(node)
        c.report(node, att, "started")
        _backdate_start(c, att["attempt_id"], 500)
        # the host is restarted: its running attempt dies with it
        r = c.c.post(
            "/v1/agent/hello",
            json={"name": "node", "gpus": [], "agent_version": "test"},
            headers=node.headers,
        )
        assert r.status_code == 200, r.text
        bal = _get(c, "/v1/balance", user)
        assert bal["balance"] == "10.000000" and bal["held"] == "0.000000"
        # the killed attempt's late report cannot bill
        before = _txn_count(c)
        assert c.report(node, att, "finished", exit_code=0).status_code == 409
        assert _txn_count(c) == before
        spend = _get(c, "/v1/spend", user)
        assert spend["jobs"][0]["refunded_attempts"] == 1 and spend["total_charged"] == "0.000000"
        assert c.job(user, job["id"])["state"] == "failed"
        assert _get(c, "/v1/ledger/verify", c.admin)["ok"] is True


def test_a_job_without_credits_waits_and_says_why(db_url: str) -> None:
    with coordinator(db_url) as c:
        user, _provider, node = _market(c, credits="1")
        job = c.submit(user, {"name": "t", "command": ["true"]})

        def waiting() -> dict[str, Any] | None:
            w = _get(c, f"/v1/jobs/{job['id']}/why", user)
            return w if "waiting for credits" in w.get("note", "") else None

        why = wait_for(waiting, what="the credit reason")
        assert "holds 3.600000" in why["note"] and "balance is 1.000000" in why["note"]
        assert c.job(user, job["id"])["state"] == "queued"
        c.c.post(
            "/v1/credits/grant", json={"account": "alice", "amount": "5"}, headers=auth(c.admin)
        )
        c.next_start(node)
        assert _get(c, "/v1/balance", user)["balance"] == "2.400000"


def test_quotas_keep_jobs_waiting_or_reject_them(db_url: str) -> None:
    with coordinator(db_url) as c:
        user, _provider, node = _market(c)
        r = c.c.put(
            "/v1/quotas",
            json={"account": "alice", "max_concurrent_gpus": 1, "monthly_spend": "5"},
            headers=auth(c.admin),
        )
        assert r.status_code == 200, r.text
        r = c.c.post(
            "/v1/jobs", json={"command": ["true"], "resources": {"gpus": 2}}, headers=auth(user)
        )
        assert r.status_code == 422 and "at most 1 at once" in r.json()["error"]["message"]
        c.submit(user, {"name": "a", "command": ["true"]})
        c.next_start(node)
        second = c.submit(user, {"name": "b", "command": ["true"]})
        why = wait_for(
            lambda: (
                (w := _get(c, f"/v1/jobs/{second['id']}/why", user))
                and "quota" in w.get("note", "")
                and w
            ),
            what="the quota reason",
        )
        assert "cap of 1 concurrent GPUs" in why["note"]
        c.c.put(
            "/v1/quotas",
            json={"account": "alice", "max_concurrent_gpus": 4, "monthly_spend": "5"},
            headers=auth(c.admin),
        )
        why = wait_for(
            lambda: (
                (w := _get(c, f"/v1/jobs/{second['id']}/why", user))
                and "budget" in w.get("note", "")
                and w
            ),
            what="the budget reason",
        )
        assert "monthly cap of 5.000000" in why["note"]


def test_bad_market_input_names_the_field(db_url: str) -> None:
    with coordinator(db_url) as c:
        user, provider, node = _market(c, credits="")
        cases = [
            ("put", "/v1/prices", {"node_id": node.id, "price": "-1"}, provider, "price"),
            ("put", "/v1/prices", {"node_id": node.id, "price": "abc"}, provider, "price"),
            ("put", "/v1/prices", {"price": "1"}, provider, "target"),
            ("put", "/v1/prices", {"node_id": node.id, "price": "1"}, user, None),
            ("post", "/v1/credits/grant", {"account": "alice", "amount": "0"}, c.admin, "amount"),
            ("post", "/v1/credits/grant", {"account": "nobody", "amount": "1"}, c.admin, "account"),
            ("post", "/v1/credits/grant", {"account": "alice", "amount": "1"}, user, None),
            ("post", "/v1/jobs", {"command": ["x"], "max_price": "-1"}, user, "max_price"),
        ]
        for method, path, body, token, field in cases:
            r = getattr(c.c, method)(path, json=body, headers=auth(token))
            assert r.status_code in (403, 404, 422), (path, body, r.text)
            assert r.json()["error"]["field"] == field, (path, body, r.text)
        other = c.token("provider", "owner2")
        r = c.c.put("/v1/prices", json={"node_id": node.id, "price": "1"}, headers=auth(other))
        assert r.status_code == 404
        s = _get(c, f"/v1/prices/suggest?gpu_id={node.id}/0", provider)
        assert s["suggested_price"] == "2.79" and "median" in s["explanation"]


def test_long_attempts_are_settled_periodically_and_stopped_out_of_credits(db_url: str) -> None:
    with coordinator(db_url, meter_interval_s=0.2, hold_hours=D("0.01")) as c:
        user, provider, node = _market(c, credits="0.1")
        job = c.submit(user, {"name": "t", "command": ["true"]})
        att = c.next_start(node)
        c.report(node, att, "started")
        assert _get(c, "/v1/balance", user)["held"] == "0.036000"  # 0.01 h x 3.6/h
        _backdate_start(c, att["attempt_id"], 30)

        def billed() -> AttemptCharge | None:
            c.heartbeat(node, [att["attempt_id"]])  # interim bills up to the last heartbeat
            with c.db.sessions() as s:
                ch = s.get(AttemptCharge, att["attempt_id"])
            return ch if ch is not None and ch.billed_seconds >= 30 else None

        ch = wait_for(billed, what="an interim settlement")
        assert ch.settled_at is None and ch.charged == charge_for(ch.billed_seconds, D("3.6"))
        # the hold was topped back up to its full size from the wallet
        bal = _get(c, "/v1/balance", user)
        assert D(bal["held"]) == D("0.036") and D(bal["balance"]) == D("0.1") - ch.charged - D(
            "0.036"
        )
        _backdate_start(c, att["attempt_id"], 200)  # now far more than the credits left

        def stopped() -> bool:
            c.heartbeat(node, [att["attempt_id"]])  # the node is alive, its attempt running
            return bool(c.job(user, job["id"])["state"] == "failed")

        wait_for(stopped, what="the stop")
        assert "out of credits" in c.job(user, job["id"])["reason"]
        assert c.work(node)["stop"][0]["attempt_id"] == att["attempt_id"]
        assert c.report(node, att, "finished", exit_code=-9).status_code == 200
        spend = _get(c, "/v1/spend", user)
        assert spend["total_charged"] == "0.100000" and spend["balance"] == "0.000000"
        earn = _get(c, "/v1/earnings", provider)
        assert earn["total_revenue"] == "0.090000"
        assert _get(c, "/v1/ledger/verify", c.admin) == {"ok": True, "problems": []}


def test_a_kilowatt_hour_costs_the_same_in_earnings_prices_and_job_energy(db_url: str) -> None:
    """The site's tariff x PUE prices energy everywhere: earnings, the suggested price's floor
    and a job's energy cost use one rule, from the node's site labels."""
    with coordinator(db_url) as c:
        user = c.token("consumer", "alice")
        provider = c.token("provider", "owner1")
        site = {"pue": "2", "tariff_per_kwh": "0.25"}  # 0.5 per GPU kWh
        node = c.register(provider, [gpu_info(0)], labels=site)
        r = c.c.put("/v1/prices", json={"node_id": node.id, "price": "3.6"}, headers=auth(provider))
        assert r.status_code == 200, r.text
        grant = {"account": "alice", "amount": "10"}
        assert c.c.post("/v1/credits/grant", json=grant, headers=auth(c.admin)).status_code == 201
        c.submit(user, {"name": "t", "command": ["true"]})
        att = c.next_start(node)
        assert c.report(node, att, "started").status_code == 200
        _backdate_start(c, att["attempt_id"], 3600)  # one hour sold
        joules = 400.0 * 3600  # the A100's 400 W rated power for that hour: 0.4 kWh
        r = c.report(node, att, "finished", exit_code=0, energy=[{"index": 0, "joules": joules}])
        assert r.status_code == 200, r.text

        (row,) = _get(c, "/v1/earnings", provider)["gpus"]
        hours = D(row["seconds_sold"]) / 3600  # 3600 s and the few the test took
        assert D(row["energy_cost"]) == (hours * D("0.2")).quantize(D("0.000001"))
        floor = _get(c, f"/v1/prices/suggest?gpu_id={node.id}/0", provider)
        assert D(floor["energy_cost_per_hour"]) == D("0.2")
        job_energy = _get(c, f"/v1/jobs/{att['job_id']}", user)["energy"]
        assert job_energy is not None and D(str(job_energy["cost"])) == D("0.2")


def test_site_labels_that_are_not_numbers_are_refused(db_url: str) -> None:
    with coordinator(db_url) as c:
        provider = c.token("provider", "owner1")
        body = {"name": "n", "gpus": [gpu_info(0)], "labels": {"pue": "high"}}
        r = c.c.post("/v1/agent/register", json=body, headers=auth(provider))
        assert r.status_code == 422
        assert r.json()["error"]["field"].startswith("labels")
