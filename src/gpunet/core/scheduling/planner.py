"""Placement: order jobs by policy, filter GPU classes, score candidate groups, choose.

The snapshot is indexed once per call: GPUs are grouped into classes (everything the filters
and scorers look at) and, per class, free GPUs are bucketed by node and by how many are free on
the node. A decision then looks at a handful of classes and one node per class, whatever the
size of the fleet; explanations are counted from class totals, so every GPU is counted once.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal

from gpunet.core.scheduling import admission
from gpunet.core.scheduling.admission import Tally
from gpunet.core.scheduling.filters import (
    BUSY,
    FILTERS,
    STATIC_FILTERS,
    TRANSIENT_FILTERS,
    GpuClass,
    first_failure,
)
from gpunet.core.scheduling.model import (
    Explanation,
    JobRequest,
    NodeView,
    Placement,
    Plan,
    Snapshot,
)
from gpunet.core.scheduling.policies import QUANTUM_S, Policy, get_policy, gpus_of
from gpunet.core.scheduling.scorers import (
    class_scores,
    expected_throughputs,
    locality,
    packing,
    reliability,
    tier_fit,
)

_SCORE_EPS = 1e-9
# taken off a node that already runs a member of the job's spread group: a member goes there
# only when no node of a comparable class is free elsewhere
SPREAD_PENALTY = 0.5
_Best = tuple[int, str, tuple[str, ...], float, float]  # class, node, gpus, packing, locality
_Member = tuple[int, str, tuple[str, ...]]  # a gang member: class index, node, gpu ids
_NO_PARTS = (0.0, 0.0, 0.0, 0.0, 0.0)
_STRANGER = "\x00stranger"  # an account that owns no node
_SITES_SHOWN = 5  # sites named in a gang's explanation
# compaction tries per pass (each looks at every job placed so far): bounds a pass's cost on
# a large fleet whose free GPUs are scattered
COMPACTIONS = 16


def _count(k: int, noun: str) -> str:
    return f"{k} {noun}" if k == 1 else f"{k} {noun}s"


@dataclass(slots=True)
class _ClassState:
    cls: GpuClass
    usable: bool  # passes the transient filters (online, healthy, not drained)
    total: int = 0
    free: int = 0
    free_by_node: dict[str, list[str]] = field(default_factory=dict)
    # bucket[k]: nodes with exactly k free GPUs of this class (a dict keeps a stable order)
    bucket: dict[int, dict[str, None]] = field(default_factory=dict)
    max_free: int = 0


class FleetIndex:
    """Free GPUs of a snapshot bucketed by class, node and free count.

    A node's owner splits classes only where a filter reads it: on private nodes (which run
    only their owner's jobs) and, with ``by_owner`` (some job names trusted owners), on all.
    """

    def __init__(
        self, snapshot: Snapshot, reclaim: frozenset[str] = frozenset(), by_owner: bool = False
    ) -> None:
        nodes = {n.id: n for n in snapshot.nodes}
        absent = NodeView("", online=False)
        by_key: dict[tuple[object, ...], _ClassState] = {}
        self.gpu_class: dict[str, _ClassState] = {}
        self.gpu_node: dict[str, str] = {}
        for g in snapshot.gpus:
            n = nodes.get(g.node_id, absent)
            key = (
                g.model,
                g.memory_mb,
                g.compute_capability,
                g.price_per_hour,
                g.healthy,
                g.drained,
                n.online,
                g.power_w,
                g.tier,
                g.reliability,
                n.isolation,
                bool(n.runtimes),
                n.private,
                n.owner if by_owner or n.private else None,
                g.owner_busy,
                g.interruptible_price,
            )
            st = by_key.get(key)
            if st is None:
                cls = GpuClass(*key)
                probe = JobRequest(id="", account="")
                usable = first_failure(probe, cls, TRANSIENT_FILTERS) is None
                st = by_key[key] = _ClassState(cls, usable)
            st.total += 1
            self.gpu_class[g.id] = st
            self.gpu_node[g.id] = g.node_id
            if st.usable and (not g.busy or g.id in reclaim):
                st.free_by_node.setdefault(g.node_id, []).append(g.id)
        self.classes: list[_ClassState] = sorted(
            by_key.values(),
            key=lambda s: (
                s.cls.model,
                s.cls.memory_mb,
                s.cls.compute_capability,
                str(s.cls.price_per_hour),
                not s.cls.node_online,
                s.cls.drained,
                not s.cls.healthy,
                str(s.cls.power_w),
                str(s.cls.reliability),
                s.cls.isolation.rank,
                s.cls.has_runtime,
                s.cls.private,
                str(s.cls.owner),
                s.cls.owner_busy,
                str(s.cls.interruptible_price),
            ),
        )
        # classes of private nodes by owner: only the owner's jobs see them differently
        self.private_classes: dict[str, list[int]] = defaultdict(list)
        for ci, st in enumerate(self.classes):
            if st.cls.private and st.cls.owner is not None:
                self.private_classes[st.cls.owner].append(ci)
        self.private_owners = frozenset(self.private_classes)
        self.models = sorted({s.cls.model for s in self.classes})
        self.total = len(snapshot.gpus)
        for st in self.classes:
            for node in sorted(st.free_by_node):
                ids = st.free_by_node[node]
                ids.sort()
                st.bucket.setdefault(len(ids), {})[node] = None
                st.free += len(ids)
                st.max_free = max(st.max_free, len(ids))

    def any_free(self) -> bool:
        """Whether any usable GPU is free."""
        return any(st.free for st in self.classes)

    def best_fit_node(
        self, st: _ClassState, need: int, avoid: Collection[str] = ()
    ) -> tuple[str, int] | None:
        """The node with the fewest free GPUs of the class that still has ``need``; one not
        in ``avoid`` when there is such a node (spreading a group, see JobRequest.spread)."""
        fallback: tuple[str, int] | None = None
        for k in range(need, st.max_free + 1):
            nodes = st.bucket.get(k)
            if not nodes:
                continue
            if not avoid:
                return next(iter(nodes)), k
            for node in nodes:
                if node not in avoid:
                    return node, k
            fallback = fallback or (next(iter(nodes)), k)
        return fallback

    def take(self, st: _ClassState, node: str, gpu_ids: Sequence[str]) -> None:
        free = st.free_by_node[node]
        k = len(free)
        del st.bucket[k][node]
        chosen = set(gpu_ids)
        free[:] = [g for g in free if g not in chosen]
        if free:
            st.bucket.setdefault(len(free), {})[node] = None
        st.free -= k - len(free)

    def give_back(self, st: _ClassState, node: str, gpu_ids: Sequence[str]) -> None:
        free = st.free_by_node.setdefault(node, [])
        if free:
            del st.bucket[len(free)][node]
        free.extend(gpu_ids)
        free.sort()
        st.bucket.setdefault(len(free), {})[node] = None
        st.free += len(gpu_ids)
        st.max_free = max(st.max_free, len(free))


@dataclass(slots=True)
class _JobView:
    """A job's filter outcome and class scores, shared by jobs with the same needs."""

    reasons: list[str | None]  # per class index: first failing filter (transient or static)
    scores: list[float]  # per class index: weighted class-level score (0 where infeasible)
    # per class: (throughput, price, energy, tier, reliability) weighted
    parts: list[tuple[float, float, float, float, float]]
    feasible: list[int]  # class indexes that pass every filter, ascending
    rejected: dict[str, int]  # GPUs of the other classes by reason (first failing filter)


