"""Owners take their GPUs back: the owner policy, availability windows and the watcher.

A GPU is *owner-busy* while its owner uses it (an NVML compute or graphics process that is
not one of this agent's attempts, or the owner's hook command saying so), for ``idle_s``
after the owner's last use, and whenever the local time is outside the owner's
availability windows. An owner-busy GPU takes no tenant work: the attempt on it is asked
to checkpoint (SIGTERM and its spec's grace), then stopped and reported ``reclaimed``, and
the coordinator re-queues its job and bills only the time it ran.

The rules (windows, the per-GPU state machine) are pure functions of their inputs and an
injected clock; :class:`OwnerWatcher` gathers the facts (GPU processes, attempt process
trees, the hook) and calls them.
"""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from gpunet.core.jobspec import grace_of
from gpunet.errors import ValidationFailed
from gpunet.wire.agent import GpuTelemetry, StartItem

if TYPE_CHECKING:
    from gpunet.agent.loop import Agent, AttemptCtx

log = logging.getLogger("gpunet.agent")

DEFAULT_IDLE_S = 300.0  # owner-free time before a GPU takes tenant work again
DEFAULT_HOOK_EVERY_S = 30.0
DEFAULT_HOOK_TIMEOUT_S = 10.0
DEFAULT_POLL_S = 1.0  # how often GPU processes are read

OWNER_REASON = "reclaimed: the GPU's owner is using it"
WINDOW_REASON = "reclaimed: outside the owner's availability windows"

# ---- availability windows -----------------------------------------------------------------

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_TIME = re.compile(r"^(\d{1,2}):(\d{2})$")


@dataclass(frozen=True, slots=True)
class Window:
    """Days of the week (0 = Monday) and minutes of the day [start, end). ``end <= start``
    runs over midnight into the next day (the window belongs to the day it starts on)."""

    days: frozenset[int]
    start_min: int = 0
    end_min: int = 24 * 60

    def holds(self, weekday: int, minute: int) -> bool:
        if self.start_min < self.end_min:
            return weekday in self.days and self.start_min <= minute < self.end_min
        # overnight: the evening part on a listed day, the morning part on the day after
        return (weekday in self.days and minute >= self.start_min) or (
            (weekday - 1) % 7 in self.days and minute < self.end_min
        )


def _bad_window(part: str, reason: str) -> ValidationFailed:
    return ValidationFailed("available", f"{part.strip()!r}: {reason}")


def _day(name: str, part: str) -> int:
    word = name.strip().lower()
    full = [d for d in _FULL_DAYS if len(word) >= 3 and d.startswith(word)]
    if not full:
        raise _bad_window(part, f"unknown day {name.strip()!r}; use Mon Tue Wed Thu Fri Sat Sun")
    return _FULL_DAYS.index(full[0])


def _days(text: str, part: str) -> frozenset[int]:
    if text.lower() in ("daily", "*"):
        return frozenset(range(7))
    out: set[int] = set()
    for item in text.split(","):
        if not item.strip():
            raise _bad_window(part, "empty day in the list")
        first, sep, last = item.partition("-")
        a = _day(first, part)
        b = _day(last, part) if sep else a
        # Fri-Mon wraps over the weekend
        out.update((a + k) % 7 for k in range((b - a) % 7 + 1))
    return frozenset(out)


def _minute(text: str, part: str) -> int:
    m = _TIME.match(text.strip())
    if m is None:
        raise _bad_window(part, f"bad time {text.strip()!r}; use HH:MM, e.g. 19:00")
    h, mins = int(m.group(1)), int(m.group(2))
    if mins > 59 or h > 24 or (h == 24 and mins != 0):
        raise _bad_window(part, f"bad time {text.strip()!r}; hours 0-24, minutes 0-59")
    return h * 60 + mins


