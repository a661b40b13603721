"""Chaos benchmark: priced jobs on simulated agents under faults, then the books are checked.

A real coordinator (`gpunet server`) and real agents (`gpunet agent --simulate`) on 127.0.0.1.
Jobs (`sleep S; echo ran $GPUNET_JOB_ID`, S uniform in --job-seconds) are submitted over the
run; one fault per round, in shuffled cycles of four kinds: kill -9 of an agent (restarted on
the same home), kill -9 of the coordinator (restarted on the same database), SIGSTOP of an
agent for 1.3-1.8 leases (then SIGCONT), and a coordinator stalled by SIGSTOP for 0.2-0.4 of a
lease. Then every job must end; the figures: jobs lost, double successes, jobs run to exit 0
more than once (and whether each extra run is a recorded discarded duplicate), late successes
kept, seconds billed against the running time the agents measured (total and worst attempt),
and `gpunet ledger verify`.

    python benchmarks/chaos.py --database sqlite --rounds 32 --jobs 250 --agents 4
    python benchmarks/chaos.py --database postgres --rounds 32 --jobs 250 --agents 4 \
        --pg-url postgresql://postgres@127.0.0.1:5432/postgres

Frozen agents only, with short jobs (many exits near each freeze):

    python benchmarks/chaos.py --database sqlite --faults sigstop_agent --rounds 16 \
        --jobs 400 --job-seconds 0.2 0.8

With --keep the scratch directory (every process's log) and the database are kept. Every job
that ran to exit 0 more than once is printed (to stderr) with its attempts, their nodes and
times, its events, the faults around it and the log lines that name its attempts.

The scenario itself lives in tests/e2e/chaos.py (tests/e2e/test_chaos.py runs a short one).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

import psycopg  # noqa: E402

from tests.e2e.chaos import FAULTS, ChaosConfig, run_chaos  # noqa: E402


@contextmanager
def pg_database(admin_url: str, keep: bool = False) -> Iterator[str]:
    name = f"gpunet_chaos_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{admin_url.rsplit('/', 1)[0]}/{name}"
    finally:
        if not keep:
            with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--agents", type=int, default=4)
    p.add_argument("--gpus-per-agent", type=int, default=2)
    p.add_argument("--jobs", type=int, default=250)
    p.add_argument("--rounds", type=int, default=32)
    p.add_argument("--lease-timeout", type=float, default=4.0)
    p.add_argument("--job-seconds", type=float, nargs=2, default=(1.0, 3.0))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--settle-timeout", type=float, default=600.0)
    p.add_argument(
        "--faults",
        nargs="+",
        choices=FAULTS,
        default=list(FAULTS),
        help="the kinds of fault injected (e.g. only sigstop_agent, to study frozen agents)",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the scratch directory (the processes' logs, the agents' homes, the SQLite "
        "database; PostgreSQL: the database is kept too) and print where it is",
    )
    args = p.parse_args()
    cfg = ChaosConfig(
        agents=args.agents,
        gpus_per_agent=args.gpus_per_agent,
        jobs=args.jobs,
        rounds=args.rounds,
        lease_timeout=args.lease_timeout,
        job_seconds=tuple(args.job_seconds),
        settle_timeout_s=args.settle_timeout,
        seed=args.seed,
        faults=tuple(args.faults),
    )
    with contextlib.ExitStack() as stack:
        if args.keep:
            root = Path(tempfile.mkdtemp(prefix="gpunet-chaos-"))
            print(f"scratch directory (kept): {root}", file=sys.stderr, flush=True)
        else:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpunet-chaos-")))
        if args.database == "sqlite":
            url = f"sqlite:///{root / 'gpunet.db'}"
        else:
            url = stack.enter_context(pg_database(args.pg_url, keep=args.keep))
            if args.keep:
                print(f"database (kept): {url}", file=sys.stderr, flush=True)
        res = run_chaos(root, url, cfg)
    out = res.as_dict()
    evidence = out.pop("evidence")
    print(json.dumps(out, indent=1))
    for ev in evidence:  # every job run to exit 0 more than once, with what tells its path
        print(f"--- job {ev['job']} ran to exit 0 more than once", file=sys.stderr)
        print(json.dumps(ev, indent=1), file=sys.stderr)
    ok = (
        not res.not_succeeded
        and res.double_successes == 0
        and res.ran_twice_unexplained == 0
        and res.worst_gap_s <= 1.0
        and res.ledger_ok
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
