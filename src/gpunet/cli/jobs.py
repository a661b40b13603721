"""Job commands: submit, run, jobs, logs, cancel."""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import yaml
from rich.text import Text

from gpunet.cli import formats
from gpunet.cli.output import (
    Column,
    JsonOpt,
    console,
    err_console,
    fmt,
    model_table,
    print_ids,
    print_json,
    styled_state,
)
from gpunet.cli.waiting import wait_until_started
from gpunet.core.jobspec import MAX_ARRAY
from gpunet.errors import GpunetError, ValidationFailed
from gpunet.sdk.client import Client
from gpunet.wire import resources as R

jobs_app = typer.Typer(
    help="List and inspect jobs.", invoke_without_command=True, no_args_is_help=False
)

QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="print only the ids, one a line")]


def files_referred(spec: dict[str, Any], folder: Path) -> list[str]:
    """The arguments of the spec's command that name files in ``folder`` (e.g. ``train.py``
    next to the YAML): the job needs that folder as its working directory."""
    cmd = spec.get("command")
    try:
        args = shlex.split(cmd) if isinstance(cmd, str) else [str(a) for a in cmd or []]
    except ValueError:  # an unbalanced quote: the coordinator names that error
        return []
    found = []
    for arg in args:
        if not arg or arg.startswith("-") or os.path.isabs(arg):
            continue
        try:
            if (folder / arg).is_file():
                found.append(arg)
        except OSError:  # a name too long for the filesystem is no file of the folder
            continue
    return found


def _stream_logs(client: Client, job_id: str, rank: int | None = None) -> None:
    pre = RankPrefix()
    for chunk in client.follow_logs(job_id, rank=rank):
        out = sys.stderr if chunk["stream"] == "stderr" else sys.stdout
        out.write(pre(chunk))
        out.flush()


def _follow(client: Client, job_id: str, *, say_where: bool = False) -> None:
    """Wait for the job, stream its logs, exit with its result; Ctrl-C asks what to do."""
    try:
        wait_until_started(client, job_id)
        if say_where:
            _say_where(client.job(job_id))
        _stream_logs(client, job_id)
    except KeyboardInterrupt:
        interrupted(job_id, interactive=sys.stdin.isatty())
    _finish(client, job_id)


def _say_where(j: dict[str, Any]) -> None:
    """Where the job runs: its node and GPUs, or every member of a gang's latest attempt."""
    members = [a for a in j.get("attempts", []) if a.get("gang_size", 1) > 1]
    if members:
        last = max(a["number"] for a in members)
        where = "; ".join(
            f"rank {a['rank']} {a['node_id']} GPUs {formats.items(a['gpu_ids'])}"
            for a in members
            if a["number"] == last
        )
    elif j.get("node_id"):
        where = f"{j['node_id']} GPUs {formats.items(j['gpu_ids'])}"
    else:
        return
    err_console.print(f"{j['id']} running on {where}", markup=False, highlight=False)


def interrupted(job_id: str, *, interactive: bool) -> NoReturn:
    """Ctrl-C while following a job: the job runs on (and bills) unless it is cancelled.

    On a terminal, ask: 'y' or a second Ctrl-C cancels it, anything else detaches. Without a
    terminal nobody can answer: say how to reattach and how to cancel, and exit 130.
    """
    say = err_console.print
    if interactive:
        try:
            answer = err_console.input(Text(f"\ncancel job {job_id}? [y/N] "))
        except KeyboardInterrupt:
            answer = "y"
            say("")
        except EOFError:
            answer = ""
        if answer.strip().lower() in {"y", "yes"}:
            with Client() as client:
                job = client.cancel(job_id)
            say(f"{job_id}: {styled_state(job['state'])}")
            raise typer.Exit(130)
    else:
        say("")
    say(f"{job_id} keeps running, detached from it.", markup=False, highlight=False)
    say(f"  reattach: gpunet logs -f {job_id}", markup=False, highlight=False)
    say(f"  cancel:   gpunet cancel {job_id}", markup=False, highlight=False)
    raise typer.Exit(130)


