"""Why an image or a key was refused. Subclasses of ``OciError``: an image that fails
verification is refused exactly like one whose bytes fail their digest (nothing extracted)."""

from __future__ import annotations

from plugforge.oci.errors import OciError


class SigningError(OciError):
    """Base of ``plugforge.signing`` errors."""


class KeyFileError(SigningError):
    """A key file or password is unusable; the message says what was expected."""


class VerificationFailed(SigningError):
    """The image is refused. ``reason`` is a CamelCase word for conditions, Events and metrics:

    SignatureMissing, SignatureInvalid, SignatureDigestMismatch, AttestationMissing,
    AttestationInvalid, ProvenanceMismatch, RepositoryNotAllowed, TrustPolicyInvalid,
    SignatureUnavailable (the registry could not be asked: retried).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.detail = message


class SignatureUnavailable(VerificationFailed):
    """The signature or attestation could not be fetched right now (registry down): retry."""

    def __init__(self, message: str) -> None:
        super().__init__("SignatureUnavailable", message)
