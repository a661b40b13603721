"""Slurm's side of the burst benchmark: the same workload on a private, one-node Slurm.

The workload is ``benchmarks/throughput.py burst``'s: ``--jobs`` trivial one-GPU jobs
(``true``) submitted at once to one node with 8 GPUs; the figure is jobs / (time from the
first submit to the last finish). Each run starts its own Slurm in a temporary directory and
removes it afterwards; nothing of a system Slurm or munge is read or touched:

* its own ``munged`` (a fresh random key, its own socket, passed to Slurm with
  ``AuthInfo=socket=...``);
* ``slurmctld`` and ``slurmd`` in the foreground, with their own ``slurm.conf``,
  ``gres.conf`` and ``cgroup.conf``, state, spool, log and pid files, on free ports bound to
  127.0.0.1 only (``CommunicationParameters=NoCtldInAddrAny,NoInAddrAny``);
* one node named after this host (``NodeAddr=127.0.0.1``) with ``Gres=gpu:8``: the 8 fake GPU
  devices are ``File=`` entries in ``gres.conf`` naming 8 empty files the run creates (Slurm
  hands them out per job as ``CUDA_VISIBLE_DEVICES``; nothing opens them).

What every configuration sets because one node with 8 one-GPU jobs at a time needs it:
``SelectType=select/cons_tres`` (Slurm's default, ``select/linear``, gives each job the whole
node: one job at a time), ``CPUs=8`` with ``SlurmdParameters=config_overrides`` (each job takes
a CPU; a 2-core machine would otherwise run 2 at once, while gpunet's agent runs 8), and
``ProctrackType=proctrack/linuxproc`` (the default, ``proctrack/cgroup``, has slurmd write
into the machine's cgroup hierarchy, which a private benchmark leaves alone). Everything else
is Slurm's default in ``default``.

``high-throughput`` adds the settings of Slurm's High Throughput Computing Administration
Guide that fit one node (``HIGH_THROUGHPUT`` below, each with the guide's reason):
``SchedulerType=sched/builtin``, ``SchedulerParameters=max_rpc_cnt=150``,
``SlurmctldDebug=error``, ``SlurmdDebug=error``, ``MessageTimeout=30``, ``MinJobAge=2``, no
accounting, job accounting gathering or job completion records, ``priority/basic``,
``task/none``, slurmctld on two ports, and ``munged --num-threads 10``. ``guide-sample`` is
that with the guide's ``defer`` and its sample ``SchedulerParameters``
(``batch_sched_delay=20``, ``sched_min_interval=2000000``, the ``bf_*`` and depth limits):
they space scheduling passes seconds apart so that each can start many jobs, while on one
node a pass starts at most 8 (0.8 jobs/s for 100 jobs here), so it runs only when asked.

Submission is what a user does: one ``sbatch --gres=gpu:1 --wrap true`` per job, from
``--submitters`` parallel processes (8, as gpunet's benchmark keeps 8 submissions in flight),
or (``--submit array``) one ``sbatch --array=0-N``. Completion: ``squeue`` is polled every
0.1 s until no job is left (pending, running or completing); the count of jobs that ran is the
count of their output files. CPU is read from /proc: slurmctld's and slurmd's own (the job
steps, ``slurmstepd``, leave slurmd's process tree), and the client commands' (sbatch, squeue).

Needs ``slurm-wlm`` and ``munge`` (Debian) and root (slurmd starts jobs as their user).

    python benchmarks/slurm_burst.py --runs 3
    python benchmarks/slurm_burst.py --config high-throughput --submit sbatch,array --json
    python benchmarks/slurm_burst.py --config guide-sample --jobs 100
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import ctypes
import getpass
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from control_plane import _proc_cpu_s, _tree_cpu_s, machine  # noqa: E402

CONFIGS = ("default", "high-throughput", "guide-sample")
MEASURED = CONFIGS[:2]  # guide-sample only when asked: under 1 job/s on one node
SUBMITS = ("sbatch", "array")
GPUS = 8
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel")

# What one node running 8 one-GPU jobs at a time needs, in every configuration (see above).
NODE_NEEDS = {
    "SelectType": "select/cons_tres",
    "SelectTypeParameters": "CR_Core",
    "SlurmdParameters": "config_overrides",
    "ProctrackType": "proctrack/linuxproc",
}

# The High Throughput Computing Administration Guide's settings: (value, why).
HIGH_THROUGHPUT: dict[str, tuple[str, str]] = {
    "SchedulerType": ("sched/builtin", "most jobs are short: FIFO, no backfill overhead"),
    "SchedulerParameters": (
        "max_rpc_cnt=150",
        "scheduling yields to pending requests (submissions, squeue) when 150 are active",
    ),
    "SlurmctldDebug": ("error", "more detailed logging decreases throughput"),
    "SlurmdDebug": ("error", "more detailed logging decreases throughput"),
    "MessageTimeout": ("30", "slurmctld's responsiveness is load dependent: raised somewhat"),
    "MinJobAge": ("2", "finished jobs' records purged after seconds, not 300"),
    "AccountingStorageType": ("accounting_storage/none", "no accounting records"),
    "JobAcctGatherType": ("jobacct_gather/none", "no job accounting collection"),
    "JobCompType": ("jobcomp/none", "no job completion records"),
    "PriorityType": ("priority/basic", "considerably faster than the other priority plugins"),
    "TaskPlugin": ("task/none", "no task containment or binding work per job"),
}
# The guide's "defer" and its sample SchedulerParameters ("used for running hundreds of jobs
# per second on a sustained basis on one cluster"): the ``guide-sample`` configuration.
GUIDE_SAMPLE = ",".join(
    [
        "defer",
        "batch_sched_delay=20",
        "bf_continue",
        "bf_interval=300",
        "bf_min_age_reserve=10800",
        "bf_resolution=600",
        "bf_yield_interval=1000000",
        "partition_job_depth=500",
        "sched_max_job_start=200",
        "sched_min_interval=2000000",
    ]
)
CTLD_PORTS_HT = 2  # the guide: slurmctld on several ports absorbs bursts of requests
MUNGE_THREADS_HT = 10  # the guide: munged with ten threads


def tuned(config: str) -> bool:
    """Whether ``config`` carries the guide's settings (every configuration but default)."""
    return config != "default"


