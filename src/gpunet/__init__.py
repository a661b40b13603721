"""gpunet: pool GPUs from many owners into one self-hosted network."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from gpunet.sdk.client import Client


def __getattr__(name: str) -> Any:
    # imported lazily so that the agent and core do not pay for httpx at import
    if name == "Client":
        from gpunet.sdk.client import Client

        return Client
    raise AttributeError(name)


__all__ = ["Client", "__version__"]
