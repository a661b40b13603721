"""GPU lifecycle through the API: operator moves, health verdicts, re-queues, timelines."""

from __future__ import annotations

from typing import Any

from gpunet.store.tables import GpuEvent
from tests.integration.helpers import Coordinator, auth, coordinator, gpu


def _gpu(c: Coordinator, gpu_id: str) -> dict[str, Any]:
    r = c.c.get("/v1/gpus", headers=auth(c.admin))
    return next(g for g in r.json() if g["id"] == gpu_id)


def _act(c: Coordinator, token: str, gpu_id: str, action: str, reason: str = "test") -> Any:
    return c.c.post(
        f"/v1/gpus/{gpu_id}/lifecycle",
        json={"action": action, "reason": reason},
        headers=auth(token),
    )


def _health(c: Coordinator, node: Any, readings: list[dict[str, Any]], attempts: list[str]) -> Any:
    r = c.c.post(
        "/v1/agent/heartbeat",
        json={"attempts": attempts, "health": readings},
        headers=node.headers,
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_discovered_gpus_go_into_service_with_events(db_url: str) -> None:
    with coordinator(db_url) as c:
        node = c.register(c.token("provider", "owner"), [gpu(0)])
        g = _gpu(c, f"{node.id}/0")
        assert g["lifecycle_state"] == "active" and g["health_status"] == "healthy"
        r = c.c.get(f"/v1/gpus/{node.id}/0/timeline", headers=auth(c.admin))
        assert r.status_code == 200, r.text
        moves = [(e["from"], e["to"], e["actor"]) for e in r.json()["events"]]
        assert moves == [(None, "discovered", node.id), ("discovered", "active", "rule:burn_in")]


def test_operator_moves_follow_the_table_and_steer_the_scheduler(db_url: str) -> None:
    with coordinator(db_url) as c:
        provider = c.token("provider", "owner")
        node = c.register(provider, [gpu(0)])
        gid = f"{node.id}/0"
        r = _act(c, c.admin, gid, "retire")
        assert r.status_code == 409 and r.json()["error"]["field"] == "state"
        r = c.c.post(
            f"/v1/gpus/{gid}/lifecycle",
            json={"action": "drain", "reason": ""},
            headers=auth(c.admin),
        )
        assert r.status_code == 422
        r = _act(c, c.token("provider", "someone-else"), gid, "drain")
        assert r.status_code == 404  # another owner's GPU does not exist for them
        assert _act(c, provider, gid, "drain", "fan noise").json()["lifecycle_state"] == "drained"
        consumer = c.token("consumer", "alice")
        job = c.submit(consumer)  # still capacity: a drained GPU may come back
        why = c.c.get(f"/v1/jobs/{job['id']}/why", headers=auth(consumer)).json()
        assert "drained" in str(why)
        assert _act(c, c.admin, gid, "activate", "fan replaced").status_code == 200
        att = c.next_start(node)
        assert att["job_id"] == job["id"]
        c.report(node, att, "finished", exit_code=0)
        assert _act(c, c.admin, gid, "drain").status_code == 200
        assert _act(c, c.admin, gid, "retire", "five years old").status_code == 200
        r = c.c.post("/v1/jobs", json={"name": "t", "command": ["true"]}, headers=auth(consumer))
        assert r.status_code == 422 and r.json()["error"]["code"] == "unschedulable"
        assert _act(c, c.admin, gid, "recycle", "sent to recycler").status_code == 200
        assert _act(c, c.admin, gid, "activate").status_code == 409
        t = c.c.get(f"/v1/gpus/{gid}/timeline", headers=auth(provider)).json()
        assert [(e["to"], e["reason"]) for e in t["events"]][-5:] == [
            ("drained", "fan noise"),
            ("active", "fan replaced"),
            ("drained", "test"),
            ("retired", "five years old"),
            ("recycled", "sent to recycler"),
        ]
        assert [a["job_id"] for a in t["attempts"]] == [job["id"]]
        assert all(e["actor"].startswith(("operator:", "rule:", "node-")) for e in t["events"])
        r = c.c.get(f"/v1/gpus/{gid}/timeline", headers=auth(consumer))
        assert r.status_code == 404


def test_xid_79_drains_the_gpu_and_requeues_its_job_elsewhere(db_url: str) -> None:
    with coordinator(db_url) as c:
        provider = c.token("provider", "owner")
        a = c.register(provider, [gpu(0)], name="a")
        consumer = c.token("consumer", "alice")
        job = c.submit(consumer, {"name": "t", "command": ["sleep", "60"], "max_retries": 1})
        att = c.next_start(a)
        assert c.report(a, att, "started").status_code == 200
        res = _health(c, a, [{"index": 0, "xids": [79]}], [att["attempt_id"]])
        assert res["stop"] == [att["attempt_id"]]  # the agent is told to stop it
        g = _gpu(c, f"{a.id}/0")
        assert g["lifecycle_state"] == "drained" and g["health_status"] == "failed"
        assert "XID 79" in g["health_reasons"][0]
        assert c.job(consumer, job["id"])["state"] == "queued"
        b = c.register(provider, [gpu(0)], name="b")
        att2 = c.next_start(b)
        assert att2["job_id"] == job["id"] and att2["fencing_token"] == 2
        # the late report from the failed GPU's attempt is fenced off
        assert c.report(a, att, "finished", exit_code=0).status_code == 409
        # the next reading has no new XID: health is back, the GPU stays drained for an operator
        _health(c, a, [{"index": 0, "xids": []}], [])
        g = _gpu(c, f"{a.id}/0")
        assert (g["health_status"], g["lifecycle_state"]) == ("healthy", "drained")


def test_ecc_uncorrected_fails_with_reason_but_lets_work_finish(db_url: str) -> None:
    with coordinator(db_url) as c:
        node = c.register(c.token("provider", "owner"), [gpu(0)])
        consumer = c.token("consumer", "alice")
        job = c.submit(consumer)
        att = c.next_start(node)
        c.report(node, att, "started")
        res = _health(c, node, [{"index": 0, "ecc_uncorrected_volatile": 2}], [att["attempt_id"]])
        assert res["stop"] == []
        g = _gpu(c, f"{node.id}/0")
        assert g["lifecycle_state"] == "drained" and g["health_status"] == "failed"
        assert g["health_reasons"] == ["volatile uncorrected ECC count is 2 (> 0): DRAIN"]
        assert c.report(node, att, "finished", exit_code=0).status_code == 200
        assert c.job(consumer, job["id"])["state"] == "succeeded"
        # the same reading again writes nothing new
        with c.db.sessions() as s:
            before = s.query(GpuEvent).count()
        _health(c, node, [{"index": 0, "ecc_uncorrected_volatile": 2}], [])
        with c.db.sessions() as s:
            assert s.query(GpuEvent).count() == before


def test_throttling_degrades_and_recovers_and_bad_readings_name_the_field(db_url: str) -> None:
    with coordinator(db_url) as c:
        node = c.register(c.token("provider", "owner"), [gpu(0)])
        gid = f"{node.id}/0"
        _health(c, node, [{"index": 0, "throttle_reasons": 0x40}], [])
        g = _gpu(c, gid)
        assert (g["lifecycle_state"], g["health_status"]) == ("degraded", "degraded")
        job = c.submit(c.token("consumer", "alice"))
        assert c.next_start(node)["job_id"] == job["id"]  # degraded GPUs still take work
        _health(c, node, [{"index": 0, "throttle_reasons": 0x1}], [])
        assert _gpu(c, gid)["lifecycle_state"] == "active"
        r = c.c.post(
            "/v1/agent/heartbeat",
            json={"health": [{"index": 0, "nvlink_links_down": "two"}]},
            headers=node.headers,
        )
        assert r.status_code == 422 and r.json()["error"]["field"] == "health.0.nvlink_links_down"


def _bench(c: Coordinator, node: Any, results: list[dict[str, Any]], kind: str = "burn_in") -> Any:
    r = c.c.post(
        "/v1/agent/benchmarks", json={"kind": kind, "results": results}, headers=node.headers
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_a_gpu_at_60_percent_is_flagged_and_proposed_for_a_lower_tier(db_url: str) -> None:
    from gpunet.core.benchmark import simulated_result

    with coordinator(db_url) as c:
        node = c.register(c.token("provider", "owner"), [gpu(0), gpu(1)])
        healthy = simulated_result(0, "A100-80GB").to_dict()
        slow = simulated_result(1, "A100-80GB", 0.6).to_dict()
        scored = _bench(c, node, [healthy, slow])
        assert [s["score_pct"] for s in scored] == [100.0, 60.0]
        assert [s["flagged"] for s in scored] == [False, True]
        # the slow one drifts further down on the next periodic run
        _bench(c, node, [simulated_result(1, "A100-80GB", 0.55).to_dict()], "periodic")
        props = {p["gpu_id"]: p for p in c.c.get("/v1/tiers", headers=auth(c.admin)).json()}
        fast, low = props[f"{node.id}/0"], props[f"{node.id}/1"]
        assert (fast["proposed"], low["proposed"]) == ("training", "inference")
        assert low["score_pct"] == 55.0 and low["drift_pp"] == -5.0
        assert any("55% of reference" in r for r in low["reasons"])
        assert fast["fleet_percentile"] == 100.0 and low["fleet_percentile"] == 50.0
        r = c.c.get("/v1/tiers", headers=auth(c.token("consumer", "alice")))
        assert r.status_code == 403
        applied = c.c.post("/v1/tiers/apply", json={}, headers=auth(c.admin)).json()
        assert {a["gpu_id"] for a in applied} == set(props)
        assert _gpu(c, f"{node.id}/1")["tier"] == "inference"
        t = c.c.get(f"/v1/gpus/{node.id}/1/timeline", headers=auth(c.admin)).json()
        assert t["events"][-1]["kind"] == "tier" and t["events"][-1]["to"] == "inference"
        assert [b["score_pct"] for b in t["benchmarks"]] == [60.0, 55.0]
        assert t["benchmarks"][0]["simulated"] and t["benchmarks"][1]["drift_pp"] == -5.0
        # nothing left to move
        again = c.c.get("/v1/tiers", headers=auth(c.admin)).json()
        assert not any(p["moves"] for p in again)
        # the tier scorer: a small job goes to the inference GPU, a 2-GPU job would train
        consumer = c.token("consumer", "alice")
        small = c.submit(consumer)
        att = c.next_start(node)
        assert att["job_id"] == small["id"] and att["gpu_ids"] == [f"{node.id}/1"]


def test_a_failed_soak_drains_the_gpu(db_url: str) -> None:
    with coordinator(db_url) as c:
        node = c.register(c.token("provider", "owner"), [gpu(0)])
        res = {"index": 0, "values": {"bf16_tflops": 270.0}, "soak_runs": 10, "soak_errors": 1}
        _bench(c, node, [res])
        g = _gpu(c, f"{node.id}/0")
        assert g["lifecycle_state"] == "drained"
        r = c.c.post(
            "/v1/agent/benchmarks",
            json={"results": [{"index": 0, "values": {"bf16_tflops": "fast"}}]},
            headers=node.headers,
        )
        assert r.status_code == 422
        assert r.json()["error"]["field"] == "results.0.values.bf16_tflops"
        r = c.c.post("/v1/agent/benchmarks", json={"results": []}, headers=auth(c.admin))
        assert r.status_code == 403


def test_energy_of_a_finished_job_and_per_owner(db_url: str) -> None:
    with coordinator(db_url) as c:
        provider = c.token("provider", "owner")
        node = c.register(provider, [gpu(0)])
        consumer = c.token("consumer", "alice")
        job = c.submit(consumer)
        att = c.next_start(node)
        c.report(node, att, "started")
        used = {
            "index": 0,
            "joules": 7.2e6,  # 2 kWh
            "method": "counter",
            "resets": 0,
            "samples": 3,
            "seconds": 9000.0,
            "counter_start_j": 1.0e6,
            "counter_end_j": 8.2e6,
        }
        bad = c.report(node, att, "finished", exit_code=0, energy=[{"index": 5, "joules": 1}])
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "energy"
        assert c.report(node, att, "finished", exit_code=0, energy=[used]).status_code == 200
        e = c.job(consumer, job["id"])["energy"]
        assert e["gpu_joules"] == 7.2e6 and e["gpu_kwh"] == 2.0
        # defaults: PUE 1.58, 475 g/kWh, 0.1175 per kWh
        assert e["facility_kwh"] == 3.16 and e["co2e_kg"] == 1.501 and e["cost"] == 0.3713
        assert e["gpus"][0]["counter_end_j"] - e["gpus"][0]["counter_start_j"] == 7.2e6
        t = c.c.get(f"/v1/gpus/{node.id}/0/timeline", headers=auth(c.admin)).json()
        assert t["energy"]["gpu_kwh"] == 2.0
        assert t["tco"]["power_source"] == "measured energy of its work"
        assert t["tco"]["recommendation"] in ("keep", "move tier", "sell", "retire")
        mine = c.c.get("/v1/energy", headers=auth(provider)).json()
        assert len(mine) == 1 and mine[0]["gpus"][0]["gpu_id"] == f"{node.id}/0"
        assert mine[0]["co2e_kg"] == 1.501
        other = c.c.get("/v1/energy", headers=auth(c.token("provider", "else"))).json()
        assert other == []
        assert c.c.get("/v1/energy", headers=auth(consumer)).status_code == 403


def test_tco_report_with_purchases_and_plot(db_url: str, tmp_path: Any) -> None:
    from gpunet.services.tco import plot

    with coordinator(db_url) as c:
        provider = c.token("provider", "owner")
        node = c.register(provider, [gpu(0), gpu(1)])
        body = {"model": "A100-80GB", "price": 15000, "purchased_on": "2025-01-15"}
        r = c.c.post("/v1/gpus-purchases", json=body, headers=auth(provider))
        assert r.status_code == 200 and len(r.json()["gpu_ids"]) == 2
        r = c.c.post(
            "/v1/gpus-purchases",
            json={"price": 1, "purchased_on": "2025-01-15"},
            headers=auth(provider),
        )
        assert r.status_code == 422 and r.json()["error"]["field"] == "gpu_id"
        r = c.c.post(
            "/v1/gpus-purchases",
            json={"gpu_id": f"{node.id}/0", "price": 1, "purchased_on": "2025-01-15"},
            headers=auth(c.token("provider", "else")),
        )
        assert r.status_code == 404
        rep = c.c.get("/v1/reports/tco", headers=auth(provider)).json()
        g0 = rep["gpus"][0]
        assert g0["purchase_price"] == 15000 and g0["rent_per_hour"] == 2.79
        assert g0["capital_per_hour"] == round(15000 / (5.25 * 8760), 4)
        assert g0["utilization"] == 0 and g0["recommendation"] == "move tier"
        assert g0["reasons"] and len(g0["arithmetic"]) == 5
        assert rep["fleet"]["gpus"] == 2 and rep["assumptions"]["depreciation_years"] == 5.25
        png = tmp_path / "tco.png"
        plot(rep, str(png))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert c.c.get("/v1/reports/tco", headers=auth(c.token("consumer", "a"))).status_code == 403


def test_with_burn_in_new_gpus_wait_for_their_first_benchmark(db_url: str) -> None:
    from gpunet.core.benchmark import simulated_result

    with coordinator(db_url, burn_in=True) as c:
        node = c.register(c.token("provider", "owner"), [gpu(0), gpu(1), gpu(2)])
        assert _gpu(c, f"{node.id}/0")["lifecycle_state"] == "burn_in"
        consumer = c.token("consumer", "alice")
        job = c.submit(consumer)  # capacity exists: burn-in GPUs come into service
        why = c.c.get(f"/v1/jobs/{job['id']}/why", headers=auth(consumer)).json()
        assert "drained" in str(why)
        soak = simulated_result(1, "A100-80GB").to_dict() | {"soak_errors": 2}
        blind = {"index": 2, "values": {}, "unmeasured": {"bf16_tflops": "no PyTorch"}}
        _bench(c, node, [simulated_result(0, "A100-80GB").to_dict(), soak, blind])
        assert _gpu(c, f"{node.id}/0")["lifecycle_state"] == "active"
        t2 = c.c.get(f"/v1/gpus/{node.id}/2/timeline", headers=auth(c.admin)).json()
        assert t2["events"][-1]["reason"] == (
            "burn-in measured nothing to score (no PyTorch): in service unscored"
        )
        assert _gpu(c, f"{node.id}/1")["lifecycle_state"] == "drained"
        att = c.next_start(node)
        assert att["job_id"] == job["id"] and att["gpu_ids"][0] in (f"{node.id}/0", f"{node.id}/2")
        t = c.c.get(f"/v1/gpus/{node.id}/0/timeline", headers=auth(c.admin)).json()
        assert [(e["to"], e["reason"]) for e in t["events"]] == [
            ("discovered", f"found on {node.id}"),
            ("burn_in", "burn-in benchmark pending"),
            ("active", "burn-in passed at 100% of reference"),
        ]


def test_automatic_tier_mode_applies_proposals_as_the_rule(db_url: str) -> None:
    import time

    from gpunet.core.benchmark import simulated_result

    with coordinator(db_url, auto_tiers=True, tier_interval_s=0.2) as c:
        node = c.register(c.token("provider", "owner"), [gpu(0), gpu(1)])
        _bench(
            c,
            node,
            [
                simulated_result(0, "A100-80GB").to_dict(),
                simulated_result(1, "A100-80GB", 0.6).to_dict(),
            ],
        )
        deadline = time.monotonic() + 10
        while _gpu(c, f"{node.id}/1")["tier"] != "inference" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gpu(c, f"{node.id}/1")["tier"] == "inference"
        assert _gpu(c, f"{node.id}/0")["tier"] == "training"
        t = c.c.get(f"/v1/gpus/{node.id}/1/timeline", headers=auth(c.admin)).json()
        tier_events = [e for e in t["events"] if e["kind"] == "tier"]
        assert tier_events[-1]["actor"] == "rule:tiers" and tier_events[-1]["to"] == "inference"
        # applied once: nothing left to move, so no further events
        time.sleep(0.5)
        t2 = c.c.get(f"/v1/gpus/{node.id}/1/timeline", headers=auth(c.admin)).json()
        assert len([e for e in t2["events"] if e["kind"] == "tier"]) == len(tier_events)


def test_suggested_price_follows_the_benchmark_score_and_the_tier(db_url: str) -> None:
    import statistics
    from decimal import ROUND_HALF_UP, Decimal

    from gpunet.core.benchmark import simulated_result
    from gpunet.core.pricing import TIER_FACTORS, reference_prices

    with coordinator(db_url) as c:
        provider = c.token("provider", "owner")
        node = c.register(provider, [gpu(0), gpu(1)])
        _bench(
            c,
            node,
            [
                simulated_result(0, "A100-80GB").to_dict(),
                simulated_result(1, "A100-80GB", 0.6).to_dict(),
            ],
        )
        median = Decimal(statistics.median(reference_prices()["A100-80GB"]))

        def suggested(gpu_id: str) -> dict[str, Any]:
            r = c.c.get(f"/v1/prices/suggest?gpu_id={gpu_id}", headers=auth(provider))
            assert r.status_code == 200, r.text
            out: dict[str, Any] = r.json()
            return out

        cent = Decimal("0.01")
        slow = suggested(f"{node.id}/1")
        assert Decimal(slow["suggested_price"]) == (median * Decimal("0.6")).quantize(
            cent, rounding=ROUND_HALF_UP
        )
        assert "benchmark 0.6" in slow["explanation"]
        # once the tier rule moves it to inference duty, the tier's factor applies too
        c.c.post("/v1/tiers/apply", json={}, headers=auth(c.admin))
        assert _gpu(c, f"{node.id}/1")["tier"] == "inference"
        tiered = suggested(f"{node.id}/1")
        want = (median * Decimal("0.6") * TIER_FACTORS["inference"]).quantize(
            cent, rounding=ROUND_HALF_UP
        )
        assert want > Decimal(tiered["energy_cost_per_hour"])  # the floor does not bind here
        assert Decimal(tiered["suggested_price"]) == want
        assert tiered["tier"] == "inference"
