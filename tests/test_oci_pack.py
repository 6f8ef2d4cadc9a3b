"""Reproducible packing: same input → same digest; the layer tar is normalized."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from plugforge.oci import (
    PLUGIN_ROOT,
    ImageMetadata,
    PackError,
    extract_layers,
    pack_image,
    sha256_digest,
)
from plugforge.oci.pack import build_layer_tar

META = ImageMetadata(source="https://git.example.com/team/auth.git", revision="a" * 40,
                     broker="mosquitto", plugin_name="auth-plugin", plugin_version="1.2.3")


def make_artifact(root: Path) -> Path:
    (root / "lib").mkdir(parents=True)
    (root / "zeta.conf").write_text("z = 1\n")
    (root / "lib" / "auth.so").write_bytes(b"\x7fELF" + bytes(range(256)) * 40)
    (root / "lib" / "auth.so").chmod(0o4775)  # setuid + group write: normalized away
    (root / "README").write_text("hello\n")
    (root / "README").chmod(0o600)
    (root / "current").symlink_to("lib/auth.so")
    return root


def test_same_input_same_digest_across_mtimes_and_owners(tmp_path: Path) -> None:
    first = pack_image(make_artifact(tmp_path / "a"), META, architecture="amd64")
    second_dir = make_artifact(tmp_path / "b")
    for path in second_dir.rglob("*"):
        os.utime(path, (1_700_000_000, 1_700_000_000), follow_symlinks=False)
        os.lchown(path, 1234, 5678)
    second = pack_image(second_dir, META, architecture="amd64")
    assert first.digest == second.digest
    assert first.manifest == second.manifest
    assert [b.data for b in first.blobs] == [b.data for b in second.blobs]


def test_metadata_changes_the_digest(tmp_path: Path) -> None:
    artifact = make_artifact(tmp_path / "a")
    base = pack_image(artifact, META, architecture="amd64")
    other = ImageMetadata(META.source, "b" * 40, META.broker, META.plugin_name,
                          META.plugin_version)
    changed = pack_image(artifact, other, architecture="amd64")
    assert changed.digest != base.digest
    assert changed.layers[0].digest == base.layers[0].digest  # same files, same layer


def test_manifest_and_config_carry_annotations_and_labels(tmp_path: Path) -> None:
    image = pack_image(make_artifact(tmp_path / "a"), META, architecture="arm64")
    manifest = json.loads(image.manifest)
    expected = {
        "org.opencontainers.image.source": META.source,
        "org.opencontainers.image.revision": META.revision,
        "dev.plugforge.broker": "mosquitto",
        "dev.plugforge.plugin.name": "auth-plugin",
        "dev.plugforge.plugin.version": "1.2.3",
    }
    assert manifest["annotations"] == expected
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["layers"] == [image.layers[0].descriptor().to_json()]
    config = json.loads(image.config.data)
    assert config["config"]["Labels"] == expected
    assert config["architecture"] == "arm64" and config["os"] == "linux"
    assert "created" not in config
    tar_bytes = gzip.decompress(image.layers[0].data)
    assert config["rootfs"] == {"type": "layers", "diff_ids": [sha256_digest(tar_bytes)]}


def test_layer_tar_is_sorted_owned_by_root_with_fixed_mtime(tmp_path: Path) -> None:
    image = pack_image(make_artifact(tmp_path / "a"), META)
    layer = image.layers[0].data
    assert layer[4:8] == b"\0\0\0\0"  # gzip header mtime
    assert layer[3] & 0x08 == 0  # no FNAME
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer))) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    root = f"{PLUGIN_ROOT}/auth-plugin"
    assert names == sorted(names)
    assert names == ["plugin", root, f"{root}/README", f"{root}/current", f"{root}/lib",
                     f"{root}/lib/auth.so", f"{root}/zeta.conf"]
    for m in members:
        assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", 0)
        assert not m.pax_headers
    modes = {m.name: m.mode for m in members}
    assert modes[f"{root}/README"] == 0o644
    assert modes[f"{root}/lib/auth.so"] == 0o755
    assert modes[f"{root}/lib"] == 0o755
    assert {m.name: m.linkname for m in members}[f"{root}/current"] == "lib/auth.so"


def test_packed_layer_extracts_to_the_same_files(tmp_path: Path) -> None:
    artifact = make_artifact(tmp_path / "a")
    image = pack_image(artifact, META)
    layer_path = tmp_path / "layer.tgz"
    layer_path.write_bytes(image.layers[0].data)
    dest = tmp_path / "out"
    extract_layers([layer_path], dest)
    plugin = dest / PLUGIN_ROOT / "auth-plugin"
    assert (plugin / "lib" / "auth.so").read_bytes() == (artifact / "lib/auth.so").read_bytes()
    assert os.readlink(plugin / "current") == "lib/auth.so"
    assert (plugin / "lib" / "auth.so").stat().st_mode & 0o7777 == 0o755


def test_pack_refuses_bad_input(tmp_path: Path) -> None:
    artifact = tmp_path / "a"
    artifact.mkdir()
    (artifact / "escape").symlink_to("../../etc/passwd")
    with pytest.raises(PackError, match="points outside the artifact directory"):
        build_layer_tar(artifact, "p")
    (artifact / "escape").unlink()
    os.mkfifo(artifact / "fifo")
    with pytest.raises(PackError, match="neither a file, a directory nor a symlink"):
        build_layer_tar(artifact, "p")
    with pytest.raises(PackError, match=r"invalid plugin name '\.\./x'"):
        build_layer_tar(artifact, "../x")
    with pytest.raises(PackError, match="does not exist"):
        pack_image(tmp_path / "missing", META)
