"""Server-side SVG plots (matplotlib, Agg), cached by their data: an unchanged page polled
every few seconds costs a dictionary lookup, not a render. matplotlib is imported at the
first plot, not with the coordinator (it cost every start most of a second)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gpunet.services import tco

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_CACHE_SIZE = 128
_cache: OrderedDict[str, bytes] = OrderedDict()
_lock = threading.Lock()  # pyplot (tco.plot) keeps global state: one render at a time
_ready = False


def _matplotlib() -> None:
    """Choose the Agg backend and stable SVG ids, once (called under ``_lock``)."""
    global _ready
    if not _ready:
        import matplotlib

        matplotlib.use("Agg")
        matplotlib.rcParams["svg.hashsalt"] = "gpunet"  # identical data, identical SVG
        _ready = True


def _figure(width: float, height: float) -> Figure:
    _matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _cached(kind: str, data: Any, render: Callable[[], bytes]) -> bytes:
    key = kind + hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
    with _lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
        svg = render()
        _cache[key] = svg
        if len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
        return svg


def _svg(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    return buf.getvalue()


def _times(
    points: Sequence[dict[str, Any]],
) -> list[Any]:  # datetimes (matplotlib stubs want arrays)
    return [datetime.fromisoformat(str(p["at"]).replace("Z", "+00:00")) for p in points]


def _empty(ax: Any, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def benchmarks(rows: list[dict[str, Any]]) -> bytes:
    """A GPU's benchmark scores (% of its model's reference) over time."""
    points = [r for r in rows if r.get("score_pct") is not None]

    def render() -> bytes:
        fig = _figure(6.4, 2.6)
        ax = fig.add_subplot()
        if not points:
            _empty(ax, "benchmark scores")
        else:
            ax.plot(_times(points), [p["score_pct"] for p in points], marker="o")
            flagged = [p for p in points if p.get("flagged")]
            if flagged:
                ax.scatter(
                    _times(flagged),
                    [p["score_pct"] for p in flagged],
                    color="tab:red",
                    zorder=3,
                    label="flagged",
                )
                ax.legend(loc="lower left")
            ax.set_ylabel("% of reference")
            fig.autofmt_xdate()
        fig.tight_layout()
        return _svg(fig)

    return _cached("bench", points, render)


def money(history: dict[str, list[dict[str, Any]]]) -> bytes:
    """Balance, credits earned and credits spent over time."""

    def render() -> bytes:
        fig = _figure(6.4, 2.8)
        ax = fig.add_subplot()
        drawn = False
        for key, label in (("balance", "balance"), ("earned", "earned"), ("spent", "spent")):
            pts = history.get(key) or []
            if pts:
                ax.step(_times(pts), [float(p["value"]) for p in pts], where="post", label=label)
                drawn = True
        if drawn:
            ax.set_ylabel("credits")
            ax.legend(loc="upper left")
            fig.autofmt_xdate()
        else:
            _empty(ax, "ledger activity")
        fig.tight_layout()
        return _svg(fig)

    return _cached("money", history, render)


def tco_report(rep: dict[str, Any]) -> bytes:
    """The TCO report's own plot (``services.tco.plot``), as SVG."""

    def render() -> bytes:
        _matplotlib()
        fd, path = tempfile.mkstemp(suffix=".svg")
        os.close(fd)
        try:
            tco.plot(rep, path)  # the format follows the file's suffix
            with open(path, "rb") as fh:
                return fh.read()
        finally:
            os.unlink(path)

    return _cached("tco", rep["gpus"], render)