class RankPrefix:
    """A gang's output, each line prefixed ``[rank N]`` (output of a plain job as it is).
    Lines may span chunks: a prefix goes only where a rank's line begins."""

    def __init__(self) -> None:
        self.open: dict[tuple[int, str], bool] = {}  # (rank, stream) -> mid-line

    def __call__(self, chunk: dict[str, Any]) -> str:
        rank = chunk.get("rank")
        data = str(chunk["data"])
        if rank is None:
            return data
        key = (int(rank), str(chunk["stream"]))
        tag = f"[rank {rank}] "
        out = []
        for line in data.splitlines(keepends=True):
            out.append(line if self.open.get(key) else tag + line)
            self.open[key] = not line.endswith("\n")
        return "".join(out)


def _finish(client: Client, job_id: str) -> None:
    job = client.job(job_id)
    code = job.get("exit_code")
    err_console.print(
        f"job {job_id} {styled_state(job['state'])}"
        + (f" (exit code {code})" if code is not None else "")
    )
    raise typer.Exit(0 if job["state"] == "succeeded" else (code or 1))


def load_specs(paths: list[Path]) -> list[tuple[str, dict[str, Any]]]:
    """(where, spec) for every spec in ``paths``: a YAML file (several documents separated by
    ``---`` are several specs), or ``-`` for standard input: one JSON spec per line, or YAML
    documents."""
    out: list[tuple[str, dict[str, Any]]] = []
    for path in paths:
        if str(path) != "-":
            docs = _documents(str(path), _read(path))
            out += [(str(path) if len(docs) == 1 else f"{path} #{i + 1}", d) for i, d in docs]
            continue
        text = sys.stdin.read()
        lines = [(n, ln) for n, ln in enumerate(text.splitlines(), 1) if ln.strip()]
        if lines and all(ln.lstrip().startswith("{") for _, ln in lines):
            for n, ln in lines:  # JSON lines
                try:
                    data = json.loads(ln)
                except ValueError as exc:
                    raise ValidationFailed("stdin", f"line {n} is not JSON: {exc}") from None
                out.append((f"stdin line {n}", _mapping(data, f"stdin line {n}")))
        else:
            out += [(f"stdin #{i + 1}", d) for i, d in _documents("stdin", text)]
    if not out:
        raise ValidationFailed("file", "no job spec given")
    return out


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise ValidationFailed("file", f"cannot read {path}: {exc.strerror}") from None


def _documents(where: str, text: str) -> list[tuple[int, dict[str, Any]]]:
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValidationFailed("file", f"{where} is not valid YAML{at}") from None
    return [(i, _mapping(d, where)) for i, d in enumerate(docs)]


def _mapping(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValidationFailed("file", f"{where} must hold a mapping of job fields")
    return data


def submit(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="job specs (YAML; several documents per file allowed), or - for standard "
            "input (one JSON spec per line, or YAML documents)"
        ),
    ],
    workdir: Annotated[
        Path | None, typer.Option(help="directory to upload as the jobs' working directory")
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="stream logs until done")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Submit jobs from YAML specs, in one request (all are queued, or none); prints their ids.
    A spec with ``array: N`` queues N tasks, each with $GPUNET_ARRAY_INDEX."""
    specs = load_specs(files)
    # a command that names files next to its YAML (e.g. `python3 train.py`) needs them
    one_file = len(files) == 1 and str(files[0]) != "-"
    if (
        workdir is None
        and one_file
        and any(files_referred(spec, files[0].parent) for _, spec in specs)
    ):
        workdir = files[0].parent
        err_console.print(
            f"uploading the folder of {files[0].name} as the working directory "
            "(--workdir to choose another)",
            markup=False,
            highlight=False,
        )
    if len(specs) == 1 and specs[0][1].get("service"):
        from gpunet.cli.services import deploy_spec

        if follow:
            raise ValidationFailed("follow", "a service runs until stopped: see gpunet services")
        deploy_spec(specs[0][1], workdir, json_out)
        return
    if any(spec.get("service") for _, spec in specs):
        raise ValidationFailed("service", "deploy one service per call (gpunet services deploy)")
    if len(specs) == 1 and not specs[0][1].get("array"):
        _submit_one(specs[0][1], workdir, follow, json_out)
        return
    if follow:
        raise ValidationFailed("follow", "--follow streams one job; this submits several")
    with Client() as client:
        bodies = [spec for _, spec in specs]
        if workdir is not None:
            digest = client.upload_workdir(workdir)
            bodies = [{**b, "workdir": digest} for b in bodies]
        try:
            done = client.submit_many(bodies)
        except GpunetError as exc:
            exc.message = _where(exc, specs)
            raise
    if json_out:
        print_json([{"source": w, "ids": ids} for (w, _), ids in zip(specs, done, strict=True)])
        return
    for (where, spec), ids in zip(specs, done, strict=True):
        if spec.get("array"):
            err_console.print(f"{where}: array of {len(ids)} tasks")
        for job_id in ids:
            print(job_id)


def _where(exc: GpunetError, specs: list[tuple[str, dict[str, Any]]]) -> str:
    """The error's message with the spec it names (``jobs.3...``) said as its source."""
    m = re.match(r"jobs\.(\d+)", exc.field or "")
    if m and int(m.group(1)) < len(specs):
        return f"{specs[int(m.group(1))][0]}: {exc.message}"
    return exc.message


