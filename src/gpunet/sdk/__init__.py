from gpunet.sdk.client import Client

__all__ = ["Client"]