def parse_windows(text: str) -> tuple[Window, ...]:
    """Windows from e.g. ``"Mon-Fri 19:00-07:00; Sat-Sun"``: parts separated by ``;``, each
    ``DAYS [HH:MM-HH:MM]`` or only ``HH:MM-HH:MM`` (every day). DAYS is a day, a range
    (``Mon-Fri``, ``Fri-Mon`` wraps) or a comma list of either, or ``daily``. A time range
    whose end is not after its start runs over midnight. Times are the agent's local time.
    Raises ValidationFailed("available", ...) naming the bad part."""
    out: list[Window] = []
    for part in text.split(";"):
        words = part.split()
        if not words:
            continue  # "Sat-Sun;" or "; Sat-Sun": an empty part says nothing
        if len(words) > 2:
            raise _bad_window(part, "expected DAYS [HH:MM-HH:MM], e.g. Mon-Fri 19:00-07:00")
        if len(words) == 2:
            day_text, times = words
            if ":" in day_text:
                raise _bad_window(part, "the days come before the time range")
            if ":" not in times:
                raise _bad_window(part, f"bad time range {times!r}; use HH:MM-HH:MM")
        elif ":" in words[0] or words[0][:1].isdigit():
            day_text, times = None, words[0]
        else:
            day_text, times = words[0], None
        days = _days(day_text, part) if day_text is not None else frozenset(range(7))
        if times is None:
            out.append(Window(days))
            continue
        start, sep, end = times.partition("-")
        if not sep:
            raise _bad_window(part, f"bad time range {times!r}; use HH:MM-HH:MM")
        a, b = _minute(start, part), _minute(end, part)
        if a == 24 * 60:
            raise _bad_window(part, "a window cannot start at 24:00")
        if a == b:
            raise _bad_window(part, "the time range is empty (start equals end)")
        out.append(Window(days, a, b))
    if not out:
        raise _bad_window(text, "no window given; e.g. Mon-Fri 19:00-07:00; Sat-Sun")
    return tuple(out)


def in_windows(windows: tuple[Window, ...] | None, at: datetime) -> bool:
    """Whether local time ``at`` is inside any window; no windows: always available."""
    if windows is None:
        return True
    minute = at.hour * 60 + at.minute
    return any(w.holds(at.weekday(), minute) for w in windows)


# ---- the owner policy ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OwnerPolicy:
    """How this node shares its GPUs with their owner (``gpunet agent --owner-policy``)."""

    idle_s: float = DEFAULT_IDLE_S
    hook: str | None = None  # a shell command: exit 0 means the owner is busy (all GPUs)
    hook_every_s: float = DEFAULT_HOOK_EVERY_S
    hook_timeout_s: float = DEFAULT_HOOK_TIMEOUT_S
    windows: tuple[Window, ...] | None = None
    poll_s: float = DEFAULT_POLL_S
    watch_processes: bool = True  # NVML processes that are not attempts are the owner's


def _seconds(value: str, key: str) -> float:
    v = value.strip().lower()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)?", v)
    if m is None:
        raise ValidationFailed("owner-policy", f"{key}={value!r}: use seconds or e.g. 30s, 5m")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}[m.group(2)]
    return float(m.group(1)) * scale


def parse_policy(
    text: str | None, *, hook: str | None = None, available: str | None = None
) -> OwnerPolicy:
    """The policy from ``idle=5m,hook-every=30s,hook-timeout=10s,processes=yes`` (every key
    optional; ``off`` turns owner watching off: the node is always available), the hook
    command and the availability windows. Errors name the bad key."""
    p = OwnerPolicy(hook=hook or None, windows=parse_windows(available) if available else None)
    if text is None or not text.strip():
        return p
    if text.strip().lower() == "off":
        return replace(p, watch_processes=False, hook=None, windows=None, idle_s=0.0)
    keys = {"idle": "idle_s", "hook-every": "hook_every_s", "hook-timeout": "hook_timeout_s"}
    keys |= {"poll": "poll_s"}
    for item in text.split(","):
        k, sep, v = item.partition("=")
        k = k.strip().lower().replace("_", "-")
        if not sep:
            raise ValidationFailed("owner-policy", f"{item.strip()!r}: expected KEY=VALUE")
        if k == "processes":
            if v.strip().lower() not in ("yes", "no"):
                raise ValidationFailed("owner-policy", f"processes={v!r}: use yes or no")
            p = replace(p, watch_processes=v.strip().lower() == "yes")
            continue
        if k not in keys:
            known = ", ".join([*keys, "processes"])
            raise ValidationFailed("owner-policy", f"unknown key {k!r}; known: {known}")
        secs = _seconds(v, k)
        if k != "idle" and secs <= 0:
            raise ValidationFailed("owner-policy", f"{k}={v!r} must be longer than zero")
        p = replace(p, **{keys[k]: secs})  # type: ignore[arg-type]
    return p


# ---- the per-GPU state machine -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GpuOwnerState:
    """What the policy remembers of one GPU: when the owner was last seen using it and
    whether it is owner-busy now (and why)."""

    busy: bool = False
    last_owner_at: float | None = None
    reason: str = ""


