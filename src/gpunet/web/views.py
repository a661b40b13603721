"""What each dashboard page shows, gathered from the services with the signed-in principal.

The services enforce tenancy; where an API router adds a rule of its own (the fleet's
provider filter and hidden attempt ids, a GPU page's extra sections), it is mirrored here and
a test holds the two to the same answer."""

from __future__ import annotations

from typing import Any

from gpunet.core.jobs import JobState
from gpunet.errors import GpunetError
from gpunet.loops import metering
from gpunet.services import accounts, energy, market, offers, tco, tiers
from gpunet.services import jobs as job_svc
from gpunet.services import lifecycle as life
from gpunet.services.auth import Principal, Role
from gpunet.services.fleet import list_gpus, list_nodes
from gpunet.services.history import money_history
from gpunet.services.runtime import Runtime
from gpunet.services.scheduling import why

LOG_TAIL_CHARS = 64 * 1024
WHY_IN_LIST = 20  # queued jobs explained in the jobs list (each explanation plans once)
TERMINAL = {JobState.SUCCEEDED.value, JobState.FAILED.value, JobState.CANCELLED.value}


def fleet(rt: Runtime, who: Principal) -> dict[str, Any]:
    """Nodes and GPUs as ``GET /v1/nodes`` and ``GET /v1/gpus`` answer them to ``who``."""
    with rt.db.sessions() as s:
        gpus = list_gpus(s)
        nodes = list_nodes(s, gpus)
    if who.role is Role.PROVIDER:
        nodes = [n for n in nodes if n["account_id"] == who.account_id]
        mine = {n["id"] for n in nodes}
        gpus = [g for g in gpus if g["node_id"] in mine]
    by_id = {n["id"]: n for n in nodes}
    for g in gpus:
        if not who.is_admin:
            g["attempt_id"] = None  # which attempt holds a GPU is not a tenant's business
        g.setdefault("owner_busy", False)  # reported by agents that know it
        node = by_id.get(g["node_id"], {})
        g["node_name"] = node.get("name")
        g["node_status"] = node.get("status")
        g["isolation"] = node.get("isolation")
    return {
        "nodes": nodes,
        "gpus": gpus,
        "online": sum(n["status"] == "online" for n in nodes),
        "busy": sum(bool(g["busy"]) for g in gpus),
        "can_open_gpus": who.is_admin or who.role is Role.PROVIDER,
    }


def gpu(rt: Runtime, who: Principal, gpu_id: str) -> dict[str, Any]:
    """A GPU's page: as ``GET /v1/gpus/{id}/timeline`` answers it."""
    out = life.timeline(rt.db, who, gpu_id)
    out.setdefault("owner_busy", False)
    out["benchmarks"] = tiers.benchmarks_of(rt.db, out["id"])
    out["energy"] = energy.gpu_energy(rt.db, out["id"])
    out["tco"] = next((r for r in tco.report(rt.db, who)["gpus"] if r["gpu_id"] == out["id"]), None)
    out["events"] = list(reversed(out["events"]))  # newest first on a page
    return out


def gpu_benchmarks(rt: Runtime, who: Principal, gpu_id: str) -> list[dict[str, Any]]:
    """A GPU's benchmark scores, to whoever may open its page."""
    g = life.timeline(rt.db, who, gpu_id)  # the page's access rule
    return tiers.benchmarks_of(rt.db, g["id"])


def _why(rt: Runtime, who: Principal, job_id: str) -> dict[str, Any] | None:
    job, exp = why(rt.db, who, job_id, rt.settings.policy, metering.terms(rt.settings))
    if exp is None:
        return None
    return {"summary": exp.summary(), "note": exp.note, "rejections": exp.rejections}


def jobs(rt: Runtime, who: Principal, state: str | None = None) -> dict[str, Any]:
    rows = [job_svc.job_dict(j) for j in job_svc.list_jobs(rt.db, who, state or None, 200)]
    explained = 0
    for j in rows:
        j["why"] = None
        if j["state"] == JobState.QUEUED.value and explained < WHY_IN_LIST:
            j["why"] = _why(rt, who, j["id"])
            explained += 1
    return {"jobs": rows, "state": state or "", "states": [s.value for s in JobState]}


def job(rt: Runtime, who: Principal, job_id: str) -> dict[str, Any]:
    """A job with its attempts, events, placement explanation (queued) and log tail."""
    row, attempts = job_svc.get_job(rt.db, who, job_id)
    out = job_svc.job_dict(row, attempts)
    out["energy"] = energy.job_energy(rt.db, [a.id for a in attempts])
    out["events"] = job_svc.events(rt.db, who, job_id)
    out["why"] = _why(rt, who, job_id) if row.state == JobState.QUEUED.value else None
    _, chunks = job_svc.logs(rt.db, who, job_id, 0)
    text = "".join(c.data for c in chunks)
    out["log_cut"] = max(0, len(text) - LOG_TAIL_CHARS)
    out["log"] = text[-LOG_TAIL_CHARS:]
    out["terminal"] = row.state in TERMINAL
    return out


def offer_list(rt: Runtime, who: Principal, q: str | None) -> dict[str, Any]:
    try:
        rows, error = offers.list_offers(rt.db, who, q or None), None
    except GpunetError as exc:  # a bad query is shown beside the search box
        rows, error = [], exc.message
    return {"offers": rows, "q": q or "", "error": error}


def money(rt: Runtime, who: Principal) -> dict[str, Any]:
    out: dict[str, Any] = {
        "balance": market.get_balance(rt.db, who, None),
        "spend": market.spend_statement(rt.db, who, None),
        "earnings": None,
        "ledger": None,
        "accounts": None,
    }
    if who.is_admin or who.role is Role.PROVIDER:
        out["earnings"] = market.earnings_statement(rt.db, who, None)
    if who.is_admin:
        problems = market.verify_ledger(rt.db, who)
        out["ledger"] = {"ok": not problems, "problems": problems}
        out["accounts"] = accounts.list_accounts(rt.db, who)
    return out


def history(rt: Runtime, who: Principal) -> dict[str, list[dict[str, Any]]]:
    return money_history(rt.db, who)


def tco_report(rt: Runtime, who: Principal) -> dict[str, Any]:
    return tco.report(rt.db, who)
