"""Image verification before pull-and-extract: the trust policy file, re-read when it changes.

The policy is a mounted ConfigMap (``--trust-policy FILE``); a key rotation is an edit of that
ConfigMap, picked up at the next pull without a restart. A policy that does not parse refuses
every image (reason ``TrustPolicyInvalid``) until fixed: the running plugins stay. A success is
remembered per (digest, policy) so the cache and rollbacks do not ask the registry again;
refusals are not remembered (a signature may be added later).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from pathlib import Path

from plugforge.oci import ImageRef, RegistryClient
from plugforge.prometheus import Histogram, metric
from plugforge.signing import TrustPolicy, VerificationFailed, Verified, parse_policy, verify_image

log = logging.getLogger("plugforge.sidecar")


class ImageVerifier:
    def __init__(self, policy_path: Path) -> None:
        self.policy_path = policy_path
        self._lock = threading.Lock()
        self._policy: tuple[bytes, TrustPolicy] | None = None
        self._verified: dict[tuple[str, str], Verified] = {}
        self.results: Counter[tuple[str, str]] = Counter()
        self.duration = Histogram("plugforge_sidecar_image_verification_seconds",
                                  "Time to verify an image's signature and provenance.",
                                  (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0))

    def policy(self) -> TrustPolicy:
        try:
            text = self.policy_path.read_bytes()
        except OSError as e:
            raise VerificationFailed("TrustPolicyInvalid", f"cannot read the trust policy "
                                     f"{self.policy_path}: {e.strerror or e}") from e
        with self._lock:
            if self._policy is not None and self._policy[0] == text:
                return self._policy[1]
        policy = parse_policy(text, str(self.policy_path))
        with self._lock:
            self._policy = (text, policy)
        log.info("decision=trust-policy keys=%s repositories=%s sources=%s refs=%s "
                 "provenance=%s", [k.key.describe() for k in policy.keys],
                 list(policy.repositories), list(policy.sources), list(policy.refs),
                 policy.require_provenance)
        return policy

    def check_policy(self) -> None:
        """Read the policy now, so a bad one is in the log at start; the sidecar keeps running
        (every image is refused until it is fixed, the running plugins stay)."""
        try:
            self.policy()
        except VerificationFailed as e:
            log.error("decision=trust-policy-invalid detail=%r", e.detail)

    def __call__(self, client: RegistryClient, ref: ImageRef, commit: str = "") -> Verified:
        """Verify ``ref``; with provenance required and ``commit`` (what the release in the
        ConfigMap names), one verified provenance must name that commit."""
        started = time.monotonic()
        try:
            policy = self.policy()
            key = (str(ref.digest), policy.fingerprint)
            with self._lock:
                known = self._verified.get(key)
            verified = known or verify_image(client, ref, policy)
            commits = [p.commit for p in verified.provenance]
            if commit and policy.require_provenance and commit not in commits:
                raise VerificationFailed(
                    "ProvenanceMismatch", f"the release names commit {commit}, but the "
                    f"provenance of {ref} names {', '.join(commits)}: the ConfigMap and the "
                    "image disagree about what was built")
        except VerificationFailed as e:
            self._count("refused", e.reason)
            log.warning("decision=refuse-image image=%s reason=%s detail=%r", ref, e.reason,
                        e.detail)
            raise
        if known is None:
            with self._lock:
                self._verified[key] = verified
            self.duration.observe(time.monotonic() - started)
            self._count("verified", "")
            log.info("decision=verified image=%s signers=%s commits=%s", ref,
                     list(verified.signers), [p.commit[:12] for p in verified.provenance])
        return verified

    def _count(self, result: str, reason: str) -> None:
        with self._lock:
            self.results[(result, reason)] += 1

    def render(self) -> list[str]:
        with self._lock:
            samples: dict[tuple[tuple[str, str], ...], float] = {
                (("result", r), ("reason", why)): float(n)
                for (r, why), n in sorted(self.results.items())}
        return [*metric("plugforge_sidecar_image_verifications_total", "counter",
                        "Images verified or refused before extraction, by reason.", samples),
                *self.duration.render()]