def step(
    state: GpuOwnerState, *, owner_active: bool, in_window: bool, now: float, idle_s: float
) -> tuple[GpuOwnerState, bool]:
    """The GPU's next state, and whether tenant work on it must be reclaimed now (it just
    became owner-busy). A GPU turns owner-busy at once when its owner uses it or its window
    closes, and free again only after ``idle_s`` without owner use inside a window. A GPU
    never seen in use by its owner is free (its idle time before the agent started is not
    known, and holding every GPU for ``idle_s`` at each agent start would punish restarts)."""
    last = now if owner_active else state.last_owner_at
    if owner_active:
        busy, reason = True, OWNER_REASON
    elif not in_window:
        busy, reason = True, WINDOW_REASON
    elif last is not None and now - last < idle_s:
        busy, reason = True, OWNER_REASON
    else:
        busy, reason = False, ""
    return GpuOwnerState(busy, last, reason), busy and not state.busy


# ---- attributing GPU processes -------------------------------------------------------------


def owner_pids(gpu_pids: Iterable[int], attempt_pids: set[int]) -> list[int]:
    """The GPU's processes that belong to no attempt: the owner's."""
    return sorted({p for p in gpu_pids if p not in attempt_pids})


def nvml_processes(nv: object, handle: object) -> list[int]:
    """Pids of the compute and graphics processes NVML lists on one GPU (host pids).
    A query the driver does not support counts as no processes."""
    pids: set[int] = set()
    for name in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
        fn = getattr(nv, name, None)
        if fn is None:
            continue
        try:
            procs = fn(handle)
        except Exception as exc:  # NVMLError: not supported on this GPU or driver
            log.debug("%s failed: %s", name, exc)
            continue
        pids.update(int(p.pid) for p in procs or ())
    return sorted(pids)


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, session id) of a process, from /proc/PID/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    return int(fields[1]), int(fields[3])


def process_trees(leaders: Iterable[int], proc: Path = Path("/proc")) -> set[int]:
    """The leaders and every process descending from one of them or in one of their
    sessions (each attempt's leader starts its own session)."""
    roots = set(leaders)
    if not roots:
        return set()
    parent: dict[int, int] = {}
    out = set(roots)
    for entry in proc.iterdir() if proc.is_dir() else ():
        if not entry.name.isdigit():
            continue
        st = _stat(int(entry.name))
        if st is None:
            continue
        parent[int(entry.name)] = st[0]
        if st[1] in roots:
            out.add(int(entry.name))
    for pid in parent:
        seen: set[int] = set()
        p = pid
        while p in parent and p not in seen and p not in out:
            seen.add(p)
            p = parent[p]
        if p in out:
            out |= seen
    return out


# ---- the watcher ---------------------------------------------------------------------------


