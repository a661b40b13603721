"""The public market: every GPU on offer, from every owner, with its node's reputation."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from gpunet.core import offers as O
from gpunet.services.auth import Principal
from gpunet.services.fleet import GONE_STATES, busy_gpu_ids
from gpunet.services.reputation import reliabilities
from gpunet.store.db import Database
from gpunet.store.tables import Account, Gpu, Node


def _state(g: Any, online: bool, busy: bool) -> str:
    if not online:
        return "offline"
    if not g.healthy:
        return "unhealthy"
    if g.drained:
        return "drained"
    if g.owner_busy:
        return "owner_busy"
    return "busy" if busy else "idle"


def list_offers(
    db: Database, who: Principal, query: str | None = None, sort: str | None = None
) -> list[dict[str, Any]]:
    """Every GPU still in service, from every owner, with its node's reliability; filtered by
    ``query`` and sorted (core/offers.py). The market is public; attempt ids are never shown."""
    terms = O.parse_query(query)
    O.parse_sort(sort)
    with db.sessions() as s:
        nodes = {n.id: n for n in s.scalars(select(Node))}
        owners: dict[str, str] = {
            aid: nm for aid, nm in s.execute(select(Account.id, Account.name))
        }
        rel = reliabilities(s)
        busy = busy_gpu_ids(s)
        rows = list(
            s.scalars(
                select(Gpu)
                .where(Gpu.lifecycle_state.notin_(GONE_STATES))
                .order_by(Gpu.node_id, Gpu.index)
            )
        )
        offers = []
        for g in rows:
            node = nodes[g.node_id]
            online = node.status == "online"
            state = _state(g, online, g.id in busy)
            score = rel.get(g.node_id)
            offers.append(
                {
                    "gpu_id": g.id,
                    "node_id": g.node_id,
                    "model": g.model,
                    "memory_gb": round(g.memory_mb / 1000, 1),
                    "compute_capability": f"{g.cc_major}.{g.cc_minor}",
                    "price_per_hour": None if g.price_per_hour is None else str(g.price_per_hour),
                    "reliability": None if score is None else round(score, 4),
                    "tier": g.tier,
                    "site": node.site,
                    "state": state,
                    "available": state == "idle",
                    "owner_busy": g.owner_busy,
                    "simulated": g.simulated,
                    "owner": owners.get(node.account_id),
                    "isolation": node.isolation,
                    "runtimes": sorted(node.runtimes or []),
                }
            )
    return O.sort_offers([o for o in offers if O.matches(o, terms)], sort)
