"""What agents do: register, heartbeat, receive work, report attempts (fenced).

Reports are fenced by the attempt's token: a report about an attempt that is no longer current
is refused (409), with one exception. A success reported for an attempt that was declared lost
(its lease lapsed while the finished process's report was on its way) is kept if its job's
retry has not started: the retry, if only assigned, is cancelled and the job succeeds with the
late attempt's result. Once the retry runs, the late success is recorded as a discarded
duplicate (a job event, and ``gpunet_late_successes_total{outcome="discarded"}``).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import or_, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from gpunet.catalog import catalog, resolve_model
from gpunet.core.jobs import (
    ACTIVE_ATTEMPT_STATES,
    CANCEL_GRACE_S,
    CONTACT_LOST,
    REQUEUE_EXIT_CODE,
    AttemptState,
    JobState,
    LostCause,
    StopKind,
    attempt_state_for_exit,
    job_state_for_exit,
)
from gpunet.core.jobspec import grace_of
from gpunet.errors import Forbidden, GpunetError, NotFound, StaleFencingToken
from gpunet.services import billing, gangs
from gpunet.services.auth import Principal, Role, consume_join_use, issue_token
from gpunet.services.jobs import (
    lose_attempt,
    move_attempt,
    move_job,
    requeue_attempt,
    stop_gang,
)
from gpunet.services.owners import owner_took_back
from gpunet.store.db import Database, write_lock
from gpunet.store.row_locks import lock_rows, locked
from gpunet.store.tables import Attempt, AttemptCharge, Blob, Gpu, Job, JobEvent, LogChunk, Node
from gpunet.util import new_id, now
from gpunet.wire.agent import (
    MAX_REASON_CHARS,
    FinishedAttempt,
    FinishReport,
    GangInfo,
    GpuInfo,
    HelloRequest,
    LogReport,
    Registration,
    Report,
    ReportOutcome,
    Reports,
    StartedAttempt,
    StartItem,
    StopItem,
    Work,
)


def _apply_settings(node: Node, reg: Registration) -> None:
    """Store what the agent says about isolation and its site: every (re)connect may change
    it."""
    node.isolation = reg.isolation.value
    node.runtimes = list(reg.runtimes)
    node.accepts_unisolated = reg.accepts_unisolated
    node.labels = dict(reg.labels)  # the site's energy figures among them: the owner's say
    node.advertise_addr = reg.advertise_addr
    node.rendezvous_ports = reg.rendezvous_ports


def _sync_gpus(s: Session, node: Node, gpus: list[GpuInfo], burn_in: bool = False) -> None:
    existing = {g.index: g for g in s.scalars(select(Gpu).where(Gpu.node_id == node.id))}
    for info in gpus:
        model = resolve_model(info.model, field="gpus.model") if info.model else "unknown"
        spec = catalog().get(model)
        major, _, minor = info.compute_capability.partition(".")
        cc = (int(major or 0), int(minor or 0))
        if spec and cc == (0, 0):
            cc = spec.compute_capability
        g = existing.get(info.index)
        if g is None:
            g = Gpu(id=f"{node.id}/{info.index}", node_id=node.id, index=info.index)
            s.add(g)
            fresh = True
        else:
            fresh = False
        g.uuid, g.name, g.model, g.memory_mb = info.uuid, info.name, model, info.memory_mb
        g.cc_major, g.cc_minor, g.simulated = cc[0], cc[1], info.simulated
        if fresh:
            from gpunet.services.lifecycle import discovered

            discovered(s, g, node.id, burn_in=burn_in)


def register(
    db: Database, who: Principal, reg: Registration, *, burn_in: bool = False
) -> tuple[str, str]:
    """A provider's join token registers a new node; returns (node id, the node's token)."""
    who.require(Role.PROVIDER)
    with db.transaction() as s:
        consume_join_use(s, who.token_id)  # rolled back with the node if registration fails
        at = now()
        node = Node(
            id=new_id("node"),
            name=reg.name,
            account_id=who.account_id,
            status="online",
            registered_at=at,
            last_heartbeat_at=at,
            agent_version=reg.agent_version,
            simulated=any(g.simulated for g in reg.gpus),
            site=reg.site,
            labels=reg.labels,
        )
        _apply_settings(node, reg)
        s.add(node)
        s.flush()
        _sync_gpus(s, node, reg.gpus, burn_in)
        from gpunet.store.tables import Account

        acct = s.get(Account, who.account_id)
        assert acct is not None
        token = issue_token(s, Role.AGENT, acct.name, name=f"agent {node.id}", node_id=node.id)
        return node.id, token


def _own_node(s: Session, who: Principal) -> Node:
    if who.role is not Role.AGENT or who.node_id is None:
        raise Forbidden("only an agent's own token may do this")
    node = s.get(Node, who.node_id)
    if node is None:
        raise NotFound("node not found", field="node_id")
    return node


# how long a gang's members may take to reach rank 0's port (fetching the job's files and
# checkpoint included) before the gang fails and is placed again
RENDEZVOUS_TIMEOUT_S = 30.0

# how a finish report was taken (counted in /metrics)
SETTLED, LATE_KEPT, LATE_DISCARDED = "settled", "kept", "discarded"


def hello(
    db: Database, who: Principal, reg: Registration, *, burn_in: bool = False
) -> tuple[str, list[str]]:
    """A known agent (re)connects: settle the attempts that finished while it was cut off
    (``HelloRequest.finished``), refresh its GPUs and mark it online. Returns the node id and
    how each carried finish was taken (SETTLED, LATE_KEPT, LATE_DISCARDED; refused ones left
    out)."""
    outcomes: list[str] = []
    with db.transaction() as s:
        write_lock(s)
        node = _own_node(s, who)
        if isinstance(reg, HelloRequest):
            outcomes = [o for f in reg.finished if (o := _carried(s, who, f)) is not None]
        node.agent_version, node.status, node.last_heartbeat_at = reg.agent_version, "online", now()
        node.simulated = any(g.simulated for g in reg.gpus)
        _apply_settings(node, reg)
        _sync_gpus(s, node, reg.gpus, burn_in)
        # a restarted agent's processes died with it (they are tied to it): what it was
        # running is lost; what was only assigned it will start now
        started = [AttemptState.RUNNING.value, AttemptState.STOPPING.value]
        for att in s.scalars(
            select(Attempt).where(Attempt.node_id == node.id, Attempt.state.in_(started))
        ):
            lose_attempt(s, att, "the agent restarted", node.id, LostCause.AGENT_RESTART)
        return node.id, outcomes


def _carried(s: Session, who: Principal, f: FinishedAttempt) -> str | None:
    """Settle one finish report a hello carried; a stale or unknown one is skipped, as its
    own report would have been refused."""
    try:
        with s.begin_nested():  # a refused report leaves nothing behind
            return _take_finish(s, who, f.attempt_id, f)
    except GpunetError:
        return None


def mark_online(db: Database, node_id: str) -> None:
    with db.transaction() as s:
        node = s.get(Node, node_id)
        if node is not None and node.status != "online":
            node.status = "online"


def check_reported(db: Database, who: Principal, attempt_ids: list[str]) -> list[str]:
    """Of the attempts an agent says it runs, those it must stop (no longer current here)."""
    if not attempt_ids:
        return []
    with db.sessions() as s:
        rows = dict(
            s.execute(
                select(Attempt.id, Attempt.state).where(
                    Attempt.id.in_(attempt_ids), Attempt.node_id == who.node_id
                )
            ).all()
        )
    # a stopping attempt is still this node's: its stop and grace come with the work poll,
    # and its finish report (a preemption's checkpoint, a cancel's exit) is still awaited
    keep = {s.value for s in ACTIVE_ATTEMPT_STATES}
    return [a for a in attempt_ids if rows.get(a) not in keep]


@dataclass(frozen=True)
class Held:
    """What an agent says it already has: attempts it was sent to start (``start``) and
    those whose stop it took (``stop``). ``None``: an agent that does not say (send all)."""

    start: frozenset[str] = frozenset()
    stop: frozenset[str] = frozenset()

    @staticmethod
    def parse(have: str | None, stopping: str | None) -> Held | None:
        if have is None and stopping is None:
            return None
        ids = lambda v: frozenset(x for x in (v or "").split(",") if x)  # noqa: E731
        return Held(ids(have), ids(stopping))


def work_for(
    db: Database, who: Principal, max_log_bytes: int | None = None, held: Held | None = None
) -> Work:
    """Attempts this node should start, and ones it should stop, but those it already holds
    (``held``). ``max_log_bytes`` tells the agent how much output of each attempt will be
    kept, so it sends no more."""
    with db.sessions() as s:
        node = _own_node(s, who)
        q = (
            select(Attempt, Job)
            .join(Job, Job.id == Attempt.job_id)
            .where(
                Attempt.node_id == node.id,
                Attempt.state.in_([AttemptState.ASSIGNED.value, AttemptState.STOPPING.value]),
            )
        )
        if held is not None and held.start:
            q = q.where(
                or_(Attempt.state != AttemptState.ASSIGNED.value, Attempt.id.notin_(held.start))
            )
        if held is not None and held.stop:
            q = q.where(
                or_(Attempt.state != AttemptState.STOPPING.value, Attempt.id.notin_(held.stop))
            )
        rows = list(s.execute(q))
        from gpunet.services.checkpoints import latest as latest_checkpoint
        from gpunet.services.checkpoints import with_any as with_checkpoints

        resumable = with_checkpoints(
            s, [job.id for att, job in rows if att.state == AttemptState.ASSIGNED.value]
        )

        start: list[StartItem] = []
        stop: list[StopItem] = []
        for att, job in rows:
            if att.state == AttemptState.STOPPING.value:
                kind = StopKind(att.stop_kind or StopKind.CANCEL)
                # a broken gang cannot make progress: its members are stopped like a cancel
                quick = kind in (StopKind.CANCEL, StopKind.GANG)
                stop.append(
                    StopItem(
                        attempt_id=att.id,
                        fencing_token=att.fencing_token,
                        kind=kind.value,
                        grace_s=CANCEL_GRACE_S if quick else grace_of(job.spec),
                        reason=att.reason,
                    )
                )
                continue
            workdir = job.spec.get("workdir")
            gang = None
            if att.gang_size > 1 and att.master_port is not None:
                gang = GangInfo(
                    rank=att.rank,
                    addrs=gangs.addresses(s, job.id, att.number),
                    master_port=att.master_port,
                    gpus_per_node=len(att.gpu_indices),
                    rendezvous_timeout_s=RENDEZVOUS_TIMEOUT_S,
                )
            start.append(
                StartItem(
                    attempt_id=att.id,
                    job_id=job.id,
                    fencing_token=att.fencing_token,
                    number=att.number,
                    gpu_indices=att.gpu_indices,
                    gpu_ids=att.gpu_ids,
                    spec=job.spec,
                    workdir_size=s.scalar(select(Blob.size).where(Blob.digest == workdir))
                    if workdir
                    else None,
                    max_log_bytes=max_log_bytes,
                    checkpoint=latest_checkpoint(s, job.id) if job.id in resumable else None,
                    gang=gang,
                    array_id=job.array_id,
                    array_index=job.array_index,
                )
            )
        return Work(start=start, stop=stop)


def _fenced(s: Session, who: Principal, attempt_id: str, token: int) -> tuple[Attempt, Job]:
    """The attempt, if the report comes from its node and carries the current token. A
    member of a gang is current with its gang; a stopping attempt stays current until its
    agent confirms the stop (a gang's members may be stopping after their job moved on)."""
    att = locked(s, Attempt, attempt_id)
    if att is None or att.node_id != who.node_id:
        raise NotFound(f"no attempt {attempt_id!r} on this node", field="attempt_id")
    job = locked(s, Job, att.job_id)
    assert job is not None
    current = gangs.is_member_of_current(job, att) or att.state == AttemptState.STOPPING.value
    if (
        att.fencing_token != token
        or not current
        or AttemptState(att.state) not in ACTIVE_ATTEMPT_STATES
    ):
        raise StaleFencingToken(
            f"attempt {attempt_id} (token {token}) is no longer current for job {job.id}; "
            f"its state is {att.state}",
            field="fencing_token",
        )
    return att, job


def attempt_started(db: Database, who: Principal, attempt_id: str, rep: Report) -> None:
    with db.transaction() as s:
        write_lock(s)
        _take_started(s, who, attempt_id, rep)


def _take_started(s: Session, who: Principal, attempt_id: str, rep: Report) -> None:
    att, job = _fenced(s, who, attempt_id, rep.fencing_token)
    if att.state != AttemptState.ASSIGNED.value:
        return  # a repeated report
    move_attempt(att, AttemptState.RUNNING)
    att.started_at = now()
    if job.state == JobState.ASSIGNED.value and _gang_started(s, att):
        move_job(s, job, JobState.RUNNING, reason=f"started on {att.node_id}", actor=att.node_id)
        job.started_at = job.started_at or att.started_at


def take_reports(
    db: Database, who: Principal, rep: Reports
) -> tuple[list[ReportOutcome], list[str]]:
    """Several reports, the starts then the finishes, each answered and taken as its own
    request would be: a refused one leaves nothing behind and the others stand. Returns each
    one's outcome, and how each accepted finish was taken (SETTLED, LATE_KEPT, LATE_DISCARDED).

    All of them are first taken in one transaction, their rows locked in three queries: the
    usual batch (every report current) then costs one commit. When one is refused, or the
    transaction loses a deadlock, that is undone and each is taken in a transaction of its own
    (savepoints stalled SQLite under load)."""
    if who.role is not Role.AGENT or who.node_id is None:
        raise Forbidden("only an agent's own token may do this")
    items: list[StartedAttempt | FinishedAttempt] = [*rep.started, *rep.finished]
    if len(items) > 1:
        together = _take_together(db, who, items)
        if together is not None:
            return together
    results: list[ReportOutcome] = []
    taken: list[str] = []
    for item in items:
        try:
            with db.transaction() as s:
                write_lock(s)
                if isinstance(item, FinishedAttempt):
                    taken.append(_take_finish(s, who, item.attempt_id, item))
                else:
                    _take_started(s, who, item.attempt_id, item)
        except GpunetError as exc:
            results.append(_outcome(item, exc))
            continue
        results.append(_outcome(item))
    return results, taken


DEADLOCK_DETECTED = "40P01"  # PostgreSQL's SQLSTATE


def _take_together(
    db: Database, who: Principal, items: list[StartedAttempt | FinishedAttempt]
) -> tuple[list[ReportOutcome], list[str]] | None:
    """Every report in one transaction, or None (nothing written) when one is refused or the
    database chose this transaction as a deadlock's victim."""
    ids = [i.attempt_id for i in items]
    taken: list[str] = []
    try:
        with db.transaction() as s:
            write_lock(s)
            # the order the one-by-one path locks in: attempts, their jobs, their charges
            atts = lock_rows(s, Attempt, ids)
            lock_rows(s, Job, [a.job_id for a in atts if a.node_id == who.node_id])
            lock_rows(s, AttemptCharge, [i.attempt_id for i in items if _is_finish(i)])
            for item in items:
                if isinstance(item, FinishedAttempt):
                    taken.append(_take_finish(s, who, item.attempt_id, item))
                else:
                    _take_started(s, who, item.attempt_id, item)
    except GpunetError:
        return None
    except OperationalError as exc:
        if getattr(exc.orig, "sqlstate", None) != DEADLOCK_DETECTED:
            raise
        return None
    return [_outcome(i) for i in items], taken


def _is_finish(item: StartedAttempt | FinishedAttempt) -> bool:
    return isinstance(item, FinishedAttempt)


def _outcome(
    item: StartedAttempt | FinishedAttempt, exc: GpunetError | None = None
) -> ReportOutcome:
    kind = "finished" if _is_finish(item) else "started"
    if exc is None:
        return ReportOutcome(attempt_id=item.attempt_id, kind=kind, status=200, code=None)
    return ReportOutcome(
        attempt_id=item.attempt_id,
        kind=kind,
        status=exc.status_code,
        code=exc.code,
        message=exc.message,
    )


def _gang_started(s: Session, att: Attempt) -> bool:
    """Whether every member of ``att``'s gang has started (a plain attempt: itself)."""
    if att.gang_size <= 1:
        return True
    s.flush()
    done = {AttemptState.RUNNING.value, AttemptState.SUCCEEDED.value}
    return all(m.state in done for m in gangs.members(s, att.job_id, att.number))


def truncation_notice(limit: int) -> str:
    return f"[gpunet: output truncated after {limit} bytes]\n"


def _cut(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` within ``max_bytes`` of UTF-8, whole characters only."""
    return text.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")


def _output_fenced(s: Session, who: Principal, attempt_id: str, token: int) -> tuple[Attempt, Job]:
    """As ``_fenced``, and also an attempt that ended by its own finish report (succeeded or
    failed, same token): the agent's watchdog delivers the finish of a frozen agent's attempt
    (agent.watchdog) while the output before it is still in the agent, which sends it on waking."""
    try:
        return _fenced(s, who, attempt_id, token)
    except StaleFencingToken:
        att = s.get(Attempt, attempt_id)
        ended = (AttemptState.SUCCEEDED.value, AttemptState.FAILED.value)
        if att is None or att.state not in ended or att.exit_code is None:
            raise
        if att.fencing_token != token or att.node_id != who.node_id:
            raise
        job = s.get(Job, att.job_id)
        assert job is not None
        return att, job


def append_logs(
    db: Database, who: Principal, attempt_id: str, rep: LogReport, max_log_bytes: int
) -> bool:
    """Store output up to the attempt's cap; past it, one system notice and nothing more.
    Returns whether the attempt's output is now truncated (the agent may stop sending)."""
    with db.transaction() as s:
        att, job = _output_fenced(s, who, attempt_id, rep.fencing_token)
        if att.log_truncated:
            return True
        at = now()
        used = att.log_bytes or 0
        for c in rep.chunks:
            n = len(c.data.encode("utf-8"))
            if used + n > max_log_bytes:
                head = _cut(c.data, max_log_bytes - used)
                if head:
                    s.add(
                        LogChunk(
                            job_id=job.id, attempt_id=att.id, stream=c.stream, data=head, at=at
                        )
                    )
                    used += len(head.encode("utf-8"))
                notice = truncation_notice(max_log_bytes)
                s.add(
                    LogChunk(job_id=job.id, attempt_id=att.id, stream="system", data=notice, at=at)
                )
                att.log_truncated = True
                break
            s.add(LogChunk(job_id=job.id, attempt_id=att.id, stream=c.stream, data=c.data, at=at))
            used += n
        att.log_bytes = used
        return bool(att.log_truncated)


def attempt_finished(db: Database, who: Principal, attempt_id: str, rep: FinishReport) -> str:
    """Settle an attempt's end; returns how it was taken (SETTLED, LATE_KEPT, LATE_DISCARDED)."""
    with db.transaction() as s:
        write_lock(s)
        return _take_finish(s, who, attempt_id, rep)


def _take_finish(s: Session, who: Principal, attempt_id: str, rep: FinishReport) -> str:
    att = locked(s, Attempt, attempt_id)
    late = _late_success(s, who, att, rep)
    if late is not None:
        return late
    _settle_finish(s, who, attempt_id, rep)
    return SETTLED


def _late_success(s: Session, who: Principal, att: Attempt | None, rep: FinishReport) -> str | None:
    """A success reported for this node's lost attempt ``att`` (its lease lapsed, its job
    re-queued): kept while the job's retry has not started, else recorded as a discarded
    duplicate. None: not such a report (the usual fencing applies)."""
    if (
        att is None
        or att.node_id != who.node_id
        or att.fencing_token != rep.fencing_token
        or att.state != AttemptState.LOST.value
        or att.lost_cause not in CONTACT_LOST
        or rep.exit_code != 0
        or rep.lost
        or att.gang_size > 1  # a gang's member alone is no result: its job moved on
    ):
        return None
    if att.exit_code == 0:
        return SETTLED  # a repeat of a late success already taken: answered, not counted
    job = locked(s, Job, att.job_id)
    assert job is not None
    retry = locked(s, Attempt, job.current_attempt_id) if job.current_attempt_id else None
    waiting = job.state == JobState.QUEUED.value or (
        job.state == JobState.ASSIGNED.value
        and retry is not None
        and retry.state == AttemptState.ASSIGNED.value
    )
    if not waiting and (retry is None or retry.id == att.id):
        return None  # the job was not re-queued (no retries left, or cancelled): fenced
    arrived = now()
    att.exit_code = 0
    att.runtime_s = rep.runtime_s
    if rep.energy:
        from gpunet.services.energy import record_energy

        record_energy(s, att, rep.energy)
    if not waiting:
        why = (
            f"duplicate discarded: attempt {att.id} succeeded but its report arrived after its "
            f"lease lapsed and the job had moved on ({job.state}"
            + (f", attempt {retry.id} {retry.state}" if retry is not None else "")
            + "); nothing more is billed for it"
        )
        att.reason = why[:MAX_REASON_CHARS]
        s.add(
            JobEvent(
                job_id=job.id,
                from_state=job.state,
                to_state=job.state,
                at=arrived,
                reason=why,
                actor=att.node_id,
            )
        )
        return LATE_DISCARDED
    if retry is not None:  # assigned, not started: it is not needed any more
        move_attempt(retry, AttemptState.CANCELLED, reason=f"attempt {att.id} succeeded late")
        billing.close_charge(s, retry, lost=False)
    move_attempt(att, AttemptState.SUCCEEDED, reason="succeeded; its report arrived late")
    billing.bill_late_success(s, att, arrived)
    job.current_attempt_id = att.id
    job.exit_code = 0
    move_job(
        s,
        job,
        JobState.SUCCEEDED,
        reason=f"attempt {att.id} succeeded; its report arrived after its lease lapsed"
        + (f" (attempt {retry.id} cancelled before it started)" if retry is not None else ""),
        actor=att.node_id,
    )
    return LATE_KEPT


def _settle_finish(s: Session, who: Principal, attempt_id: str, rep: FinishReport) -> None:
    att, job = _fenced(s, who, attempt_id, rep.fencing_token)
    att.exit_code = rep.exit_code
    att.runtime_s = rep.runtime_s
    if rep.energy:
        from gpunet.services.energy import record_energy

        record_energy(s, att, rep.energy)
    stopping = att.state == AttemptState.STOPPING.value
    if stopping and att.stop_kind == StopKind.GANG.value:
        # its gang ended with another member, which decided the job's fate: settle this one
        dst = AttemptState.SUCCEEDED if rep.exit_code == 0 else AttemptState.CANCELLED
        move_attempt(att, dst, reason=att.reason or "stopped with its gang")
        billing.close_charge(s, att, lost=False)
        _settle_failed_gang(s, job, att)
        return
    if rep.rendezvous_failed:
        lose_attempt(s, att, rep.reason or "rendezvous failed", att.node_id, LostCause.RENDEZVOUS)
        return
    if rep.lost or rep.exit_code is None:
        lose_attempt(s, att, rep.reason or "the agent lost its lease", att.node_id, LostCause.AGENT)
        return
    if stopping and att.stop_kind == StopKind.PREEMPT.value and rep.exit_code != 0:
        requeue_attempt(s, att, att.reason or "preempted", att.node_id)
        return
    if stopping and att.stop_kind != StopKind.PREEMPT.value:
        move_attempt(att, AttemptState.CANCELLED, reason="stopped after cancel")
        billing.close_charge(s, att, lost=False)
        return
    if rep.exit_code != 0 and rep.reclaimed:
        owner_took_back(s, att)
        requeue_attempt(s, att, rep.reason or "the GPU's owner took it back", att.node_id)
        return
    if rep.exit_code == REQUEUE_EXIT_CODE:
        requeue_attempt(
            s,
            att,
            f"exit code {REQUEUE_EXIT_CODE}: checkpointed, asked to be run again",
            att.node_id,
        )
        return
    move_attempt(att, attempt_state_for_exit(rep.exit_code), reason=rep.reason)
    billing.close_charge(s, att, lost=False)
    if att.gang_size > 1 and not _gang_done(s, job, att, rep.exit_code):
        return
    job.exit_code = rep.exit_code
    if JobState(job.state) in (JobState.ASSIGNED, JobState.RUNNING):
        move_job(
            s,
            job,
            job_state_for_exit(rep.exit_code),
            reason=rep.reason or f"exit code {rep.exit_code}",
            actor=att.node_id,
        )


def _settle_failed_gang(s: Session, job: Job, att: Attempt) -> None:
    """The last member of a gang that a member's failure stopped has ended, and none was lost
    meanwhile (that would have re-queued the job): the job fails with the first failure."""
    if JobState(job.state) not in (JobState.ASSIGNED, JobState.RUNNING):
        return
    if not gangs.is_member_of_current(job, att):
        return
    s.flush()
    if gangs.active_peers(s, att):
        return
    failed = [
        m
        for m in gangs.members(s, job.id, att.number)
        if m.state == AttemptState.FAILED.value and m.exit_code is not None
    ]
    if not failed:
        return
    first = min(failed, key=lambda m: (m.finished_at or m.created_at, m.rank))
    job.exit_code = first.exit_code
    move_job(
        s,
        job,
        job_state_for_exit(first.exit_code or 1),
        reason=f"gang member rank {first.rank} failed: exit {first.exit_code}",
        actor=first.node_id,
    )


def _gang_done(s: Session, job: Job, att: Attempt, exit_code: int) -> bool:
    """A gang member exited: whether that ends its job. A failure does (the other members
    are stopped); a success does once every member succeeded, or at once when it is the head
    of a Ray cluster (``launcher: ray``: the workers only serve it, and are stopped)."""
    if not gangs.is_member_of_current(job, att):
        return False
    if exit_code != 0:
        # The job's verdict waits for the other members: a member fails when a peer's host
        # dies under it (its collective breaks first), and then the peer is lost and the gang
        # re-queued (lose_attempt); else the last member to stop fails the job.
        stop_gang(s, att, f"gang member rank {att.rank} on {att.node_id} failed: exit {exit_code}")
        s.flush()
        return not gangs.active_peers(s, att)
    if att.rank == 0 and (job.spec or {}).get("launcher") == "ray":
        stop_gang(s, att, "the Ray head's command finished")
        return True
    s.flush()
    return all(
        m.state == AttemptState.SUCCEEDED.value for m in gangs.members(s, job.id, att.number)
    )


def read_blob(db: Database, who: Principal, digest: str) -> bytes:
    """An agent downloads the archive of a job assigned to it."""
    with db.sessions() as s:
        node = _own_node(s, who)
        allowed = s.scalar(
            select(Attempt.id)
            .join(Job, Job.id == Attempt.job_id)
            .where(Attempt.node_id == node.id, Job.spec["workdir"].as_string() == digest)
            .limit(1)
        )
        blob = s.get(Blob, digest)
        if blob is None or allowed is None:
            raise NotFound(f"no archive {digest!r} for this node", field="digest")
        return blob.data
