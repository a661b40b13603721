"""The agent's watchdog: stops the agent's attempts when the agent itself cannot.

The agent stops its attempts a margin before the coordinator reaps them (``agent.lease``), but
only while it runs: an agent frozen (SIGSTOP, a debugger, a hung host thread) or killed with -9
cannot, and its attempts' processes would keep running while the coordinator starts the work
elsewhere. So each agent starts this small separate process (``python -m
gpunet.agent.watchdog``, in a session of its own: stopping the agent or its terminal's process
group does not stop it). It knows nothing of the coordinator; it reads two things the agent
leaves in its home:

- the lease file (``<home>/lease``): the CLOCK_MONOTONIC time of the agent's last renewal and
  the lease timeout, rewritten on every successful heartbeat (the monotonic clock is one for
  the whole system, so the two processes agree on it);
- the agent's attempts: the session each bare attempt runs in (``<home>/work/*.session``) and
  each sandboxed attempt's cgroup (under the agent's cgroup parent).

It stops attempts on the agent's own schedule: when the lease has gone unrenewed for
``lease.stop_after`` it sends every attempt's processes SIGTERM, after ``lease.stop_grace`` more
it kills what is left, so every process is gone ``lease.margin`` before the coordinator reaps
them. Each attempt it signals is recorded (``<home>/watchdog/<attempt id>``), so an agent that
thaws reports it lost (run again), not failed.

While the agent is stopped by a signal (SIGSTOP: ``T`` in ``/proc/PID/stat``; not a tracer's
brief ``t`` stops, so stracing the agent does not stall its jobs), its attempts are stopped
with it (SIGSTOP) and continued (SIGCONT) when it is: a job that ran to its end while its agent
could not report it would be reaped and run again elsewhere, the first run's success arriving
late as a discarded duplicate. A job frozen with its agent cannot finish
unseen; if the lease lapses meanwhile, SIGKILL reaches it stopped.

While the agent is stopped, or cannot renew its lease past its SIGTERM point (hung), the
watchdog also delivers the finish reports the agent journaled but had not yet sent
(``agent.journal``: a job that exited just before its agent froze), with the node's token from
``<home>/agent.json``, each after its attempt's unanswered start report. They then reach the
coordinator before the lease lapses, so the job's success is kept rather than run again. A
second delivery, by the agent once it runs again, is harmless: the coordinator answers a finish
report for a settled attempt with 409, and the agent takes that as final. The attempt's output
is left to the agent: the coordinator takes an attempt's output after its finish
(``services.agents.append_logs``), and output sent by two processes could be stored twice.
A job that exited while its agent was stopped has no journaled finish (the agent never reaped
it): while the agent is stopped, a bare attempt's session leader that is a zombie with exit
status 0 (``/proc/PID/stat`` field 52) is reported a success by the watchdog itself, with the
fencing token the agent recorded before starting it (``<home>/watchdog/<attempt id>.token``)
and the running time from the process's start to when the watchdog saw it ended.

When the agent is gone (the pipe on the watchdog's stdin reaches end of file, which happens
however the agent ends, kill -9 included), it kills what the agent's attempts left and exits: a
job's grandchildren do not outlive a killed agent. An agent that exits normally has
stopped its attempts first, so the watchdog finds nothing and exits with it.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpunet.agent import lease
from gpunet.agent.journal import Entry, read_pending

LEASE_FILE = "lease"
RECORDS = "watchdog"


class Action(enum.Enum):
    WAIT = "wait"  # the lease is fine (or not known yet): touch nothing
    TERM = "term"  # the lease is lapsing: SIGTERM every attempt, as the agent would
    KILL = "kill"  # past the agent's own kill point: SIGKILL every attempt
    KILL_AND_EXIT = "kill_and_exit"  # the agent is gone: kill what it left, then exit


@dataclass(frozen=True)
class Lease:
    """The agent's last renewal (CLOCK_MONOTONIC seconds) and its lease timeout."""

    renewed: float
    timeout_s: float

    @property
    def term_at(self) -> float:
        """When attempts are asked to stop: the agent's own SIGTERM point."""
        return self.renewed + lease.stop_after(self.timeout_s)

    @property
    def kill_at(self) -> float:
        """When attempts must be dead: the agent's own SIGKILL point, a margin
        (``lease.margin``) before the coordinator reaps them."""
        t = self.timeout_s
        return self.renewed + lease.stop_after(t) + lease.stop_grace(t)


