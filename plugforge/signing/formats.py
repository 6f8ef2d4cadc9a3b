"""The documents cosign signs, built and parsed strictly (their bytes are untrusted on read).

* Simple signing payload (what ``cosign sign`` signs): ``{"critical": {"identity":
  {"docker-reference": NAME}, "image": {"docker-manifest-digest": DIGEST}, "type": "cosign
  container image signature"}, "optional": {...}}``; the signature is ECDSA over its bytes.
* DSSE envelope (what ``cosign attest`` stores): ``{"payloadType", "payload" (base64),
  "signatures": [{"keyid", "sig" (base64)}]}``; signatures cover the pre-authentication
  encoding ``PAE(type, body)``, never the JSON around it.
* in-toto Statement v1 whose predicate is SLSA provenance v1 (``provenance.py`` fills it).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from plugforge.oci.reference import DIGEST_RE
from plugforge.signing.errors import VerificationFailed

SIMPLE_SIGNING_TYPE = "cosign container image signature"
SIMPLE_SIGNING_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
DSSE_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"
IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE_V1 = "https://slsa.dev/provenance/v1"
MAX_PAYLOAD_BYTES = 64 * 1024
"""A simple-signing payload is a few hundred bytes."""
MAX_ENVELOPE_BYTES = 1024 * 1024
"""A provenance envelope is a few KiB; anything near this limit is refused unread."""
MAX_SIGNATURES = 16


def _canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def simple_signing_payload(name: str, digest: str) -> bytes:
    """The payload for image ``name`` (``registry/repository``) at ``digest``."""
    return _canonical({"critical": {"identity": {"docker-reference": name},
                                    "image": {"docker-manifest-digest": digest},
                                    "type": SIMPLE_SIGNING_TYPE},
                       "optional": None})


@dataclass(frozen=True)
class SignedClaim:
    docker_reference: str
    digest: str


def parse_simple_signing(payload: bytes) -> SignedClaim:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise VerificationFailed("SignatureInvalid", f"signature payload is {len(payload)} "
                                 f"bytes, over the {MAX_PAYLOAD_BYTES} byte limit")
    doc = _json_object(payload, "SignatureInvalid", "signature payload")
    try:
        critical = doc["critical"]
        kind = critical["type"]
        digest = critical["image"]["docker-manifest-digest"]
        reference = critical["identity"].get("docker-reference", "")
    except (KeyError, TypeError, AttributeError) as e:
        raise VerificationFailed("SignatureInvalid", f"signature payload lacks {e}; expected "
                                 "cosign's simple signing format") from e
    if kind != SIMPLE_SIGNING_TYPE:
        raise VerificationFailed("SignatureInvalid", f"signature payload type is {kind!r}, "
                                 f"expected {SIMPLE_SIGNING_TYPE!r}")
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise VerificationFailed("SignatureInvalid",
                                 f"signature payload names digest {digest!r}, not a sha256 digest")
    return SignedClaim(str(reference), digest)


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what an envelope's signatures sign."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(body), body)


@dataclass(frozen=True)
class Envelope:
    payload_type: str
    payload: bytes
    signatures: tuple[bytes, ...]

    def signed_bytes(self) -> bytes:
        return pae(self.payload_type, self.payload)


def make_envelope(payload: bytes, signature: bytes, keyid: str = "") -> bytes:
    return _canonical({"payloadType": IN_TOTO_PAYLOAD_TYPE,
                       "payload": base64.b64encode(payload).decode(),
                       "signatures": [{"keyid": keyid,
                                       "sig": base64.b64encode(signature).decode()}]})


def parse_envelope(data: bytes) -> Envelope:
    if len(data) > MAX_ENVELOPE_BYTES:
        raise VerificationFailed("AttestationInvalid", f"DSSE envelope is {len(data)} bytes, "
                                 f"over the {MAX_ENVELOPE_BYTES} byte limit")
    doc = _json_object(data, "AttestationInvalid", "DSSE envelope")
    payload_type, payload, signatures = (doc.get("payloadType"), doc.get("payload"),
                                         doc.get("signatures"))
    if payload_type != IN_TOTO_PAYLOAD_TYPE:
        raise VerificationFailed("AttestationInvalid", f"DSSE payloadType is {payload_type!r}, "
                                 f"expected {IN_TOTO_PAYLOAD_TYPE!r}")
    if not isinstance(payload, str) or not isinstance(signatures, list) or not signatures \
            or len(signatures) > MAX_SIGNATURES:
        raise VerificationFailed("AttestationInvalid", "DSSE envelope needs a base64 'payload' "
                                 f"and 1-{MAX_SIGNATURES} 'signatures'")
    try:
        sigs = tuple(base64.b64decode(s["sig"], validate=True) for s in signatures)
        body = base64.b64decode(payload, validate=True)
    except (binascii.Error, KeyError, TypeError, ValueError) as e:
        raise VerificationFailed("AttestationInvalid",
                                 f"DSSE payload or signature is not base64: {e!r}") from e
    return Envelope(payload_type, body, sigs)


@dataclass(frozen=True)
class Statement:
    subjects: tuple[tuple[str, str], ...]
    """(name, "sha256:<hex>") pairs."""
    predicate_type: str
    predicate: dict[str, Any]

    def names_digest(self, digest: str) -> bool:
        return any(d == digest for _, d in self.subjects)


def make_statement(name: str, digest: str, predicate: dict[str, Any]) -> bytes:
    return _canonical({"_type": STATEMENT_TYPE,
                       "subject": [{"name": name, "digest": {"sha256": digest.split(":", 1)[1]}}],
                       "predicateType": SLSA_PROVENANCE_V1, "predicate": predicate})


def parse_statement(body: bytes) -> Statement:
    doc = _json_object(body, "AttestationInvalid", "in-toto statement")
    subjects = []
    try:
        for subject in doc["subject"]:
            hexdigest = subject["digest"]["sha256"]
            subjects.append((str(subject.get("name", "")), f"sha256:{hexdigest}"))
        predicate_type, predicate = doc["predicateType"], doc["predicate"]
    except (KeyError, TypeError, AttributeError) as e:
        raise VerificationFailed("AttestationInvalid", f"in-toto statement lacks {e}") from e
    if not isinstance(predicate, dict) or not isinstance(predicate_type, str):
        raise VerificationFailed("AttestationInvalid",
                                 "in-toto statement predicate must be an object")
    return Statement(tuple(subjects), predicate_type, predicate)


def _json_object(data: bytes, reason: str, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise VerificationFailed(reason, f"{what} is not valid JSON: {e}") from e
    if not isinstance(doc, dict):
        raise VerificationFailed(reason, f"{what} is not a JSON object")
    return doc
