"""Signing and verification costs (issue 17), on a real registry (TLS, loopback).

- builder: ``BuildSigner.sign`` of a freshly pushed image: the simple-signing signature, the
  SLSA provenance attestation (DSSE), and the registry round trips that read and write both
  tags; goal <= 50 ms at p50. Tool versions are asked once per process, before timing (as in a
  running builder).
- sidecar: the puller's pull -> extracted time for a fresh image (nothing cached), with and
  without verification (signature + provenance fetched, ECDSA-verified, policy checked); the
  load into the broker after it is the same either way, so the difference is what verification
  adds to pull -> loaded. Goal: <= 10 ms added at p50. The two variants alternate image by
  image, so load on the machine falls on both alike.
Repetitions: 40 per figure (``--quick``: 8) after 2 untimed warm-ups; medians reported.
"""

from __future__ import annotations

import io
import os
import statistics
import time
from pathlib import Path

from bench.report import Metric
from builder.build.registry import Publisher, RegistryAccess
from builder.build.signing import BuildFacts, BuildSigner, tool_versions
from plugforge.oci import ImageMetadata, ImageRef, RegistryClient, pack_image, parse_reference
from plugforge.signing import generate, render_policy
from sidecar.images import ImagePuller
from sidecar.trust import ImageVerifier
from testbed.certs import make_ca
from testbed.registry import Registry, start_registry

TOOLS = ("gcc",)


def measure(workdir: Path, quick: bool) -> list[Metric]:
    reps = 8 if quick else 40
    ca = make_ca(workdir / "ca")
    registry = start_registry(workdir / "registry", ca)
    try:
        return _measure(workdir, registry, reps)
    finally:
        registry.stop()


def _push(registry: Registry, workdir: Path, n: int) -> ImageRef:
    artifact = workdir / "artifacts" / str(n)
    artifact.mkdir(parents=True)
    (artifact / "plugin.so").write_bytes(os.urandom(64 * 1024))  # a typical plugin's size
    image = pack_image(artifact, ImageMetadata("https://git.example.com/p.git", "", "mosquitto",
                                               "p", "1.0"))
    with RegistryClient(registry.host, ca_bundle=registry.ca.cert) as client:
        return client.push_image(parse_reference(f"{registry.host}/bench/signed"), image)


def _measure(workdir: Path, registry: Registry, reps: int) -> list[Metric]:
    key = generate()
    signer = BuildSigner(key)
    publisher = Publisher(registry.host, RegistryAccess(ca_bundle=registry.ca.cert))
    repo = parse_reference(f"{registry.host}/bench/signed")
    tool_versions(TOOLS)

    def facts(n: int) -> BuildFacts:
        return BuildFacts("https://git.example.com/p.git", f"{n:040x}", "refs/heads/main",
                          f"{n:040x}", ".", "mosquitto-c", b"recipe", "mosquitto",
                          f"bench/b{n}", "0.2.0", "", TOOLS, time.time())

    images = [_push(registry, workdir, n) for n in range(2 * reps + 4)]
    sign_ms = []
    for n, image in enumerate(images):
        started = time.perf_counter()
        signer.sign(publisher, repo, str(image.digest), facts(n), io.StringIO())
        if n >= 2:
            sign_ms.append((time.perf_counter() - started) * 1000)

    policy = workdir / "trust" / "policy.yaml"
    policy.parent.mkdir()
    policy.write_text(render_policy([("bench", key.public.pem())],
                                    sources=["https://git.example.com/*"]))
    verifying = ImagePuller(workdir / "cache-verify", ca_bundle=registry.ca.cert,
                            verify=ImageVerifier(policy))
    plain = ImagePuller(workdir / "cache-plain", ca_bundle=registry.ca.cert)
    with_ms: list[float] = []
    without_ms: list[float] = []
    for n, image in enumerate(images[4:]):
        # Alternate which variant goes first; each pulls an image it has never seen.
        for puller, times in ((verifying, with_ms), (plain, without_ms))[::1 if n % 2 else -1]:
            started = time.perf_counter()
            puller(str(image))
            times.append((time.perf_counter() - started) * 1000)
    p50_with, p50_without = statistics.median(with_ms), statistics.median(without_ms)
    added = statistics.median(a - b for a, b in zip(with_ms, without_ms, strict=True))
    return [
        Metric("signing", "builder: sign + attest an image (p50)", "ms",
               statistics.median(sign_ms), max_value=50.0),
        Metric("signing", "sidecar: pull -> extracted, verification on (p50)", "ms", p50_with,
               p50_without, "verification off"),
        Metric("signing", "sidecar: added by verification (p50 of pairs)", "ms", added,
               max_value=10.0, note=f"off {p50_without:.1f} ms, on {p50_with:.1f} ms"),
    ]
