"""gpunet: pool GPUs from many owners into one self-hosted network."""

__version__ = "0.1.0"