class _Planner:
    def __init__(
        self, snapshot: Snapshot, policy: Policy, reclaim: frozenset[str], by_owner: bool
    ) -> None:
        self.snapshot = snapshot
        self.policy = policy
        self.by_owner = by_owner
        self.index = FleetIndex(snapshot, reclaim, by_owner)
        self._views: dict[tuple[object, ...], _JobView] = {}
        self._by_job: dict[str, _JobView] = {}
        # staying on the GPUs a job holds is worth the locality weight plus the share of a
        # quantum a restart would waste
        self.stay = policy.weights.locality + snapshot.preemption_cost_s / QUANTUM_S
        self.node_site = {n.id: n.site for n in snapshot.nodes}
        # the members of each gang's latest choice (see _choose_gang), rank order
        self.gangs: dict[str, tuple[_Member, ...]] = {}
        self._site_totals: dict[int, dict[str | None, int]] | None = None
        # spread groups (JobRequest.spread) -> the nodes that run a member, this pass included
        self.spread: dict[str, set[str]] = {k: set(v) for k, v in snapshot.spread_nodes.items()}

    @staticmethod
    def is_gang(job: JobRequest) -> bool:
        """Placed by the gang path: several nodes, or a job that names a site (a one-node
        gang, so that the site is honoured). Type matching and yielding leave these alone."""
        return job.node_count > 1 or job.site is not None

    def site_totals(self) -> dict[int, dict[str | None, int]]:
        """GPUs per class index and site (built once, on the first gang that needs it)."""
        if self._site_totals is None:
            ci_of = {id(st): ci for ci, st in enumerate(self.index.classes)}
            out: dict[int, dict[str | None, int]] = defaultdict(lambda: defaultdict(int))
            for g, st in self.index.gpu_class.items():
                out[ci_of[id(st)]][self.node_site.get(self.index.gpu_node[g])] += 1
            self._site_totals = out
        return self._site_totals

    def members(self, job: JobRequest, best: _Best) -> tuple[_Member, ...]:
        """(class, node, gpus) of every member the choice ``best`` of ``job`` takes."""
        if self.is_gang(job):
            return self.gangs[job.id]
        return ((best[0], best[1], best[2]),)

    def take(self, job: JobRequest, best: _Best) -> None:
        if job.node_count <= 1 and job.site is None:
            self.index.take(self.index.classes[best[0]], best[1], best[2])
            if job.spread is not None:
                self.spread.setdefault(job.spread, set()).add(best[1])
            return
        for ci, node, gpus in self.gangs[job.id]:
            self.index.take(self.index.classes[ci], node, gpus)

    def chosen_gpus(self, job: JobRequest, best: _Best) -> tuple[str, ...]:
        return tuple(g for _, _, gpus in self.members(job, best) for g in gpus)

    def rate(self, job: JobRequest, best: _Best) -> tuple[Decimal, int]:
        """Per hour in all and the number of GPUs the choice costs ``job`` (for admission)."""
        rate, n = Decimal(0), 0
        for ci, _node, gpus in self.members(job, best):
            rate += (self.index.classes[ci].cls.rate_for(job) or Decimal(0)) * len(gpus)
            n += len(gpus)
        return rate, n

    def view(self, job: JobRequest) -> _JobView:
        v = self._by_job.get(job.id)
        if v is not None:
            return v
        v = self._by_job[job.id] = self._view(job)
        return v

    def _view(self, job: JobRequest) -> _JobView:
        key = (
            job.job_class,
            job.gpu_count,  # the duty tier a job wants depends on its size
            job.throughput_hint,
            job.gpu_models,
            job.min_memory_mb,
            job.min_compute_capability,
            job.max_price,
            job.min_reliability,
            job.isolation,
            job.owners,
            job.needs_runtime,
            job.interruptible,  # the price it pays, against its cap
            # the account matters only to the owners of nodes that run just their owner's jobs
            job.account if job.account in self.index.private_owners else None,
        )
        v = self._views.get(key)
        if v is not None:
            return v
        classes = self.index.classes
        acct = key[-1]
        if acct is None:
            reasons = [first_failure(job, st.cls, FILTERS) for st in classes]
        else:
            # an owner of private nodes sees the fleet as a stranger does, except on those nodes
            reasons = list(self._view(replace(job, account=_STRANGER)).reasons)
            for ci in self.index.private_classes[acct]:
                reasons[ci] = first_failure(job, classes[ci].cls, FILTERS)
        feasible = [ci for ci, r in enumerate(reasons) if r is None]
        rejected: dict[str, int] = defaultdict(int)
        for st, r in zip(classes, reasons, strict=True):
            if r is not None:
                rejected[r] += st.total
        tputs = expected_throughputs(self.snapshot.throughputs, job, self.index.models)
        w = self.policy.weights
        scores = [0.0] * len(classes)
        parts = [_NO_PARTS] * len(classes)
        for ci, c in zip(
            feasible, class_scores(tputs, [classes[ci].cls for ci in feasible]), strict=True
        ):
            cls = classes[ci].cls
            p = (
                w.throughput * c.throughput,
                w.price * c.price,
                w.energy * c.energy,
                w.tier * tier_fit(job, cls.tier),
                w.reliability * reliability(cls.reliability),
            )
            parts[ci] = p
            scores[ci] = sum(p)
        v = self._views[key] = _JobView(reasons, scores, parts, feasible, dict(rejected))
        return v

    def nothing_free(self, job: JobRequest) -> Explanation:
        """``explain_and_choose``'s answer for a job that holds no GPUs when no class has a
        free GPU: every GPU is rejected by a filter or busy."""
        view = self.view(job)
        rejections = dict(view.rejected)
        busy = sum(self.index.classes[ci].total for ci in view.feasible)
        if busy:
            rejections[BUSY] = rejections.get(BUSY, 0) + busy
        return Explanation(job.id, self.index.total, 0, rejections)

    def explain_and_choose(
        self, job: JobRequest, admit: Tally | None = None
    ) -> tuple[Explanation, tuple[int, str, tuple[str, ...], float, float] | None]:
        """Count rejections, then pick the best (class, node, gpus, packing, locality).
        ``admit``: the admission tally; free GPUs of a class the job's account cannot start
        on count under its reason (the last filter)."""
        if job.node_count > 1 or job.site is not None:  # is_gang, inlined: a hot path
            return self._choose_gang(job, admit)
        idx = self.index
        view = self.view(job)
        need = max(job.gpu_count, 1)
        rejections: dict[str, int] = defaultdict(int, view.rejected)
        fitting = 0
        best: tuple[int, str, tuple[str, ...], float, float] | None = None
        best_score = float("-inf")
        held = set(job.running_on)
        held_node = idx.gpu_node.get(job.running_on[0]) if job.running_on else None
        w = self.policy.weights
        pinned = self.snapshot.keep_running and bool(job.running_on)
        avoid = self.spread.get(job.spread, ()) if job.spread is not None else ()
        blocked = ""
        for ci in view.feasible:
            st = idx.classes[ci]
            if st.total - st.free:
                rejections[BUSY] += st.total - st.free
            why = admit.check(job, st.cls.rate_for(job), need) if admit and st.free else None
            if why is not None:
                rejections[admission.short(why)] += st.free
                blocked = blocked or why
                continue
            fitting += st.free
            if st.free < need:
                continue
            cands: list[tuple[str, tuple[str, ...], int, int]] = []
            if held_node is not None and len(held) == need:
                free_here = st.free_by_node.get(held_node, [])
                if held.issubset(free_here):
                    cands.append((held_node, tuple(sorted(held)), len(free_here), need))
            fit = None if pinned else idx.best_fit_node(st, need, avoid)
            if fit is not None:
                node, k = fit
                cands.append((node, tuple(st.free_by_node[node][:need]), k, 0))
            for node, gpus, k, kept in cands:
                pk = w.packing * packing(k, need)
                lc = self.stay * locality(kept, need)
                score = view.scores[ci] + pk + lc - (SPREAD_PENALTY if node in avoid else 0.0)
                if score > best_score + _SCORE_EPS:
                    best_score = score
                    best = (ci, node, gpus, pk, lc)
        exp = Explanation(job.id, idx.total, fitting, dict(rejections))
        if best is None and blocked and fitting < need:
            exp.note = blocked
        elif best is None and fitting >= need:
            exp.note = f"no single node has {need} free GPUs of one model that fit this job"
        elif best is None and fitting:
            exp.note = f"needs {need} GPUs; only {fitting} that fit are free"
        return exp, best

    def _choose_gang(
        self, job: JobRequest, admit: Tally | None
    ) -> tuple[Explanation, _Best | None]:
        """A gang: ``node_count`` distinct nodes of one site with ``gpu_count`` free GPUs of
        one class each, all or nothing.

        Each node offers its best member (class score, packing, locality); per site, the
        members are picked from each model's nodes and from all nodes, and each option is
        scored as the mean member score, with the throughput part replaced by the slowest
        member's (a synchronous gang runs at its slowest member's pace), less the packing
        weight when the members mix models. The best option the job's account may start
        wins. Nodes without a site form one group of their own; a job that names a site
        considers only that site's nodes.
        """
        idx = self.index
        view = self.view(job)
        need = max(job.gpu_count, 1)
        n = max(job.node_count, 1)
        w = self.policy.weights
        totals = self.site_totals()
        rejections: dict[str, int] = defaultdict(int, view.rejected)
        elsewhere = f"not in site {job.site}"
        held = set(job.running_on)
        held_rank: dict[str, int] = {}
        for g in job.running_on:
            node = idx.gpu_node.get(g)
            if node is not None:
                held_rank.setdefault(node, len(held_rank))
        pinned = self.snapshot.keep_running and bool(job.running_on)
        fitting = 0
        # site -> node -> candidate members (score, throughput part, class, gpus, pk, lc)
        cands: dict[
            str | None, dict[str, list[tuple[float, float, int, tuple[str, ...], float, float]]]
        ]
        cands = defaultdict(lambda: defaultdict(list))
        for ci in view.feasible:
            st = idx.classes[ci]
            in_site = st.total if job.site is None else totals[ci].get(job.site, 0)
            if st.total > in_site:
                rejections[elsewhere] += st.total - in_site
            free_here = 0
            for node, free in st.free_by_node.items():
                site = self.node_site.get(node)
                if job.site is not None and site != job.site:
                    continue
                free_here += len(free)
                if len(free) < need:
                    continue
                mine = [g for g in free if g in held] if node in held_rank else []
                if len(mine) == need:
                    gpus, kept = tuple(mine), need
                elif pinned:
                    continue
                else:
                    gpus, kept = tuple(free[:need]), 0
                pk = w.packing * packing(len(free), need)
                lc = self.stay * locality(kept, need)
                member = (view.scores[ci] + pk + lc, view.parts[ci][0], ci, gpus, pk, lc)
                cands[site][node].append(member)
            if in_site > free_here:
                rejections[BUSY] += in_site - free_here
            fitting += free_here
        options: list[
            tuple[float, str, str, list[tuple[str, int, tuple[str, ...], float, float, float]]]
        ] = []
        for site, nodes in cands.items():
            pools: dict[str, list[tuple[str, int, tuple[str, ...], float, float, float]]]
            pools = defaultdict(list)
            for node, cs in nodes.items():
                cs.sort(key=lambda c: (-c[0], c[2]))
                seen: set[str] = set()
                for sc, tp, ci, gpus, pk, lc in cs:
                    model = idx.classes[ci].cls.model
                    entry = (node, ci, gpus, pk, lc, sc - tp)
                    if not pools["\x00any"] or pools["\x00any"][-1][0] != node:
                        pools["\x00any"].append(entry)
                    if model not in seen:
                        seen.add(model)
                        pools[model].append(entry)
            for model, pool in pools.items():
                if len(pool) < n:
                    continue
                tp_of = {e: view.parts[e[1]][0] for e in pool}
                pool.sort(key=lambda e: (-(e[5] + tp_of[e]), e[0]))
                chosen = pool[:n]
                score = sum(e[5] for e in chosen) / n + min(tp_of[e] for e in chosen)
                if len({idx.classes[e[1]].cls.model for e in chosen}) > 1:
                    # mixed models: the faster GPUs idle at the slowest member's pace; worth
                    # as much as the packing weight, so one model wins a tie
                    score -= w.packing
                options.append((score, site or "", model, chosen))
        options.sort(key=lambda o: (-o[0], o[1], o[2]))
        blocked = ""
        exp = Explanation(job.id, idx.total, fitting, dict(rejections))
        exp.gang = self._gang_line(job, need, n, cands, view.feasible)
        self.gangs.pop(job.id, None)
        for _score, _site, _model, chosen in options:
            chosen = sorted(chosen, key=lambda e: (held_rank.get(e[0], len(held_rank)), e[0]))
            members = tuple((ci, node, gpus) for node, ci, gpus, *_ in chosen)
            if admit is not None:
                rate = sum(
                    ((idx.classes[ci].cls.rate_for(job) or Decimal(0)) * len(g))
                    for ci, _node, g in members
                )
                why = admit.check_rate(job, Decimal(rate), n * need)
                if why is not None:
                    blocked = blocked or why
                    continue
            self.gangs[job.id] = members
            pk = sum(e[3] for e in chosen) / n
            lc = sum(e[4] for e in chosen) / n
            ci0, node0, gpus0 = members[0]
            return exp, (ci0, node0, gpus0, pk, lc)
        if blocked:
            exp.note = blocked
            # as for a one-node job: free GPUs the account cannot start on count under its
            # reason
            key = admission.short(blocked)
            exp.rejections[key] = exp.rejections.get(key, 0) + exp.fitting_gpus
            exp.fitting_gpus = 0
        return exp, None

    def _gang_line(
        self,
        job: JobRequest,
        need: int,
        n: int,
        cands: dict[
            str | None, dict[str, list[tuple[float, float, int, tuple[str, ...], float, float]]]
        ],
        feasible: list[int],
    ) -> str:
        """'needs 2 nodes × 4 A100-80GB in one site: site eu-west has 1 such node free, ...'."""
        kind = job.gpu_models[0] if len(job.gpu_models) == 1 else ("GPUs" if need > 1 else "GPU")
        what = f"needs {_count(n, 'node')} × {need} {kind}"
        totals = self.site_totals()
        if job.site is not None:
            free = len(cands.get(job.site, {}))
            return f"{what} in site {job.site}: it has {_count(free, 'such node')} free"
        sites = {s for ci in feasible for s, k in totals[ci].items() if k}
        if not sites:
            return f"{what} in one site: no site has GPUs that fit"
        free_by = {s: len(cands.get(s, {})) for s in sites}
        ranked = sorted(sites, key=lambda s: (-free_by[s], s is None, s or ""))
        parts = []
        for i, s in enumerate(ranked[:_SITES_SHOWN]):
            label, verb = (
                (f"site {s}", "has") if s is not None else ("nodes without a site", "have")
            )
            tail = f"{_count(free_by[s], 'such node')} free" if i == 0 else f"{free_by[s]}"
            parts.append(f"{label} {verb} {tail}")
        if len(ranked) > _SITES_SHOWN:
            parts.append(f"{len(ranked) - _SITES_SHOWN} more site(s)")
        return f"{what} in one site: " + ", ".join(parts)

    def record(
        self,
        job: JobRequest,
        exp: Explanation,
        ci: int,
        node: str,
        gpus: tuple[str, ...],
        pk: float,
        lc: float,
        note: str,
    ) -> Placement:
        view = self.view(job)
        t, p, e, tr, rl = view.parts[ci]
        total = view.scores[ci] + pk + lc
        members: tuple[tuple[str, tuple[str, ...]], ...] = ()
        if job.node_count > 1:
            members = tuple((m_node, m_gpus) for _ci, m_node, m_gpus in self.gangs[job.id])
        placed = Placement(job.id, node, gpus, score=round(total, 6), members=members)
        exp.placed = placed
        exp.scores = {
            "throughput": t,
            "price": p,
            "energy": e,
            "tier": tr,
            "reliability": rl,
            "packing": pk,
            "locality": lc,
            "total": total,
        }
        exp.note = note
        return placed


