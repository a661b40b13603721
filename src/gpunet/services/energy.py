"""Energy per attempt as agents meter it, and its facility energy, CO2e and cost per job,
per GPU and per owner (core/energy.py does the arithmetic)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpunet.core.energy import footprint, site_from_labels
from gpunet.errors import ValidationFailed
from gpunet.services.auth import Principal, Role
from gpunet.store.db import Database
from gpunet.store.tables import Attempt, AttemptEnergy, Gpu, Node
from gpunet.util import now
from gpunet.wire.agent import EnergyUse


def record_energy(s: Session, att: Attempt, entries: list[EnergyUse]) -> None:
    """Store an attempt's per-GPU energy (from its finished report)."""
    by_index = dict(zip(att.gpu_indices, att.gpu_ids, strict=False))
    for e in entries:
        gpu_id = by_index.get(e.index)
        if gpu_id is None:
            raise ValidationFailed(
                "energy", "each entry needs an index of the attempt's GPUs and joules"
            )
        s.merge(
            AttemptEnergy(
                attempt_id=att.id,
                gpu_id=gpu_id,
                joules=e.joules,
                method=e.method,
                resets=e.resets,
                samples=e.samples,
                seconds=e.seconds,
                counter_start_j=e.counter_start_j,
                counter_end_j=e.counter_end_j,
                at=now(),
            )
        )


def _labels(s: Session, node_ids: set[str]) -> dict[str, dict[str, Any]]:
    rows = s.execute(select(Node.id, Node.labels).where(Node.id.in_(list(node_ids))))
    return {nid: dict(labels or {}) for nid, labels in rows}


def _rows(s: Session, *where: Any) -> list[tuple[AttemptEnergy, Attempt]]:
    q = select(AttemptEnergy, Attempt).join(Attempt, Attempt.id == AttemptEnergy.attempt_id)
    return [(e, a) for e, a in s.execute(q.where(*where)).all()]


def _summary(s: Session, rows: list[tuple[AttemptEnergy, Attempt]]) -> dict[str, Any]:
    labels = _labels(s, {a.node_id for _, a in rows})
    per_site: dict[str, float] = defaultdict(float)
    site_of: dict[str, Any] = {}
    for e, a in rows:
        site = site_from_labels(labels.get(a.node_id, {}))
        key = repr(site)
        per_site[key] += e.joules
        site_of[key] = site
    parts = [footprint(j, site_of[k]) for k, j in per_site.items()]
    total = {
        "gpu_joules": round(sum(e.joules for e, _ in rows), 3),
        "gpu_kwh": round(sum(p["gpu_kwh"] for p in parts), 6),
        "facility_kwh": round(sum(p["facility_kwh"] for p in parts), 6),
        "co2e_kg": round(sum(p["co2e_kg"] for p in parts), 6),
        "cost": round(sum(p["cost"] for p in parts), 6),
    }
    if len(parts) == 1:  # one site: show its factors and their sources
        total.update(
            {k: parts[0][k] for k in ("pue", "grid_gco2e_per_kwh", "tariff_per_kwh", "sources")}
        )
    return total


def _entry(e: AttemptEnergy) -> dict[str, Any]:
    return {
        "attempt_id": e.attempt_id,
        "gpu_id": e.gpu_id,
        "joules": e.joules,
        "method": e.method,
        "resets": e.resets,
        "seconds": e.seconds,
        "counter_start_j": e.counter_start_j,
        "counter_end_j": e.counter_end_j,
    }


def job_energy(db: Database, attempt_ids: list[str]) -> dict[str, Any]:
    with db.sessions() as s:
        rows = _rows(s, AttemptEnergy.attempt_id.in_(attempt_ids)) if attempt_ids else []
        return {**_summary(s, rows), "gpus": [_entry(e) for e, _ in rows]}


def gpu_energy(db: Database, gpu_id: str) -> dict[str, Any]:
    with db.sessions() as s:
        return _summary(s, _rows(s, AttemptEnergy.gpu_id == gpu_id))


def by_owner(db: Database, who: Principal) -> list[dict[str, Any]]:
    """Energy, CO2e and cost per GPU owner (account), and per GPU; providers see their own."""
    who.require(Role.PROVIDER)
    with db.sessions() as s:
        owners = dict(
            s.execute(select(Gpu.id, Node.account_id).join(Node, Node.id == Gpu.node_id)).all()
        )
        rows = _rows(s)
        groups: dict[str, list[tuple[AttemptEnergy, Attempt]]] = defaultdict(list)
        for e, a in rows:
            groups[owners.get(e.gpu_id, "")].append((e, a))
        out = []
        for account, rs in sorted(groups.items()):
            if not who.is_admin and account != who.account_id:
                continue
            per_gpu: dict[str, list[tuple[AttemptEnergy, Attempt]]] = defaultdict(list)
            for e, a in rs:
                per_gpu[e.gpu_id].append((e, a))
            out.append(
                {
                    "account_id": account,
                    **_summary(s, rs),
                    "gpus": [{"gpu_id": g, **_summary(s, r)} for g, r in sorted(per_gpu.items())],
                }
            )
        return out
