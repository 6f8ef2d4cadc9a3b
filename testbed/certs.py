"""A throwaway certificate authority for the embedded servers (``plugforge.pki`` on files)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from plugforge import pki


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class CertificateAuthority:
    cert: Path
    key: Path

    def issue(self, name: str, *, sans: tuple[str, ...] = ("127.0.0.1", "localhost"),
              client: bool = False) -> KeyPair:
        """A leaf certificate for ``name`` signed by this CA, valid for ``sans``."""
        leaf = pki.issue(pki.Pem(self.cert.read_bytes(), self.key.read_bytes()), name, sans,
                         client=client)
        cert, key = (self.cert.parent / f"{name}.{ext}" for ext in ("crt", "key"))
        key.write_bytes(leaf.key)
        cert.write_bytes(leaf.cert)
        return KeyPair(cert=cert, key=key)


def make_ca(directory: Path, name: str = "plugforge-testbed-ca") -> CertificateAuthority:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "ca.crt", directory / "ca.key"
    if not cert.exists():
        ca = pki.new_ca(name)
        key.write_bytes(ca.key)
        cert.write_bytes(ca.cert)
    return CertificateAuthority(cert=cert, key=key)


def make_rsa_keypair(directory: Path, name: str) -> KeyPair:
    """An RSA key and its public half (``cert`` holds the PEM public key), e.g. for SA tokens."""
    key, pub = directory / f"{name}.key", directory / f"{name}.pub"
    if not key.exists():
        _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key)
        _openssl("pkey", "-in", key, "-pubout", "-out", pub)
    return KeyPair(cert=pub, key=key)


def _openssl(*args: object) -> None:
    result = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")