def _submit_one(spec: dict[str, Any], workdir: Path | None, follow: bool, json_out: bool) -> None:
    with Client() as client:
        job = client.submit(spec, workdir=workdir)
        if json_out:
            print_json(job)
        else:
            console.print(
                f"submitted [bold]{job['id']}[/] ({job['name']}): {styled_state(job['state'])}"
            )
        if follow:
            _follow(client, job["id"])


def run(
    command: Annotated[list[str], typer.Argument(help="the command, after --")],
    gpus: Annotated[int, typer.Option(help="GPUs on each node")] = 1,
    nodes: Annotated[
        int, typer.Option(help="nodes, started together (a gang; torchrun-ready variables)")
    ] = 1,
    site: Annotated[str | None, typer.Option(help="run only in this site")] = None,
    launcher: Annotated[
        str | None, typer.Option(help="ray: start a Ray cluster on the job's nodes")
    ] = None,
    gpu_model: Annotated[list[str] | None, typer.Option(help="allowed GPU model (repeat)")] = None,
    min_gpu_memory_gb: Annotated[float, typer.Option(help="per GPU")] = 0,
    name: Annotated[str | None, typer.Option(help="job name")] = None,
    env: Annotated[list[str] | None, typer.Option(help="KEY=VALUE (repeat)")] = None,
    workdir: Annotated[Path | None, typer.Option(help="directory to upload")] = None,
    max_retries: Annotated[int, typer.Option(help="re-queues after a lost attempt")] = 2,
    priority: Annotated[int, typer.Option()] = 0,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="do not wait")] = False,
    max_price: Annotated[str | None, typer.Option(help="credits per GPU-hour, at most")] = None,
    min_reliability: Annotated[
        float | None, typer.Option(help="lowest node reputation accepted, 0..1")
    ] = None,
    image: Annotated[
        str | None, typer.Option(help="container image to run in (implies --isolation container)")
    ] = None,
    isolation: Annotated[
        str | None, typer.Option(help="least isolation accepted: none | sandbox | container")
    ] = None,
    owner: Annotated[
        list[str] | None, typer.Option(help="run only on nodes of this account (repeat)")
    ] = None,
    interruptible: Annotated[
        bool,
        typer.Option(help="may be preempted by other work; pays the interruptible price"),
    ] = False,
) -> None:
    """Run a command on the network: `gpunet run --gpus 1 -- python train.py`."""
    envs: dict[str, str] = {}
    for item in env or []:
        k, sep, v = item.partition("=")
        if not sep:
            raise ValidationFailed("env", f"{item!r} is not KEY=VALUE")
        envs[k] = v
    spec = {
        "name": name or Path(command[0]).name,
        "command": command,
        "env": envs,
        "max_retries": max_retries,
        "priority": priority,
        "resources": {
            "gpus": gpus,
            "gpu_models": gpu_model or [],
            "min_gpu_memory_gb": min_gpu_memory_gb,
        },
    }
    res: dict[str, Any] = spec["resources"]  # type: ignore[assignment]
    if nodes != 1:
        res["nodes"] = nodes
    if site is not None:
        res["site"] = site
    if launcher is not None:
        spec["launcher"] = launcher
    if interruptible:
        spec["interruptible"] = True
    if max_price is not None:
        spec["max_price"] = max_price
    if min_reliability is not None:
        spec["min_reliability"] = min_reliability
    if image is not None:
        spec["image"] = image
    if isolation is not None:
        res["isolation"] = isolation
    if owner:
        res["owners"] = owner
    with Client() as client:
        job = client.submit(spec, workdir=workdir)
        job_id = job["id"]
        if detach:
            console.print(job_id)
            return
        _follow(client, job_id, say_where=True)


