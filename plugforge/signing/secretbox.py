"""NaCl ``secretbox`` (XSalsa20 + Poly1305), only to read and write cosign's key files.

cosign stores private keys encrypted with scrypt + secretbox. ``cryptography`` has Poly1305
but no Salsa20, so the stream cipher is written out here from its specification (Bernstein,
"The Salsa20 family of stream ciphers" and "Extending the Salsa20 nonce"). It runs on a few
hundred bytes once per key load; signatures themselves use ``cryptography``'s ECDSA.
"""

from __future__ import annotations

import hmac
import struct

from cryptography.hazmat.primitives.poly1305 import Poly1305

KEY_SIZE = 32
NONCE_SIZE = 24
TAG_SIZE = 16
_SIGMA = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)  # "expand 32-byte k"
_MASK = 0xFFFFFFFF


class SecretBoxError(ValueError):
    """The box does not open: wrong key (password) or altered ciphertext."""


def _rotl(v: int, n: int) -> int:
    return ((v << n) | (v >> (32 - n))) & _MASK


def _rounds(x: list[int]) -> list[int]:
    """20 rounds (10 double rounds) of Salsa20 on a copy of the 16-word state."""
    x = list(x)

    def quarter(a: int, b: int, c: int, d: int) -> None:
        x[b] ^= _rotl((x[a] + x[d]) & _MASK, 7)
        x[c] ^= _rotl((x[b] + x[a]) & _MASK, 9)
        x[d] ^= _rotl((x[c] + x[b]) & _MASK, 13)
        x[a] ^= _rotl((x[d] + x[c]) & _MASK, 18)

    for _ in range(10):
        quarter(0, 4, 8, 12)    # columns
        quarter(5, 9, 13, 1)
        quarter(10, 14, 2, 6)
        quarter(15, 3, 7, 11)
        quarter(0, 1, 2, 3)     # rows
        quarter(5, 6, 7, 4)
        quarter(10, 11, 8, 9)
        quarter(15, 12, 13, 14)
    return x


def _state(key: bytes, sixteen: bytes) -> list[int]:
    k = struct.unpack("<8I", key)
    n = struct.unpack("<4I", sixteen)
    return [_SIGMA[0], *k[:4], _SIGMA[1], *n, _SIGMA[2], *k[4:], _SIGMA[3]]


def _hsalsa20(key: bytes, nonce16: bytes) -> bytes:
    x = _rounds(_state(key, nonce16))
    return struct.pack("<8I", *(x[i] for i in (0, 5, 10, 15, 6, 7, 8, 9)))


def _xsalsa20_stream(key: bytes, nonce: bytes, length: int) -> bytes:
    subkey = _hsalsa20(key, nonce[:16])
    out = bytearray()
    counter = 0
    while len(out) < length:
        block_in = _state(subkey, nonce[16:24] + struct.pack("<Q", counter))
        mixed = _rounds(block_in)
        out += struct.pack("<16I", *((a + b) & _MASK for a, b in zip(mixed, block_in,
                                                                     strict=True)))
        counter += 1
    return bytes(out[:length])


def _check(key: bytes, nonce: bytes) -> None:
    if len(key) != KEY_SIZE or len(nonce) != NONCE_SIZE:
        raise SecretBoxError(f"secretbox needs a {KEY_SIZE}-byte key and a {NONCE_SIZE}-byte "
                             f"nonce, found {len(key)} and {len(nonce)} bytes")


def seal(plaintext: bytes, nonce: bytes, key: bytes) -> bytes:
    """``tag || ciphertext``, byte-compatible with NaCl's ``crypto_secretbox``."""
    _check(key, nonce)
    stream = _xsalsa20_stream(key, nonce, 32 + len(plaintext))
    ciphertext = bytes(a ^ b for a, b in zip(plaintext, stream[32:], strict=True))
    return Poly1305.generate_tag(stream[:32], ciphertext) + ciphertext


def open_box(box: bytes, nonce: bytes, key: bytes) -> bytes:
    """The plaintext of ``seal``'s output; ``SecretBoxError`` when the tag does not match."""
    _check(key, nonce)
    if len(box) < TAG_SIZE:
        raise SecretBoxError(f"secretbox is {len(box)} bytes, shorter than its tag")
    tag, ciphertext = box[:TAG_SIZE], box[TAG_SIZE:]
    stream = _xsalsa20_stream(key, nonce, 32 + len(ciphertext))
    if not hmac.compare_digest(Poly1305.generate_tag(stream[:32], ciphertext), tag):
        raise SecretBoxError("secretbox authentication failed (wrong password or altered key)")
    return bytes(a ^ b for a, b in zip(ciphertext, stream[32:], strict=True))
