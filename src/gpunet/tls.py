"""TLS for clients (CLI, SDK, agent): which certificates to trust, and errors people can act on.

By default a client trusts the system's certificate store; ``ca_file`` names the PEM bundle of
a private CA instead (a coordinator whose certificate the network's operator signed)."""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path

from gpunet.errors import ValidationFailed


def client_context(ca_file: str | Path | None = None, field: str = "ca_file") -> ssl.SSLContext:
    """A context that verifies the server's certificate and host name: against ``ca_file``
    when given, else the system store (certifi's bundle where the system has none)."""
    if ca_file is not None:
        path = Path(ca_file).expanduser()
        if not path.is_file():
            raise ValidationFailed(field, f"no such file: {path}")
        try:
            return ssl.create_default_context(cafile=str(path))
        except (ssl.SSLError, ValueError) as exc:
            raise ValidationFailed(field, f"{path} holds no PEM CA certificate ({exc})") from None
    ctx = ssl.create_default_context()
    if not ctx.cert_store_stats().get("x509_ca"):
        import certifi

        ctx.load_verify_locations(certifi.where())
    return ctx


def check_server_pair(cert: Path, key: Path) -> None:
    """Fail now, naming the field, when the certificate and key cannot serve TLS."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as exc:
        raise ValidationFailed(
            "tls_cert", f"cannot load {cert} with the key {key}: {exc.strerror or exc}"
        ) from None


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def untrusted_reason(exc: BaseException) -> str | None:
    """The verifier's reason when ``exc`` (or what caused it) is a rejected server
    certificate; None for any other failure."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return str(seen.verify_message or seen.reason or "certificate verify failed")
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    return "certificate verify failed" if "CERTIFICATE_VERIFY_FAILED" in text else None


def untrusted_message(url: str, reason: str) -> str:
    return (
        f"the coordinator at {url} presented a TLS certificate this client does not trust "
        f"({reason}); pass --ca-file FILE (or set GPUNET_CA_FILE) naming the CA that signed it"
    )
