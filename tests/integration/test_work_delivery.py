"""Work delivery: an agent that says which attempts it holds is never sent them again, and
waits on its long-poll instead of being answered the same work over and over."""

from __future__ import annotations

import re
import time
from typing import Any

from helpers import Coordinator, Node, auth, coordinator, gpu


def _work(co: Coordinator, node: Node, wait: float = 0, **held: str) -> dict[str, Any]:
    r = co.c.get("/v1/agent/work", params={"wait": wait, **held}, headers=node.headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _polls(co: Coordinator) -> float:
    m = re.search(r"^gpunet_work_polls_total ([0-9.]+)$", co.c.get("/metrics").text, re.M)
    assert m is not None
    return float(m.group(1))


def test_an_attempt_the_agent_holds_is_not_sent_again(db_url: str) -> None:
    with coordinator(db_url) as co:
        node = co.register(co.token("provider", "prov"), [gpu(0)])
        user = co.token("consumer", "alice")
        co.submit(user, {"command": ["true"]})
        att = co.next_start(node)
        aid = att["attempt_id"]

        # not yet reported started: an agent that names it gets nothing more...
        assert _work(co, node, have=aid) == {"start": [], "stop": []}
        # ...and its long-poll waits out its time instead of answering at once
        t = time.monotonic()
        assert _work(co, node, wait=1.0, have=aid)["start"] == []
        assert time.monotonic() - t >= 0.7
        # an agent that lost the answer (holds nothing) gets it again, as does an older agent
        # that does not say what it holds
        assert [s["attempt_id"] for s in _work(co, node, have="")["start"]] == [aid]
        assert [s["attempt_id"] for s in _work(co, node)["start"]] == [aid]
        assert _polls(co) >= 4


def test_a_stop_the_agent_took_is_not_sent_again(db_url: str) -> None:
    with coordinator(db_url) as co:
        node = co.register(co.token("provider", "prov"), [gpu(0), gpu(1)])
        user = co.token("consumer", "alice")
        job = co.submit(user, {"command": ["sleep", "100"]})
        att = co.next_start(node)
        aid = att["attempt_id"]
        assert co.report(node, att, "started").status_code == 200
        r = co.c.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(user))
        assert r.status_code == 200, r.text

        stop = _work(co, node, have=aid)["stop"]
        assert [s["attempt_id"] for s in stop] == [aid]
        assert _work(co, node, have=aid, stopping=aid) == {"start": [], "stop": []}
        # a second job placed meanwhile still comes, alone
        co.submit(user, {"command": ["true"]})

        def new_start() -> list[str]:
            found = _work(co, node, wait=1.0, have=aid, stopping=aid)
            assert found["stop"] == []
            return [s["attempt_id"] for s in found["start"]]

        deadline = time.monotonic() + 10
        got: list[str] = []
        while not got and time.monotonic() < deadline:
            got = new_start()
        assert got and aid not in got
