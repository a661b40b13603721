"""The agent's side of gangs: the rendezvous check, the members' variables, the Ray wrapper."""

from __future__ import annotations

import asyncio
import socket

import pytest

from gpunet.agent import rendezvous
from gpunet.agent.loop import attempt_vars, launch_spec, ray_command
from gpunet.agent.sandbox.env import job_env
from gpunet.core.gangs import DEFAULT_PORTS, gang_env, parse_ports, pick_port
from gpunet.wire.agent import GangInfo, StartItem


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _gang(rank: int, port: int, size: int = 3, timeout: float = 5.0) -> GangInfo:
    return GangInfo(
        rank=rank,
        addrs=["127.0.0.1"] * size,
        master_port=port,
        gpus_per_node=2,
        rendezvous_timeout_s=timeout,
    )


def test_every_member_reaches_rank_0_and_the_port_is_free_again_after() -> None:
    port = _port()

    async def main() -> None:
        # members may come before rank 0 listens: they retry
        joins = [asyncio.create_task(rendezvous.check(_gang(r, port), "job-1", 2)) for r in (1, 2)]
        await asyncio.sleep(0.3)
        await asyncio.wait_for(rendezvous.check(_gang(0, port), "job-1", 2), 10)
        await asyncio.wait_for(asyncio.gather(*joins), 10)

    asyncio.run(main())
    with socket.socket() as s:  # closed: the job's own rendezvous (torchrun) can take it
        s.bind(("0.0.0.0", port))


def test_a_member_that_cannot_reach_rank_0_fails_fast_with_the_reason() -> None:
    port = _port()  # nobody listens
    with pytest.raises(rendezvous.RendezvousFailed, match=r"rank 1 cannot reach rank 0 at"):
        asyncio.run(rendezvous.join(_gang(1, port, timeout=0.8), "job-1", 1))


def test_rank_0_fails_when_a_member_never_comes_or_its_port_is_taken() -> None:
    port = _port()
    with pytest.raises(rendezvous.RendezvousFailed, match=r"rank\(s\) 1, 2 .*did not reach"):
        asyncio.run(rendezvous.serve(_gang(0, port, timeout=0.5), "job-1", 1))
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", port))
        busy.listen()
        with pytest.raises(rendezvous.RendezvousFailed, match=f"cannot open port {port}"):
            asyncio.run(rendezvous.serve(_gang(0, port, timeout=0.5), "job-1", 1))


def test_a_member_of_another_gang_is_not_counted() -> None:
    port = _port()

    async def main() -> None:
        server = asyncio.create_task(rendezvous.serve(_gang(0, port, 2, 1.5), "job-1", 1))
        with pytest.raises(rendezvous.RendezvousFailed, match="answered"):
            await rendezvous.join(_gang(1, port, 2, 1.0), "job-1", 7)  # an older attempt
        with pytest.raises(rendezvous.RendezvousFailed, match="did not reach"):
            await server

    asyncio.run(main())


def test_members_get_torchrun_ready_variables_the_job_cannot_override() -> None:
    item = StartItem(
        attempt_id="att-1",
        job_id="job-1",
        fencing_token=3,
        number=3,
        gpu_indices=[0, 1],
        gpu_ids=["n/0", "n/1"],
        spec={"command": ["true"], "env": {"NODE_RANK": "9", "FOO": "bar"}},
        gang=GangInfo(rank=1, addrs=["10.0.0.5", "10.0.0.6"], master_port=29511, gpus_per_node=2),
    )
    env = job_env(item.spec, item.gpu_indices, attempt_vars(item), home="/workspace")
    assert env["MASTER_ADDR"] == "10.0.0.5" and env["MASTER_PORT"] == "29511"
    assert (env["NNODES"], env["NODE_RANK"], env["GPUS_PER_NODE"]) == ("2", "1", "2")
    assert env["WORLD_SIZE"] == "4" and env["GPUNET_NODE_ADDRS"] == "10.0.0.5,10.0.0.6"
    assert env["FOO"] == "bar"
    assert "GLOO_SOCKET_IFNAME" not in env  # 10.0.0.6 is no address of this host

    local = item.model_copy(
        update={
            "gang": GangInfo(
                rank=1, addrs=["127.0.0.1", "127.0.0.1"], master_port=29511, gpus_per_node=2
            ),
            "spec": {"command": ["true"], "env": {"NCCL_SOCKET_IFNAME": "eth9"}},
        }
    )
    env = job_env(local.spec, local.gpu_indices, attempt_vars(local), home="/workspace")
    assert env["GLOO_SOCKET_IFNAME"] == rendezvous.interface_of("127.0.0.1") == "lo"
    assert env["NCCL_SOCKET_IFNAME"] == "eth9"  # the job's own choice stands

    plain = item.model_copy(update={"gang": None})
    env = job_env(plain.spec, plain.gpu_indices, attempt_vars(plain), home="/workspace")
    assert (env["MASTER_ADDR"], env["NNODES"], env["WORLD_SIZE"]) == ("127.0.0.1", "1", "2")
    assert 0 < int(env["MASTER_PORT"]) < 65536


