"""Trace-driven simulator: replays job traces on a simulated clock with the live scheduler."""

from gpunet.sim.engine import GAVEL_COMPAT, JobOutcome, SimConfig, SimResult, simulate
from gpunet.sim.fleet import Fleet, class_key, load_throughputs, parse_fleet
from gpunet.sim.report import metrics, plot
from gpunet.sim.traces import TraceJob, parse_trace, read_trace

__all__ = [
    "GAVEL_COMPAT",
    "Fleet",
    "JobOutcome",
    "SimConfig",
    "SimResult",
    "TraceJob",
    "class_key",
    "load_throughputs",
    "metrics",
    "parse_fleet",
    "parse_trace",
    "plot",
    "read_trace",
    "simulate",
]
