"""Pack an artifact directory into a reproducible single-layer OCI image (no base layers).

Reproducible means: the same files with the same metadata give byte-identical blobs and
therefore the same manifest digest. The layer holds the artifact under
``PLUGIN_ROOT/<plugin-name>/``; entries are sorted, owned by 0:0 with empty names, dated
``LAYER_MTIME``, with modes normalized to 0644 (files) or 0755 (directories, executables).
Compressed bytes depend on the zlib build too, so compare digests from one builder image.
"""

from __future__ import annotations

import gzip
import io
import os
import platform
import re
import stat
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from plugforge.oci.errors import PackError
from plugforge.oci.manifest import (
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    canonical_json,
)
from plugforge.oci.reference import sha256_digest

PLUGIN_ROOT = "plugin"
"""Top directory in the layer; the artifact of plugin ``x`` lives in ``plugin/x/``."""
LAYER_MTIME = 0
GZIP_LEVEL = 9

ANNOTATION_SOURCE = "org.opencontainers.image.source"
ANNOTATION_REVISION = "org.opencontainers.image.revision"
ANNOTATION_BROKER = "dev.plugforge.broker"
ANNOTATION_PLUGIN_NAME = "dev.plugforge.plugin.name"
ANNOTATION_PLUGIN_VERSION = "dev.plugforge.plugin.version"

_PLUGIN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_MACHINE_TO_GOARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


@dataclass(frozen=True)
class ImageMetadata:
    """What the image says about itself, as manifest annotations and config labels."""

    source: str
    revision: str
    broker: str
    plugin_name: str
    plugin_version: str

    def annotations(self) -> dict[str, str]:
        """The builder leaves ``revision`` empty (then absent): the commit lives in the signed
        provenance, so an image's digest depends on its artifact and plugin metadata only."""
        notes = {
            ANNOTATION_SOURCE: self.source,
            ANNOTATION_REVISION: self.revision,
            ANNOTATION_BROKER: self.broker,
            ANNOTATION_PLUGIN_NAME: self.plugin_name,
            ANNOTATION_PLUGIN_VERSION: self.plugin_version,
        }
        return {key: value for key, value in notes.items() if value}


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return sha256_digest(self.data)

    def descriptor(self) -> Descriptor:
        return Descriptor(self.media_type, self.digest, len(self.data))


@dataclass(frozen=True)
class PackedImage:
    """Everything a registry push needs; ``digest`` is the manifest digest."""

    config: Blob
    layers: tuple[Blob, ...]
    manifest: bytes
    media_type: str
    annotations: Mapping[str, str]

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)

    @property
    def blobs(self) -> tuple[Blob, ...]:
        return (*self.layers, self.config)


def host_architecture() -> str:
    """The OCI ``architecture`` of this machine (``amd64``, ``arm64``...)."""
    machine = platform.machine().lower()
    return _MACHINE_TO_GOARCH.get(machine, machine)


def validate_plugin_name(name: str) -> str:
    if not _PLUGIN_NAME_RE.match(name) or name in (".", ".."):
        raise PackError(
            f"invalid plugin name {name!r}: expected 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def pack_image(artifact_dir: Path, metadata: ImageMetadata,
               architecture: str | None = None) -> PackedImage:
    """Build the image for ``artifact_dir`` (a directory of plugin files)."""
    validate_plugin_name(metadata.plugin_name)
    if not artifact_dir.is_dir():
        raise PackError(f"artifact directory {artifact_dir} does not exist or is not a directory")
    tar_bytes = build_layer_tar(artifact_dir, metadata.plugin_name)
    return assemble_image(tar_bytes, metadata, architecture)


def assemble_image(tar_bytes: bytes, metadata: ImageMetadata,
                   architecture: str | None = None) -> PackedImage:
    """Config, gzipped layer and manifest around an already built layer tar."""
    layer = Blob(OCI_LAYER_GZIP, _gzip(tar_bytes))
    config = Blob(OCI_CONFIG, canonical_json({
        "architecture": architecture or host_architecture(),
        "os": "linux",
        "config": {"Labels": metadata.annotations()},
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(tar_bytes)]},
    }))
    manifest = canonical_json({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor().to_json(),
        "layers": [layer.descriptor().to_json()],
        "annotations": metadata.annotations(),
    })
    return PackedImage(config, (layer,), manifest, OCI_MANIFEST, metadata.annotations())


def build_layer_tar(artifact_dir: Path, plugin_name: str) -> bytes:
    """The uncompressed, normalized layer tar (its sha256 is the config's diff_id)."""
    root = f"{PLUGIN_ROOT}/{validate_plugin_name(plugin_name)}"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_info(PLUGIN_ROOT, tarfile.DIRTYPE, 0o755))
        tar.addfile(_info(root, tarfile.DIRTYPE, 0o755))
        for relative in _sorted_entries(artifact_dir):
            path = artifact_dir / relative
            name = f"{root}/{relative}"
            st = path.lstat()
            if stat.S_ISDIR(st.st_mode):
                tar.addfile(_info(name, tarfile.DIRTYPE, 0o755))
            elif stat.S_ISREG(st.st_mode):
                mode = 0o755 if st.st_mode & 0o111 else 0o644
                info = _info(name, tarfile.REGTYPE, mode, size=st.st_size)
                with path.open("rb") as f:
                    tar.addfile(info, f)
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(path)
                _check_symlink(artifact_dir, relative, target)
                tar.addfile(_info(name, tarfile.SYMTYPE, 0o777, linkname=target))
            else:
                raise PackError(
                    f"{path} is neither a file, a directory nor a symlink; artifacts hold "
                    "only those — remove it from the build output"
                )
    return buffer.getvalue()


def _sorted_entries(artifact_dir: Path) -> list[str]:
    entries: list[str] = []
    for dirpath, dirnames, filenames in os.walk(artifact_dir):
        base = Path(dirpath).relative_to(artifact_dir)
        for name in (*dirnames, *filenames):
            relative = (base / name).as_posix()
            try:
                relative.encode("utf-8")
            except UnicodeEncodeError as e:
                raise PackError(f"file name {relative!r} in {artifact_dir} is not UTF-8") from e
            entries.append(relative)
    return sorted(entries)


def _check_symlink(artifact_dir: Path, relative: str, target: str) -> None:
    resolved = os.path.normpath(os.path.join(os.path.dirname(relative), target))
    if os.path.isabs(target) or resolved == ".." or resolved.startswith("../"):
        raise PackError(
            f"symlink {artifact_dir / relative} -> {target} points outside the artifact "
            "directory; make it relative and inside, or copy the file"
        )


def _info(name: str, kind: bytes, mode: int, size: int = 0, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.linkname = linkname
    info.mtime = LAYER_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _gzip(data: bytes) -> bytes:
    buffer = io.BytesIO()
    # filename="" and mtime=0 keep the gzip header free of anything host- or time-specific.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=GZIP_LEVEL,
                       mtime=0) as gz:
        gz.write(data)
    return buffer.getvalue()