JOB_COLUMNS: list[Column[R.JobSummary]] = [
    ("ID", lambda j: j.id),
    ("NAME", lambda j: j.name),
    ("STATE", lambda j: styled_state(j.state)),
    ("ACCOUNT", lambda j: j.account or j.account_id),
    ("GPUS", lambda j: j.gpus),
    ("EXIT", lambda j: j.exit_code),
    ("SUBMITTED", lambda j: formats.when(j.created_at)),
    ("STARTED", lambda j: formats.when(j.started_at)),
    ("ENDED", lambda j: formats.when(j.finished_at)),
]


ARRAY_COLUMNS: list[Column[R.JobSummary]] = [
    ("INDEX", lambda j: j.array_index),
    *JOB_COLUMNS,
]


@jobs_app.callback()
def jobs_list(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option(help="only jobs in this state")] = None,
    limit: Annotated[int, typer.Option(help="at most this many")] = 50,
    array: Annotated[
        str | None, typer.Option("--array", help="the tasks of this job array (arr-...)")
    ] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """List your jobs (newest first), or a job array's tasks in index order."""
    if ctx.invoked_subcommand:
        return
    if array is not None and limit == 50:
        limit = MAX_ARRAY  # an array's tasks: all of them unless --limit says otherwise
    with Client() as client:
        if json_out:
            print_json(client.jobs(state, limit, array))
            return
        jobs = client.job_models(state, limit, array)
    if quiet:
        print_ids(j.id for j in jobs)
        return
    model_table(jobs, ARRAY_COLUMNS if array else JOB_COLUMNS)


@jobs_app.command("show")
def jobs_show(job_id: str, json_out: JsonOpt = False) -> None:
    """A job in full: state, exit code, times, node and GPUs, attempts."""
    with Client() as client:
        if json_out:
            print_json(client.job(job_id))
            return
        job = client.job_model(job_id)
    show_job(job)


def show_job(job: R.Job) -> None:
    """`gpunet jobs show`: the job's fields, what it asks of its node, energy, attempts."""
    console.print(f"[bold]{job.id}[/] {job.name}  {styled_state(job.state)}")
    fields: list[tuple[str, str]] = [
        ("account", job.account or job.account_id),
        ("exit_code", fmt(job.exit_code)),
        ("reason", job.reason or "-"),
        ("node_id", fmt(job.node_id)),
        ("gpu_ids", formats.items(job.gpu_ids)),
        ("created_at", formats.when(job.created_at)),
        ("started_at", formats.when(job.started_at)),
        ("finished_at", formats.when(job.finished_at)),
        ("retries_used", str(job.retries_used)),
        ("max_retries", str(job.max_retries)),
    ]
    for key, value in fields:
        console.print(f"  {key:13} {value}", markup=False, highlight=False)
    cmd = job.spec["command"]
    console.print(f"  {'command':13} {cmd if isinstance(cmd, str) else ' '.join(cmd)}")
    for line in placement_terms(job.spec):
        console.print(f"  {line}")
    if job.energy.gpus:
        from gpunet.cli.gpus import energy_line

        console.print(f"  {'energy':13} {energy_line(job.energy)}")
    if job.attempts:
        gang = any(a.gang_size > 1 for a in job.attempts)
        attempt_columns: list[Column[R.Attempt]] = [
            ("#", lambda a: a.number),
            *([("RANK", lambda a: a.rank)] if gang else []),  # a gang's members
            ("ATTEMPT", lambda a: a.id),
            ("NODE", lambda a: a.node_id),
            ("GPUS", lambda a: formats.items(a.gpu_ids)),
            ("STATE", lambda a: a.state),
            ("EXIT", lambda a: a.exit_code),
            ("STARTED", lambda a: formats.when(a.started_at)),
            ("RAN", lambda a: formats.duration(a.runtime_s)),
            ("REASON", lambda a: a.reason),
        ]
        model_table(job.attempts, attempt_columns, title="attempts")


