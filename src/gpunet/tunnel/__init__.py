"""The tunnel between the coordinator and its agents: framing, flow control, the hub."""