class Missing(Exception):
    """A program the benchmark needs is not installed."""


def missing_programs() -> list[str]:
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [b for b in BINARIES if shutil.which(b, path=path) is None]


def which(name: str) -> str:
    found = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if found is None:
        raise Missing(name)
    return found


def slurm_version() -> str:
    out = subprocess.run([which("slurmctld"), "-V"], capture_output=True, text=True).stdout
    return out.strip() or "?"


def free_ports(n: int) -> int:
    """The first of ``n`` consecutive free TCP ports on 127.0.0.1."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            first = int(s.getsockname()[1])
        if first + n > 65535:
            continue
        socks: list[socket.socket] = []
        try:
            for p in range(first, first + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return first
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports on 127.0.0.1")


def slurm_conf(
    config: str, root: Path, host: str, ctld_port: int, slurmd_port: int, user: str
) -> str:
    """The ``slurm.conf`` of one private cluster, ``config`` one of CONFIGS."""
    if config not in CONFIGS:
        raise ValueError(f"unknown configuration {config!r}")
    ports = CTLD_PORTS_HT if tuned(config) else 1
    ctld = str(ctld_port) if ports == 1 else f"{ctld_port}-{ctld_port + ports - 1}"
    settings: dict[str, str] = {
        "ClusterName": "gpunetbench",
        "SlurmctldHost": f"{host}(127.0.0.1)",
        "SlurmUser": user,
        "SlurmdUser": "root" if os.geteuid() == 0 else user,
        "SlurmctldPort": ctld,
        "SlurmdPort": str(slurmd_port),
        "CommunicationParameters": "NoCtldInAddrAny,NoInAddrAny",
        "AuthType": "auth/munge",
        "AuthInfo": f"socket={root / 'munge.socket'}",
        "StateSaveLocation": str(root / "state"),
        "SlurmdSpoolDir": str(root / "spool"),
        "SlurmctldLogFile": str(root / "slurmctld.log"),
        "SlurmdLogFile": str(root / "slurmd.log"),
        "SlurmctldPidFile": str(root / "slurmctld.pid"),
        "SlurmdPidFile": str(root / "slurmd.pid"),
        "PlugStackConfig": str(root / "plugstack.conf"),
        "GresTypes": "gpu",
        **NODE_NEEDS,
    }
    if tuned(config):
        settings.update({k: v for k, (v, _why) in HIGH_THROUGHPUT.items()})
    if config == "guide-sample":
        settings["SchedulerParameters"] = GUIDE_SAMPLE
    lines = [f"{k}={v}" for k, v in settings.items()]
    lines.append(f"NodeName={host} NodeAddr=127.0.0.1 CPUs={GPUS} Gres=gpu:{GPUS} State=UNKNOWN")
    lines.append(f"PartitionName=bench Nodes={host} Default=YES MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


def gres_conf(devices: list[Path]) -> str:
    return "".join(f"Name=gpu File={d}\n" for d in devices)


def parse_conf(text: str) -> dict[str, str]:
    """``slurm.conf``'s simple ``Key=value`` lines (the node and partition lines left out)."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key and key not in ("NodeName", "PartitionName"):
            out[key] = value
    return out


