"""Where gpunet keeps its files, and the client's saved connection."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("GPUNET_HOME") or Path.home() / ".gpunet").expanduser()


@dataclass
class ClientConfig:
    url: str
    token: str
    ca_file: str | None = None  # PEM of the private CA that signed the coordinator's certificate

    @staticmethod
    def path() -> Path:
        return home() / "client.json"

    @classmethod
    def load(cls) -> ClientConfig | None:
        """Environment (GPUNET_URL, GPUNET_TOKEN, GPUNET_CA_FILE) first, then the saved file."""
        saved: dict[str, str] = {}
        with contextlib.suppress(OSError, ValueError):
            saved = json.loads(cls.path().read_text())
        url = os.environ.get("GPUNET_URL") or saved.get("url")
        token = os.environ.get("GPUNET_TOKEN") or saved.get("token")
        # a saved CA belongs to the saved coordinator, not to one named in the environment
        same = url == saved.get("url")
        ca_file = os.environ.get("GPUNET_CA_FILE") or (saved.get("ca_file") if same else None)
        return cls(url, token, ca_file) if url and token else None

    def save(self) -> Path:
        p = self.path()
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        data = {"url": self.url, "token": self.token}
        if self.ca_file:
            data["ca_file"] = self.ca_file
        tmp.write_text(json.dumps(data, indent=2))
        os.chmod(tmp, 0o600)
        tmp.replace(p)
        return p
