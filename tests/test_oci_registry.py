"""Push and pull against the real registry (Debian docker-registry over TLS), no mocks."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REGISTRY_CREDENTIALS
from test_oci_extract import SMALL, UNSAFE_LAYERS

from plugforge.oci import (
    PLUGIN_ROOT,
    DigestMismatch,
    ImageMetadata,
    InvalidReference,
    PermanentRegistryError,
    RegistryClient,
    TransientRegistryError,
    UnsafeLayer,
    cached_image,
    cached_manifest,
    credentials_from_dockerconfigjson,
    pack_image,
    parse_reference,
    prune_least_recent,
    pull_image,
)
from plugforge.oci.cache import STALE_AFTER_SECONDS, prune_partial
from plugforge.oci.pack import assemble_image
from testbed.procs import free_port
from testbed.registry import Registry


def metadata(name: str = "auth-plugin", revision: str = "c" * 40) -> ImageMetadata:
    return ImageMetadata(source="https://git.example.com/team/auth.git", revision=revision,
                         broker="rabbitmq", plugin_name=name, plugin_version="0.9.1")


def artifact(root: Path, marker: str) -> Path:
    (root / "ebin").mkdir(parents=True)
    (root / "ebin" / "auth.beam").write_bytes(b"FOR1" + marker.encode() * 1000)
    (root / "priv").mkdir()
    (root / "priv" / "run.sh").write_text(f"#!/bin/sh\necho {marker}\n")
    (root / "priv" / "run.sh").chmod(0o755)
    return root


def client_for(registry: Registry, **kwargs: object) -> RegistryClient:
    return RegistryClient(registry.host, ca_bundle=registry.ca.cert, **kwargs)  # type: ignore[arg-type]


def blob_data_path(registry: Registry, digest: str) -> Path:
    hex_digest = digest.removeprefix("sha256:")
    blobs = registry.storage / "docker/registry/v2/blobs/sha256"
    return blobs / hex_digest[:2] / hex_digest / "data"


def cache_is_clean(cache: Path) -> bool:
    images = cache / "images"
    leftovers = list((cache / "tmp").iterdir()) if (cache / "tmp").exists() else []
    return (not images.exists() or not any(images.iterdir())) and not leftovers


def test_push_pull_round_trip(registry: Registry, tmp_path: Path) -> None:
    source = artifact(tmp_path / "artifact", "round-trip")
    image = pack_image(source, metadata())
    ref = parse_reference(f"{registry.host}/team/auth-plugin:0.9.1")
    with client_for(registry) as client:
        pinned = client.push_image(ref, image)
        assert pinned.digest == image.digest
        assert str(pinned) == f"{ref}@{image.digest}"
        assert client.push_image(ref, image) == pinned  # blobs exist: only the manifest again
        assert all(client.blob_exists("team/auth-plugin", b.digest) for b in image.blobs)
        tree = pull_image(client, pinned, tmp_path / "cache")
    plugin = tree / PLUGIN_ROOT / "auth-plugin"
    for relative in ("ebin/auth.beam", "priv/run.sh"):
        assert (plugin / relative).read_bytes() == (source / relative).read_bytes()
    assert (plugin / "priv/run.sh").stat().st_mode & 0o777 == 0o755
    assert cached_manifest(tree).annotations["dev.plugforge.plugin.version"] == "0.9.1"
    assert cached_image(tmp_path / "cache", image.digest) == tree
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []

    # A cached digest is never fetched again: a client for a closed port still gets it.
    with RegistryClient(f"127.0.0.1:{free_port()}") as offline:
        assert pull_image(offline, pinned, tmp_path / "cache") == tree


def test_skopeo_sees_annotations_and_labels(registry: Registry, tmp_path: Path) -> None:
    image = pack_image(artifact(tmp_path / "artifact", "skopeo"), metadata("skopeo-plugin"))
    ref = parse_reference(f"{registry.host}/team/skopeo-plugin:1")
    with client_for(registry) as client:
        client.push_image(ref, image)
    cert_dir = tmp_path / "certs"
    cert_dir.mkdir()
    shutil.copy(registry.ca.cert, cert_dir / "ca.crt")
    argv = ["skopeo", "inspect", "--cert-dir", str(cert_dir), f"docker://{ref}"]
    raw = subprocess.run([*argv[:2], "--raw", *argv[2:]], check=True, capture_output=True,
                         timeout=60).stdout
    assert raw == image.manifest
    inspected = json.loads(subprocess.run(argv, check=True, capture_output=True,
                                          timeout=60).stdout)
    assert inspected["Digest"] == image.digest
    assert inspected["Labels"] == metadata("skopeo-plugin").annotations()


def test_basic_auth_registry(registry_auth: Registry, tmp_path: Path) -> None:
    user, password = REGISTRY_CREDENTIALS
    secret = json.dumps({"auths": {registry_auth.host: {
        "auth": base64.b64encode(f"{user}:{password}".encode()).decode()}}}).encode()
    credentials = credentials_from_dockerconfigjson(secret, registry_auth.host)
    image = pack_image(artifact(tmp_path / "artifact", "auth"), metadata())
    ref = parse_reference(f"{registry_auth.host}/team/private:1")
    with client_for(registry_auth, credentials=credentials) as client:
        pinned = client.push_image(ref, image)
        tree = pull_image(client, pinned, tmp_path / "cache")
    assert (tree / PLUGIN_ROOT / "auth-plugin" / "ebin" / "auth.beam").exists()

    wrong = credentials_from_dockerconfigjson(
        json.dumps({"auths": {registry_auth.host: {"username": user,
                                                   "password": "wrong-horse"}}}).encode(),
        registry_auth.host)
    with client_for(registry_auth, credentials=wrong) as client, \
            pytest.raises(PermanentRegistryError) as info:
        pull_image(client, pinned, tmp_path / "cache-wrong")
    message = str(info.value)
    assert f"refused the credentials of user '{user}' (HTTP 401)" in message
    assert "wrong-horse" not in message and password not in message
    assert cache_is_clean(tmp_path / "cache-wrong")

    with client_for(registry_auth) as client, \
            pytest.raises(PermanentRegistryError, match="requires credentials and none are"):
        client.push_image(ref, image)


def test_tampered_layer_blob_is_refused(registry: Registry, tmp_path: Path) -> None:
    image = pack_image(artifact(tmp_path / "artifact", "tamper-layer"), metadata())
    with client_for(registry) as client:
        pinned = client.push_image(parse_reference(f"{registry.host}/team/tamper:1"), image)
        data = blob_data_path(registry, image.layers[0].digest)
        content = bytearray(data.read_bytes())
        content[len(content) // 2] ^= 0xFF  # same size, different content
        data.write_bytes(bytes(content))
        with pytest.raises(DigestMismatch) as info:
            pull_image(client, pinned, tmp_path / "cache")
    assert f"expected {len(content)} bytes with digest {image.layers[0].digest}" in str(info.value)
    assert cache_is_clean(tmp_path / "cache")


def test_tampered_manifest_is_refused_before_parsing(registry: Registry, tmp_path: Path) -> None:
    image = pack_image(artifact(tmp_path / "artifact", "tamper-manifest"),
                       metadata(revision="d" * 40))
    with client_for(registry) as client:
        pinned = client.push_image(parse_reference(f"{registry.host}/team/tamper-m:1"), image)
        data = blob_data_path(registry, image.digest)
        data.write_bytes(data.read_bytes().replace(b"d" * 40, b"e" * 40))
        with pytest.raises(DigestMismatch, match=f"expected {pinned.digest}"):
            pull_image(client, pinned, tmp_path / "cache")
    assert cache_is_clean(tmp_path / "cache")


def test_unknown_digest_and_tags_are_refused(registry: Registry, tmp_path: Path) -> None:
    missing = parse_reference(f"{registry.host}/team/auth-plugin@sha256:{'0' * 64}")
    with client_for(registry) as client:
        with pytest.raises(PermanentRegistryError, match="HTTP 404"):
            pull_image(client, missing, tmp_path / "cache")
        with pytest.raises(InvalidReference, match="pin by digest"):
            pull_image(client, f"{registry.host}/team/auth-plugin:0.9.1", tmp_path / "cache")
        other = parse_reference(f"other.example.com/team/x@sha256:{'0' * 64}")
        with pytest.raises(PermanentRegistryError, match=r"use a client for other\.example\.com"):
            client.pull_manifest(other)
    assert cache_is_clean(tmp_path / "cache")


@pytest.mark.parametrize("case", sorted(UNSAFE_LAYERS))
def test_unsafe_layers_from_the_registry(case: str, registry: Registry, tmp_path: Path) -> None:
    tar_bytes, entry, reason = UNSAFE_LAYERS[case]
    image = assemble_image(tar_bytes, metadata(revision=case), architecture="amd64")
    with client_for(registry) as client:
        pinned = client.push_image(parse_reference(f"{registry.host}/unsafe/{case}:1"), image)
        with pytest.raises(UnsafeLayer) as info:
            pull_image(client, pinned, tmp_path / "cache", limits=SMALL)
    assert info.value.entry == entry and reason in str(info.value)
    assert cache_is_clean(tmp_path / "cache")


def test_tls_needs_the_ca(registry: Registry, tmp_path: Path) -> None:
    ref = parse_reference(f"{registry.host}/team/auth-plugin@sha256:{'0' * 64}")
    with RegistryClient(registry.host) as client, \
            pytest.raises(PermanentRegistryError, match="pass its certificate as the CA bundle"):
        client.pull_manifest(ref)
    with pytest.raises(PermanentRegistryError, match="expected a PEM certificate file"):
        RegistryClient(registry.host, ca_bundle=tmp_path / "missing.pem")
    # Plain HTTP only on explicit opt-in; this TLS registry then answers 400.
    with RegistryClient(registry.host, insecure_http=True) as client, \
            pytest.raises(PermanentRegistryError, match="answered HTTP 400"):
        client.pull_manifest(ref)


@pytest.fixture
def slammer() -> Iterator[int]:
    """A port that accepts connections and closes them at once."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                conn.close()
            except TimeoutError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def test_registry_down_is_transient(slammer: int, tmp_path: Path) -> None:
    image = pack_image(artifact(tmp_path / "artifact", "down"), metadata())
    for port in (free_port(), slammer):
        host = f"127.0.0.1:{port}"
        with RegistryClient(host, timeout=5) as client:
            with pytest.raises(TransientRegistryError, match=f"cannot reach registry at {host}"):
                client.push_image(parse_reference(f"{host}/team/x:1"), image)
            with pytest.raises(TransientRegistryError, match="retry later"):
                pull_image(client, f"{host}/team/x@{image.digest}", tmp_path / "cache")
    assert cache_is_clean(tmp_path / "cache")


