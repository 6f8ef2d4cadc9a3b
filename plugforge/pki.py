"""A small private CA for plugforge's gRPC APIs, made with the ``openssl`` command line.

Why openssl and not a Python crypto library: it is on every machine that runs kubectl, and
the certificates are made once at install time, so a new dependency would buy nothing.
Keys are EC P-256; leaves carry the names (DNS or IP) clients dial, as subjectAltNames.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CA_DAYS = 3650
LEAF_DAYS = 825  # the longest leaf lifetime clients commonly accept


class PkiError(RuntimeError):
    pass


@dataclass(frozen=True)
class Pem:
    cert: bytes
    key: bytes


def subject_alt_names(names: Sequence[str]) -> str:
    """``DNS:a,IP:1.2.3.4`` for openssl; refuses names that are neither (they reach a file
    openssl parses, so a comma or newline must not get through)."""
    out = []
    for name in names:
        try:
            out.append(f"IP:{ipaddress.ip_address(name)}")
            continue
        except ValueError:
            pass
        labels = name.split(".")
        wildcard_ok = labels[0] == "*" and len(labels) > 2
        if not name or len(name) > 253 or not all(
                (label.isascii() and label.replace("-", "").isalnum() and len(label) <= 63
                 and not label.startswith("-") and not label.endswith("-"))
                for label in (labels[1:] if wildcard_ok else labels)):
            raise PkiError(f"{name!r} is not a DNS name, a wildcard (*.example.svc) or an IP "
                           "address")
        out.append(f"DNS:{name.lower()}")
    if not out:
        raise PkiError("a certificate needs at least one name")
    return ",".join(out)


def new_ca(common_name: str) -> Pem:
    with tempfile.TemporaryDirectory(prefix="plugforge-pki-") as tmp:
        d = Path(tmp)
        _openssl("req", "-x509", "-new", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", d / "ca.key",
                 "-out", d / "ca.crt", "-days", str(CA_DAYS), "-subj", f"/CN={common_name}",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        return Pem((d / "ca.crt").read_bytes(), (d / "ca.key").read_bytes())


def issue(ca: Pem, common_name: str, names: Sequence[str], *, client: bool = False) -> Pem:
    """A leaf for ``names`` signed by ``ca``: server auth, plus client auth if ``client``."""
    sans = subject_alt_names(names)
    with tempfile.TemporaryDirectory(prefix="plugforge-pki-") as tmp:
        d = Path(tmp)
        write_private(d / "ca.key", ca.key)
        (d / "ca.crt").write_bytes(ca.cert)
        usage = "serverAuth,clientAuth" if client else "serverAuth"
        (d / "leaf.ext").write_text(
            f"subjectAltName={sans}\n"
            f"extendedKeyUsage={usage}\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "basicConstraints=critical,CA:FALSE\n")
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-keyout", d / "leaf.key", "-subj", f"/CN={common_name}",
                 "-out", d / "leaf.csr")
        _openssl("x509", "-req", "-in", d / "leaf.csr", "-CA", d / "ca.crt", "-CAkey",
                 d / "ca.key", "-set_serial", str(int.from_bytes(os.urandom(16), "big") >> 1),
                 "-days", str(LEAF_DAYS), "-sha256", "-extfile", d / "leaf.ext",
                 "-out", d / "leaf.crt")
        return Pem((d / "leaf.crt").read_bytes(), (d / "leaf.key").read_bytes())


def write_private(path: Path, data: bytes) -> None:
    """``data`` in a new file only its owner can read (keys, tokens). Whatever was at ``path``
    is replaced, a symlink included, never written through."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _openssl(*args: object) -> None:
    try:
        result = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True,
                                timeout=60, check=False)
    except FileNotFoundError as e:
        raise PkiError("openssl is not installed (Debian: apt install openssl)") from e
    if result.returncode != 0:
        raise PkiError(f"openssl {args[0]} failed: {result.stderr.strip()}")