def _describe(st: _ClassState, node: str, need: int, n_cands: int) -> str:
    return (
        f"{need}x{st.cls.model} on node {node}: highest weighted score of "
        f"{n_cands} GPU class(es) with room"
    )


def _describe_gang(pl: _Planner, job: JobRequest) -> str:
    members = pl.gangs[job.id]
    models = sorted({pl.index.classes[ci].cls.model for ci, _n, _g in members})
    site = pl.node_site.get(members[0][1])
    where = f"site {site}" if site is not None else "nodes without a site"
    nodes = ", ".join(node for _ci, node, _g in members)
    return (
        f"{_count(len(members), 'node')} × {len(members[0][2])}x{'/'.join(models)} in {where} "
        f"({nodes}): the best-scoring site and model with room"
    )


def plan(
    snapshot: Snapshot,
    pending: Sequence[JobRequest],
    policy: str = "fifo",
    *,
    seed: int = 0,
    max_starts: int | None = None,
) -> Plan:
    """Decide which pending jobs start on which free GPUs (and, for jobs that hold GPUs, which
    keep them). Pure: the result depends only on the arguments.

    A job with ``running_on`` set may be kept in place, moved, or stopped; a stopped or moved job
    is listed in ``Plan.preemptions`` (a moved job also has its new placement).

    ``max_starts``: once that many jobs that hold no GPUs are placed, later ones are not
    considered (``Plan.capped``; they keep a short explanation) while jobs that hold GPUs still
    are, so none is stopped for want of a look. A caller that applies only so many starts per
    plan then pays for what it applies, not for the whole queue.
    """
    pol = get_policy(policy)
    reclaim = frozenset(g for j in pending for g in j.running_on)
    pl = _Planner(snapshot, pol, reclaim, by_owner=any(j.owners for j in pending))
    result = Plan()
    placed: list[tuple[JobRequest, int, str, tuple[str, ...], float, float]] = []
    order = pol.order(pending, snapshot, seed)
    if snapshot.keep_running:
        # by rank first (stable: the policy's order inside a rank); a running job goes before
        # the waiting jobs of its rank, so only a job that outranks it can take its GPUs
        order.sort(key=lambda j: (*(-r for r in admission.rank(j)), not j.running_on))
    admit = Tally(snapshot) if snapshot.accounts else None
    held = _Held(pl.index, order) if snapshot.keep_running else None
    compactions = 0
    # the speed-aware order (policies with an index, not under the live rule): see _Queue
    queue = _Queue(pl, order, pol.index(pending, snapshot)) if pol.index and held is None else None
    done: list[JobRequest] = []  # the jobs in the order they were decided
    starts = 0  # placed jobs that held no GPUs
    i = 0
    while True:
        if queue is not None:
            job_or_none = queue.pop()
            if job_or_none is None:
                break
            job = job_or_none
        elif i < len(order):
            job = order[i]
            i += 1
        else:
            break
        if not pl.index.any_free() and (held is None or not held.reserved):
            # nothing is free and nothing can be taken: no later job can be placed. Their
            # explanations are what the full search would find, counted from class totals
            # without it, so a pass over a long queue costs little once the fleet is full.
            rests = [job, *(queue.rest() if queue is not None else order[i:])]
            for rest in rests:
                # a gang's or a site's explanation says what each site holds: the full search
                gang = rest.node_count > 1 or rest.site is not None
                exp = pl.explain_and_choose(rest, admit)[0] if gang else pl.nothing_free(rest)
                result.explanations[rest.id] = exp
            done += rests
            break
        if max_starts is not None and starts >= max_starts and not job.running_on:
            result.explanations[job.id] = Explanation(
                job.id, pl.index.total, 0, {}, note=f"not considered: {max_starts} starts planned"
            )
            result.capped = True
            continue
        if held is not None:
            exp, best = held.choose(pl, job, admit)
        else:
            exp, best = pl.explain_and_choose(job, admit)
        if queue is not None and best is not None and queue.defer(job, best):
            continue
        done.append(job)
        if (
            best is None
            and held is None
            and pol.match_nodes
            and not pl.is_gang(job)
            and compactions < COMPACTIONS
        ):
            compactions += 1
            compacted = _compact(pl, job, placed, admit)
            if compacted is not None:
                exp, best = compacted
        result.explanations[job.id] = exp
        if best is None:
            continue
        ci, node, gpus, pk, lc = best
        pl.take(job, best)
        if admit is not None:
            admit.commit_rate(job, *pl.rate(job, best))
        placed.append((job, ci, node, gpus, pk, lc))
        starts += not job.running_on
    order = done
    if pol.match_types and reclaim and held is None:
        placed = _keep_in_place(pl, snapshot, reclaim, placed)
    # with keep_running a job that holds GPUs stays exactly where it is: no type matching
    # or yielding moves it
    fixed = [p for p in placed if snapshot.keep_running and p[0].running_on]
    placed = [p for p in placed if not (snapshot.keep_running and p[0].running_on)]
    first_choice = {job.id: ci for job, ci, *_ in placed}
    # gangs (and jobs that name a site) keep the members they chose: exchanging one member's
    # GPUs with a one-node job would split them across sites or models
    gangs = [p for p in placed if p[0].node_count > 1 or p[0].site is not None]
    if gangs:
        placed = [p for p in placed if p[0].node_count <= 1 and p[0].site is None]
    if pol.match_types:
        placed = _match_types(pl, placed)
    if pol.match_nodes:
        placed = _match_nodes(pl, placed)
    chosen = set(first_choice)
    if pol.min_efficiency > 0:
        movable = [
            j
            for j in order
            if not (snapshot.keep_running and j.running_on) and j.node_count <= 1 and j.site is None
        ]
        placed = _yield_slow_slots(pl, placed, movable, pol.min_efficiency)
        first_choice.update({job.id: ci for job, ci, *_ in placed if job.id not in first_choice})
    placed += gangs
    first_choice.update({job.id: ci for job, ci, *_ in fixed})
    placed = fixed + placed
    for job_id in chosen - {job.id for job, *_ in placed}:
        result.explanations[job_id].note = (
            f"yielded the GPUs it would get to a later job that runs there at least "
            f"{1 / pol.min_efficiency:g}x as well relative to its best GPU"
            if pol.min_efficiency > 0
            else "no room once jobs that hold GPUs kept them"
        )
    if admit is not None:
        placed = _admit_again(pl, snapshot, order, placed, result)
    for job, ci, node, gpus, pk, lc in placed:
        exp = result.explanations[job.id]
        n_cands = sum(1 for r in pl.view(job).reasons if r is None)
        note = _describe(pl.index.classes[ci], node, len(gpus), n_cands)
        if pl.is_gang(job):
            note = _describe_gang(pl, job)
        elif first_choice[job.id] != ci:
            was = pl.index.classes[first_choice[job.id]].cls.model
            note = (
                f"{len(gpus)}x{pl.index.classes[ci].cls.model} on node {node}: type "
                f"matching swapped it from {was}, where another job gains more"
            )
        result.placements.append(pl.record(job, exp, ci, node, gpus, pk, lc, note))
    kept = {p.job_id: set(p.all_gpu_ids if p.members else p.gpu_ids) for p in result.placements}
    taker = {
        g: p.job_id for p in result.placements for g in (p.all_gpu_ids if p.members else p.gpu_ids)
    }
    for job in pending:
        if job.running_on and kept.get(job.id) != set(job.running_on):
            result.preemptions.append(job.id)
            by = next((taker[g] for g in job.running_on if taker.get(g, job.id) != job.id), None)
            if by is not None:
                result.preempted_for[job.id] = by
    return result


