"""A local certificate authority and a server certificate for localhost, 127.0.0.1 and ::1.

``flux2-edit cert --out DIR`` writes three files:

* ``ca.pem``: the CA certificate. Clients trust this one (``SSL_CERT_FILE`` for Python,
  ``NODE_EXTRA_CA_CERTS`` for node, ``curl --cacert``).
* ``cert.pem``: the server certificate, an end-entity certificate signed by that CA
  (``--ssl-certfile``).
* ``key.pem``: the server's private key (``--ssl-keyfile``), readable by its owner only.

The CA's own private key is never written: it signs this one certificate and is discarded, so
trusting ``ca.pem`` trusts nothing else. The extensions are the ones RFC 5280 and the CA/Browser
Forum ask for and strict verifiers check (cryptography's verifier, OpenSSL with
``VERIFY_X509_STRICT``, Python 3.13's defaults): the CA has ``cA`` and ``keyCertSign``, the
server certificate is not a CA, is for ``serverAuth``, and both carry key identifiers.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_NAMES: tuple[x509.GeneralName, ...] = (
    x509.DNSName("localhost"),
    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    x509.IPAddress(ipaddress.ip_address("::1")),
)


@dataclass(frozen=True)
class LocalCertificates:
    """Where :func:`write_local_certificates` put its files."""

    ca: Path  # trust this one
    cert: Path  # serve with this one ...
    key: Path  # ... and this key


def write_local_certificates(out_dir: Path, *, days: int = 365) -> LocalCertificates:
    """Write ``ca.pem``, ``cert.pem`` and ``key.pem`` into ``out_dir`` (created if needed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    not_before = now - dt.timedelta(minutes=5)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "flux2-edit"),
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"flux2-edit local CA {x509.random_serial_number():x}"[:64]
            ),
        ]
    )
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(now + dt.timedelta(days=days + 1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flux2-edit localhost")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(list(SERVER_NAMES)), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    files = LocalCertificates(
        ca=out_dir / "ca.pem", cert=out_dir / "cert.pem", key=out_dir / "key.pem"
    )
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    files.key.touch(mode=0o600)
    files.key.chmod(0o600)  # before the key is in it, whatever the umask
    files.key.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )
