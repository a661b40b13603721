"""The OpenAPI document declares what jobs, nodes, GPUs, offers, balances and tokens look like,
and real answers are exactly what the services build: validated by the models, nothing dropped."""

from __future__ import annotations

from typing import Any

import jsonschema_rs
import pytest
from fastapi.testclient import TestClient
from helpers import Coordinator, auth, coordinator, gpu
from pydantic import BaseModel, TypeAdapter

from gpunet.api.app import create_app
from gpunet.sdk.client import Client
from gpunet.services import jobs as jobs_svc
from gpunet.services import market as market_svc
from gpunet.services import offers as offers_svc
from gpunet.services.auth import Principal, Role
from gpunet.services.energy import job_energy
from gpunet.services.fleet import list_gpus, list_nodes
from gpunet.settings import Settings
from gpunet.wire import resources as R

# (method, path, status) -> the model of its answer; a list: an array of them
OPERATIONS: dict[tuple[str, str, str], type[BaseModel] | list[type[BaseModel]]] = {
    ("post", "/v1/jobs", "201"): R.JobSummary,
    ("get", "/v1/jobs", "200"): [R.JobSummary],
    ("get", "/v1/jobs/{job_id}", "200"): R.Job,
    ("get", "/v1/jobs/{job_id}/events", "200"): [R.JobEvent],
    ("get", "/v1/jobs/{job_id}/logs", "200"): R.LogPage,
    ("post", "/v1/jobs/{job_id}/cancel", "200"): R.JobSummary,
    ("get", "/v1/jobs/{job_id}/why", "200"): R.Explanation,
    ("post", "/v1/blobs", "201"): R.BlobRef,
    ("get", "/v1/nodes", "200"): [R.Node],
    ("get", "/v1/gpus", "200"): [R.Gpu],
    ("get", "/v1/whoami", "200"): R.Whoami,
    ("put", "/v1/prices", "200"): [R.Price],
    ("get", "/v1/prices/suggest", "200"): R.PriceSuggestion,
    ("post", "/v1/credits/grant", "201"): R.Grant,
    ("get", "/v1/balance", "200"): R.Balance,
    ("put", "/v1/quotas", "200"): R.Balance,
    ("get", "/v1/ledger/verify", "200"): R.LedgerCheck,
    ("get", "/v1/earnings", "200"): R.Earnings,
    ("get", "/v1/spend", "200"): R.Spend,
    ("get", "/v1/offers", "200"): [R.Offer],
    ("get", "/v1/nodes/{node_id}/reputation", "200"): R.Reputation,
    ("post", "/v1/tokens", "201"): R.TokenCreated,
    ("get", "/v1/tokens", "200"): [R.Token],
    ("delete", "/v1/tokens/{token_id}", "200"): R.Token,
    ("post", "/v1/accounts", "201"): R.Account,
    ("get", "/v1/accounts", "200"): [R.Account],
    ("get", "/v1/sim/export", "200"): R.SimExport,
}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    """The document as the app builds it (no store is touched)."""
    out: dict[str, Any] = create_app(Settings(database_url="sqlite://")).openapi()
    return out


def _component(doc: dict[str, Any], ref: str) -> dict[str, Any]:
    assert ref.startswith("#/components/schemas/"), ref
    out: dict[str, Any] = doc["components"]["schemas"][ref.removeprefix("#/components/schemas/")]
    return out


@pytest.mark.parametrize(("method", "path", "status"), sorted(OPERATIONS))
def test_document_declares_the_answer(
    doc: dict[str, Any], method: str, path: str, status: str
) -> None:
    schema = doc["paths"][path][method]["responses"][status]["content"]["application/json"][
        "schema"
    ]
    want = OPERATIONS[(method, path, status)]
    if isinstance(want, list):
        assert schema["type"] == "array", schema
        schema, model = schema["items"], want[0]
    else:
        model = want
    declared = _component(doc, schema["$ref"])
    names = {f.alias or n for n, f in model.model_fields.items()}
    assert set(declared["properties"]) == names, f"{method} {path}: {declared}"
    assert declared["additionalProperties"] is False  # exactly these keys, no others
    required = {f.alias or n for n, f in model.model_fields.items() if f.is_required()}
    assert set(declared.get("required", [])) == required


def _validate(doc: dict[str, Any], method: str, path: str, status: str, body: Any) -> None:
    """Validate an answer against its schema in the document, and against its model."""
    schema = doc["paths"][path][method]["responses"][status]["content"]["application/json"][
        "schema"
    ]
    jsonschema_rs.validator_for({**schema, "components": doc["components"]}).validate(body)
    want = OPERATIONS[(method, path, status)]
    TypeAdapter(list[want[0]] if isinstance(want, list) else want).validate_python(body)  # type: ignore[valid-type]


def bal_id(co: Coordinator, token: str) -> str:
    return str(_get(co, token, "/v1/balance")["account_id"])


def _get(co: Coordinator, token: str, path: str, **params: Any) -> Any:
    r = co.c.get(path, params=params, headers=auth(token))
    assert r.status_code == 200, r.text
    return r.json()