def placement_terms(spec: dict[str, Any]) -> list[str]:
    """Lines for what a job asks of its node beyond GPUs (shown only when set)."""
    res = spec.get("resources") or {}
    out = []
    if (res.get("nodes") or 1) > 1:
        out.append(f"{'nodes':13} {res['nodes']} x {res.get('gpus', 1)} GPU(s), started together")
    if res.get("site"):
        out.append(f"{'site':13} {res['site']}")
    if spec.get("launcher") not in (None, "none"):
        out.append(f"{'launcher':13} {spec['launcher']}")
    if spec.get("image"):
        out.append(f"{'image':13} {spec['image']}")
    if res.get("isolation") not in (None, "none"):
        out.append(f"{'isolation':13} at least {res['isolation']}")
    if res.get("owners"):
        out.append(f"{'owners':13} {', '.join(res['owners'])}")
    asks = [
        f"{formats.significant(res['cpus'])} CPUs" if res.get("cpus") else "",
        f"{formats.gb(res['memory_gb'])} memory" if res.get("memory_gb") else "",
    ]
    if any(asks):
        out.append(f"{'requests':13} {', '.join(a for a in asks if a)}")
    return out


@jobs_app.command("events")
def jobs_events(job_id: str, json_out: JsonOpt = False) -> None:
    """Every state transition of a job, timestamped."""
    with Client() as client:
        if json_out:
            print_json(client.events(job_id))
            return
        events = client.event_models(job_id)
    columns: list[Column[R.JobEvent]] = [
        ("AT", lambda e: formats.when(e.at)),
        ("FROM", lambda e: e.from_),
        ("TO", lambda e: e.to),
        ("REASON", lambda e: e.reason),
        ("BY", lambda e: e.actor),
    ]
    model_table(events, columns)


@jobs_app.command("checkpoints")
def jobs_checkpoints(job_id: str, json_out: JsonOpt = False) -> None:
    """The job's complete checkpoints, newest first (its next attempt starts from the first)."""
    with Client() as client:
        if json_out:
            print_json(client.checkpoints(job_id))
            return
        found = client.checkpoint_models(job_id)
    columns: list[Column[R.Checkpoint]] = [
        ("ID", lambda c: c.id),
        ("SAVED", lambda c: formats.when(c.completed_at)),
        ("ATTEMPT", lambda c: c.attempt_id),
        ("FILES", lambda c: str(c.files)),
        ("SIZE", lambda c: formats.size(c.size)),
    ]
    model_table(found, columns)


@jobs_app.command("why")
def jobs_why(job_id: str, json_out: JsonOpt = False) -> None:
    """Why a pending job is not running, and where it would go."""
    with Client() as client:
        if json_out:
            print_json(client.why(job_id))
            return
        res = client.why_model(job_id)
    console.print(f"{res.job_id} ({res.state}): {res.summary}")
    if res.note:
        console.print(f"  {res.note}")
    if res.would_place:
        wp = res.would_place
        if wp.members:
            for rank, m in enumerate(wp.members):
                console.print(
                    f"  next placement: rank {rank} {m.node_id} GPUs {','.join(m.gpu_ids)}"
                )
        else:
            console.print(f"  next placement: {wp.node_id} GPUs {','.join(wp.gpu_ids)}")


def logs(
    job_id: str,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="until the job ends")] = False,
    rank: Annotated[
        int | None,
        typer.Option(help="a multi-node job: only this rank's output (default: all, prefixed)"),
    ] = None,
) -> None:
    """Print a job's logs."""
    with Client() as client:
        if follow:
            _stream_logs(client, job_id, rank)
            return
        after = 0
        pre = RankPrefix()
        while True:
            page = client.logs(job_id, after, rank)
            for c in page["chunks"]:
                (sys.stderr if c["stream"] == "stderr" else sys.stdout).write(pre(c))
            if not page["chunks"]:
                break
            after = page["next"]


def cancel(job_id: str) -> None:
    """Cancel a job (its whole process group is stopped), or every task of a job array
    (an arr-... id)."""
    with Client() as client:
        if job_id.startswith("arr-"):
            out = client.cancel_array(job_id)
            console.print(f"{job_id}: {out['cancelled']} of {out['tasks']} tasks cancelled")
            return
        job = client.cancel(job_id)
    console.print(f"{job['id']}: {styled_state(job['state'])}")
