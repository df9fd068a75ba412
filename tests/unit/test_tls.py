"""``flux2-edit cert`` (service/tls.py): a CA and a server certificate strict verifiers accept."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from service.tls import LocalCertificates, write_local_certificates


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> LocalCertificates:
    return write_local_certificates(tmp_path_factory.mktemp("certs"))


def _load(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


@pytest.mark.parametrize(
    "name",
    [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ],
    ids=["localhost", "127.0.0.1", "::1"],
)
def test_strict_rfc5280_verifier_accepts_the_chain(
    files: LocalCertificates, name: x509.DNSName | x509.IPAddress
) -> None:
    """cryptography's verifier applies RFC 5280 and the CA/B Forum profile strictly."""
    [ca] = _load(files.ca)
    [leaf] = _load(files.cert)
    verifier = (
        PolicyBuilder().store(Store([ca])).time(dt.datetime.now(dt.UTC)).build_server_verifier(name)  # type: ignore[arg-type]
    )
    chain = verifier.verify(leaf, [])
    assert chain == [leaf, ca]


def test_the_verifier_is_strict_enough_to_refuse_a_ca_as_server_certificate(
    files: LocalCertificates,
) -> None:
    """What the old self-signed certificate (CA=True, used as the server's) ran into."""
    [ca] = _load(files.ca)
    verifier = PolicyBuilder().store(Store([ca])).build_server_verifier(x509.DNSName("localhost"))
    with pytest.raises(VerificationError):
        verifier.verify(ca, [])


def test_extensions(files: LocalCertificates) -> None:
    [ca] = _load(files.ca)
    [leaf] = _load(files.cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ca_usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert ca_usage.critical
    assert ca_usage.value.key_cert_sign
    basic = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert not basic.value.ca
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert not usage.key_cert_sign
    assert leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == (
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    )
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert leaf.issuer == ca.subject != leaf.subject
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= dt.timedelta(days=398)


def test_files_and_modes(files: LocalCertificates) -> None:
    assert sorted(p.name for p in files.ca.parent.iterdir()) == ["ca.pem", "cert.pem", "key.pem"]
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in files.key.read_bytes()
    assert b"PRIVATE KEY" not in files.ca.read_bytes() + files.cert.read_bytes()


def test_every_run_makes_a_new_ca(tmp_path: Path, files: LocalCertificates) -> None:
    again = write_local_certificates(tmp_path)
    assert again.ca.read_bytes() != files.ca.read_bytes()


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_tls_handshake_with_openssl_strict_checks(files: LocalCertificates, host: str) -> None:
    """A real handshake: the client trusts only ca.pem, with VERIFY_X509_STRICT (a default from
    Python 3.13 on) and hostname checking."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(files.cert, files.key)
    client_context = ssl.create_default_context(cafile=str(files.ca))
    client_context.verify_flags |= ssl.VERIFY_X509_STRICT
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        errors: list[BaseException] = []

        def serve() -> None:
            try:
                connection, _ = listener.accept()
                with server_context.wrap_socket(connection, server_side=True) as tls:
                    tls.sendall(b"ok")
            except (OSError, ssl.SSLError) as exc:
                errors.append(exc)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            client_context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            assert tls.recv(2) == b"ok"
        thread.join(timeout=5)
    assert errors == []