def run_hook(command: str, timeout_s: float) -> bool:
    """The owner's hook: exit 0 means busy. A hook that does not answer within its timeout
    counts as busy (a machine too loaded to answer is in use), one that cannot run as free
    (logged): a broken hook must not keep the node from ever working."""
    try:
        done = subprocess.run(
            ["/bin/sh", "-c", command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        log.warning("owner hook did not answer in %.0fs: taking the owner as busy", timeout_s)
        return True
    except OSError as exc:
        log.warning("owner hook could not run: %s", exc)
        return False
    return done.returncode == 0


@dataclass
class OwnerWatcher:
    """Tracks every GPU's owner state. ``gpu_processes``: GPU index -> pids on it (the
    backend's); ``attempt_pids``: pids of every process of this agent's attempts."""

    policy: OwnerPolicy
    gpu_count: int
    clock: Callable[[], float] = time.monotonic
    local_now: Callable[[], datetime] = datetime.now
    hook_runner: Callable[[str, float], bool] = run_hook
    states: dict[int, GpuOwnerState] = field(default_factory=dict)
    hook_busy: bool = False
    hook_at: float | None = None

    def busy(self, index: int) -> bool:
        return self.states.get(index, GpuOwnerState()).busy

    def reason(self, index: int) -> str:
        return self.states.get(index, GpuOwnerState()).reason

    def busy_indices(self) -> set[int]:
        return {i for i, st in self.states.items() if st.busy}

    def hook_due(self) -> bool:
        now = self.clock()
        return self.policy.hook is not None and (
            self.hook_at is None or now - self.hook_at >= self.policy.hook_every_s
        )

    def ask_hook(self) -> None:
        """Run the hook now (blocking: call it from a thread)."""
        if self.policy.hook is None:
            return
        self.hook_busy = self.hook_runner(self.policy.hook, self.policy.hook_timeout_s)
        self.hook_at = self.clock()

    def update(
        self, gpu_processes: Mapping[int, Iterable[int]], attempt_pids: set[int]
    ) -> list[int]:
        """Apply one reading; return the GPUs that just became owner-busy."""
        now = self.clock()
        window = in_windows(self.policy.windows, self.local_now())
        reclaim = []
        for i in range(self.gpu_count):
            seen = (
                bool(owner_pids(gpu_processes.get(i, ()), attempt_pids))
                if self.policy.watch_processes
                else False
            )
            old = self.states.get(i, GpuOwnerState())
            new, start = step(
                old,
                owner_active=seen or self.hook_busy,
                in_window=window,
                now=now,
                idle_s=self.policy.idle_s,
            )
            self.states[i] = new
            if start:
                reclaim.append(i)
            if new.busy != old.busy:
                log.info("GPU %d %s", i, f"owner-busy ({new.reason})" if new.busy else "free again")
        return reclaim


# ---- the agent's side ----------------------------------------------------------------------


def mark(watcher: OwnerWatcher | None, gpus: list[GpuTelemetry]) -> list[GpuTelemetry]:
    """The heartbeat's telemetry with each GPU's owner-busy flag."""
    if watcher is not None:
        for g in gpus:
            g.owner_busy = watcher.busy(g.index)
    return gpus


def blocked(watcher: OwnerWatcher | None, gpu_indices: Iterable[int]) -> str | None:
    """Why an attempt on these GPUs must not run now (one is owner-busy), or None."""
    if watcher is None:
        return None
    for i in gpu_indices:
        if watcher.busy(i):
            return watcher.reason(i)
    return None


def attempt_pids(agent: Agent) -> tuple[set[int], set[int]]:
    """Pids of every process of the agent's attempts (their cgroups and process trees), and
    the GPUs held by image jobs: a container's processes descend from its runtime, not from
    the agent, so on those GPUs no process is taken for the owner's."""
    leaders: set[int] = set()
    pids: set[int] = set()
    opaque: set[int] = set()
    for ctx in list(agent.attempts.values()):
        run = ctx.run
        if run is None:
            continue
        leaders.add(run.proc.pid)
        if run.box is not None:
            pids.update(run.box.cgroup.pids())
        if run.container is not None:
            opaque.update(ctx.gpu_indices)
    return pids | process_trees(leaders), opaque


def reclaim(agent: Agent, ctx: AttemptCtx, reason: str) -> None:
    """Ask the attempt to checkpoint (SIGTERM and its spec's grace), then stop it; it is
    reported finished with ``reclaimed``, so its job is re-queued and billed for what ran."""
    ctx.reclaimed = True
    ctx.stop_reason = reason  # the reason, should it be stopped before it started
    grace = grace_of(ctx.info.spec) if isinstance(ctx.info, StartItem) else 0.0
    log.warning("%s: stopping attempt %s (grace %.0fs)", reason, ctx.id, grace)
    stopper = asyncio.create_task(agent._stop(ctx, reason, grace))
    agent._stoppers.add(stopper)
    stopper.add_done_callback(agent._stoppers.discard)


async def owner_loop(agent: Agent, watcher: OwnerWatcher) -> None:
    """Watch the owner's use of every GPU; reclaim the attempts on GPUs that turn busy."""
    policy = watcher.policy
    hook: asyncio.Task[None] | None = None
    while True:
        if watcher.hook_due() and (hook is None or hook.done()):
            hook = asyncio.create_task(asyncio.to_thread(watcher.ask_hook))
        procs: dict[int, list[int]] = {}
        if policy.watch_processes:
            try:
                procs = await asyncio.to_thread(agent.backend.gpu_processes)
            except Exception as exc:  # a driver hiccup: the next reading decides
                log.warning("could not list GPU processes: %s", exc)
        mine: set[int] = set()
        opaque: set[int] = set()
        if any(procs.values()):
            mine, opaque = await asyncio.to_thread(attempt_pids, agent)
        before = watcher.busy_indices()
        watcher.update({i: p for i, p in procs.items() if i not in opaque}, mine)
        if watcher.busy_indices() != before:
            agent.beat_now.set()  # tell the coordinator at once, not at the next heartbeat
        for ctx in list(agent.attempts.values()):
            if ctx.reclaimed or ctx.orphaned or not isinstance(ctx.info, StartItem):
                continue
            why = blocked(watcher, ctx.gpu_indices)
            if why is not None:
                reclaim(agent, ctx, why)
        await asyncio.sleep(policy.poll_s)
