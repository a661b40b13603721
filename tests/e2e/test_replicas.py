"""Coordinator replicas on one PostgreSQL database (docs/replicas.md).

Two replicas on two ports, agents and the CLI spread over them: jobs submitted to one run on
agents of the other (the placement made by the leader wakes a long-poll on the follower through
LISTEN/NOTIFY); kill -9 of the leader mid-run elects the other, no job is lost or run twice,
billing stays exact and the ledger verifies; the killed replica restarts as a follower. And a
race: two replicas on one queue under load while the leader is killed and restarted: no GPU is
given twice, no attempt is lost or placed on an offline node.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from gpunet.store.db import Database
from gpunet.store.tables import Attempt, Job, Node
from gpunet.util import utc
from tests.e2e.chaos import AGENT_FLAGS, PRICE, Chaos, ChaosConfig
from tests.e2e.procs import wait_for
from tests.e2e.replicas import Replicas

LEASE = 6.0


def _spread(n: Replicas, agents: int, gpus: int = 1) -> None:
    """Agent ``a{k}`` talks to replica k % count first (and fails over to the others)."""
    n.owner = n.token("provider", "owner")
    every = n.url
    for k in range(agents):
        first = k % len(n.urls)
        n.url = ",".join(n.urls[first:] + n.urls[:first])
        n.start_agent(f"a{k}", f"{gpus}xA100-80GB", n.owner, extra=AGENT_FLAGS)
    n.url = every
    n.user = n.token("consumer", "alice")
    n.wait_online(agents, timeout=60)
    for node in n.cli_json(n.admin, "nodes"):
        n.cli_json(n.owner, "price", "set", "--node", node["id"], PRICE)
    n.cli_json(n.admin, "credits", "grant", "--account", "alice", "100000")


def _submit_via(n: Replicas, i: int, tmp: Path, name: str, seconds: float) -> str:
    """Submit through replica ``i`` only (the CLI with that one URL)."""
    spec = tmp / f"{name}.json"
    spec.write_text(
        json.dumps(
            {
                "name": name,
                "command": f"sleep {seconds}; echo ran $GPUNET_JOB_ID",
                "max_retries": 5,
            }
        )
    )
    every, n.url = n.url, n.urls[i]
    try:
        r = n.cli(n.user, "submit", "--json", str(spec))
    finally:
        n.url = every
    assert r.returncode == 0, r.stderr
    return str(json.loads(r.stdout)["id"])


def _jobs(n: Replicas, ids: list[str]) -> dict[str, dict[str, object]]:
    db = Database(n.db_url)
    try:
        with db.sessions() as s:
            rows = s.execute(
                select(Job.id, Job.state, Attempt.node_id)
                .join(Attempt, Attempt.id == Job.current_attempt_id, isouter=True)
                .where(Job.id.in_(ids))
            ).all()
    finally:
        db.engine.dispose()
    return {r[0]: {"state": r[1], "node": r[2]} for r in rows}


def _check_books(n: Replicas, ids: list[str], root: Path, *, billed: bool = True) -> None:
    """Every job succeeded once, each billed within a second of its measured time; ledger ok.
    ``billed``: the jobs ran long enough to be billed whole seconds."""
    chaos = Chaos(root / "check", n.db_url, ChaosConfig())
    chaos.net = n
    chaos.job_ids = ids
    res = chaos.check(0.0)
    assert res.not_succeeded == [], res
    assert res.double_successes == 0 and res.ran_twice == 0, res
    assert res.lost_attempts == 0, res
    assert res.problems == [], res
    assert res.unmeasured_billed == 0 and res.worst_gap_s <= 1.0, res
    assert res.billed_s > 0 or not billed, res
    assert res.ledger_ok, res.ledger_output


def _revoked_everywhere(n: Replicas, here: int, there: int) -> None:
    """A token revoked on one replica is refused by the other at once, though that one had
    it in its token cache (kept 30 s otherwise): the revocation crosses replicas."""
    admin = {"Authorization": f"Bearer {n.admin}"}
    made = httpx.post(
        n.urls[here] + "/v1/tokens",
        json={"role": "consumer", "account": "bob"},
        headers=admin,
        timeout=10,
    ).json()
    bob = {"Authorization": f"Bearer {made['token']}"}
    for i in (here, there):  # cached on both replicas
        assert httpx.get(n.urls[i] + "/v1/whoami", headers=bob, timeout=5).status_code == 200
    r = httpx.delete(n.urls[here] + f"/v1/tokens/{made['id']}", headers=admin, timeout=10)
    assert r.status_code == 200, r.text
    wait_for(
        lambda: httpx.get(n.urls[there] + "/v1/whoami", headers=bob, timeout=5).status_code == 401,
        3,
        "the other replica to refuse the revoked token",
    )


def test_replicas_share_the_work_and_survive_the_leader(tmp_path: Path, pg_url: str) -> None:
    n = Replicas(tmp_path, pg_url, count=2, lease_timeout=LEASE)
    try:
        n.start_coordinator()
        lead = n.leader()
        follow = 1 - lead
        names = {i: n.health(i)["replica"] for i in (0, 1)}  # type: ignore[index]
        assert n.health(follow)["leader"] == names[lead]  # type: ignore[index]
        _spread(n, 2)
        _revoked_everywhere(n, lead, follow)
        nodes = {x["name"]: x["id"] for x in n.cli_json(n.admin, "nodes")}
        on_follower_agent = nodes[f"a{follow}"]  # that agent long-polls the follower

        # jobs submitted to the follower are placed by the leader, and the follower's agent
        # learns of its placement at once (its idle long-poll asks the store only when woken)
        first = [_submit_via(n, follow, tmp_path, f"j{k}", 8) for k in range(2)]
        t0 = time.monotonic()  # without the wake-up the follower's agent would wait forever
        running = wait_for(
            lambda: (
                (js := _jobs(n, first)) and all(j["state"] == "running" for j in js.values()) and js
            ),
            20,
            "both jobs running",
        )
        assert time.monotonic() - t0 < 15
        assert {j["node"] for j in running.values()} == set(nodes.values())
        assert on_follower_agent in {j["node"] for j in running.values()}

        # kill -9 the leader mid-run: the follower is elected, the agents fail over to it
        n.kill9(lead)
        killed = time.monotonic()
        assert n.leader(timeout=15) == follow
        took = time.monotonic() - killed
        assert took < 10, f"fail-over took {took:.1f}s"
        h = n.health(follow)
        assert h is not None and h["replica"] == names[follow] and h["leads"]

        # work goes on through the survivor
        second = [_submit_via(n, follow, tmp_path, f"k{k}", 1) for k in range(2)]
        done = first + second
        wait_for(
            lambda: all(j["state"] == "succeeded" for j in _jobs(n, done).values()),
            60,
            "every job to succeed after the fail-over",
        )

        # the killed replica comes back as a follower; jobs submitted to it run
        n.start_replica(lead)
        back = n.health(lead)
        assert back is not None and back["leads"] == [] and back["leader"] == names[follow]
        third = [_submit_via(n, lead, tmp_path, f"m{k}", 1) for k in range(2)]
        done += third
        wait_for(
            lambda: all(j["state"] == "succeeded" for j in _jobs(n, done).values()),
            60,
            "the jobs submitted to the restarted replica",
        )
        assert n.leader() == follow  # still the same leader

        # `gpunet status` and /metrics say who leads
        st = n.cli_json(n.user, "status")
        assert st["leader"] == names[follow]
        text = " ".join(n.cli(n.user, "status").stdout.split())
        assert f"collection): {names[follow]}, epoch {st['leader_epoch']}" in text
        metrics = httpx.get(n.urls[follow] + "/metrics", timeout=5).text
        assert f'gpunet_leader{{loop="scheduler",replica="{names[follow]}"}} 1.0' in metrics
        metrics = httpx.get(n.urls[lead] + "/metrics", timeout=5).text
        assert f'gpunet_leader{{loop="scheduler",replica="{names[lead]}"}} 0.0' in metrics

        _check_books(n, done, tmp_path)
    except BaseException:
        print(n.logs())
        raise
    finally:
        n.close()


@pytest.mark.parametrize("seconds", [30.0])
def test_two_replicas_race_on_one_queue(tmp_path: Path, pg_url: str, seconds: float) -> None:
    n = Replicas(tmp_path, pg_url, count=2, lease_timeout=LEASE)
    ids: list[str] = []
    stop = threading.Event()
    errors: list[str] = []

    def feed(i: int) -> None:
        k = 0
        while not stop.is_set():
            body = {"name": f"r{i}-{k}", "command": "sleep 0.3", "max_retries": 5}
            try:
                r = httpx.post(
                    n.urls[i] + "/v1/jobs",
                    json=body,
                    headers={
                        "Authorization": f"Bearer {n.user}",
                        "Idempotency-Key": f"race-{i}-{k}",
                    },
                    timeout=5,
                )
            except httpx.HTTPError:
                time.sleep(0.2)  # that replica is down for a moment: try again
                continue
            if r.status_code == 201:
                ids.append(str(r.json()["id"]))
                k += 1
            elif r.status_code != 429:
                errors.append(f"{r.status_code} {r.text[:200]}")
            stop.wait(0.1)

    try:
        n.start_coordinator()
        _spread(n, 4, gpus=2)
        feeders = [threading.Thread(target=feed, args=(i,), daemon=True) for i in (0, 1)]
        for t in feeders:
            t.start()
        t0 = time.monotonic()
        # halfway, kill -9 the leader and bring it back: for a moment two replicas may both
        # believe they lead; fencing refuses the deposed one's writes
        time.sleep(seconds / 2)
        lead = n.leader()
        n.kill9(lead)
        n.leader(timeout=15)
        n.start_replica(lead)
        time.sleep(max(0.0, seconds - (time.monotonic() - t0)))
        stop.set()
        for t in feeders:
            t.join(timeout=30)
        assert not errors, errors
        assert len(ids) > 20
        wait_for(
            lambda: all(j["state"] == "succeeded" for j in _jobs(n, ids).values()),
            120,
            "every raced job to succeed",
        )
        db = Database(n.db_url)
        try:
            with db.sessions() as s:
                atts = list(s.scalars(select(Attempt).where(Attempt.job_id.in_(ids))))
                online = {nd.id for nd in s.scalars(select(Node)) if nd.status == "online"}
        finally:
            db.engine.dispose()
        assert {a.node_id for a in atts} <= online
        assert [a.id for a in atts if a.state != "succeeded"] == []
        per_job = defaultdict(int)
        by_gpu = defaultdict(list)
        for a in atts:
            per_job[a.job_id] += 1
            start, end = utc(a.created_at), utc(a.finished_at)
            assert start is not None and end is not None
            for g in a.gpu_ids:
                by_gpu[g].append((start, end, a.id))
        assert max(per_job.values()) == 1  # nothing placed twice
        for g, spans in by_gpu.items():
            spans.sort()
            for (_, end, a), (start, _, b) in zip(spans, spans[1:], strict=False):
                assert start >= end, f"GPU {g} given to {b} while {a} held it"
        _check_books(n, ids, tmp_path, billed=False)  # 0.3 s jobs: under a billed second
    except BaseException:
        stop.set()
        print(n.logs())
        raise
    finally:
        stop.set()
        n.close()