def test_real_answers_are_what_the_services_build(db_url: str) -> None:
    with coordinator(db_url) as co:
        doc = co.c.get("/openapi.json").json()
        provider = co.token("provider", "owner")
        node = co.register(provider, [gpu(0)], site="lab")
        r = co.c.put("/v1/prices", json={"node_id": node.id, "price": "2"}, headers=auth(co.admin))
        assert r.status_code == 200, r.text
        _validate(doc, "put", "/v1/prices", "200", r.json())
        consumer = co.token("consumer", "alice")
        r = co.c.post(
            "/v1/credits/grant", json={"account": "alice", "amount": "100"}, headers=auth(co.admin)
        )
        _validate(doc, "post", "/v1/credits/grant", "201", r.json())
        job = co.submit(consumer)
        _validate(doc, "post", "/v1/jobs", "201", job)
        att = co.next_start(node)
        assert co.report(node, att, "started").status_code == 200
        out = {"chunks": [{"stream": "stdout", "data": "hello\n"}]}
        assert co.report(node, att, "logs", **out).status_code == 200
        used = {"index": 0, "joules": 3600.0, "method": "counter", "seconds": 10.0}
        done = co.report(node, att, "finished", exit_code=0, energy=[used])
        assert done.status_code == 200, done.text

        who = Principal(role=Role.ADMIN, account_id="", token_id="")
        shown = _get(co, consumer, f"/v1/jobs/{job['id']}")
        _validate(doc, "get", "/v1/jobs/{job_id}", "200", shown)
        row, attempts = jobs_svc.get_job(co.db, who, job["id"])
        built = jobs_svc.job_dict(row, attempts, account="alice")  # the route joins the name
        built["energy"] = job_energy(co.db, [a.id for a in attempts])
        assert shown == built  # every key the service builds, with the same values
        assert shown["state"] == "succeeded" and shown["attempts"][0]["node_id"] == node.id
        assert shown["energy"]["gpus"][0]["joules"] == 3600.0 and "pue" in shown["energy"]

        logs = _get(co, consumer, f"/v1/jobs/{job['id']}/logs")
        _validate(doc, "get", "/v1/jobs/{job_id}/logs", "200", logs)
        assert [c["data"] for c in logs["chunks"]] == ["hello\n"]
        events = _get(co, consumer, f"/v1/jobs/{job['id']}/events")
        _validate(doc, "get", "/v1/jobs/{job_id}/events", "200", events)
        assert events[0]["from"] is None and events[-1]["to"] == "succeeded"
        why = _get(co, consumer, f"/v1/jobs/{job['id']}/why")
        _validate(doc, "get", "/v1/jobs/{job_id}/why", "200", why)
        assert set(why) == {"job_id", "state", "summary", "reason"}  # not queued: no analysis

        with co.db.sessions() as s:
            nodes, gpus = list_nodes(s), list_gpus(s)
        answered = _get(co, co.admin, "/v1/nodes")
        _validate(doc, "get", "/v1/nodes", "200", answered)
        assert answered == nodes and answered[0]["owner"] == "owner"
        answered = _get(co, co.admin, "/v1/gpus")
        _validate(doc, "get", "/v1/gpus", "200", answered)
        assert answered == gpus and answered[0]["price_per_hour"] == "2.000000"
        assert answered[0]["owner"] == "owner"  # listings name accounts, not ids
        listed = _get(co, consumer, "/v1/jobs")
        _validate(doc, "get", "/v1/jobs", "200", listed)
        assert [j["account"] for j in listed] == ["alice"] and shown["account"] == "alice"
        me = _get(co, consumer, "/v1/whoami")
        assert me["account"] == "alice" and me["account_id"] == bal_id(co, consumer)

        offers = _get(co, consumer, "/v1/offers")
        _validate(doc, "get", "/v1/offers", "200", offers)
        assert offers == offers_svc.list_offers(co.db, who) and offers[0]["site"] == "lab"

        bal = _get(co, consumer, "/v1/balance")
        _validate(doc, "get", "/v1/balance", "200", bal)
        alice = Principal(role=Role.CONSUMER, account_id=bal["account_id"], token_id="")
        assert bal == market_svc.get_balance(co.db, alice, None)
        assert bal["account"] == "alice" and bal["held"] == "0.000000"

        for path, token in (
            ("/v1/tokens", co.admin),
            ("/v1/accounts", co.admin),
            ("/v1/earnings", provider),
            ("/v1/spend", consumer),
            (f"/v1/nodes/{node.id}/reputation", consumer),
            ("/v1/whoami", node.token),
        ):
            templated = path.replace(node.id, "{node_id}")
            _validate(doc, "get", templated, "200", _get(co, token, path))
        tokens = _get(co, co.admin, "/v1/tokens")
        assert all("token" not in t and "token_hash" not in t for t in tokens)

        # the SDK's typed accessors read the same answers as models
        sdk = Client("http://testserver", consumer)
        sdk._http.close()
        sdk._http = TestClient(co.c.app, headers=auth(consumer))
        typed = sdk.job_model(job["id"])
        assert typed.state == "succeeded" and typed.attempts[0].gpu_ids == [f"{node.id}/0"]
        assert typed.energy.gpus[0].joules == 3600.0
        assert [o.gpu_id for o in sdk.offer_models()] == [f"{node.id}/0"]
        assert sdk.balance_model().balance == bal["balance"]
        assert [n.id for n in sdk.node_models()] == [node.id]
        assert sdk.gpu_resources()[0].attempt_id is None  # not an admin's business
