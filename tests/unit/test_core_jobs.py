"""The job and attempt state machines."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpunet.core.jobs import (
    ACTIVE_ATTEMPT_STATES,
    ATTEMPT_TRANSITIONS,
    JOB_TRANSITIONS,
    TERMINAL_JOB_STATES,
    AttemptState,
    JobState,
    after_lost,
    attempt_state_for_exit,
    can_move_job,
    check_attempt_move,
    check_job_move,
    job_state_for_exit,
)
from gpunet.errors import Conflict

J, A = JobState, AttemptState


def test_tables_cover_every_state() -> None:
    assert set(JOB_TRANSITIONS) == set(JobState)
    assert set(ATTEMPT_TRANSITIONS) == set(AttemptState)


@given(st.sampled_from(list(JobState)), st.sampled_from(list(JobState)))
def test_job_moves_follow_the_table(src: JobState, dst: JobState) -> None:
    allowed = dst in JOB_TRANSITIONS[src]
    assert can_move_job(src, dst) is allowed
    if allowed:
        check_job_move(src, dst)
    else:
        with pytest.raises(Conflict) as exc:
            check_job_move(src, dst)
        assert exc.value.status_code == 409
        assert exc.value.field == "state"
        assert src.value in exc.value.message and dst.value in exc.value.message


@given(st.sampled_from(list(AttemptState)), st.sampled_from(list(AttemptState)))
def test_attempt_moves_follow_the_table(src: AttemptState, dst: AttemptState) -> None:
    if dst in ATTEMPT_TRANSITIONS[src]:
        check_attempt_move(src, dst)
    else:
        with pytest.raises(Conflict):
            check_attempt_move(src, dst)


def test_every_pair_exhaustively() -> None:
    """The same property over all pairs, so none is left to chance."""
    moves = 0
    for src in JobState:
        for dst in JobState:
            if dst in JOB_TRANSITIONS[src]:
                check_job_move(src, dst)
                moves += 1
            else:
                with pytest.raises(Conflict):
                    check_job_move(src, dst)
    assert moves == sum(len(v) for v in JOB_TRANSITIONS.values())
    for a_src in AttemptState:
        for a_dst in AttemptState:
            if a_dst in ATTEMPT_TRANSITIONS[a_src]:
                check_attempt_move(a_src, a_dst)
            else:
                with pytest.raises(Conflict):
                    check_attempt_move(a_src, a_dst)


def test_no_state_moves_to_itself() -> None:
    for s in JobState:
        assert not can_move_job(s, s)
    for a in AttemptState:
        with pytest.raises(Conflict):
            check_attempt_move(a, a)


def test_expected_paths_are_allowed() -> None:
    for path in (
        [J.QUEUED, J.ASSIGNED, J.RUNNING, J.SUCCEEDED],
        [J.QUEUED, J.ASSIGNED, J.RUNNING, J.LOST, J.QUEUED, J.ASSIGNED, J.FAILED],
        [J.QUEUED, J.ASSIGNED, J.LOST, J.FAILED],
        [J.QUEUED, J.CANCELLED],
        [J.QUEUED, J.ASSIGNED, J.RUNNING, J.QUEUED, J.ASSIGNED, J.SUCCEEDED],  # preempted
    ):
        for src, dst in zip(path, path[1:], strict=False):
            check_job_move(src, dst)
    for path in (
        [A.ASSIGNED, A.RUNNING, A.STOPPING, A.CANCELLED],
        [A.ASSIGNED, A.RUNNING, A.LOST],
        [A.ASSIGNED, A.STOPPING, A.LOST],
        [A.ASSIGNED, A.RUNNING, A.STOPPING, A.PREEMPTED],
        [A.ASSIGNED, A.RUNNING, A.PREEMPTED],  # the owner took the GPU back
        [A.RUNNING, A.STOPPING, A.SUCCEEDED],  # it finished before the preemption signal
    ):
        for src, dst in zip(path, path[1:], strict=False):
            check_attempt_move(src, dst)
    # a stopping attempt cannot run again, and a preempted one is over
    with pytest.raises(Conflict):
        check_attempt_move(A.STOPPING, A.RUNNING)
    with pytest.raises(Conflict):
        check_attempt_move(A.PREEMPTED, A.RUNNING)
    # a queued job cannot start running without being assigned
    with pytest.raises(Conflict):
        check_job_move(J.QUEUED, J.RUNNING)


def test_terminal_states_have_no_exits() -> None:
    assert {J.SUCCEEDED, J.FAILED, J.CANCELLED} == TERMINAL_JOB_STATES
    for s in TERMINAL_JOB_STATES:
        assert JOB_TRANSITIONS[s] == frozenset()
        for dst in JobState:
            with pytest.raises(Conflict):
                check_job_move(s, dst)
    for a in (A.SUCCEEDED, A.FAILED, A.CANCELLED, A.LOST):
        assert a not in ACTIVE_ATTEMPT_STATES
        for dst in AttemptState:
            if (a, dst) == (A.LOST, A.SUCCEEDED):
                continue  # its success arrived late and is kept (services.agents)
            with pytest.raises(Conflict):
                check_attempt_move(a, dst)
    check_attempt_move(A.LOST, A.SUCCEEDED)
    # LOST is a job's passing state, never a resting one
    assert J.LOST not in TERMINAL_JOB_STATES
    assert JOB_TRANSITIONS[J.LOST] >= {J.QUEUED, J.FAILED}


@given(st.integers(0, 100), st.integers(0, 100))
def test_after_lost_honours_max_retries(used: int, max_retries: int) -> None:
    nxt = after_lost(used, max_retries)
    assert nxt is (J.QUEUED if used < max_retries else J.FAILED)
    check_job_move(J.LOST, nxt)


def test_after_lost_counts_down_to_failure() -> None:
    assert after_lost(0, 0) is J.FAILED
    used, outcomes = 0, []
    while (nxt := after_lost(used, 2)) is J.QUEUED:
        outcomes.append(nxt)
        used += 1
    assert (len(outcomes), nxt) == (2, J.FAILED)


@pytest.mark.parametrize(
    ("code", "job", "att"),
    [
        (0, J.SUCCEEDED, A.SUCCEEDED),
        (1, J.FAILED, A.FAILED),
        (-9, J.FAILED, A.FAILED),
        (137, J.FAILED, A.FAILED),
    ],
)
def test_exit_codes(code: int, job: JobState, att: AttemptState) -> None:
    assert job_state_for_exit(code) is job
    assert attempt_state_for_exit(code) is att