class _Queue:
    """The speed-aware order of a policy with an index (the default policy).

    Jobs come out by priority, then on-demand before interruptible, then index times speed,
    where a job's speed is the normalised throughput of the GPUs it would get (a gang: its
    slowest member's), and ties keep the policy's order. A one-GPU job's speed counts as 1,
    so one-GPU jobs keep the policy's order among themselves (type matching and slow-slot
    yielding place them afterwards). A job of several GPUs starts at speed 1 (an upper bound:
    GPUs are only taken during a pass, so what it would get only gets slower); when its turn
    comes and its choice is slower than assumed, it is put back with the lower speed if that
    sends it behind the next job. Each put-back lowers its speed to that of another class, so
    a job comes back at most once per GPU class.
    """

    def __init__(self, pl: _Planner, order: Sequence[JobRequest], index: dict[str, float]):
        self.pl = pl
        self.index = index
        self.pos = {j.id: i for i, j in enumerate(order)}
        self.jobs = {j.id: j for j in order}
        self.speed: dict[str, float] = {}
        self.heap = [(self.key(j, 1.0), j.id) for j in order]
        heapq.heapify(self.heap)

    def key(self, job: JobRequest, speed: float) -> tuple[int, bool, float, int]:
        return (-job.priority, job.interruptible, -self.index[job.id] * speed, self.pos[job.id])

    def pop(self) -> JobRequest | None:
        if not self.heap:
            return None
        return self.jobs[heapq.heappop(self.heap)[1]]

    def rest(self) -> list[JobRequest]:
        """The jobs not popped yet, in key order (empties the queue)."""
        out = [self.jobs[jid] for _k, jid in sorted(self.heap)]
        self.heap = []
        return out

    def defer(self, job: JobRequest, best: _Best) -> bool:
        """Put ``job`` back when its choice ``best`` is slower than assumed and that sends it
        behind the next job; True when it was put back."""
        if gpus_of(job) <= 1 or not self.heap:
            return False
        view = self.pl.view(job)
        w = self.pl.policy.weights.throughput or 1.0
        speed = min(view.parts[ci][0] for ci, _n, _g in self.pl.members(job, best)) / w
        if speed >= self.speed.get(job.id, 1.0) - _SCORE_EPS:
            return False
        key = self.key(job, speed)
        if key <= self.heap[0][0]:
            return False
        self.speed[job.id] = speed
        heapq.heappush(self.heap, (key, job.id))
        return True


