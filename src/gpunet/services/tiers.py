"""Benchmarks recorded and scored; tier proposals for the fleet, and applying them."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import func, select

from gpunet.catalog import catalog
from gpunet.core.benchmark import BenchmarkResult, drift, percentiles, score, throughput
from gpunet.core.lifecycle import SCHEDULABLE, TRANSITIONS, GpuState, move
from gpunet.core.tiers import RETIRE, Proposal, TierInput, propose
from gpunet.errors import Forbidden
from gpunet.services.auth import Principal, Role
from gpunet.services.lifecycle import _event, apply_move
from gpunet.store.db import Database
from gpunet.store.tables import Gpu, GpuBenchmark, GpuEvent
from gpunet.util import iso, now
from gpunet.wire.agent import BenchmarkReport, BenchmarkRun

BENCH_RULE = "rule:benchmark"
TIER_RULE = "rule:tiers"


def _parse(r: BenchmarkRun) -> BenchmarkResult:
    return BenchmarkResult(
        index=r.index,
        values=dict(r.values),
        unmeasured=dict(r.unmeasured),
        soak_runs=r.soak_runs,
        soak_errors=r.soak_errors,
        simulated=r.simulated,
    )


def record(db: Database, who: Principal, rep: BenchmarkReport) -> list[dict[str, Any]]:
    """Store and score an agent's benchmark results. A failed soak drains the GPU."""
    if who.role is not Role.AGENT or who.node_id is None:
        raise Forbidden("only an agent's own token may report benchmarks")
    parsed = {r.index: r for r in map(_parse, rep.results)}
    out = []
    with db.transaction() as s:
        for g in s.scalars(select(Gpu).where(Gpu.node_id == who.node_id).with_for_update()):
            r = parsed.get(g.index)
            if r is None:
                continue
            sc = score(g.model, r)
            s.add(
                GpuBenchmark(
                    gpu_id=g.id,
                    at=now(),
                    kind=rep.kind,
                    simulated=r.simulated,
                    score_pct=sc.score_pct,
                    result=r.to_dict(),
                    scored=sc.to_dict(),
                )
            )
            state = GpuState(g.lifecycle_state)
            if sc.soak_failed and GpuState.DRAINED in _next(state):
                why = "; ".join(sc.reasons)
                apply_move(s, g, move(state, GpuState.DRAINED, why, BENCH_RULE))
            elif state is GpuState.BURN_IN:
                why = (
                    f"burn-in passed at {sc.score_pct:g}% of reference"
                    if sc.score_pct is not None
                    else "burn-in measured nothing to score ("
                    + "; ".join(sorted(set(r.unmeasured.values())))
                    + "): in service unscored"
                )
                apply_move(s, g, move(state, GpuState.ACTIVE, why, BENCH_RULE))
            out.append({"gpu_id": g.id, **sc.to_dict()})
    return out


def _next(state: GpuState) -> frozenset[GpuState]:
    return TRANSITIONS[state]


def _history(s: Any) -> dict[str, list[tuple[Any, float | None]]]:
    rows = s.execute(
        select(GpuBenchmark.gpu_id, GpuBenchmark.at, GpuBenchmark.score_pct).order_by(
            GpuBenchmark.id
        )
    )
    out: dict[str, list[tuple[Any, float | None]]] = defaultdict(list)
    for gid, at, pct in rows:
        out[gid].append((at, pct))
    return out


def proposals(db: Database) -> list[dict[str, Any]]:
    """The tier rule over the fleet's GPUs in service, with each GPU's benchmark standing."""
    with db.sessions() as s:
        gpus = [
            g
            for g in s.scalars(select(Gpu).order_by(Gpu.node_id, Gpu.index))
            if GpuState(g.lifecycle_state) in SCHEDULABLE
        ]
        hist = _history(s)
        failures = dict(
            s.execute(
                select(GpuEvent.gpu_id, func.count())
                .where(GpuEvent.kind == "health", GpuEvent.to_state == "failed")
                .group_by(GpuEvent.gpu_id)
            ).all()
        )
    inputs = []
    for g in gpus:
        scores = [p for _, p in hist.get(g.id, []) if p is not None]
        latest = scores[-1] if scores else None
        spec = catalog().get(g.model)
        inputs.append(
            TierInput(
                g.id,
                g.model,
                g.memory_mb,
                g.tier,
                latest,
                throughput(g.model, latest),
                spec.tdp_w if spec else None,
                int(failures.get(g.id, 0)),
            )
        )
    pct = percentiles({i.gpu_id: i.throughput_tflops for i in inputs})
    out = []
    for i, p in zip(inputs, propose(inputs), strict=True):
        scores = [x for _, x in hist.get(i.gpu_id, []) if x is not None]
        out.append(
            p.to_dict()
            | {
                "model": i.model,
                "score_pct": i.score_pct,
                "fleet_percentile": pct[i.gpu_id],
                "drift_pp": drift(scores),
                "benchmarks": len(scores),
            }
        )
    return out


def apply(db: Database, who: Principal, gpu_ids: list[str] | None) -> list[dict[str, Any]]:
    """Apply the proposed moves (all, or those of ``gpu_ids``). A retire proposal drains the
    GPU: retiring it for good stays an operator's decision."""
    who.require(Role.ADMIN)
    return apply_as(db, f"operator:{who.token_id}", gpu_ids)


def apply_as(db: Database, actor: str, gpu_ids: list[str] | None = None) -> list[dict[str, Any]]:
    """Apply the proposed moves on behalf of ``actor`` (an operator, or the automatic mode)."""
    props = [p for p in proposals(db) if p["moves"] and (gpu_ids is None or p["gpu_id"] in gpu_ids)]
    with db.transaction() as s:
        for p in props:
            g = s.get(Gpu, p["gpu_id"], with_for_update=True)
            if g is None:
                continue
            why = "; ".join(p["reasons"])
            if p["proposed"] == RETIRE:
                state = GpuState(g.lifecycle_state)
                apply_move(
                    s, g, move(state, GpuState.DRAINED, f"proposed for retirement: {why}", actor)
                )
            else:
                _event(s, g, "tier", g.tier, p["proposed"], why, actor)
                g.tier = p["proposed"]
    return props


def benchmarks_of(db: Database, gpu_id: str) -> list[dict[str, Any]]:
    with db.sessions() as s:
        rows = list(
            s.scalars(
                select(GpuBenchmark).where(GpuBenchmark.gpu_id == gpu_id).order_by(GpuBenchmark.id)
            )
        )
    first = next((b.score_pct for b in rows if b.score_pct is not None), None)
    return [
        {
            "at": iso(b.at),
            "kind": b.kind,
            "simulated": b.simulated,
            "score_pct": b.score_pct,
            "drift_pp": round(b.score_pct - first, 1)
            if b.score_pct is not None and first is not None
            else None,
            "flagged": b.scored.get("flagged", False),
            "reasons": b.scored.get("reasons", []),
            "values": b.result.get("values", {}),
            "unmeasured": b.result.get("unmeasured", {}),
        }
        for b in rows
    ]


__all__ = ["Proposal", "apply", "benchmarks_of", "proposals", "record"]
