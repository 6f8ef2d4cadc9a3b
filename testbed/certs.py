"""A throwaway certificate authority for the embedded servers, made with the openssl CLI."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class CertificateAuthority:
    cert: Path
    key: Path

    def issue(self, name: str, *, sans: tuple[str, ...] = ("IP:127.0.0.1", "DNS:localhost"),
              client: bool = False) -> KeyPair:
        """A leaf certificate for ``name`` signed by this CA, valid for loopback."""
        directory = self.cert.parent
        key, csr, cert = (directory / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
        ext_file = directory / f"{name}.ext"
        usage = "serverAuth,clientAuth" if client else "serverAuth"
        ext_file.write_text(
            f"subjectAltName={','.join(sans)}\n"
            f"extendedKeyUsage={usage}\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "basicConstraints=critical,CA:FALSE\n"
        )
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-keyout", key, "-subj", f"/CN={name}", "-out", csr)
        _openssl("x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.key,
                 "-CAcreateserial", "-days", "825", "-sha256", "-extfile", ext_file, "-out", cert)
        return KeyPair(cert=cert, key=key)


def make_ca(directory: Path, name: str = "plugforge-testbed-ca") -> CertificateAuthority:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "ca.crt", directory / "ca.key"
    if not cert.exists():
        _openssl("req", "-x509", "-new", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                 "-days", "3650", "-subj", f"/CN={name}",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")
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