class _Held:
    """The live rule (``Snapshot.keep_running``): GPUs of running jobs stay reserved for them;
    a waiting job takes them only when no free GPUs fit it and it outranks their holder, and
    then from the lowest rank first."""

    def __init__(self, index: FleetIndex, order: Sequence[JobRequest]) -> None:
        self.index = index
        self.running = {j.id: j for j in order if j.running_on}
        self.reserved: dict[str, JobRequest] = {}
        for j in self.running.values():
            self._take(j.running_on)
            self.reserved[j.id] = j

    def _groups(self, gpu_ids: Sequence[str]) -> dict[tuple[int, str], list[str]]:
        idx = self.index
        out: dict[tuple[int, str], list[str]] = defaultdict(list)
        ci_of = {id(st): ci for ci, st in enumerate(idx.classes)}
        for g in gpu_ids:
            st = idx.gpu_class[g]
            if st.usable:
                out[(ci_of[id(st)], idx.gpu_node[g])].append(g)
        return out

    def _take(self, gpu_ids: Sequence[str]) -> None:
        for (ci, node), gs in self._groups(gpu_ids).items():
            st = self.index.classes[ci]
            free = set(st.free_by_node.get(node, ()))
            gs = [g for g in gs if g in free]
            if gs:
                self.index.take(st, node, gs)

    def _give_back(self, gpu_ids: Sequence[str]) -> None:
        for (ci, node), gs in self._groups(gpu_ids).items():
            self.index.give_back(self.index.classes[ci], node, gs)

    def choose(
        self, pl: _Planner, job: JobRequest, admit: Tally | None
    ) -> tuple[Explanation, tuple[int, str, tuple[str, ...], float, float] | None]:
        if job.id in self.running:
            if job.id not in self.reserved:  # a job that outranks it took (some of) its GPUs
                exp = Explanation(job.id, self.index.total, 0, {})
                exp.note = "its GPUs go to a job that outranks it"
                return exp, None
            # its own GPUs, reserved for it until now
            del self.reserved[job.id]
            mine = [g for g in job.running_on if self.index.gpu_class[g].usable]
            self._give_back(mine)
            exp, best = pl.explain_and_choose(job, admit)
            if best is None:
                self._take(mine)  # nobody else gets them in this pass
            return exp, best
        exp, best = pl.explain_and_choose(job, admit)
        if best is not None:
            return exp, best
        victims = sorted(
            (r for r in self.reserved.values() if admission.outranks(job, r)),
            key=lambda r: admission.rank(r),
        )
        levels = sorted({admission.rank(r) for r in victims})
        for level in levels:
            freed = [g for r in victims if admission.rank(r) <= level for g in r.running_on]
            self._give_back(freed)
            exp2, best2 = pl.explain_and_choose(job, admit)
            taken = set(pl.chosen_gpus(job, best2)) if best2 is not None else set()
            self._take([g for g in freed if g not in taken])
            if best2 is not None:
                # the chosen GPUs stay free in the index: the caller takes them
                for r in victims:
                    if taken.intersection(r.running_on):
                        self.reserved.pop(r.id, None)
                return exp2, best2
        return exp, best


