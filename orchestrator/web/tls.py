"""HTTPS for ``strato serve``: the configured certificate, or a self-signed one made on first run.

libcloud and the Go SDK speak only HTTPS.  Without ``tls_cert``/``tls_key`` the API node makes
an ECDSA P-256 key and a ten-year self-signed certificate (names: localhost, 127.0.0.1, ::1,
this machine's host name and the ``tls_listen`` host) in ``<data_dir>/tls/`` once, and reuses
them; clients trust that file (or pin the SHA-256 fingerprint ``strato serve`` prints).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path
    generated: bool

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the DER certificate, as ``AA:BB:…`` (what browsers and ``openssl x509 -fingerprint`` show)."""
        cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
        return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context


def _names(host: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for name in dict.fromkeys(["localhost", "127.0.0.1", "::1", socket.gethostname(), host]):
        if not name or name in ("0.0.0.0", "::"):
            continue
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            names.append(x509.DNSName(name))
    return names


def self_signed(cert_path: Path, key_path: Path, host: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Strato API node {socket.gethostname()}")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName(_names(host)), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    key_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def certificate(data_dir: Path, cert: str | None, key: str | None, host: str) -> Certificate:
    """The configured pair, or the data directory's self-signed one (made when missing)."""
    if cert or key:
        if not (cert and key):
            raise ValueError("tls_cert and tls_key go together")
        return Certificate(Path(cert), Path(key), generated=False)
    cert_path, key_path = data_dir / "tls" / "cert.pem", data_dir / "tls" / "key.pem"
    generated = not (cert_path.exists() and key_path.exists())
    if generated:
        self_signed(cert_path, key_path, host)
    return Certificate(cert_path, key_path, generated)