def decide(now: float, current: Lease | None, agent_alive: bool) -> Action:
    """What the watchdog does at monotonic time ``now``: a pure function of the lease the agent
    last wrote (None: none yet, or unreadable) and whether the agent still lives."""
    if not agent_alive:
        return Action.KILL_AND_EXIT
    if current is None or now < current.term_at:
        return Action.WAIT
    return Action.TERM if now < current.kill_at else Action.KILL


class Freeze(enum.Enum):
    KEEP = "keep"  # nothing to change
    FREEZE = "freeze"  # the agent was stopped: stop its attempts with it
    THAW = "thaw"  # the agent runs again: so do the attempts the watchdog stopped


def freeze_step(agent_stopped: bool, frozen: bool) -> Freeze:
    """Whether to stop or continue the attempts, given whether the agent is stopped now and
    whether the watchdog has stopped the attempts."""
    if agent_stopped and not frozen:
        return Freeze.FREEZE
    if frozen and not agent_stopped:
        return Freeze.THAW
    return Freeze.KEEP


FREEZE_TICK_S = 0.1  # how often the agent's state is read: a job may end unseen only this long


def tick_s(current: Lease | None) -> float:
    """How often to look: a small share of the margin, so the kill lands well inside it, and
    often enough to stop the attempts with a stopped agent."""
    if current is None:
        return FREEZE_TICK_S
    return min(FREEZE_TICK_S, max(0.05, lease.margin(current.timeout_s) / 10))


# ---- files shared with the agent ---------------------------------------------------------
def write_lease(home: Path, renewed: float, timeout_s: float) -> None:
    """The agent's side: record a renewal (atomically: the watchdog never reads half)."""
    path = home / LEASE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{renewed!r} {timeout_s!r}\n")
    os.replace(tmp, path)


def read_lease(home: Path) -> Lease | None:
    try:
        renewed, timeout_s = (float(x) for x in (home / LEASE_FILE).read_text().split())
    except (OSError, ValueError):
        return None
    return Lease(renewed, timeout_s)


def stopped(home: Path, attempt_id: str) -> bool:
    """Whether the watchdog killed this attempt (the agent then reports it lost)."""
    return (home / RECORDS / attempt_id).exists()


def forget(home: Path, attempt_id: str) -> None:
    (home / RECORDS / attempt_id).unlink(missing_ok=True)
    (home / RECORDS / (attempt_id + TOKEN_SUFFIX)).unlink(missing_ok=True)


TOKEN_SUFFIX = ".token"


def note_token(home: Path, attempt_id: str, token: int) -> None:
    """The agent's side, before an attempt starts: its fencing token, so that the watchdog can
    report the attempt's end should the agent be frozen when it exits (``ended_unseen``)."""
    (home / RECORDS).mkdir(exist_ok=True)
    (home / RECORDS / (attempt_id + TOKEN_SUFFIX)).write_text(f"{token}\n")


def read_token(home: Path, attempt_id: str) -> int | None:
    try:
        return int((home / RECORDS / (attempt_id + TOKEN_SUFFIX)).read_text())
    except (OSError, ValueError):
        return None


def clear_records(home: Path) -> None:
    """At the agent's start: records of an earlier run concern attempts it no longer has."""
    d = home / RECORDS
    if d.is_dir():
        for p in d.iterdir():
            p.unlink(missing_ok=True)


