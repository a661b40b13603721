"""What agents do: register, heartbeat, receive work, report attempts (fenced)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpunet.catalog import catalog, resolve_model
from gpunet.core.jobs import (
    ACTIVE_ATTEMPT_STATES,
    CANCEL_GRACE_S,
    REQUEUE_EXIT_CODE,
    AttemptState,
    JobState,
    StopKind,
    attempt_state_for_exit,
    job_state_for_exit,
)
from gpunet.core.jobspec import grace_of
from gpunet.errors import Forbidden, NotFound, StaleFencingToken
from gpunet.services import billing
from gpunet.services.auth import Principal, Role, consume_join_use, issue_token
from gpunet.services.jobs import lose_attempt, move_attempt, move_job, requeue_attempt
from gpunet.store.db import Database
from gpunet.store.tables import Attempt, Blob, Gpu, Job, LogChunk, Node
from gpunet.util import new_id, now
from gpunet.wire.agent import (
    FinishReport,
    GpuInfo,
    LogReport,
    Registration,
    Report,
    StartItem,
    StopItem,
    Work,
)


def _apply_settings(node: Node, reg: Registration) -> None:
    """Store what the agent says about isolation: every (re)connect may change it."""
    node.isolation = reg.isolation.value
    node.runtimes = list(reg.runtimes)
    node.accepts_unisolated = reg.accepts_unisolated


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


def hello(db: Database, who: Principal, reg: Registration, *, burn_in: bool = False) -> str:
    """A known agent (re)connects: refresh its GPUs and mark it online."""
    with db.transaction() as s:
        node = _own_node(s, who)
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
            lose_attempt(s, att, "the agent restarted", node.id)
        return node.id


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
    keep = {AttemptState.ASSIGNED.value, AttemptState.RUNNING.value}
    return [a for a in attempt_ids if rows.get(a) not in keep]


def work_for(db: Database, who: Principal, max_log_bytes: int | None = None) -> Work:
    """Attempts this node should start, and ones it should stop. ``max_log_bytes`` tells the
    agent how much output of each attempt will be kept, so it sends no more."""
    with db.sessions() as s:
        node = _own_node(s, who)
        rows = list(
            s.execute(
                select(Attempt, Job)
                .join(Job, Job.id == Attempt.job_id)
                .where(
                    Attempt.node_id == node.id,
                    Attempt.state.in_([AttemptState.ASSIGNED.value, AttemptState.STOPPING.value]),
                )
            )
        )
        from gpunet.services.checkpoints import latest as latest_checkpoint

        start: list[StartItem] = []
        stop: list[StopItem] = []
        for att, job in rows:
            if att.state == AttemptState.STOPPING.value:
                kind = StopKind(att.stop_kind or StopKind.CANCEL)
                stop.append(
                    StopItem(
                        attempt_id=att.id,
                        fencing_token=att.fencing_token,
                        kind=kind.value,
                        grace_s=CANCEL_GRACE_S if kind is StopKind.CANCEL else grace_of(job.spec),
                        reason=att.reason,
                    )
                )
                continue
            workdir = job.spec.get("workdir")
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
                    checkpoint=latest_checkpoint(s, job.id),
                )
            )
        return Work(start=start, stop=stop)


def _fenced(s: Session, who: Principal, attempt_id: str, token: int) -> tuple[Attempt, Job]:
    """The attempt, if the report comes from its node and carries the current token."""
    att = s.get(Attempt, attempt_id, with_for_update=True)
    if att is None or att.node_id != who.node_id:
        raise NotFound(f"no attempt {attempt_id!r} on this node", field="attempt_id")
    job = s.get(Job, att.job_id, with_for_update=True)
    assert job is not None
    if (
        att.fencing_token != token
        or job.current_attempt_id != att.id
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
        att, job = _fenced(s, who, attempt_id, rep.fencing_token)
        if att.state != AttemptState.ASSIGNED.value:
            return  # a repeated report
        move_attempt(att, AttemptState.RUNNING)
        att.started_at = now()
        if job.state == JobState.ASSIGNED.value:
            move_job(
                s, job, JobState.RUNNING, reason=f"started on {att.node_id}", actor=att.node_id
            )
            job.started_at = job.started_at or att.started_at


def truncation_notice(limit: int) -> str:
    return f"[gpunet: output truncated after {limit} bytes]\n"


def _cut(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` within ``max_bytes`` of UTF-8, whole characters only."""
    return text.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")


def append_logs(
    db: Database, who: Principal, attempt_id: str, rep: LogReport, max_log_bytes: int
) -> bool:
    """Store output up to the attempt's cap; past it, one system notice and nothing more.
    Returns whether the attempt's output is now truncated (the agent may stop sending)."""
    with db.transaction() as s:
        att, job = _fenced(s, who, attempt_id, rep.fencing_token)
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


def attempt_finished(db: Database, who: Principal, attempt_id: str, rep: FinishReport) -> None:
    with db.transaction() as s:
        att, job = _fenced(s, who, attempt_id, rep.fencing_token)
        att.exit_code = rep.exit_code
        if rep.energy:
            from gpunet.services.energy import record_energy

            record_energy(s, att, rep.energy)
        if rep.lost or rep.exit_code is None:
            lose_attempt(s, att, rep.reason or "the agent lost its lease", att.node_id)
            return
        stopping = att.state == AttemptState.STOPPING.value
        if stopping and att.stop_kind == StopKind.PREEMPT.value and rep.exit_code != 0:
            requeue_attempt(s, att, att.reason or "preempted", att.node_id)
            return
        if stopping and att.stop_kind != StopKind.PREEMPT.value:
            move_attempt(att, AttemptState.CANCELLED, reason="stopped after cancel")
            billing.close_charge(s, att, lost=False)
            return
        if rep.exit_code != 0 and rep.reclaimed:
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
        job.exit_code = rep.exit_code
        if JobState(job.state) in (JobState.ASSIGNED, JobState.RUNNING):
            move_job(
                s,
                job,
                job_state_for_exit(rep.exit_code),
                reason=rep.reason or f"exit code {rep.exit_code}",
                actor=att.node_id,
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