def test_registry_server_error_is_transient(registry: Registry, tmp_path: Path) -> None:
    image = pack_image(artifact(tmp_path / "artifact", "server-error"), metadata())
    with client_for(registry) as client:
        pinned = client.push_image(parse_reference(f"{registry.host}/team/broken:1"), image)
        data = blob_data_path(registry, image.layers[0].digest)
        data.unlink()
        data.symlink_to("data")  # a symlink loop: the storage driver fails with ELOOP
        try:
            with pytest.raises(TransientRegistryError, match=r"answered HTTP 5\d\d"):
                pull_image(client, pinned, tmp_path / "cache")
        finally:
            data.unlink()
            data.write_bytes(image.layers[0].data)
    assert cache_is_clean(tmp_path / "cache")


def test_leftovers_of_a_crashed_pull_are_never_used(registry: Registry, tmp_path: Path) -> None:
    image = pack_image(artifact(tmp_path / "artifact", "crash"), metadata())
    cache = tmp_path / "cache"
    crashed = cache / "tmp" / "pull-crashed"
    (crashed / "rootfs" / PLUGIN_ROOT / "auth-plugin").mkdir(parents=True)
    (crashed / "rootfs" / PLUGIN_ROOT / "auth-plugin" / "half-written").write_text("junk")
    with client_for(registry) as client:
        pinned = client.push_image(parse_reference(f"{registry.host}/team/crash:1"), image)
        tree = pull_image(client, pinned, cache)
    assert not (tree / PLUGIN_ROOT / "auth-plugin" / "half-written").exists()
    assert crashed.exists()  # recent: might belong to a concurrent pull, so kept

    prune_partial(cache, now=crashed.stat().st_mtime + STALE_AFTER_SECONDS + 1)
    assert not crashed.exists()


def test_cache_keeps_the_most_recently_used_images(registry: Registry, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    pinned = []
    with client_for(registry) as client:
        for marker in ("one", "two", "three"):
            image = pack_image(artifact(tmp_path / marker, marker), metadata())
            pinned.append(client.push_image(
                parse_reference(f"{registry.host}/team/lru:{marker}"), image))
        trees = [pull_image(client, p, cache) for p in pinned]
        pull_image(client, pinned[0], cache)  # a hit makes "one" the most recent again
        removed = prune_least_recent(cache, keep=2)
    assert removed == [trees[1].parent]
    assert cached_image(cache, str(pinned[1].digest)) is None
    assert cached_image(cache, str(pinned[0].digest)) == trees[0]
    assert cached_image(cache, str(pinned[2].digest)) == trees[2]
    assert list((cache / "tmp").iterdir()) == []
    assert prune_least_recent(tmp_path / "empty", keep=2) == []
