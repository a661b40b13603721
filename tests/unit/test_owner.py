"""Owners take their GPUs back: availability windows, the owner policy, the per-GPU state
machine (injected clock), attributing GPU processes to attempts, the hook."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gpunet.agent.gpus.faults import SIM_OWNER_PID
from gpunet.agent.gpus.simulated import SimulatedBackend
from gpunet.agent.owner import (
    OWNER_REASON,
    WINDOW_REASON,
    GpuOwnerState,
    OwnerPolicy,
    OwnerWatcher,
    Window,
    in_windows,
    mark,
    nvml_processes,
    owner_pids,
    parse_policy,
    parse_windows,
    process_trees,
    run_hook,
    step,
)
from gpunet.errors import ValidationFailed
from gpunet.wire.agent import GpuTelemetry

# 2026-11-30 is a Monday
MON = datetime(2026, 11, 30)
TUE, FRI, SAT, SUN = (datetime(2026, 12, d) for d in (1, 4, 5, 6))


def at(day: datetime, hh: int, mm: int = 0) -> datetime:
    return day.replace(hour=hh, minute=mm)


# ---- windows -------------------------------------------------------------------------------


def test_weekday_evenings_and_the_weekend() -> None:
    w = parse_windows("Mon-Fri 19:00-07:00; Sat-Sun")
    assert w == (Window(frozenset({0, 1, 2, 3, 4}), 19 * 60, 7 * 60), Window(frozenset({5, 6})))
    assert in_windows(w, at(MON, 19)) and in_windows(w, at(MON, 23, 59))
    assert in_windows(w, at(TUE, 6, 59))  # Monday's night runs into Tuesday morning
    assert not in_windows(w, at(TUE, 7)) and not in_windows(w, at(TUE, 12))
    assert not in_windows(w, at(MON, 6))  # Sunday's whole-day window ends at midnight
    assert in_windows(w, at(SAT, 12)) and in_windows(w, at(SUN, 23, 59))


def test_friday_night_runs_into_saturday_and_ranges_wrap() -> None:
    w = parse_windows("Fri 22:00-02:00")
    assert in_windows(w, at(FRI, 23)) and in_windows(w, at(SAT, 1, 59))
    assert not in_windows(w, at(SAT, 2)) and not in_windows(w, at(FRI, 21))
    assert parse_windows("Fri-Mon")[0].days == frozenset({4, 5, 6, 0})
    assert parse_windows("mon,wed,Friday 09:00-17:00")[0].days == frozenset({0, 2, 4})


def test_a_time_range_alone_is_every_day_and_no_windows_is_always() -> None:
    w = parse_windows("09:00-17:00")
    assert w[0].days == frozenset(range(7))
    assert in_windows(w, at(SUN, 9)) and not in_windows(w, at(SUN, 17))
    assert parse_windows("daily 00:00-24:00")[0].end_min == 24 * 60
    assert in_windows(None, at(TUE, 3))


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("Mon-Fro 19:00-07:00", "'Mon-Fro 19:00-07:00': unknown day 'Fro'"),
        ("Mon-Fri 19:00-07:00; Sat 25:00-26:00", "'Sat 25:00-26:00': bad time '25:00'"),
        ("Mon 19:60-20:00", "bad time '19:60'"),
        ("Mon 19:00", "'Mon 19:00': bad time range '19:00'"),
        ("Mon 19-20", "bad time range '19-20'"),
        ("Mon 10:00-10:00", "the time range is empty"),
        ("Mon Tue Wed", "expected DAYS [HH:MM-HH:MM]"),
        ("19:00-20:00 Mon", "the days come before the time range"),
        ("Mon,,Tue", "empty day in the list"),
        ("Mo", "unknown day 'Mo'"),
        (" ; ", "no window given"),
        ("Mon 24:00-02:00", "cannot start at 24:00"),
    ],
)
def test_bad_windows_name_the_bad_part(text: str, needle: str) -> None:
    with pytest.raises(ValidationFailed) as err:
        parse_windows(text)
    assert err.value.field == "available"
    assert needle in str(err.value)


# ---- the policy ----------------------------------------------------------------------------


def test_policy_defaults_and_keys() -> None:
    p = parse_policy(None)
    assert (p.idle_s, p.hook, p.windows, p.watch_processes) == (300.0, None, None, True)
    p = parse_policy("idle=2s, hook-every=1m,hook_timeout=500ms,processes=no", hook="true")
    assert (p.idle_s, p.hook_every_s, p.hook_timeout_s) == (2.0, 60.0, 0.5)
    assert p.hook == "true" and not p.watch_processes
    assert parse_policy("idle=0").idle_s == 0.0
    off = parse_policy("off", hook="true", available="Sat")
    assert (off.watch_processes, off.hook, off.windows) == (False, None, None)
    assert parse_policy(None, available="Sat-Sun").windows == parse_windows("Sat-Sun")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("idle", "expected KEY=VALUE"),
        ("idel=5m", "unknown key 'idel'"),
        ("idle=soon", "idle='soon'"),
        ("hook-every=0", "must be longer than zero"),
        ("processes=maybe", "use yes or no"),
    ],
)
def test_bad_policies_name_the_key(text: str, needle: str) -> None:
    with pytest.raises(ValidationFailed) as err:
        parse_policy(text)
    assert err.value.field == "owner-policy" and needle in str(err.value)


# ---- the state machine ---------------------------------------------------------------------


def run(
    states: GpuOwnerState, readings: list[tuple[float, bool, bool]], idle_s: float = 300.0
) -> list[tuple[bool, bool]]:
    """(busy, reclaim now) after each (time, owner active, in window) reading."""
    out = []
    for now, active, window in readings:
        states, reclaim = step(
            states, owner_active=active, in_window=window, now=now, idle_s=idle_s
        )
        out.append((states.busy, reclaim))
    return out


def test_reclaim_on_owner_start_then_free_only_after_the_idle_period() -> None:
    got = run(
        GpuOwnerState(),
        [
            (0, False, True),  # never seen: free
            (10, True, True),  # the owner starts: reclaim now
            (11, True, True),  # still busy: no second reclaim
            (20, False, True),  # gone, but for less than the idle period
            (310, False, True),
            (311, False, True),  # 300 s after the owner's last use (at 11): free again
            (400, True, True),  # back: reclaim again
        ],
    )
    assert got == [
        (False, False),
        (True, True),
        (True, False),
        (True, False),
        (True, False),
        (False, False),
        (True, True),
    ]


def test_outside_the_windows_is_busy_and_reclaims_with_its_own_reason() -> None:
    st, reclaim = step(GpuOwnerState(), owner_active=False, in_window=False, now=0, idle_s=300)
    assert st.busy and reclaim and st.reason == WINDOW_REASON
    st, reclaim = step(st, owner_active=False, in_window=True, now=1, idle_s=300)
    assert not st.busy and not reclaim  # the owner never used it: free as the window opens
    st, _ = step(st, owner_active=True, in_window=True, now=2, idle_s=300)
    assert st.reason == OWNER_REASON


def test_watcher_with_an_injected_clock_attributes_processes() -> None:
    clock = [0.0]
    w = OwnerWatcher(
        OwnerPolicy(idle_s=5.0), gpu_count=2, clock=lambda: clock[0], local_now=lambda: MON
    )
    assert w.update({0: [100], 1: []}, attempt_pids={100}) == []  # the attempt's own process
    assert w.busy_indices() == set()
    assert w.update({0: [100, 200]}, attempt_pids={100}) == [0]  # 200 is the owner's
    clock[0] = 4.0
    assert w.update({0: [100]}, attempt_pids={100}) == [] and w.busy(0)
    clock[0] = 5.0
    w.update({0: [100]}, attempt_pids={100})
    assert not w.busy(0)
    wire = mark(w, [GpuTelemetry(index=0), GpuTelemetry(index=1)])
    assert [g.owner_busy for g in wire] == [False, False]


def test_watcher_windows_and_hook() -> None:
    w = OwnerWatcher(
        OwnerPolicy(idle_s=0.0, windows=parse_windows("Sat-Sun"), hook="x", hook_every_s=30),
        gpu_count=1,
        clock=lambda: 100.0,
        local_now=lambda: at(MON, 12),
        hook_runner=lambda cmd, timeout: cmd == "x",
    )
    assert w.update({}, set()) == [0] and w.reason(0) == WINDOW_REASON
    w.local_now = lambda: at(SAT, 12)
    w.update({}, set())
    assert not w.busy(0)
    assert w.hook_due()
    w.ask_hook()
    assert not w.hook_due()  # asked at 100, next at 130
    assert w.update({}, set()) == [0] and w.reason(0) == OWNER_REASON


def test_processes_off_ignores_gpu_processes() -> None:
    w = OwnerWatcher(OwnerPolicy(watch_processes=False), gpu_count=1, clock=lambda: 0.0)
    assert w.update({0: [1, 2, 3]}, set()) == []


# ---- NVML and process attribution ----------------------------------------------------------


class FakeNvmlError(Exception):
    pass


def fake_nvml(compute: dict[str, list[int]], graphics: dict[str, list[int]] | None) -> Any:
    def procs(table: dict[str, list[int]]) -> Any:
        def fn(handle: str) -> list[Any]:
            if handle not in table:
                raise FakeNvmlError("Not Supported")
            return [SimpleNamespace(pid=p, usedGpuMemory=None) for p in table[handle]]

        return fn

    nv = SimpleNamespace(nvmlDeviceGetComputeRunningProcesses=procs(compute))
    if graphics is not None:
        nv.nvmlDeviceGetGraphicsRunningProcesses = procs(graphics)
    return nv


def test_nvml_processes_join_compute_and_graphics_and_survive_unsupported() -> None:
    nv = fake_nvml({"h0": [10, 11], "h1": []}, {"h0": [11, 12]})
    assert nvml_processes(nv, "h0") == [10, 11, 12]
    assert nvml_processes(nv, "h1") == []  # graphics not supported on h1: compute only
    assert nvml_processes(fake_nvml({"h0": [7]}, None), "h0") == [7]
    assert owner_pids([10, 11, 12], attempt_pids={10, 12}) == [11]


def test_process_trees_hold_children_and_session_members() -> None:
    # a leader in its own session with a child, and a grandchild that left for a new session
    script = (
        "import os, subprocess, sys, time\n"
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
        "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'],"
        " start_new_session=True)\n"
        "print(c.pid, g.pid, flush=True)\n"
        "time.sleep(30)\n"
    )
    leader = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, start_new_session=True, text=True
    )
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert leader.stdout is not None
        child, grandchild = map(int, leader.stdout.readline().split())
        tree = process_trees([leader.pid])
        assert {leader.pid, child, grandchild} <= tree
        assert stranger.pid not in tree and os.getpid() not in tree
        assert process_trees([]) == set()
    finally:
        for p in (leader, stranger):
            p.kill()
            p.wait()
        for pid in (child, grandchild):
            with __import__("contextlib").suppress(ProcessLookupError):
                os.kill(pid, 9)


def test_simulated_owner_processes_come_from_the_fault_profile(tmp_path: Path) -> None:
    faults = tmp_path / "faults.yaml"
    sim = SimulatedBackend(["A100-80GB", "A100-80GB"], faults=faults)
    assert sim.gpu_processes() == {0: [], 1: []}
    faults.write_text("gpus:\n  1:\n    owner_process: true\n")
    assert sim.gpu_processes() == {0: [], 1: [SIM_OWNER_PID]}
    time.sleep(0.01)  # a new modification time
    faults.write_text("gpus:\n  0:\n    owner_pids: [4242, 4243]\n")
    assert sim.gpu_processes() == {0: [4242, 4243], 1: []}
    faults.unlink()
    assert sim.gpu_processes() == {0: [], 1: []}


def test_hook_exit_zero_is_busy_timeout_is_busy_and_a_broken_hook_is_free() -> None:
    assert run_hook("exit 0", 5.0) is True
    assert run_hook("exit 3", 5.0) is False
    t = time.monotonic()
    assert run_hook("sleep 5", 0.2) is True
    assert time.monotonic() - t < 3.0
    assert run_hook("/nonexistent/hook", 5.0) is False  # sh: not found, exit 127
