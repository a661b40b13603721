"""Schemathesis against the coordinator's own OpenAPI document: every operation, every role
(the tests: test_api_fuzz.py on SQLite, test_api_fuzz_postgres.py on PostgreSQL, two files so
that the suite's worker processes run them side by side).

Each operation is called with generated requests, valid ones and invalid ones, once per token
(admin, consumer, provider, and the agent of a registered node for ``/v1/agent/*``). Every
answer must be a declared status code, never a 5xx, with the declared content type and a body
that matches the declared schema (the error envelope included).

The run is bounded and reproducible (``derandomize``, no example database). For a deeper run
raise the number of generated requests per operation, mode and token, e.g.::

    GPUNET_FUZZ_EXAMPLES=200 pytest tests/integration/test_api_fuzz*.py

The PostgreSQL run (where over-long strings and integer overflows surface) is marked
``postgres``: ``pytest -m postgres tests/integration/test_api_fuzz_postgres.py``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import schemathesis
from helpers import Coordinator, archive, auth, coordinator
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

EXAMPLES = int(os.environ.get("GPUNET_FUZZ_EXAMPLES", "6"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Long polls answer at once with wait=0; any other value only makes the run slower.
FIXED_QUERY = {("GET", "/v1/agent/work"): {"wait": 0}}


def _send(co: Coordinator, case: Any) -> Any:
    """Send a generated case through the app's own TestClient (lifespan and loops running)."""
    kw = case.as_transport_kwargs(base_url="http://testserver")
    data = kw.pop("data", None)
    body = kw.pop("json", None)
    kw.pop("cookies", None)
    if isinstance(data, str):
        data = data.encode()
    return co.c.request(
        kw.pop("method"),
        kw.pop("url"),
        headers=kw.pop("headers", None),
        params=kw.pop("params", None),
        content=data if isinstance(data, bytes) else None,
        json=body,
    )


def _fuzz_operation(
    co: Coordinator,
    op: Any,
    token: str,
    mode: GenerationMode,
    path_ids: dict[str, str] | None = None,
) -> None:
    strategy = op.as_strategy(
        generation_mode=mode,
        headers=auth(token),
        query=FIXED_QUERY.get((op.method.upper(), op.path)),
        path_parameters=path_ids,
    )

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        response = _send(co, case)
        case.validate_response(response, checks=CHECKS)

    run()


@dataclass
class World:
    """Tokens for each role and ids of real objects, so that calls reach past the 404."""

    roles: dict[str, str]
    agent: str
    ids: dict[str, str]


def _world(co: Coordinator) -> World:
    provider = co.token("provider", "prov")
    node = co.register(provider)
    consumer = co.token("consumer", "alice")
    job = co.submit(consumer)
    attempt = co.next_start(node)
    data = archive({"train.py": b"print('hi')\n"})
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = co.c.post("/v1/blobs", params={"digest": digest}, content=data, headers=auth(consumer))
    assert r.status_code == 201, r.text
    return World(
        roles={"admin": co.admin, "consumer": consumer, "provider": provider},
        agent=node.token,
        ids={
            "job_id": job["id"],
            "attempt_id": attempt["attempt_id"],
            "gpu_id": f"{node.id}/0",
            "node_id": node.id,
            "digest": digest,
        },
    )


def _describe(exc: BaseException) -> str:
    """The failure and, for a group (several distinct failures), each of its members."""
    if isinstance(exc, BaseExceptionGroup):
        return "\n".join(f"  - {_describe(e)}" for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


def fuzz_app(url: str) -> None:
    failures: list[str] = []
    with coordinator(url) as co:
        world = _world(co)
        schema = schemathesis.openapi.from_dict(co.c.get("/openapi.json").json())
        ops = [result.ok() for result in schema.get_all_operations()]
        assert len(ops) > 30, "the document lost operations"
        nothing_to_negate: set[str] = set()  # searching for what is not there costs seconds
        for op in ops:
            tokens = dict(world.roles)
            if op.path.startswith("/v1/agent/"):
                tokens["agent"] = world.agent
            names = {p.name for p in op.path_parameters}
            real = {k: v for k, v in world.ids.items() if k in names} or None
            runs: list[tuple[GenerationMode, dict[str, str] | None]] = [
                (GenerationMode.POSITIVE, None),
                (GenerationMode.NEGATIVE, None),
            ]
            if real:
                runs.append((GenerationMode.POSITIVE, real))
            for role, token in tokens.items():
                for mode, path_ids in runs:
                    if mode is GenerationMode.NEGATIVE and op.label in nothing_to_negate:
                        continue
                    try:
                        _fuzz_operation(co, op, token, mode, path_ids)
                    except Unsatisfiable:
                        # no input to make invalid (no parameters, or a free-form string);
                        # the token is fixed, so no other role's run can find one either
                        assert mode is GenerationMode.NEGATIVE, op.label
                        nothing_to_negate.add(op.label)
                    # schemathesis raises its failures as a BaseExceptionGroup
                    except (Exception, BaseExceptionGroup) as exc:  # collect all, report together
                        ids = " with real ids" if path_ids else ""
                        title = f"{op.method.upper()} {op.path} as {role} ({mode.value}{ids})"
                        failures.append(f"{title}:\n{_describe(exc)}")
    assert not failures, "\n\n".join(failures)