# ---- the kill ----------------------------------------------------------------------------
def _is_bwrap(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "bwrap"
    except OSError:
        return False


def signal_attempts(home: Path, sig: int, before: Callable[[str], None] | None = None) -> list[str]:
    """Send ``sig`` to every process of every attempt of the agent on ``home`` (bare attempts'
    sessions, sandboxed attempts' cgroups; SIGTERM spares bubblewrap, which would SIGKILL the
    job at once, as runner.Run does), calling ``before(attempt id)`` first for each; returns
    the attempts that had processes. Never waits: a frozen agent's zombies stay."""
    from gpunet.agent.runner import SESSION_SUFFIX, _kill_session
    from gpunet.agent.sandbox.cgroups import AttemptCgroup, CgroupTree, agent_parent, leftovers

    hit: list[str] = []
    for rec in sorted((home / "work").glob("*" + SESSION_SUFFIX)):
        try:
            sid, since = (int(x) for x in rec.read_text().split())
        except (OSError, ValueError):
            continue
        if sid <= 1 or not _kill_session(sid, since, 0):  # signal 0: is anyone there
            continue
        name = rec.name.removesuffix(SESSION_SUFFIX)
        if before is not None:
            before(name)
        _kill_session(sid, since, sig)
        hit.append(name)
    tree = CgroupTree()
    if tree.usable() is None:
        parent = agent_parent(home)
        for name in leftovers(tree, parent):
            cg = AttemptCgroup(tree, parent, name)
            if not cg.pids():
                continue
            if before is not None:
                before(name)
            if sig == signal.SIGKILL:
                cg.kill(timeout_s=0)
            elif sig == signal.SIGTERM:
                cg.signal_all(sig, skip={p for p in cg.pids() if _is_bwrap(p)})
            else:
                cg.signal_all(sig)
            hit.append(name)
    return hit


def kill_attempts(home: Path, sig: int = signal.SIGKILL) -> list[str]:
    """``signal_attempts`` with SIGTERM or SIGKILL, each attempt recorded under
    ``<home>/watchdog`` before it is signalled (an agent that sees it exit finds the record);
    returns the attempts signalled for the first time."""
    new: list[str] = []

    def record(name: str) -> None:
        if not stopped(home, name):
            (home / RECORDS).mkdir(exist_ok=True)
            (home / RECORDS / name).touch()
            new.append(name)

    signal_attempts(home, sig, record)
    return new


# ---- finish reports of a frozen agent ----------------------------------------------------
def deliver_wanted(agent_stopped: bool, now: float, current: Lease | None) -> bool:
    """Whether the watchdog delivers the agent's journaled finish reports itself: while the
    agent is stopped by a signal, or has not renewed its lease by its SIGTERM point (hung)."""
    return agent_stopped or (current is not None and now >= current.term_at)


def reports_to_deliver(pending: list[Entry], done: set[int]) -> list[Entry]:
    """Of the journal's unanswered reports, what the watchdog sends, in journal order: every
    finish report it has not delivered yet, each after its attempt's unanswered start report
    (the coordinator must have seen the attempt start). Output is left to the agent."""
    finished = {e.attempt_id for e in pending if e.kind == "finished"}
    return [
        e
        for e in pending
        if e.seq not in done and e.attempt_id in finished and e.kind in ("started", "finished")
    ]


def read_credentials(home: Path) -> tuple[str, str] | None:
    """The coordinator's URL and the node's token, as the agent saved them (None: not yet)."""
    try:
        data = json.loads((home / "agent.json").read_text())
        return str(data["coordinator"]), str(data["token"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def exit_status(stat: list[str]) -> int | None:
    """A zombie's exit code from its ``/proc/PID/stat`` fields after the name (field 52,
    ``exit_code``, as waitpid reports it; Linux 3.5 on): the code if it exited, minus the
    signal if a signal ended it; None when not a zombie or not told."""
    if not stat or stat[0] != "Z" or len(stat) < 50:
        return None
    status = int(stat[49])
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else None


def ended_unseen(home: Path) -> list[tuple[str, int, float]]:
    """Bare attempts whose job exited 0 while the agent could not see it (the agent is frozen:
    the job's leader is a zombie the agent has not reaped, so it wrote no finish report): the
    attempt id, its exit code (0) and its start as CLOCK_BOOTTIME seconds. Only clean exits:
    an attempt ended by a signal (the watchdog's own kill, say) is the agent's to report."""
    from gpunet.agent.runner import SESSION_SUFFIX, _stat

    hz = os.sysconf("SC_CLK_TCK")
    out: list[tuple[str, int, float]] = []
    for rec in sorted((home / "work").glob("*" + SESSION_SUFFIX)):
        name = rec.name.removesuffix(SESSION_SUFFIX)
        try:
            sid, since = (int(x) for x in rec.read_text().split())
        except (OSError, ValueError):
            continue
        st = _stat(sid) if sid > 1 else None
        if st is None or len(st) < 20 or int(st[19]) != since:
            continue  # gone (reaped), or the number was reused
        if exit_status(st) == 0:
            out.append((name, 0, since / hz))
    return out


RETRY_S = 0.2  # between delivery passes while delivery is wanted


class Reporter:
    """Delivers a frozen agent's journaled finish reports, in a thread of its own so that a
    slow or stalled coordinator never delays a stop or a kill."""

    def __init__(self, home: Path, transport: Any = None) -> None:
        self.home = home
        self.transport = transport  # an httpx transport (tests); None: the network
        self.wanted = threading.Event()
        self.done: set[int] = set()  # journal sequence numbers answered by the coordinator
        self.agent_stopped = False  # only then are ended, unjournaled attempts reported
        self.seen_ended: dict[str, float] = {}  # attempt -> when first seen ended (boottime)
        self.done_ended: set[str] = set()
        self._thread: threading.Thread | None = None

    def want(self, yes: bool, agent_stopped: bool = False) -> None:
        self.agent_stopped = yes and agent_stopped
        if not yes:
            self.wanted.clear()
            return
        self.wanted.set()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="reports", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            self.wanted.wait()
            try:
                self.deliver_once()
            except Exception as exc:  # a bad file or answer: the next pass tries again
                _say(f"could not deliver the agent's reports: {exc!r}")
            time.sleep(RETRY_S)

    def deliver_once(self) -> list[str]:
        """One pass over the journal; returns the attempts whose finish was answered. Stops at
        the first report the coordinator did not answer (down or stalled): order is kept."""
        pending = read_pending(self.home)
        self.done &= {e.seq for e in pending}  # what the agent acknowledged is forgotten
        todo = reports_to_deliver(pending, self.done) + self._ended(pending)
        cred = read_credentials(self.home) if todo else None
        if cred is None:
            return []
        import httpx

        url, token = cred
        delivered: list[str] = []
        timeout = httpx.Timeout(2.0, connect=1.0)
        with httpx.Client(timeout=timeout, verify=_verify(url), transport=self.transport) as http:
            for e in todo:
                if not self.wanted.is_set():
                    break  # the agent runs again: it delivers its own reports
                try:
                    r = http.post(
                        f"{url}/v1/agent/attempts/{e.attempt_id}/{e.kind}",
                        json=e.body,
                        headers={"Authorization": f"Bearer {token}"},
                    )
                except httpx.HTTPError:
                    break
                if r.status_code >= 500:
                    break
                # answered (a 4xx too: refused for good, as the agent would take it)
                if e.seq > 0:
                    self.done.add(e.seq)
                else:
                    self.done_ended.add(e.attempt_id)
                if e.kind == "finished":
                    delivered.append(e.attempt_id)
                    _say(
                        f"delivered the finish report of attempt {e.attempt_id} for the "
                        f"stopped agent (answer {r.status_code})"
                    )
        return delivered

    def _ended(self, pending: list[Entry]) -> list[Entry]:
        """Finish reports the watchdog writes itself, for attempts whose job exited 0 while
        the agent was stopped and so never journaled their end (``ended_unseen``); sequence
        number 0: not the journal's. The running time ends when the watchdog first saw the
        exit (at most a tick late)."""
        if not self.agent_stopped:
            return []
        journaled = {e.attempt_id for e in pending if e.kind == "finished"}
        now = time.clock_gettime(time.CLOCK_BOOTTIME)
        out: list[Entry] = []
        for att, code, started in ended_unseen(self.home):
            token = read_token(self.home, att)
            if att in journaled or att in self.done_ended or token is None:
                continue
            ended = self.seen_ended.setdefault(att, now)
            body = {
                "fencing_token": token,
                "exit_code": code,
                "reason": f"exit code {code} (reported by the agent's watchdog)",
                "runtime_s": round(max(0.0, ended - started), 3),
            }
            out.append(Entry(0, att, "finished", body))
        return out


def _verify(url: str) -> Any:
    """How the watchdog checks an https coordinator: as the agent does (``GPUNET_CA_FILE``)."""
    if not url.startswith("https:"):
        return True
    from gpunet.tls import client_context

    return client_context(os.environ.get("GPUNET_CA_FILE") or None)


# ---- the agent's side: start and stop ---------------------------------------------------
def spawn(home: Path) -> subprocess.Popen[bytes]:
    """Start the watchdog of the agent on ``home``; the agent keeps the pipe's write end (not
    inherited by its attempts), whose closing tells the watchdog the agent is gone."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gpunet.agent.watchdog",
            "--home",
            str(home),
            "--agent-pid",
            str(os.getpid()),
        ],
        stdin=subprocess.PIPE,
        start_new_session=True,  # not frozen or interrupted with the agent's process group
    )


def close(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """The agent's normal exit, its attempts already stopped: the watchdog finds nothing left
    to kill and exits; one that does not is killed (no orphan either way)."""
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def agent_gone(stdin_fd: int, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` on the pipe from the agent; True once it reached end of file
    (the agent's end is closed: it exited or was killed)."""
    ready, _, _ = select.select([stdin_fd], [], [], timeout_s)
    if not ready:
        return False
    try:
        return os.read(stdin_fd, 4096) == b""
    except OSError:
        return True


def _state_of(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def is_stopped(pid: int | None) -> bool:
    """Whether process ``pid`` is stopped by a signal (SIGSTOP, SIGTSTP)."""
    if pid is None:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state == "T"


def _say(text: str) -> None:
    print(
        f"{time.strftime('%Y-%m-%d %H:%M:%S')} gpunet watchdog: {text}", file=sys.stderr, flush=True
    )


def watch(home: Path, stdin_fd: int = 0, agent_pid: int | None = None) -> None:
    """The watchdog's loop: returns once the agent is gone and its attempts are dead."""
    alive = True
    frozen = False
    reporter = Reporter(home)
    while True:
        agent_stopped = alive and is_stopped(agent_pid)
        step = freeze_step(agent_stopped, frozen)
        if step is not Freeze.KEEP:
            frozen = step is Freeze.FREEZE
            hit = signal_attempts(home, signal.SIGSTOP if frozen else signal.SIGCONT)
            if hit:
                what = "stopped with" if frozen else "continued with"
                _say(f"attempt(s) {', '.join(hit)} {what} the agent")
        current = read_lease(home)
        now = time.monotonic()
        reporter.want(alive and deliver_wanted(agent_stopped, now, current), agent_stopped)
        action = decide(now, current, alive)
        if action is not Action.WAIT:
            sig = signal.SIGTERM if action is Action.TERM else signal.SIGKILL
            hit = kill_attempts(home, sig)
            if hit:
                why = "the agent is gone" if not alive else "its lease is lapsing"
                _say(f"{signal.Signals(sig).name} to attempt(s) {', '.join(hit)}: {why}")
        if action is Action.KILL_AND_EXIT:
            return
        alive = not agent_gone(stdin_fd, tick_s(current))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="gpunet agent watchdog (started by the agent)")
    p.add_argument("--home", type=Path, required=True)
    p.add_argument("--agent-pid", type=int, default=None)
    args = p.parse_args(argv)
    # the agent decides when to stop; a Ctrl-C or SIGTERM meant for it must not stop this one
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    with contextlib.suppress(KeyboardInterrupt):
        watch(args.home, agent_pid=args.agent_pid)


if __name__ == "__main__":
    main()
