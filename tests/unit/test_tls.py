import ssl
from pathlib import Path

import httpx
import pytest
import trustme

from gpunet.errors import ValidationFailed
from gpunet.tls import check_server_pair, client_context, is_loopback, untrusted_reason


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.0.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("coord.example.org", False),
    ],
)
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_ca_file_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValidationFailed) as err:
        client_context(tmp_path / "missing.pem")
    assert err.value.field == "ca_file" and "no such file" in err.value.reason
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ValidationFailed) as err:
        client_context(junk)
    assert err.value.field == "ca_file" and "no PEM CA certificate" in err.value.reason


def test_private_ca_is_trusted_from_its_file(tmp_path: Path) -> None:
    ca = trustme.CA()
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    ctx = client_context(path)
    assert ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.cert_store_stats()["x509_ca"] == 1


def test_mismatched_key_is_named(tmp_path: Path) -> None:
    a, b = trustme.CA().issue_cert("127.0.0.1"), trustme.CA().issue_cert("127.0.0.1")
    a.cert_chain_pems[0].write_to_path(str(tmp_path / "a.pem"))
    b.private_key_pem.write_to_path(str(tmp_path / "b.key"))
    with pytest.raises(ValidationFailed) as err:
        check_server_pair(tmp_path / "a.pem", tmp_path / "b.key")
    assert err.value.field == "tls_cert"


def test_untrusted_reason_finds_the_verify_error_in_the_chain() -> None:
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_message = "self-signed certificate in certificate chain"
    wrapped = httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] ...")
    wrapped.__cause__ = verify
    assert untrusted_reason(wrapped) == "self-signed certificate in certificate chain"
    assert untrusted_reason(httpx.ConnectError("connection refused")) is None