def test_port_ranges_and_picks() -> None:
    assert parse_ports(None) == DEFAULT_PORTS
    assert parse_ports("30000-30010") == (30000, 30010)
    assert parse_ports("31000") == (31000, 31000)
    for bad in ("x", "100-200", "3000-2000", "1-70000"):
        with pytest.raises(ValueError):
            parse_ports(bad)
    assert pick_port((30000, 30002), {30000, 30001}) == 30002
    assert pick_port((30000, 30001), {30000, 30001}) is None
    picks = {pick_port((30000, 30999), set()) for _ in range(50)}
    assert len(picks) > 10  # spread out: a re-placed gang most likely gets another port
    assert (
        gang_env(rank=0, addrs=["a", "b", "c"], master_port=1, gpus_per_node=4)["WORLD_SIZE"]
        == "12"
    )


def test_a_ray_gang_wraps_the_command_head_and_workers() -> None:
    head = ray_command(["python3", "train.py", "--x", "a b"], _gang(0, 29500, 2))
    assert head[:2] == ["/bin/sh", "-c"]
    assert "ray start --head" in head[2] and '--port="$MASTER_PORT"' in head[2]
    assert '--num-gpus="$GPUS_PER_NODE"' in head[2] and "'a b'" in head[2]
    assert "--temp-dir" in head[2]  # its own: never another member's or another job's Ray
    worker = ray_command(["python3", "train.py"], _gang(1, 29500, 2))
    assert '--address="$RAY_ADDRESS"' in worker[2] and "--block" in worker[2]
    assert "train.py" not in worker[2]  # only the head runs the driver
    item = StartItem(
        attempt_id="a",
        job_id="j",
        fencing_token=1,
        number=1,
        gpu_indices=[0],
        gpu_ids=["n/0"],
        spec={"command": "echo hi", "launcher": "ray"},
        gang=_gang(1, 29500, 2),
    )
    assert launch_spec(item)["command"][0] == "/bin/sh"
    assert launch_spec(item.model_copy(update={"spec": {"command": "echo"}}))["command"] == "echo"


def test_a_gangs_output_is_prefixed_by_rank_line_by_line() -> None:
    from gpunet.cli.jobs import RankPrefix

    pre = RankPrefix()
    out = [
        pre({"rank": 0, "stream": "stdout", "data": "a\nb"}),
        pre({"rank": 1, "stream": "stdout", "data": "x\n"}),
        pre({"rank": 0, "stream": "stdout", "data": "c\nd\n"}),
        pre({"rank": None, "stream": "stdout", "data": "plain\n"}),
    ]
    assert "".join(out) == "[rank 0] a\n[rank 0] b[rank 1] x\nc\n[rank 0] d\nplain\n"


def test_the_default_advertise_address_is_the_route_to_the_coordinator() -> None:
    assert rendezvous.default_advertise_addr("http://127.0.0.1:8080") == "127.0.0.1"
    assert rendezvous.default_advertise_addr("https://localhost") in ("127.0.0.1", "::1")
    # a name that does not resolve: the loopback rather than a failure at start
    assert rendezvous.default_advertise_addr("https://no-such-host.invalid") == "127.0.0.1"
