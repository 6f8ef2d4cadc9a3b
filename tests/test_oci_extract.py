"""Safe layer extraction on handcrafted tars (the registry round trip is in test_oci_registry)."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from plugforge.oci import DigestMismatch, ExtractLimits, UnsafeLayer, extract_layers
from plugforge.oci.reference import sha256_digest

Entry = tuple[str, bytes, str, int]  # name, type, data-or-linkname, mode


def make_tar(*entries: Entry) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, payload, mode in entries:
            info = tarfile.TarInfo(name)
            info.type, info.mode = kind, mode
            if kind == tarfile.REGTYPE:
                data = payload.encode()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                info.linkname = payload
                if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
                    info.devmajor, info.devminor = 1, 3
                tar.addfile(info)
    return buffer.getvalue()


def f(name: str, data: str = "x", mode: int = 0o644) -> Entry:
    return (name, tarfile.REGTYPE, data, mode)


def d(name: str) -> Entry:
    return (name, tarfile.DIRTYPE, "", 0o755)


def sym(name: str, target: str) -> Entry:
    return (name, tarfile.SYMTYPE, target, 0o777)


def hard(name: str, target: str) -> Entry:
    return (name, tarfile.LNKTYPE, target, 0o644)


SMALL = ExtractLimits(max_entry_bytes=1024, max_total_bytes=3000, max_entries=50)

# name → (layer tar, offending entry, reason fragment); also pushed to a real registry.
UNSAFE_LAYERS: dict[str, tuple[bytes, str, str]] = {
    "absolute": (make_tar(d("ok"), f("/etc/evil")), "/etc/evil", "absolute path"),
    "dotdot": (make_tar(f("../x")), "../x", "'..' component"),
    "nested-dotdot": (make_tar(d("a"), f("a/../../x")), "a/../../x", "'..' component"),
    "symlink-to-etc": (make_tar(sym("etc", "/etc")), "etc", "absolute path '/etc'"),
    "symlink-up": (make_tar(d("a"), sym("a/l", "../../outside")), "a/l", "outside the image"),
    "symlink-chain": (make_tar(d("x"), sym("x/up", ".."), sym("t", "x/up/../..")), "t",
                      "resolves outside the image"),
    "write-through-symlink": (make_tar(sym("d", "."), f("d/file")), "d/file",
                              "not a real directory"),
    "hardlink-out": (make_tar(hard("h", "../../etc/passwd")), "h", "'..' component"),
    "hardlink-absolute": (make_tar(hard("h", "/etc/passwd")), "h", "absolute path"),
    "hardlink-via-symlink": (make_tar(sym("s", "."), hard("h", "s/x")), "h",
                             "not a real directory"),
    "char-device": (make_tar(("null", tarfile.CHRTYPE, "", 0o666)), "null", "device"),
    "block-device": (make_tar(("sda", tarfile.BLKTYPE, "", 0o660)), "sda", "device"),
    "fifo": (make_tar(("pipe", tarfile.FIFOTYPE, "", 0o644)), "pipe", "FIFO"),
    "oversized": (make_tar(f("big", "x" * 2048)), "big", "over the 1024 byte limit"),
    "total-size": (make_tar(*(f(f"f{i}", "y" * 1000) for i in range(4))), "f3",
                   "total size passes the 3000 byte limit"),
    "too-many": (make_tar(*(d(f"d{i}") for i in range(51))), "d50", "more than 50 entries"),
    "whiteout": (make_tar(f("dir/.wh.gone")), "dir/.wh.gone", "whiteout"),
}


@pytest.fixture(params=[True, False], ids=["gzip", "plain"])
def write_layer(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[bytes], Path]:
    def write(tar_bytes: bytes) -> Path:
        path = tmp_path / "layer"
        path.write_bytes(gzip.compress(tar_bytes, mtime=0) if request.param else tar_bytes)
        return path
    return write


@pytest.mark.parametrize("case", sorted(UNSAFE_LAYERS))
def test_unsafe_layers_install_nothing(case: str, tmp_path: Path,
                                       write_layer: Callable[[bytes], Path]) -> None:
    tar_bytes, entry, reason = UNSAFE_LAYERS[case]
    area = tmp_path / "area" / "deep" / "er"
    area.mkdir(parents=True)
    dest = area / "image"
    with pytest.raises(UnsafeLayer) as info:
        extract_layers([write_layer(tar_bytes)], dest, limits=SMALL)
    assert info.value.entry == entry
    assert reason in str(info.value)
    assert list(area.iterdir()) == []  # neither dest nor a temp dir is left behind
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["area", "deep", "er", "layer"]


def test_safe_layer_with_links_and_modes(tmp_path: Path,
                                         write_layer: Callable[[bytes], Path]) -> None:
    layer = write_layer(make_tar(
        d("./"), d("bin"), f("bin/tool", "#!/bin/sh\n", 0o6777), f("./etc/conf", "a=1"),
        sym("bin/link", "../etc/conf"), hard("bin/hard", "etc/conf"), sym("self", "."),
        ("ro", tarfile.DIRTYPE, "", 0o555), f("ro/file", "r", 0o444),
    ))
    dest = tmp_path / "image"
    extract_layers([layer], dest, limits=SMALL)
    assert (dest / "bin" / "tool").stat().st_mode & 0o7777 == 0o755  # set-id stripped
    assert (dest / "bin" / "link").read_text() == "a=1"
    assert os.path.samefile(dest / "bin" / "hard", dest / "etc" / "conf")
    assert (dest / "ro").stat().st_mode & 0o777 == 0o755  # owner keeps rwx
    assert (dest / "ro" / "file").stat().st_mode & 0o777 == 0o444
    assert (dest / "etc").stat().st_mode & 0o777 == 0o755
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_destination_must_be_new(tmp_path: Path) -> None:
    layer = tmp_path / "layer"
    layer.write_bytes(make_tar(f("a")))
    (tmp_path / "image").mkdir()
    with pytest.raises(FileExistsError, match="must be new"):
        extract_layers([layer], tmp_path / "image")


def test_diff_id_checked(tmp_path: Path) -> None:
    tar_bytes = make_tar(f("a"))
    layer = tmp_path / "layer"
    layer.write_bytes(gzip.compress(tar_bytes))
    extract_layers([layer], tmp_path / "ok", diff_ids=[sha256_digest(tar_bytes)])
    with pytest.raises(DigestMismatch, match="uncompresses to digest"):
        extract_layers([layer], tmp_path / "bad", diff_ids=["sha256:" + "0" * 64])
    assert not (tmp_path / "bad").exists()


def test_garbage_and_bombs(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x1f\x8b" + os.urandom(200))
    with pytest.raises(UnsafeLayer, match="not a readable tar archive"):
        extract_layers([garbage], tmp_path / "g")
    truncated = tmp_path / "truncated"
    truncated.write_bytes(gzip.compress(make_tar(f("a", "z" * 5000)))[:60])
    with pytest.raises(UnsafeLayer, match="not a readable tar archive"):
        extract_layers([truncated], tmp_path / "t")
    bomb = tmp_path / "bomb"
    bomb.write_bytes(gzip.compress(b"\0" * (8 << 20)))
    limits = ExtractLimits(max_entry_bytes=1024, max_total_bytes=1024, max_entries=1)
    with pytest.raises(UnsafeLayer, match="uncompresses to more than"):
        extract_layers([bomb], tmp_path / "b", limits=limits)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb", "garbage", "truncated"]
