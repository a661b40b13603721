"""Placement: order jobs by policy, filter GPU classes, score candidate groups, choose.

The snapshot is indexed once per call: GPUs are grouped into classes (everything the filters
and scorers look at) and, per class, free GPUs are bucketed by node and by how many are free on
the node. A decision then looks at a handful of classes and one node per class, whatever the
size of the fleet; explanations are counted from class totals, so every GPU is counted once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

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
from gpunet.core.scheduling.policies import QUANTUM_S, Policy, get_policy
from gpunet.core.scheduling.scorers import (
    class_scores,
    expected_throughputs,
    locality,
    packing,
    reliability,
    tier_fit,
)

_SCORE_EPS = 1e-9
_NO_PARTS = (0.0, 0.0, 0.0, 0.0, 0.0)
_STRANGER = "\x00stranger"  # an account that owns no node


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

    def best_fit_node(self, st: _ClassState, need: int) -> tuple[str, int] | None:
        """The node with the fewest free GPUs of the class that still has ``need``."""
        for k in range(need, st.max_free + 1):
            nodes = st.bucket.get(k)
            if nodes:
                return next(iter(nodes)), k
        return None

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
            fit = None if pinned else idx.best_fit_node(st, need)
            if fit is not None:
                node, k = fit
                cands.append((node, tuple(st.free_by_node[node][:need]), k, 0))
            for node, gpus, k, kept in cands:
                pk = w.packing * packing(k, need)
                lc = self.stay * locality(kept, need)
                score = view.scores[ci] + pk + lc
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
        placed = Placement(job.id, node, gpus, score=round(total, 6))
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


def plan(
    snapshot: Snapshot, pending: Sequence[JobRequest], policy: str = "fifo", *, seed: int = 0
) -> Plan:
    """Decide which pending jobs start on which free GPUs (and, for jobs that hold GPUs, which
    keep them). Pure: the result depends only on the arguments.

    A job with ``running_on`` set may be kept in place, moved, or stopped; a stopped or moved job
    is listed in ``Plan.preemptions`` (a moved job also has its new placement).
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
    for i, job in enumerate(order):
        if not pl.index.any_free() and (held is None or not held.reserved):
            # nothing is free and nothing can be taken: no later job can be placed. Their
            # explanations are what the full search would find, counted from class totals
            # without it, so a pass over a long queue costs little once the fleet is full.
            for rest in order[i:]:
                result.explanations[rest.id] = pl.nothing_free(rest)
            break
        if held is not None:
            exp, best = held.choose(pl, job, admit)
        else:
            exp, best = pl.explain_and_choose(job, admit)
        result.explanations[job.id] = exp
        if best is None:
            continue
        ci, node, gpus, pk, lc = best
        pl.index.take(pl.index.classes[ci], node, gpus)
        if admit is not None:
            admit.commit(job, pl.index.classes[ci].cls.rate_for(job), len(gpus))
        placed.append((job, ci, node, gpus, pk, lc))
    if pol.match_types and reclaim and held is None:
        placed = _keep_in_place(pl, snapshot, reclaim, placed)
    # with keep_running a job that holds GPUs stays exactly where it is: no type matching
    # or yielding moves it
    fixed = [p for p in placed if snapshot.keep_running and p[0].running_on]
    placed = [p for p in placed if not (snapshot.keep_running and p[0].running_on)]
    first_choice = {job.id: ci for job, ci, *_ in placed}
    if pol.match_types:
        placed = _match_types(pl, placed)
    chosen = set(first_choice)
    if pol.min_efficiency > 0:
        movable = [j for j in order if not (snapshot.keep_running and j.running_on)]
        placed = _yield_slow_slots(pl, placed, movable, pol.min_efficiency)
        first_choice.update({job.id: ci for job, ci, *_ in placed if job.id not in first_choice})
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
        if first_choice[job.id] != ci:
            was = pl.index.classes[first_choice[job.id]].cls.model
            note = (
                f"{len(gpus)}x{pl.index.classes[ci].cls.model} on node {node}: type "
                f"matching swapped it from {was}, where another job gains more"
            )
        result.placements.append(pl.record(job, exp, ci, node, gpus, pk, lc, note))
    kept = {p.job_id: set(p.gpu_ids) for p in result.placements}
    taker = {g: p.job_id for p in result.placements for g in p.gpu_ids}
    for job in pending:
        if job.running_on and kept.get(job.id) != set(job.running_on):
            result.preemptions.append(job.id)
            by = next((taker[g] for g in job.running_on if taker.get(g, job.id) != job.id), None)
            if by is not None:
                result.preempted_for[job.id] = by
    return result


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
            taken = set(best2[2]) if best2 is not None else set()
            self._take([g for g in freed if g not in taken])
            if best2 is not None:
                # the chosen GPUs stay free in the index: the caller takes them
                for r in victims:
                    if taken.intersection(r.running_on):
                        self.reserved.pop(r.id, None)
                return exp2, best2
        return exp, best


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
        job, ci, _node, gpus, _pk, _lc = p
        price = pl.index.classes[ci].cls.rate_for(job)
        why = tally.check(job, price, len(gpus))
        if why is not None:
            exp = result.explanations[job.id]
            exp.note = why
            exp.rejections[admission.short(why)] = len(gpus)
            continue
        tally.commit(job, price, len(gpus))
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
    pl.index = FleetIndex(snapshot, reclaim, pl.by_owner)  # the same classes: views stay valid
    idx = pl.index
    jobs = [p[0] for p in placed]
    ordered = [j for j in jobs if j.running_on] + [j for j in jobs if not j.running_on]
    out: list[tuple[JobRequest, int, str, tuple[str, ...], float, float]] = []
    for job in ordered:
        _exp, best = pl.explain_and_choose(job)
        if best is not None:
            ci, node, gpus, pk, lc = best
            idx.take(idx.classes[ci], node, gpus)
            out.append((job, ci, node, gpus, pk, lc))
    return out


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
        pl.record(job, exp, ci, node, gpus, pk, lc, _describe(st, node, len(gpus), n_cands))
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
    best = max(per_group.values(), default=0)
    if best >= need:
        return None
    parts = ", ".join(f"{n} {r}" for r, n in sorted(rejections.items(), key=lambda kv: -kv[1]))
    detail = f" ({parts})" if parts else ""
    return (
        f"no node in the fleet has {need} GPU(s) of one model that fit this job; "
        f"the best node has {best}{detail}"
    )