def _compact(
    pl: _Planner,
    job: JobRequest,
    placed: list[tuple[JobRequest, int, str, tuple[str, ...], float, float]],
    admit: Tally | None,
) -> tuple[Explanation, _Best] | None:
    """Room on one node for ``job`` when a class has enough free GPUs but spread over nodes:
    move one-node jobs placed earlier in this pass to other nodes of their class (same
    score), off the node with the most free GPUs, then choose again. Moves are undone when
    the job still does not fit. ``placed`` is updated in place."""
    idx = pl.index
    view = pl.view(job)
    need = max(job.gpu_count, 1)
    w = pl.policy.weights
    for ci in sorted(view.feasible, key=lambda c: (-view.scores[c], c)):
        st = idx.classes[ci]
        if st.free < need or st.max_free >= need and idx.best_fit_node(st, need) is not None:
            continue
        on: dict[str, list[int]] = defaultdict(list)
        for i, (j, pci, node, _gpus, _pk, _lc) in enumerate(placed):
            if pci == ci and not pl.is_gang(j):
                on[node].append(i)
        free_of = {node: len(f) for node, f in st.free_by_node.items()}
        targets = sorted(free_of, key=lambda nd: (-free_of[nd], nd))
        for node in targets:
            moved = sum(len(placed[i][3]) for i in on.get(node, ()))
            if free_of[node] + moved < need:
                continue
            moves: list[tuple[int, tuple[JobRequest, int, str, tuple[str, ...], float, float]]]
            moves = []
            for i in sorted(on.get(node, ()), key=lambda i: len(placed[i][3])):
                if len(st.free_by_node.get(node, ())) >= need:
                    break
                j, _ci, _node, gpus, _pk, _lc = placed[i]
                dest = next(
                    (
                        (nd, k)
                        for k in range(len(gpus), st.max_free + 1)
                        for nd in st.bucket.get(k, {})
                        if nd != node
                    ),
                    None,
                )
                if dest is None:
                    break
                nd, k = dest
                new = tuple(st.free_by_node[nd][: len(gpus)])
                idx.take(st, nd, new)
                idx.give_back(st, node, gpus)
                kept = len(set(j.running_on) & set(new))
                moves.append((i, placed[i]))
                placed[i] = (
                    j,
                    ci,
                    nd,
                    new,
                    w.packing * packing(k, len(gpus)),
                    pl.stay * locality(kept, len(gpus)),
                )
            if len(st.free_by_node.get(node, ())) >= need:
                exp, best = pl.explain_and_choose(job, admit)
                if best is not None:
                    return exp, best
            for i, before in reversed(moves):  # undo
                j, _ci, nd, new, _pk, _lc = placed[i]
                idx.give_back(st, nd, new)
                idx.take(st, before[2], before[3])
                placed[i] = before
            break  # the node with the most room did not do: the others will not either
    return None


def _admit_again(
    pl: _Planner,
    snapshot: Snapshot,
    order: list[JobRequest],
    placed: list[tuple[JobRequest, int, str, tuple[str, ...], float, float]],
    result: Plan,
) -> list[tuple[JobRequest, int, str, tuple[str, ...], float, float]]:
    """Admission once more on the final placements, in policy order: type matching and
    yielding may have moved a job to dearer GPUs or given a slot to a job never admitted."""
    rank = {j.id: i for i, j in enumerate(order)}
    tally = Tally(snapshot)
    out = []
    for p in sorted(placed, key=lambda p: rank[p[0].id]):
        job, ci, node, gpus, pk, lc = p
        rate, n_gpus = pl.rate(job, (ci, node, gpus, pk, lc))
        why = tally.check_rate(job, rate, n_gpus)
        if why is not None:
            exp = result.explanations[job.id]
            exp.note = why
            exp.rejections[admission.short(why)] = n_gpus
            continue
        tally.commit_rate(job, rate, n_gpus)
        out.append(p)
    return out


