"""Shared by the signing tests: keys, a sample provenance, small images on the real registry."""

from __future__ import annotations

from pathlib import Path

from plugforge.oci import ImageMetadata, ImageRef, RegistryClient, pack_image, parse_reference
from plugforge.signing import Provenance, SigningKey, render_policy
from testbed.registry import Registry

COMMIT = "a" * 40
TREE = "b" * 40
SOURCE = "https://git.example.com/team/auth.git"


def provenance(commit: str = COMMIT, ref: str = "refs/heads/main", tree: str = TREE,
               source: str = SOURCE, build: str = "plugins/auth-1") -> Provenance:
    return Provenance(source_url=source, commit=commit, ref=ref, tree=tree, path=".",
                      template="mosquitto-c", recipe_sha256="c" * 64, broker="mosquitto",
                      build_name=build, builder_version="0.2.0", toolchain={"gcc": "12.2.0"},
                      started="2026-12-06T16:00:00Z", finished="2026-12-06T16:00:01Z")


def client_for(registry: Registry) -> RegistryClient:
    return RegistryClient(registry.host, ca_bundle=registry.ca.cert)


def push_plugin(registry: Registry, root: Path, repository: str, marker: str) -> ImageRef:
    """A small plugin image, pushed by digest; returns it pinned."""
    artifact = root / f"artifact-{marker}"
    artifact.mkdir(parents=True, exist_ok=True)
    (artifact / "plugin.so").write_bytes(b"\x7fELF" + marker.encode() * 64)
    image = pack_image(artifact, ImageMetadata(SOURCE, "", "mosquitto", "auth", "0.1.0"))
    with client_for(registry) as client:
        return client.push_image(parse_reference(f"{registry.host}/{repository}"), image)


def policy_text(*keys: SigningKey, sources: tuple[str, ...] = (), refs: tuple[str, ...] = (),
                provenance_required: bool = True) -> bytes:
    return render_policy([(f"key-{i}", k.public.pem()) for i, k in enumerate(keys)],
                         sources=sources, refs=refs,
                         require_provenance=provenance_required).encode()