# ------------------------------------------------------------------ the private cluster


@dataclass
class Daemon:
    name: str
    proc: subprocess.Popen[bytes]


class Cluster:
    """munged, slurmctld and slurmd of one configuration, in a temporary directory.

    ``stop()`` (also on errors, Ctrl-C and SIGTERM through KeyboardInterrupt) cancels what is
    left, stops the daemons, ends any job step still holding a file under the directory, and
    removes the directory."""

    def __init__(self, config: str, quiet_ready_s: float = 60.0) -> None:
        for b in BINARIES:
            which(b)
        self.config = config
        self.ready_s = quiet_ready_s
        self.root = Path(tempfile.mkdtemp(prefix="gpunet-slurm-"))
        self.root.chmod(0o700)  # munged refuses a socket or key in a writable-by-others dir
        self.host = socket.gethostname().split(".")[0]
        self.daemons: list[Daemon] = []
        self.env = {**os.environ, "SLURM_CONF": str(self.root / "slurm.conf")}
        for k in list(self.env):
            if k.startswith(("SLURM_", "SBATCH_", "SQUEUE_")) and k != "SLURM_CONF":
                del self.env[k]

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        r = self.root
        for sub in ("state", "spool", "out", "dev"):
            (r / sub).mkdir()
        devices = [r / "dev" / f"gpu{i}" for i in range(GPUS)]
        for d in devices:
            d.touch()
        key = r / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        threads = MUNGE_THREADS_HT if tuned(self.config) else 2
        self._spawn(
            "munged",
            [
                which("munged"),
                "--foreground",
                "--force",  # the temporary directory's owner checks are ours to pass
                f"--num-threads={threads}",
                f"--socket={r / 'munge.socket'}",
                f"--key-file={key}",
                f"--pid-file={r / 'munged.pid'}",
                f"--log-file={r / 'munged.log'}",
                f"--seed-file={r / 'munged.seed'}",
            ],
        )
        self._wait(lambda: (r / "munge.socket").exists(), "munged's socket")
        ports = CTLD_PORTS_HT if tuned(self.config) else 1
        user = getpass.getuser()
        conf = slurm_conf(self.config, r, self.host, free_ports(ports), free_ports(1), user)
        (r / "slurm.conf").write_text(conf)
        (r / "gres.conf").write_text(gres_conf(devices))
        (r / "cgroup.conf").write_text("")  # so no system cgroup.conf is read
        (r / "plugstack.conf").write_text("")
        self._spawn("slurmctld", [which("slurmctld"), "-D", "-i", "-f", str(r / "slurm.conf")])
        self._spawn("slurmd", [which("slurmd"), "-D", "-f", str(r / "slurm.conf")])
        self._wait(self._node_idle, "the node idle")

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = (self.root / f"{name}.out").open("wb")
        proc = subprocess.Popen(
            cmd,
            env=self.env,
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us, and we stop them in order
            preexec_fn=_die_with_parent,
        )
        log.close()
        self.daemons.append(Daemon(name, proc))

    def _wait(self, ok: Any, what: str) -> None:
        deadline = time.monotonic() + self.ready_s
        while time.monotonic() < deadline:
            for d in self.daemons:
                if d.proc.poll() is not None:
                    raise RuntimeError(f"{d.name} exited ({d.proc.returncode}):\n{self.logs()}")
            if ok():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{what}: not after {self.ready_s:g}s:\n{self.logs()}")

    def _node_idle(self) -> bool:
        out = self.cmd(["sinfo", "-h", "-N", "-o", "%T"], check=False)
        return out.strip() == "idle"

    def logs(self, n: int = 15) -> str:
        parts = []
        for name in ("munged.log", "slurmctld.log", "slurmd.log", "slurmctld.out", "slurmd.out"):
            with contextlib.suppress(OSError):
                lines = (self.root / name).read_text(errors="replace").splitlines()[-n:]
                if lines:
                    parts.append(f"--- {name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def cmd(self, argv: list[str], check: bool = True, timeout: float = 60.0) -> str:
        p = subprocess.run(
            [which(argv[0]), *argv[1:]],
            env=self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and p.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: exit {p.returncode}: {p.stderr.strip()}")
        return p.stdout

    def daemon_cpu_s(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for d in self.daemons:
            if d.name == "slurmctld":
                out["slurmctld"] = _proc_cpu_s(d.proc.pid)
            elif d.name == "slurmd":  # with the job steps (slurmstepd) it reaped
                out["slurmd"] = _tree_cpu_s(d.proc.pid)
        return out

    def stop(self) -> None:
        """Idempotent; a second Ctrl-C or SIGTERM waits until it is done (it is held back
        meanwhile: an interrupted cleanup would leave the daemons running)."""
        held = {signal.SIGINT, signal.SIGTERM}
        in_main = threading.current_thread() is threading.main_thread()
        if in_main:
            signal.pthread_sigmask(signal.SIG_BLOCK, held)
        try:
            self._stop()
        finally:
            if in_main:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, held)

    def _stop(self) -> None:
        if any(d.name == "slurmctld" and d.proc.poll() is None for d in self.daemons):
            with contextlib.suppress(Exception):
                self.cmd(["scancel", "--full", "--user", getpass.getuser()], timeout=10)
        for d in reversed(self.daemons):  # slurmd, slurmctld, then munged
            stop_process(d.proc)
        self._end_leftovers()
        shutil.rmtree(self.root, ignore_errors=True)

    def _end_leftovers(self) -> None:
        """Job steps still running hold their spool socket or output file here: end them."""
        for pid in holders(self.root):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    # -------------------------------------------------------------- the workload

    def burst(self, jobs: int, submit: str, submitters: int, timeout: float) -> dict[str, Any]:
        """Submit ``jobs`` at once, wait until none is left in the queue; the figures."""
        out = Path(tempfile.mkdtemp(prefix="burst-", dir=self.root / "out"))
        base = ["sbatch", "--parsable", "--gres=gpu:1", "--wrap", "true"]
        cpu0 = self.daemon_cpu_s()
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        errors: dict[str, int] = {}
        t0 = time.perf_counter()
        if submit == "array":
            argv = [*base, f"--array=0-{jobs - 1}", "-o", f"{out}/%A_%a.out"]
            try:
                self.cmd(argv)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                errors[str(exc)[:200]] = 1
        else:
            argv = [*base, "-o", f"{out}/%j.out"]

            def one(_i: int) -> str | None:
                try:
                    self.cmd(argv)
                    return None
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    return str(exc)[:200]

            with concurrent.futures.ThreadPoolExecutor(submitters) as pool:
                for err in pool.map(one, range(jobs)):
                    if err is not None:
                        errors[err] = errors.get(err, 0) + 1
        submit_s = time.perf_counter() - t0
        deadline = t0 + timeout
        left = -1
        while time.perf_counter() < deadline:
            try:
                left = len(self.cmd(["squeue", "-h", "-o", "%i"]).split())
            except (RuntimeError, subprocess.TimeoutExpired):
                left = -1  # not answered: not an empty queue
            if left == 0:
                break
            time.sleep(0.1)
        elapsed = time.perf_counter() - t0
        kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu1 = self.daemon_cpu_s()
        ran = sum(1 for _ in out.glob("*.out"))
        finished = ran if left == 0 else None
        if left != 0:
            what = "squeue failing" if left < 0 else f"{left} job(s) still queued"
            errors[f"{what} after {timeout:g}s"] = 1
        daemons_s = {
            k: (cpu1[k] or 0.0) - (cpu0.get(k) or 0.0) for k in cpu1 if cpu1[k] is not None
        }
        clients_s = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
        return {
            "config": self.config,
            "submit": submit,
            "submitters": 1 if submit == "array" else submitters,
            "jobs": jobs,
            "finished": finished,
            "submit_s": round(submit_s, 2),
            "elapsed_s": round(elapsed, 2),
            "jobs_per_s": round((finished or 0) / elapsed, 1),
            "slurmctld_cpu_pct": pct_of(daemons_s.get("slurmctld"), elapsed),
            "slurmd_cpu_pct": pct_of(daemons_s.get("slurmd"), elapsed),
            "client_cpu_pct": pct_of(clients_s, elapsed),
            "errors": errors,
        }


def _die_with_parent() -> None:
    """In the daemon's child before exec: SIGTERM when the benchmark dies, even by SIGKILL
    (Linux's PR_SET_PDEATHSIG), so no daemon outlives it."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # 1: PR_SET_PDEATHSIG


def pct_of(cpu_s: float | None, elapsed: float) -> float | None:
    return round(100 * cpu_s / elapsed, 1) if cpu_s is not None and elapsed > 0 else None


def holders(root: Path) -> list[int]:
    """Processes with a file, socket path or working directory under ``root``."""
    prefix = str(root) + "/"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        links = []
        with contextlib.suppress(OSError):
            links.append(os.readlink(f"/proc/{entry}/cwd"))
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    links.append(os.readlink(f"/proc/{entry}/fd/{fd}"))
        if any(link == str(root) or link.startswith(prefix) for link in links):
            found.append(int(entry))
    return found


def stop_process(p: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        if p.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=wait)


def run_once(
    config: str, submit: str, jobs: int, submitters: int = 8, timeout: float = 600.0
) -> dict[str, Any]:
    """One measurement on a fresh private cluster, removed afterwards."""
    with Cluster(config) as c:
        return c.burst(jobs, submit, submitters, timeout)


def median(xs: list[Any]) -> float | None:
    vals = [x for x in xs if x is not None]
    return round(statistics.median(vals), 1) if vals else None


def install_hint() -> str:
    return (
        "this benchmark needs Slurm and munge: "
        f"{', '.join(missing_programs())} not found (apt-get install slurm-wlm munge)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=",".join(MEASURED), help=", ".join(CONFIGS))
    p.add_argument("--submit", default="sbatch", help="sbatch (one per job), array, or both")
    p.add_argument("--jobs", type=int, default=500)
    p.add_argument("--runs", type=int, default=1, help="a fresh cluster each run")
    p.add_argument("--submitters", type=int, default=8, help="sbatch processes in parallel")
    p.add_argument("--timeout", type=float, default=600.0, help="give up on a run after")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    configs, submits = args.config.split(","), args.submit.split(",")
    bad = [c for c in configs if c not in CONFIGS] + [s for s in submits if s not in SUBMITS]
    if bad:
        p.error(f"unknown: {', '.join(bad)}")
    if missing_programs():
        print(install_hint(), file=sys.stderr)
        sys.exit(2)

    def _terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # the same cleanup as Ctrl-C

    signal.signal(signal.SIGTERM, _terminate)
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    try:
        for i in range(args.runs):
            for config in configs:
                for submit in submits:
                    r = run_once(config, submit, args.jobs, args.submitters, args.timeout)
                    rows.setdefault((config, submit), []).append(r)
                    print(f"run {i + 1}/{args.runs}: {one_line(r)}", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted: the clusters are stopped and removed", file=sys.stderr)
        sys.exit(130)
    out: dict[str, Any] = {
        "benchmark": "slurm_burst",
        "date": date.today().isoformat(),
        "command": " ".join(["python", "benchmarks/slurm_burst.py", *sys.argv[1:]]),
        "machine": machine(),
        "slurm": slurm_version(),
        "load_avg": os.getloadavg(),
        "results": [summary(runs) for runs in rows.values()],
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"Slurm burst ({out['slurm']}), {out['date']}, {args.jobs} jobs")
    for res in out["results"]:
        print(f"  {res['label']}: median {res['median_jobs_per_s']} jobs/s ({res['runs_line']})")


def label(config: str, submit: str) -> str:
    return f"slurm {config} ({'job array' if submit == 'array' else 'sbatch per job'})"


def one_line(r: dict[str, Any]) -> str:
    return (
        f"{label(r['config'], r['submit'])}: {r['jobs_per_s']} jobs/s "
        f"({r['finished']}/{r['jobs']} in {r['elapsed_s']} s, submitted in {r['submit_s']} s; "
        f"slurmctld CPU {r['slurmctld_cpu_pct']}%, slurmd {r['slurmd_cpu_pct']}%, "
        f"clients {r['client_cpu_pct']}%; errors {r['errors']})"
    )


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    first = runs[0]
    return {
        "config": first["config"],
        "submit": first["submit"],
        "label": label(first["config"], first["submit"]),
        "median_jobs_per_s": median([r["jobs_per_s"] for r in runs]),
        "median_elapsed_s": median([r["elapsed_s"] for r in runs]),
        "median_slurmctld_cpu_pct": median([r["slurmctld_cpu_pct"] for r in runs]),
        "median_slurmd_cpu_pct": median([r["slurmd_cpu_pct"] for r in runs]),
        "runs_line": ", ".join(str(r["jobs_per_s"]) for r in runs),
        "runs": runs,
    }


if __name__ == "__main__":
    main()