def _keep_in_place(
    pl: _Planner,
    snapshot: Snapshot,
    reclaim: frozenset[str],
    placed: list[tuple[JobRequest, int, str, tuple[str, ...], float, float]],
) -> list[tuple[JobRequest, int, str, tuple[str, ...], float, float]]:
    """Re-place the chosen jobs, those that hold GPUs first.

    The first pass decides who runs; this one decides where. A job that keeps running chooses
    first between its own GPUs (with the locality bonus, which includes the restart cost) and
    better free ones, so it is not moved only because the order changed. Type matching then
    moves jobs only where the gain outweighs a restart.
    """
    first_index, first_gangs = pl.index, dict(pl.gangs)
    jobs = [p[0] for p in placed]
    running_first = [j for j in jobs if j.running_on] + [j for j in jobs if not j.running_on]
    # the largest first when running-first strands a chosen job: whole nodes for jobs of
    # several GPUs before one-GPU jobs split them
    largest_first = sorted(running_first, key=lambda j: -gpus_of(j))
    for ordered in (running_first, largest_first):
        pl.index = FleetIndex(snapshot, reclaim, pl.by_owner)  # same classes: views stay valid
        out: list[tuple[JobRequest, int, str, tuple[str, ...], float, float]] = []
        for job in ordered:
            _exp, best = pl.explain_and_choose(job)
            if best is None:
                break
            ci, node, gpus, pk, lc = best
            pl.take(job, best)
            out.append((job, ci, node, gpus, pk, lc))
        else:
            return out
    # neither order places every chosen job: keep the first pass's placements, which did
    pl.index, pl.gangs = first_index, first_gangs
    return placed


def _match_types(
    pl: _Planner, placed: list[tuple[JobRequest, int, str, tuple[str, ...], float, float]]
) -> list[tuple[JobRequest, int, str, tuple[str, ...], float, float]]:
    """Exchange GPU groups between placed jobs of equal size while the summed score rises.

    For each pair of classes, jobs on either side that may run on both are sorted by how much
    they gain by moving; the best mover of each side swap while the pair gains. With linear
    gains this is optimal for the two classes; a few passes over all pairs settle the rest.
    """
    slots = list(placed)

    def gain(i: int, to_ci: int) -> float:
        job, ci, _node, gpus, _pk, lc = slots[i]
        view = pl.view(job)
        if view.reasons[to_ci] is not None:
            return float("-inf")
        # moving loses the locality bonus of GPUs the job already holds, and its restart cost
        return view.scores[to_ci] - view.scores[ci] - lc

    for _ in range(3):
        changed = False
        by_class: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, s in enumerate(slots):
            by_class[(s[1], len(s[3]))].append(i)
        keys = sorted(by_class)
        for a_i, a in enumerate(keys):
            for b in keys[a_i + 1 :]:
                if a[1] != b[1]:
                    continue
                a_side = sorted(by_class[a], key=lambda i: -gain(i, b[0]))
                b_side = sorted(by_class[b], key=lambda i: -gain(i, a[0]))
                swapped_a: list[int] = []
                swapped_b: list[int] = []
                for ia, ib in zip(a_side, b_side, strict=False):
                    if gain(ia, b[0]) + gain(ib, a[0]) <= 1e-6:
                        break
                    ja, _, na, ga, pka, _ = slots[ia]
                    jb, _, nb, gb, pkb, _ = slots[ib]
                    slots[ia] = (
                        ja,
                        b[0],
                        nb,
                        gb,
                        pkb,
                        pl.stay * locality(len(set(ja.running_on) & set(gb)), len(gb)),
                    )
                    slots[ib] = (
                        jb,
                        a[0],
                        na,
                        ga,
                        pka,
                        pl.stay * locality(len(set(jb.running_on) & set(ga)), len(ga)),
                    )
                    swapped_a.append(ia)
                    swapped_b.append(ib)
                    changed = True
                if swapped_a:
                    gone_a, gone_b = set(swapped_a), set(swapped_b)
                    by_class[a] = [i for i in by_class[a] if i not in gone_a] + swapped_b
                    by_class[b] = [i for i in by_class[b] if i not in gone_b] + swapped_a
        if not changed:
            break
    return slots


def _match_nodes(
    pl: _Planner, placed: list[tuple[JobRequest, int, str, tuple[str, ...], float, float]]
) -> list[tuple[JobRequest, int, str, tuple[str, ...], float, float]]:
    """Exchange the whole contents of two nodes' GPUs of two classes while the summed score
    rises: type matching across job sizes.

    A unit is a node's GPUs of one class when each of them is free or held by a job of
    ``placed`` (no gang member, no job pinned where it runs, no busy GPU). Two units of equal
    size in different classes swap contents (a unit's free GPUs stay free on the other side):
    a 4-GPU job on a fast node trades places with four one-GPU jobs on a slow one when the four
    gain more than it loses, which equal-size matching cannot see. As in ``_match_types``, per
    pair of classes the units of each side are sorted by their gain and paired best first.
    """
    idx = pl.index
    slots = list(placed)
    ci_of = {id(st): ci for ci, st in enumerate(idx.classes)}
    unit_gpus: dict[tuple[int, str], list[str]] = defaultdict(list)
    for g, st in idx.gpu_class.items():
        if st.usable:
            unit_gpus[(ci_of[id(st)], idx.gpu_node[g])].append(g)
    for gs in unit_gpus.values():
        gs.sort()

    def gain(members: list[int], to_ci: int) -> float:
        total = 0.0
        for i in members:
            job, ci, _node, _gpus, _pk, lc = slots[i]
            view = pl.view(job)
            if view.reasons[to_ci] is not None:
                return float("-inf")
            total += view.scores[to_ci] - view.scores[ci] - lc
        return total

    def move(members: list[int], to: tuple[int, str]) -> list[str]:
        """Put ``members`` on unit ``to``; GPUs a member already holds there first."""
        left = list(unit_gpus[to])
        for i in members:
            job, _ci, _node, gpus, pk, _lc = slots[i]
            held = [g for g in left if g in set(job.running_on)][: len(gpus)]
            rest = [g for g in left if g not in set(held)][: len(gpus) - len(held)]
            new = tuple(sorted(held + rest))
            left = [g for g in left if g not in set(new)]
            lc = pl.stay * locality(len(set(job.running_on) & set(new)), len(new))
            slots[i] = (job, to[0], to[1], new, pk, lc)
        return left

    for _ in range(3):
        members: dict[tuple[int, str], list[int]] = defaultdict(list)
        for i, s in enumerate(slots):
            members[(s[1], s[2])].append(i)
        # a unit's gain towards a class, once per pass (a unit that swapped is not paired again)
        memo: dict[tuple[tuple[int, str], int], float] = {}

        def unit_gain(
            u: tuple[int, str],
            to_ci: int,
            memo: dict[tuple[tuple[int, str], int], float] = memo,
            members: dict[tuple[int, str], list[int]] = members,
        ) -> float:
            g = memo.get((u, to_ci))
            if g is None:
                g = memo[(u, to_ci)] = gain(members.get(u, []), to_ci)
            return g

        units: dict[tuple[int, int], list[tuple[int, str]]] = defaultdict(list)  # (ci, size)
        for key, gs in unit_gpus.items():
            ci, node = key
            used = sum(len(slots[i][3]) for i in members.get(key, ()))
            if used + len(idx.classes[ci].free_by_node.get(node, ())) == len(gs):
                units[(ci, len(gs))].append(key)
        changed = False
        swapped: set[tuple[int, str]] = set()  # a unit swaps once per pass: its members moved
        keys = sorted(units)
        for a_i, a in enumerate(keys):
            for b in keys[a_i + 1 :]:
                if a[1] != b[1]:
                    continue
                a_side = sorted(
                    (u for u in units[a] if u not in swapped), key=lambda u: -unit_gain(u, b[0])
                )
                b_side = sorted(
                    (u for u in units[b] if u not in swapped), key=lambda u: -unit_gain(u, a[0])
                )
                for ua, ub in zip(a_side, b_side, strict=False):
                    ma, mb = members.get(ua, []), members.get(ub, [])
                    if not ma and not mb:
                        continue
                    if unit_gain(ua, b[0]) + unit_gain(ub, a[0]) <= 1e-6:
                        break
                    free_b = move(ma, ub)
                    free_a = move(mb, ua)
                    for (ci, node), free in ((ua, free_a), (ub, free_b)):
                        st = idx.classes[ci]
                        old = list(st.free_by_node.get(node, ()))
                        if old:
                            idx.take(st, node, old)
                        if free:
                            idx.give_back(st, node, free)
                    swapped.update((ua, ub))
                    changed = True
        if not changed:
            break
    return slots


