"""Signed plugin images with build provenance, in the formats cosign writes and verifies.

Builder::

    key = load_private_key(pem, password)
    sign_image(client, pinned, key)                      # <repo>:sha256-<hex>.sig
    attest_provenance(client, pinned, key, provenance)   # <repo>:sha256-<hex>.att (DSSE, SLSA v1)

Sidecar and CLI::

    policy = parse_policy(path.read_bytes())
    verified = verify_image(client, pinned, policy)      # VerificationFailed says why not

Keys are ECDSA P-256 in cosign's files (``keys``); signatures use ``cryptography``. No
transparency log is consulted: trust comes from the keys in the policy alone.
"""

from plugforge.signing.errors import (
    KeyFileError,
    SignatureUnavailable,
    SigningError,
    VerificationFailed,
)
from plugforge.signing.keys import (
    PublicKey,
    SigningKey,
    encrypt_private_key,
    generate,
    load_private_key,
    load_public_keys,
)
from plugforge.signing.policy import TrustPolicy, parse_policy, policy_for_keys, render_policy
from plugforge.signing.provenance import Provenance
from plugforge.signing.sign import attest_provenance, sign_image, trusted_build_of_tree
from plugforge.signing.verify import (
    Verified,
    attested_provenance,
    listed_provenance,
    verify_image,
)

__all__ = [
    "KeyFileError",
    "Provenance",
    "PublicKey",
    "SignatureUnavailable",
    "SigningError",
    "SigningKey",
    "TrustPolicy",
    "VerificationFailed",
    "Verified",
    "attest_provenance",
    "attested_provenance",
    "encrypt_private_key",
    "generate",
    "listed_provenance",
    "load_private_key",
    "load_public_keys",
    "parse_policy",
    "policy_for_keys",
    "render_policy",
    "sign_image",
    "trusted_build_of_tree",
    "verify_image",
]
