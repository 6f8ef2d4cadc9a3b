"""ECDSA P-256 keys in the files ``cosign generate-key-pair`` writes.

Private key: PEM ``ENCRYPTED SIGSTORE PRIVATE KEY`` (older cosign: ``ENCRYPTED COSIGN PRIVATE
KEY``) around JSON ``{"kdf": scrypt N/r/p + salt, "cipher": nacl/secretbox + nonce,
"ciphertext"}`` whose plaintext is the PKCS#8 DER key; the password may be empty. Only the
three scrypt parameter sets cosign's library accepts are accepted here too (anything else could
be a memory-exhaustion attempt). Public key: PEM ``PUBLIC KEY`` (SubjectPublicKeyInfo).
A key's id is the sha256 of its SubjectPublicKeyInfo DER, shortened for messages.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from plugforge.signing import secretbox
from plugforge.signing.errors import KeyFileError

PRIVATE_PEM_TYPE = "ENCRYPTED SIGSTORE PRIVATE KEY"
_PRIVATE_PEM_TYPES = (PRIVATE_PEM_TYPE, "ENCRYPTED COSIGN PRIVATE KEY")
_SCRYPT_PARAMS = ((32768, 8, 1), (65536, 8, 1), (131072, 8, 1))
_NEW_KEY_SCRYPT = (65536, 8, 1)
_PEM_RE = re.compile(rb"-----BEGIN ([A-Z ]+)-----\s*(.*?)\s*-----END \1-----", re.DOTALL)
MAX_KEY_FILE_BYTES = 64 * 1024


@dataclass(frozen=True)
class PublicKey:
    key: ec.EllipticCurvePublicKey
    name: str = ""
    """What the trust policy calls it (for messages); empty when unnamed."""

    @property
    def key_id(self) -> str:
        return key_id(self.key)

    def verify(self, signature: bytes, data: bytes) -> bool:
        try:
            self.key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True

    def describe(self) -> str:
        return f"{self.name} ({self.key_id})" if self.name else self.key_id

    def pem(self) -> bytes:
        return self.key.public_bytes(serialization.Encoding.PEM,
                                     serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class SigningKey:
    key: ec.EllipticCurvePrivateKey

    @property
    def public(self) -> PublicKey:
        return PublicKey(self.key.public_key())

    def sign(self, data: bytes) -> bytes:
        """ASN.1 DER ECDSA-SHA256 signature, the encoding cosign writes and reads."""
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))


def key_id(key: ec.EllipticCurvePublicKey) -> str:
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()[:16]


def generate() -> SigningKey:
    return SigningKey(ec.generate_private_key(ec.SECP256R1()))


def _pem_blocks(data: bytes, where: str) -> list[tuple[str, bytes]]:
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{where}: {len(data)} bytes is too large for a key file")
    blocks = []
    for match in _PEM_RE.finditer(data):
        try:
            blocks.append((match.group(1).decode(), base64.b64decode(match.group(2))))
        except (binascii.Error, ValueError) as e:
            raise KeyFileError(f"{where}: PEM block {match.group(1).decode()!r} is not base64: "
                               f"{e}") from e
    return blocks


def load_private_key(pem: bytes, password: bytes, where: str = "private key") -> SigningKey:
    """Decrypt a cosign private key file (``password`` may be empty)."""
    blocks = _pem_blocks(pem, where)
    if len(blocks) != 1 or blocks[0][0] not in _PRIVATE_PEM_TYPES:
        found = ", ".join(kind for kind, _ in blocks) or "no PEM block"
        raise KeyFileError(f"{where}: expected one PEM block '{PRIVATE_PEM_TYPE}' (as written "
                           f"by cosign generate-key-pair), found {found}")
    try:
        doc = json.loads(blocks[0][1])
        kdf, cipher = doc["kdf"], doc["cipher"]
        params = (kdf["params"]["N"], kdf["params"]["r"], kdf["params"]["p"])
        salt = base64.b64decode(kdf["salt"], validate=True)
        nonce = base64.b64decode(cipher["nonce"], validate=True)
        ciphertext = base64.b64decode(doc["ciphertext"], validate=True)
        names = (kdf["name"], cipher["name"])
    except (ValueError, KeyError, TypeError) as e:
        raise KeyFileError(f"{where}: the encrypted key is not cosign's JSON "
                           f"(kdf, cipher, ciphertext): {e!r}") from e
    if names != ("scrypt", "nacl/secretbox"):
        raise KeyFileError(f"{where}: expected kdf 'scrypt' and cipher 'nacl/secretbox', "
                           f"found {names[0]!r} and {names[1]!r}")
    if params not in _SCRYPT_PARAMS:
        raise KeyFileError(f"{where}: scrypt parameters N={params[0]} r={params[1]} "
                           f"p={params[2]} are not one of cosign's sets {_SCRYPT_PARAMS}")
    box_key = _scrypt(password, salt, params)
    try:
        der = secretbox.open_box(ciphertext, nonce, box_key)
    except secretbox.SecretBoxError as e:
        raise KeyFileError(f"{where}: cannot decrypt: wrong password, or the file was "
                           f"altered ({e})") from e
    try:
        key = serialization.load_der_private_key(der, password=None)
    except ValueError as e:
        raise KeyFileError(f"{where}: decrypted content is not a PKCS#8 key: {e}") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise KeyFileError(f"{where}: expected an ECDSA P-256 key, found {type(key).__name__}")
    return SigningKey(key)


def encrypt_private_key(key: SigningKey, password: bytes) -> bytes:
    """The PEM cosign writes for ``key`` (scrypt N=65536 r=8 p=1, random salt and nonce)."""
    salt, nonce = os.urandom(32), os.urandom(secretbox.NONCE_SIZE)
    der = key.key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    box = secretbox.seal(der, nonce, _scrypt(password, salt, _NEW_KEY_SCRYPT))
    n, r, p = _NEW_KEY_SCRYPT

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    doc = {"kdf": {"name": "scrypt", "params": {"N": n, "r": r, "p": p}, "salt": b64(salt)},
           "cipher": {"name": "nacl/secretbox", "nonce": b64(nonce)}, "ciphertext": b64(box)}
    body = base64.b64encode(json.dumps(doc, separators=(",", ":")).encode()).decode()
    lines = "".join(body[i:i + 64] + "\n" for i in range(0, len(body), 64))
    return f"-----BEGIN {PRIVATE_PEM_TYPE}-----\n{lines}-----END {PRIVATE_PEM_TYPE}-----\n".encode()


def load_public_keys(pem: bytes, where: str = "public key", name: str = "") -> list[PublicKey]:
    """Every ``PUBLIC KEY`` block in ``pem`` (a file may hold several during a rotation)."""
    blocks = _pem_blocks(pem, where)
    if not blocks:
        raise KeyFileError(f"{where}: expected a PEM 'PUBLIC KEY' block (cosign.pub), found none")
    keys = []
    for kind, der in blocks:
        if kind != "PUBLIC KEY":
            raise KeyFileError(f"{where}: expected 'PUBLIC KEY' PEM blocks only, found {kind!r}")
        try:
            key = serialization.load_der_public_key(der)
        except ValueError as e:
            raise KeyFileError(f"{where}: not a SubjectPublicKeyInfo key: {e}") from e
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise KeyFileError(f"{where}: expected an ECDSA P-256 public key, found "
                               f"{type(key).__name__}")
        keys.append(PublicKey(key, name))
    return keys


def _scrypt(password: bytes, salt: bytes, params: tuple[int, int, int]) -> bytes:
    n, r, p = params
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=secretbox.KEY_SIZE,
                          maxmem=256 * 1024 * 1024)
