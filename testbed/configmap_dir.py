"""Write a directory the way the kubelet's atomic writer updates a mounted ConfigMap.

Layout: ``..<timestamp>/`` holds one version's files, ``..data -> ..<timestamp>`` names the
current version, and every key is a symlink ``key -> ..data/key``. ``update`` writes a new
version directory completely, swaps ``..data`` with a rename (atomic), fixes the key symlinks,
then removes the old version, in the kubelet's order.
"""

from __future__ import annotations

import itertools
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

_counter = itertools.count()


class ConfigMapDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)

    def update(self, data: Mapping[str, str]) -> None:
        stamp = time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime())
        version = f"..{stamp}.{os.getpid()}{next(_counter):06d}"
        version_dir = self.path / version
        version_dir.mkdir()
        for key, text in data.items():
            (version_dir / key).write_text(text)
        data_link = self.path / "..data"
        old = os.readlink(data_link) if data_link.is_symlink() else None
        tmp_link = self.path / "..data_tmp"
        os.symlink(version, tmp_link)
        os.rename(tmp_link, data_link)
        for key in data:
            link = self.path / key
            if not link.is_symlink():
                os.symlink(f"..data/{key}", link)
        for entry in os.listdir(self.path):
            if not entry.startswith("..") and entry not in data:
                (self.path / entry).unlink()
        if old is not None:
            shutil.rmtree(self.path / old, ignore_errors=True)
