"""The job and attempt state machines: the one table of allowed transitions."""

from __future__ import annotations

from enum import StrEnum

from gpunet.errors import Conflict


class JobState(StrEnum):
    QUEUED = "queued"
    ASSIGNED = "assigned"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"


class AttemptState(StrEnum):
    ASSIGNED = "assigned"
    RUNNING = "running"
    STOPPING = "stopping"  # cancel asked; the agent has not yet confirmed the process group is gone
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"
    # the network stopped it and its job went back to the queue without using a retry:
    # a preemption, the owner taking the GPU back, or the job asking to be run again
    PREEMPTED = "preempted"


class LostCause(StrEnum):
    """Why an attempt was lost; it decides whether a success reported late may still count."""

    LEASE = "lease"  # its node fell silent past the lease
    AGENT_RESTART = "agent_restart"  # its agent restarted (its processes died with it)
    AGENT = "agent"  # its agent stopped it, e.g. for a lease it could not renew
    GPU_FAILED = "gpu_failed"  # its GPU failed (health): what it computed is not trusted
    # a gang member could not reach rank 0's rendezvous port (or rank 0 could not open it)
    RENDEZVOUS = "rendezvous"


# losses of contact: the attempt may have finished all the same, so a late success counts
CONTACT_LOST = frozenset({LostCause.LEASE, LostCause.AGENT_RESTART, LostCause.AGENT})


class StopKind(StrEnum):
    """Why the coordinator asks an agent to stop an attempt: what happens to its job after."""

    CANCEL = "cancel"  # the user cancelled the job: it ends
    PREEMPT = "preempt"  # higher-priority work takes the GPUs: the job is re-queued
    # another member of its gang ended (failed, lost, reclaimed, preempted, or a Ray head
    # finished): the job's fate is already decided, this member only has to stop
    GANG = "gang"


# A job that exits with this code has saved its checkpoint and asks to be run again (as
# HTCondor's checkpoint_exit_code): its job goes back to the queue without using a retry.
REQUEUE_EXIT_CODE = 85

# Seconds a job gets between SIGTERM and SIGKILL when the network stops it (preemption, owner
# reclaim, lease margin) unless its spec says otherwise (checkpoint.grace_s); a user's cancel
# gets CANCEL_GRACE_S.
DEFAULT_GRACE_S = 30.0
CANCEL_GRACE_S = 5.0


J = JobState
JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    # -> SUCCEEDED: a lost attempt's success arrived late, before the retry was assigned
    J.QUEUED: frozenset({J.ASSIGNED, J.CANCELLED, J.FAILED, J.SUCCEEDED}),
    J.ASSIGNED: frozenset({J.QUEUED, J.RUNNING, J.SUCCEEDED, J.FAILED, J.CANCELLED, J.LOST}),
    # -> QUEUED: its attempt was preempted or reclaimed, or it asked to be run again
    J.RUNNING: frozenset({J.QUEUED, J.SUCCEEDED, J.FAILED, J.CANCELLED, J.LOST}),
    J.LOST: frozenset({J.QUEUED, J.FAILED, J.CANCELLED}),
    J.SUCCEEDED: frozenset(),
    J.FAILED: frozenset(),
    J.CANCELLED: frozenset(),
}

A = AttemptState
ATTEMPT_TRANSITIONS: dict[AttemptState, frozenset[AttemptState]] = {
    A.ASSIGNED: frozenset(
        {A.RUNNING, A.STOPPING, A.SUCCEEDED, A.FAILED, A.CANCELLED, A.LOST, A.PREEMPTED}
    ),
    A.RUNNING: frozenset({A.STOPPING, A.SUCCEEDED, A.FAILED, A.CANCELLED, A.LOST, A.PREEMPTED}),
    # a stopped attempt may still report success: it finished before the signal arrived
    A.STOPPING: frozenset({A.CANCELLED, A.LOST, A.PREEMPTED, A.SUCCEEDED, A.FAILED}),
    A.SUCCEEDED: frozenset(),
    A.FAILED: frozenset(),
    A.CANCELLED: frozenset(),
    # a lost attempt whose success arrives late, before its job's retry started, is kept
    A.LOST: frozenset({A.SUCCEEDED}),
    A.PREEMPTED: frozenset(),
}

TERMINAL_JOB_STATES = frozenset(s for s, nxt in JOB_TRANSITIONS.items() if not nxt)
ACTIVE_ATTEMPT_STATES = frozenset({A.ASSIGNED, A.RUNNING, A.STOPPING})
# attempts whose GPUs are held (the process may still be alive)
GPU_HOLDING_ATTEMPT_STATES = ACTIVE_ATTEMPT_STATES


def can_move_job(src: JobState, dst: JobState) -> bool:
    return dst in JOB_TRANSITIONS[src]


def check_job_move(src: JobState, dst: JobState) -> None:
    """Raise Conflict unless the table allows ``src -> dst``."""
    if not can_move_job(src, dst):
        raise Conflict(f"a {src.value} job cannot become {dst.value}", field="state")


def check_attempt_move(src: AttemptState, dst: AttemptState) -> None:
    if dst not in ATTEMPT_TRANSITIONS[src]:
        raise Conflict(f"a {src.value} attempt cannot become {dst.value}", field="state")


def after_lost(retries_used: int, max_retries: int) -> JobState:
    """Where a job goes when its attempt is lost: back to the queue while retries remain."""
    return JobState.QUEUED if retries_used < max_retries else JobState.FAILED


def job_state_for_exit(exit_code: int) -> JobState:
    return JobState.SUCCEEDED if exit_code == 0 else JobState.FAILED


def attempt_state_for_exit(exit_code: int) -> AttemptState:
    return AttemptState.SUCCEEDED if exit_code == 0 else AttemptState.FAILED
