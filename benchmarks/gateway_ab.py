"""Gateway A/B benchmark: what the gateway adds to a request with two versions of gpunet
side by side, on a machine whose load changes from one minute to the next.

Two networks run at once, each a ``gpunet server`` (SQLite) and one agent with the no-op
replica of benchmarks/gateway.py, one from each source tree (``OLD`` and ``NEW``: checkouts
of gpunet, e.g. ``git worktree add /tmp/old HEAD~1``). Sequential requests on one keep-alive
connection per path (direct to each replica, and through each gateway), in blocks of
``--block`` over ``--rounds`` rounds, the four paths' order rotated every round, so both
versions see the same load; p50 and p99 of each, and the p50 each gateway adds.

    python benchmarks/gateway_ab.py OLD NEW --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway import network, noop_service, pct  # noqa: E402

from tests.e2e.procs import Network  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old", type=Path, help="a gpunet checkout: the version to compare with")
    ap.add_argument("new", type=Path, help="a gpunet checkout: the version to measure")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--block", type=int, default=300)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    keep = os.environ.get("PYTHONPATH")
    nets: list[Network] = []
    clients: dict[str, tuple[httpx.Client, str]] = {}
    with tempfile.TemporaryDirectory(prefix="gpunet-ab-") as tmp:
        try:
            for tag, tree in (("old", a.old), ("new", a.new)):
                (Path(tmp) / tag).mkdir()
                # the network's processes run the code of this source tree
                root = tree.resolve()
                os.environ["PYTHONPATH"] = f"{root / 'src'}{os.pathsep}{root}"
                n = network(Path(tmp) / tag)
                nets.append(n)
                direct, gateway = noop_service(n, Path(tmp) / tag)
                auth = {"Authorization": f"Bearer {n.user}"}
                clients[f"{tag} direct"] = (httpx.Client(timeout=30), direct)
                clients[f"{tag} gateway"] = (httpx.Client(timeout=30, headers=auth), gateway)
            for c, url in clients.values():  # warm every connection
                for _ in range(100):
                    c.get(url).raise_for_status()
            times: dict[str, list[float]] = {k: [] for k in clients}
            keys = list(clients)
            loads = [os.getloadavg()[0]]
            for r in range(a.rounds):
                order = keys[r % 4 :] + keys[: r % 4]
                for k in order if r % 2 == 0 else order[::-1]:
                    c, url = clients[k]
                    for _ in range(a.block):
                        t = time.perf_counter()
                        resp = c.get(url)
                        times[k].append(time.perf_counter() - t)
                        assert resp.status_code == 200, resp.text
                loads.append(os.getloadavg()[0])
        finally:
            for c, _ in clients.values():
                c.close()
            for n in nets:
                n.close()
            if keep is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = keep
    out: dict[str, Any] = {
        k: {"n": len(v), "p50_ms": pct(v, 0.5) * 1e3, "p99_ms": pct(v, 0.99) * 1e3}
        for k, v in times.items()
    }
    for tag in ("old", "new"):
        out[f"{tag} added_p50_ms"] = (
            out[f"{tag} gateway"]["p50_ms"] - out[f"{tag} direct"]["p50_ms"]
        )
    out["load_average_1m"] = [round(x, 2) for x in loads]
    if a.json:
        print(json.dumps(out, indent=2))
        return
    for k in keys:
        print(f"{k:12} p50 {out[k]['p50_ms']:.2f} ms  p99 {out[k]['p99_ms']:.2f} ms")
    for tag in ("old", "new"):
        print(f"added by the {tag} gateway: p50 {out[f'{tag} added_p50_ms']:.2f} ms")
    print(f"load average (1 min) per round: {out['load_average_1m']}")


if __name__ == "__main__":
    main()
