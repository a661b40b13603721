"""Start cost of the command line: wall and CPU seconds of ``gpunet --help``, of a client
command (``gpunet jobs``, answered "cannot reach" by a closed port), of an agent from its
start to its first connection to the coordinator, and of a coordinator from its start to
its first answer (on a SQLite store its first start migrated).

    python benchmarks/cli_start.py --runs 10 [--compare OTHER_SRC] [--json]

``--compare``: the ``src`` folder of another checkout (``git worktree add /tmp/before REV``),
measured in the same run, interleaved run by run, so the machine's noise falls on both alike.
Every process is a fresh interpreter with the given sources first on ``sys.path``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE_SRC = Path(__file__).resolve().parents[1] / "src"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def env_for(src: Path, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUNET_")}
    env["PYTHONPATH"] = str(src)
    env["GPUNET_HOME"] = str(home)
    env["GPUNET_TOKEN"] = "gpn_con_bench"  # a client command gets as far as dialling
    return env


def command(src: Path, home: Path, args: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of one ``gpunet ARGS`` run to its exit."""
    cpu0, t0 = children_cpu(), time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "gpunet", *args],
        env=env_for(src, home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=120,
    )
    return time.perf_counter() - t0, children_cpu() - cpu0


def agent_dial(src: Path, home: Path) -> tuple[float, float]:
    """Wall seconds from starting ``gpunet agent`` to its first connection to a listening
    port (its registration), and the agent's CPU seconds until then (from /proc)."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        srv.settimeout(120)
        port = srv.getsockname()[1]
        args = [
            "agent",
            "--coordinator",
            f"http://127.0.0.1:{port}",
            "--join-token",
            "bench",
            "--simulate",
            "1xA100-80GB",
            "--home",
            str(home / "agent"),
            "--isolation",
            "none",
            "--containers",
            "off",
        ]
        t0 = time.perf_counter()
        p = subprocess.Popen(
            [sys.executable, "-m", "gpunet", *args],
            env=env_for(src, home),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            conn, _ = srv.accept()
            wall = time.perf_counter() - t0
            cpu = proc_cpu(p.pid)
            conn.close()
        finally:
            p.kill()
            p.wait(timeout=30)
    return wall, cpu


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_up(src: Path, home: Path) -> tuple[float, float]:
    """Wall seconds from starting ``gpunet server`` to its first 200 on /healthz, and its
    CPU seconds until then; then it is stopped (Ctrl-C)."""
    port = closed_port()
    db = f"sqlite:///{home / ('store-' + src.parent.name + '.db')}"
    t0 = time.perf_counter()
    p = subprocess.Popen(
        [sys.executable, "-m", "gpunet", "server", "--database-url", db, "--port", str(port)],
        env=env_for(src, home / ("server-" + src.parent.name)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            if p.poll() is not None or time.perf_counter() - t0 > 120:
                raise RuntimeError(f"gpunet server did not answer (exit code {p.returncode})")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.02)
        wall, cpu = time.perf_counter() - t0, proc_cpu(p.pid)
    finally:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=30)
    return wall, cpu


def cases(home: Path) -> dict[str, Any]:
    port = closed_port()
    return {
        "gpunet --help": lambda src: command(src, home, ["--help"]),
        "gpunet jobs (no coordinator)": lambda src: command(
            src, home, ["--coordinator", f"http://127.0.0.1:{port}", "jobs"]
        ),
        "gpunet agent: start to first request": lambda src: agent_dial(src, home),
        "gpunet server: start to first answer": lambda src: server_up(src, home),
    }


def summary(samples: list[tuple[float, float]]) -> dict[str, float]:
    return {
        "n": len(samples),
        "wall_p50_s": round(statistics.median(w for w, _ in samples), 3),
        "cpu_p50_s": round(statistics.median(c for _, c in samples), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--compare", type=Path, help="another checkout's src folder")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sources = {"this checkout": HERE_SRC}
    if args.compare:
        sources = {"compared": args.compare.resolve(), **sources}
    with tempfile.TemporaryDirectory(prefix="gpunet-bench-") as tmp:
        measured = cases(Path(tmp))
        for src in sources.values():  # each checkout's store is migrated once, unmeasured
            server_up(src, Path(tmp))
        got: dict[str, dict[str, list[tuple[float, float]]]] = {
            name: {label: [] for label in sources} for name in measured
        }
        for i in range(args.runs):
            for name, fn in measured.items():
                for label, src in sources.items():
                    got[name][label].append(fn(src))
            print(f"run {i + 1}/{args.runs}", file=sys.stderr)
    result = {name: {label: summary(s) for label, s in by.items()} for name, by in got.items()}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for name, by in result.items():
        for label, s in by.items():
            print(
                f"{name:40s} {label:14s} wall p50 {s['wall_p50_s']:.3f} s  "
                f"CPU p50 {s['cpu_p50_s']:.3f} s  (n={s['n']})"
            )


if __name__ == "__main__":
    main()
