"""A gang's rendezvous check, before any member starts its command.

Rank 0 opens the gang's port (MASTER_PORT) on all its addresses and waits until every other
member has connected and said which gang and rank it is; each other member connects to rank 0's
advertise address and port, retrying while rank 0 is still getting ready, and reads rank 0's
"ok". Then rank 0 closes the port (the job's own rendezvous, e.g. torchrun's, takes it) and
every member starts its command. A member that cannot reach rank 0, or a rank 0 whose port is
taken or that does not hear from every member in time, fails fast with the reason: its job is
re-queued and placed again (docs/distributed.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from urllib.parse import urlsplit

from gpunet.wire.agent import GangInfo

HELLO = "gpunet-rendezvous"
CONNECT_TRY_S = 2.0  # one connection attempt; they repeat until the deadline


class RendezvousFailed(Exception):
    """The gang cannot reach its rank 0: why, in one line."""


def _hello(job_id: str, number: int, rank: int) -> bytes:
    return f"{HELLO} {job_id} {number} {rank}\n".encode()


async def serve(gang: GangInfo, job_id: str, number: int, timeout_s: float | None = None) -> None:
    """Rank 0: open the port, wait for every other member's hello, close the port."""
    want = set(range(1, len(gang.addrs)))
    arrived: set[int] = set()
    all_in = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=5)
            parts = line.decode("utf-8", "replace").split()
            if len(parts) == 4 and parts[:3] == [HELLO, job_id, str(number)]:
                rank = int(parts[3])
                if rank in want:
                    arrived.add(rank)
                    writer.write(b"ok\n")
                    await writer.drain()
                    # the member hangs up first: the closed connection's TIME_WAIT stays on its
                    # side, so the port is free at once for the job's own rendezvous
                    with contextlib.suppress(TimeoutError, OSError):
                        await asyncio.wait_for(reader.read(), timeout=2)
                    if arrived == want:
                        all_in.set()
                    return
            writer.write(b"wrong gang\n")
            await writer.drain()
        except (OSError, ValueError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    try:
        server = await asyncio.start_server(handle, host=None, port=gang.master_port)
    except OSError as exc:
        raise RendezvousFailed(
            f"rendezvous: rank 0 cannot open port {gang.master_port}: {exc.strerror or exc}"
        ) from None
    limit = gang.rendezvous_timeout_s if timeout_s is None else timeout_s
    try:
        if want:
            await asyncio.wait_for(all_in.wait(), timeout=limit)
    except TimeoutError:
        missing = sorted(want - arrived)
        raise RendezvousFailed(
            f"rendezvous: rank(s) {', '.join(map(str, missing))} "
            f"({', '.join(gang.addrs[r] for r in missing)}) did not reach rank 0 at "
            f"{gang.addrs[0]}:{gang.master_port} within {limit:g}s"
        ) from None
    finally:
        server.close()
        with contextlib.suppress(OSError):
            await server.wait_closed()


async def join(gang: GangInfo, job_id: str, number: int, timeout_s: float | None = None) -> None:
    """A member of rank > 0: reach rank 0's port and hear its ok, retrying until the deadline
    (rank 0 may still be fetching the job's files)."""
    limit = gang.rendezvous_timeout_s if timeout_s is None else timeout_s
    host, port = gang.addrs[0], gang.master_port
    deadline = time.monotonic() + limit
    last = "no answer"
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RendezvousFailed(
                f"rendezvous: rank {gang.rank} cannot reach rank 0 at {host}:{port} "
                f"within {limit:g}s: {last}"
            )
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), timeout=min(CONNECT_TRY_S, left)
            )
            try:
                writer.write(_hello(job_id, number, gang.rank))
                await writer.drain()
                answer = await asyncio.wait_for(reader.readline(), timeout=min(5.0, left))
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            if answer.strip() == b"ok":
                return
            last = f"rank 0 answered {answer.strip()[:60]!r}"
        except TimeoutError:
            last = "timed out"
        except OSError as exc:
            last = exc.strerror or str(exc)
        await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


async def check(gang: GangInfo, job_id: str, number: int) -> None:
    """This member's side of the check: rank 0 serves, the others join."""
    if gang.rank == 0:
        await serve(gang, job_id, number)
    else:
        await join(gang, job_id, number)


def default_advertise_addr(coordinator_url: str) -> str:
    """The address this host reaches the coordinator from (the route's source address); a
    coordinator on this host's loopback: 127.0.0.1."""
    host = urlsplit(coordinator_url).hostname or "127.0.0.1"
    port = urlsplit(coordinator_url).port or 443
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError:
        return "127.0.0.1"
    for family, _, _, _, addr in infos:
        with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(addr)  # a UDP connect sends nothing: it only picks the route
            local = str(s.getsockname()[0])
            return local
    return "127.0.0.1"


def interface_of(addr: str) -> str | None:
    """The name of this host's network interface that holds ``addr`` (IPv4; a host name is
    resolved first), or None. Gloo and NCCL are told to use it: inside the sandbox the
    host name does not resolve, and they would otherwise fall back to loopback."""
    import fcntl
    import struct

    try:
        want = socket.gethostbyname(addr)
    except OSError:
        return None
    siocgifaddr = 0x8915
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                raw = fcntl.ioctl(s.fileno(), siocgifaddr, struct.pack("256s", name[:15].encode()))
            except OSError:
                continue  # no IPv4 address
            if socket.inet_ntoa(raw[20:24]) == want:
                return name
    return None


def free_local_port() -> int:
    """A free TCP port on this host, for a one-node job's MASTER_PORT."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
