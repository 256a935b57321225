"""SSH key pairs (spec §35): parse and check what a user gives, generate what they ask for.

Only RSA (1024 to 4096 bits) and ed25519 keys are accepted.  Parsing, matching and generation
are the ``cryptography`` package's; this module only picks the formats and says where a
request is wrong (``public_key``, ``private_key``, ``algorithm_type``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.db.models import KeyPair, Server
from orchestrator.domain.errors import DomainError, invalid
from orchestrator.domain.tagging import forget_resources

ALGORITHMS = ("rsa", "ed25519")
RSA_BITS = (1024, 4096)  # OpenSSH refuses smaller RSA keys; the spec caps them at 4096
GENERATED_RSA_BITS = 2048  # what upstream generates (dumps/response_autogen_keypair_create)

PublicKeyObject = rsa.RSAPublicKey | ed25519.Ed25519PublicKey
PrivateKeyObject = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class KeyMaterial:
    """What a keypair row stores about its keys."""

    public_key: str          # the OpenSSH line as given (type, base64 blob, optional comment)
    fingerprint: str
    private_key: str | None


def fingerprint(blob: bytes) -> str:
    """``ssh-keygen -l -E md5``: MD5 of the key blob, as colon-separated hex."""
    return ":".join(f"{b:02x}" for b in hashlib.md5(blob, usedforsecurity=False).digest())


def _blob(key: PublicKeyObject) -> bytes:
    return base64.b64decode(key.public_bytes(serialization.Encoding.OpenSSH,
                                             serialization.PublicFormat.OpenSSH).split()[1])


def _check_kind(key: object, point: str) -> PublicKeyObject:
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, rsa.RSAPublicKey):
        low, high = RSA_BITS
        if not low <= key.key_size <= high:
            raise invalid(f"RSA keys must have {low} to {high} bits, this one has {key.key_size}", point)
        return key
    raise invalid("Only RSA and ed25519 keys are supported", point)


def parse_public_key(text: str) -> tuple[str, PublicKeyObject]:
    """One OpenSSH public key line → (the stripped line, the key)."""
    line = text.strip()
    if not line or "\n" in line or "\r" in line:
        raise invalid("One OpenSSH public key line (e.g. 'ssh-ed25519 AAAA… comment') is required", "public_key")
    try:
        key = serialization.load_ssh_public_key(line.encode())
    except UnsupportedAlgorithm:
        raise invalid("Only RSA and ed25519 keys are supported", "public_key") from None
    except (ValueError, binascii.Error, UnicodeEncodeError):
        raise invalid("Not an OpenSSH public key line (e.g. 'ssh-ed25519 AAAA… comment')", "public_key") from None
    return line, _check_kind(key, "public_key")


def load_private_key(text: str) -> PrivateKeyObject:
    """A private key in PEM (PKCS#1, PKCS#8) or OpenSSH format, unencrypted."""
    data = text.strip().encode(errors="replace") + b"\n"
    try:
        if b"-----BEGIN OPENSSH PRIVATE KEY-----" in data:
            key: object = serialization.load_ssh_private_key(data, password=None)
        else:
            key = _load_pem(data)
    except TypeError:
        raise invalid("Encrypted private keys are not accepted; give it without a passphrase",
                      "private_key") from None
    except UnsupportedAlgorithm:
        raise invalid("Only RSA and ed25519 keys are supported", "private_key") from None
    except ValueError:
        raise invalid("Not a private key in PEM or OpenSSH format", "private_key") from None
    if not isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise invalid("Only RSA and ed25519 keys are supported", "private_key")
    _check_kind(key.public_key(), "private_key")
    return key


def _load_pem(data: bytes) -> object:
    try:
        return serialization.load_pem_private_key(data, password=None)
    except ValueError:
        if b"-----BEGIN RSA PRIVATE KEY-----" not in data:
            raise
        return _lenient_pkcs1(data)


def _lenient_pkcs1(data: bytes) -> rsa.RSAPrivateKey:
    """Upstream's own generated RSA keys (every keypair dump, so every key a user copies from there)
    encode some lengths in more bytes than DER allows, which cryptography's strict parser refuses.
    Read the nine integers of PKCS#1 with a BER length reader; cryptography builds the key from them
    and checks that they are consistent."""
    parts = data.split(b"-----")
    try:
        der = base64.b64decode(b"".join(parts[2].split()) if len(parts) > 2 else b"", validate=True)
    except binascii.Error:
        raise ValueError("not base64") from None

    def tlv(buf: bytes, at: int, tag: int) -> tuple[bytes, int]:
        if at + 2 > len(buf) or buf[at] != tag:
            raise ValueError("not PKCS#1")
        length, at = buf[at + 1], at + 2
        if length & 0x80:
            count = length & 0x7F
            if not 0 < count <= 4 or at + count > len(buf):
                raise ValueError("not PKCS#1")
            length, at = int.from_bytes(buf[at:at + count], "big"), at + count
        if at + length > len(buf):
            raise ValueError("not PKCS#1")
        return buf[at:at + length], at + length

    seq, _ = tlv(der, 0, 0x30)
    values, at = [], 0
    for _ in range(9):
        raw, at = tlv(seq, at, 0x02)
        values.append(int.from_bytes(raw, "big", signed=True))
    version, n, e, d, p, q, dmp1, dmq1, iqmp = values
    if version != 0:
        raise ValueError("multi-prime RSA keys are not supported")
    return rsa.RSAPrivateNumbers(p, q, d, dmp1, dmq1, iqmp, rsa.RSAPublicNumbers(e, n)).private_key()


def given_keys(public_key: str | None, private_key: str | None) -> KeyMaterial:
    """Keys the user brought: a public key, optionally with its private key (or only the private
    key, whose public half is then derived)."""
    if public_key is None and private_key is None:
        raise invalid("Give a public_key (and optionally its private_key), or an algorithm_type to generate a "
                      "pair", "public_key")
    errors: list[DomainError] = []
    line = key = private = None
    if public_key is not None:
        try:
            line, key = parse_public_key(public_key)
        except DomainError as e:
            errors.append(e)
    if private_key is not None:
        try:
            private = load_private_key(private_key)
        except DomainError as e:
            errors.append(e)
    if errors:
        raise DomainError.collect(errors)
    if private is not None:
        derived = private.public_key()
        if key is None:
            line, key = _openssh_line(derived), derived
        elif _blob(derived) != _blob(key):
            raise invalid("The private key does not belong to the public key", "private_key")
    assert line is not None and key is not None
    return KeyMaterial(public_key=line, fingerprint=fingerprint(_blob(key)), private_key=private_key)


def _openssh_line(key: PublicKeyObject) -> str:
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def generate(algorithm: str) -> KeyMaterial:
    """A new pair: RSA as PKCS#1 PEM (as upstream), ed25519 in OpenSSH's own private format."""
    private: PrivateKeyObject
    if algorithm == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=GENERATED_RSA_BITS)
        text = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                     serialization.NoEncryption())
    elif algorithm == "ed25519":
        private = ed25519.Ed25519PrivateKey.generate()
        text = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                     serialization.NoEncryption())
    else:
        raise invalid(f"algorithm_type must be one of {', '.join(ALGORITHMS)}", "algorithm_type")
    public = private.public_key()
    return KeyMaterial(public_key=_openssh_line(public), fingerprint=fingerprint(_blob(public)),
                       private_key=text.decode())


async def check_server_pubkeys(s: AsyncSession, uuids: list[str], owner: str) -> list[str]:
    """A server's ``pubkeys``: each one of the owner's keypairs (errors at ``N``), duplicates dropped."""
    if not uuids:
        return []
    found = set((await s.scalars(select(KeyPair.uuid).where(KeyPair.uuid.in_(uuids),
                                                              KeyPair.owner_uuid == owner))).all())
    errors = [invalid(f"Keypair {uuid} does not exist", str(i)) for i, uuid in enumerate(uuids) if uuid not in found]
    if errors:
        raise DomainError.collect(errors)
    return list(dict.fromkeys(uuids))


async def delete_keypairs(s: AsyncSession, keypairs: list[KeyPair]) -> None:
    """Delete keypairs; every server of their owners forgets them (spec §35 decision)."""
    gone = {k.uuid for k in keypairs}
    owners = {k.owner_uuid for k in keypairs}
    for server in (await s.scalars(select(Server).where(Server.owner_uuid.in_(owners)))).all():
        if gone & set(server.pubkeys):
            server.pubkeys = [uuid for uuid in server.pubkeys if uuid not in gone]
    for keypair in keypairs:
        await s.delete(keypair)
    await s.flush()
    await forget_resources(s, list(gone))