def _yield_slow_slots(
    pl: _Planner,
    placed: list[tuple[JobRequest, int, str, tuple[str, ...], float, float]],
    order: list[JobRequest],
    threshold: float,
) -> list[tuple[JobRequest, int, str, tuple[str, ...], float, float]]:
    """Give GPUs a placed job uses poorly to a later job that uses them at least twice as well.

    Slots are visited from the worst use up, so the bar a taker must clear only rises; each
    (class, size) keeps a cursor into its eligible waiting jobs and the pass stays linear.
    """
    w = pl.policy.weights.throughput or 1.0
    slots = list(placed)

    def eff(job: JobRequest, ci: int) -> float:
        return pl.view(job).parts[ci][0] / w

    slow = sorted(
        (i for i, s in enumerate(slots) if eff(s[0], s[1]) < threshold),
        key=lambda i: eff(slots[i][0], slots[i][1]),
    )
    if not slow:
        return slots
    wanted = {(slots[i][1], len(slots[i][3])) for i in slow}
    placed_ids = {s[0].id for s in slots}
    takers: dict[tuple[int, int], list[JobRequest]] = defaultdict(list)
    for job in order:
        if job.id in placed_ids:
            continue
        reasons = pl.view(job).reasons
        for ci, size in wanted:
            if size == job.gpu_count and reasons[ci] is None and eff(job, ci) >= threshold:
                takers[(ci, size)].append(job)
    cursor: dict[tuple[int, int], int] = defaultdict(int)
    taken: set[str] = set()
    for i in slow:
        job, ci, node, gpus, pk, _lc = slots[i]
        key = (ci, len(gpus))
        bar = max(threshold, 2 * eff(job, ci))
        cands = takers.get(key, [])
        k = cursor[key]
        while k < len(cands) and (cands[k].id in taken or eff(cands[k], ci) < bar):
            k += 1
        cursor[key] = k
        if k == len(cands):
            continue
        other = cands[k]
        taken.add(other.id)
        kept = len(set(other.running_on) & set(gpus))
        lc = pl.stay * locality(kept, len(gpus))
        slots[i] = (other, ci, node, gpus, pk, lc)
    return slots


def explain(snapshot: Snapshot, job: JobRequest, policy: str = "default") -> Explanation:
    """Why ``job`` would or would not be placed on ``snapshot`` right now, on its own:
    every GPU counted once (fitting, or under the first filter it fails) and, when it fits,
    the GPUs the policy's scorers would choose and how they scored."""
    pl = _Planner(snapshot, get_policy(policy), frozenset(job.running_on), bool(job.owners))
    exp, best = pl.explain_and_choose(job, Tally(snapshot) if snapshot.accounts else None)
    if best is not None:
        ci, node, gpus, pk, lc = best
        st = pl.index.classes[ci]
        n_cands = sum(1 for r in pl.view(job).reasons if r is None)
        note = _describe(st, node, len(gpus), n_cands)
        if pl.is_gang(job):
            note = _describe_gang(pl, job)
        pl.record(job, exp, ci, node, gpus, pk, lc, note)
    return exp


def never_fits(snapshot: Snapshot, job: JobRequest) -> str | None:
    """Why no node of the fleet could ever run ``job`` even with every GPU free, or None.

    Only reasons that last are considered (model, memory, compute capability, the node's owner,
    isolation and runtimes, price cap, and GPUs of one model on one node); a busy, drained or
    offline GPU may come back.
    """
    if not snapshot.gpus:
        return "the fleet has no GPUs"
    need = max(job.gpu_count, 1)
    per_group: dict[tuple[str, str], int] = defaultdict(int)
    rejections: dict[str, int] = defaultdict(int)
    idx = FleetIndex(snapshot, by_owner=bool(job.owners))
    for g in snapshot.gpus:
        why = first_failure(job, idx.gpu_class[g.id].cls, STATIC_FILTERS)
        if why:
            rejections[why] += 1
        else:
            per_group[(g.node_id, g.model)] += 1
    parts = ", ".join(f"{n} {r}" for r, n in sorted(rejections.items(), key=lambda kv: -kv[1]))
    detail = f" ({parts})" if parts else ""
    if job.node_count > 1 or job.site is not None:
        return _never_fits_gang(snapshot, job, need, per_group, detail)
    best = max(per_group.values(), default=0)
    if best >= need:
        return None
    return (
        f"no node in the fleet has {need} GPU(s) of one model that fit this job; "
        f"the best node has {best}{detail}"
    )


def _never_fits_gang(
    snapshot: Snapshot,
    job: JobRequest,
    need: int,
    per_group: dict[tuple[str, str], int],
    detail: str,
) -> str | None:
    """A gang never fits when no site (the job's own, where it names one) has node_count
    nodes with gpu_count GPUs of one model that pass the lasting filters."""
    n = max(job.node_count, 1)
    site_of = {nd.id: nd.site for nd in snapshot.nodes}
    nodes_by_site: dict[str | None, set[str]] = defaultdict(set)
    for (node, _model), k in per_group.items():
        site = site_of.get(node)
        if k >= need and (job.site is None or site == job.site):
            nodes_by_site[site].add(node)
    best = max((len(v) for v in nodes_by_site.values()), default=0)
    if best >= n:
        return None
    each = f"{_count(n, 'node')} with {need} GPU(s) each of one model that fit this job"
    if job.site is not None:
        if job.site not in set(site_of.values()):
            return f"no node of the fleet is in site {job.site}"
        return f"site {job.site} does not have {each}; it has {best}{detail}"
    return f"no site has {each}; the best site has {best}{detail}"
