"""The builder's signer: every pushed image gets a signature and a SLSA v1 provenance.

The key is a cosign key pair Secret mounted as a directory (``cosign.key``, optional
``cosign.password``; ``plugforge signing-keys`` or ``cosign generate-key-pair k8s://...``
create it). A content tag (``ck-<key>``) is followed only when the image it points at is signed
by this key and has a provenance by this key for the same source tree: anyone who can move a
tag but lacks the key causes a rebuild, never a signature over their image.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import shutil
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO, TypeVar

from builder.build.registry import Publisher
from builder.errors import RegistryRefused, RegistryUnavailable
from plugforge.oci import ImageRef, OciError, RegistryClient, TransientRegistryError
from plugforge.signing import (
    Provenance,
    SigningKey,
    attest_provenance,
    load_private_key,
    sign_image,
    trusted_build_of_tree,
)

T = TypeVar("T")
KEY_FILE = "cosign.key"
PASSWORD_FILE = "cosign.password"  # noqa: S105 (a file name)


def load_signing_key(directory: Path) -> SigningKey:
    """The key in a mounted cosign key pair Secret; ``KeyFileError`` says what is wrong."""
    password_file = directory / PASSWORD_FILE
    password = password_file.read_bytes().rstrip(b"\r\n") if password_file.exists() else b""
    return load_private_key((directory / KEY_FILE).read_bytes(), password,
                            str(directory / KEY_FILE))


@dataclass(frozen=True)
class BuildFacts:
    """What the pipeline knows about a build, for its provenance."""

    source_url: str
    commit: str
    ref: str
    tree: str
    path: str
    template: str
    recipe: bytes
    broker: str
    build_name: str
    builder_version: str
    toolchain_image: str
    tools: tuple[str, ...]
    started: float
    """time.time() when the build began."""


class BuildSigner:
    def __init__(self, key: SigningKey) -> None:
        self.key = key
        self.last_seconds = 0.0
        """Wall time of the last sign + attest (bench and logs)."""

    def follow_cache(self, publisher: Publisher, repo: ImageRef, digest: str, tree: str,
                     log_to: TextIO) -> bool:
        """True when the cached ``digest`` carries this key's signature and provenance for
        ``tree``; otherwise the build runs (and says why in its log)."""
        found = _wrap(f"verify cached {repo.name}@{digest}", lambda: _with_client(
            publisher, lambda c: trusted_build_of_tree(c, repo.with_digest(digest), self.key,
                                                       tree)))
        if found is None:
            log_to.write(f"==> content tag points at {digest}, which has no signature and "
                         "provenance by this builder's key for this source tree; building\n")
        return found is not None

    def sign(self, publisher: Publisher, repo: ImageRef, digest: str, facts: BuildFacts,
             log_to: TextIO) -> None:
        """Sign ``digest`` (once per key) and attest this build's provenance (once per commit)."""
        started = time.monotonic()
        provenance = _provenance(facts, self.key)
        image = repo.with_digest(digest)

        def publish(client: RegistryClient) -> bool:
            # The two tags are independent: write them at once (round trips dominate).
            with ThreadPoolExecutor(max_workers=1) as pool:
                signed = pool.submit(sign_image, client, image, self.key)
                attested = attest_provenance(
                    client, image, self.key, provenance,
                    unless=lambda p: p.commit == facts.commit and p.tree == facts.tree)
                signed.result()
            return attested

        attested = _wrap(f"sign {repo.name}@{digest}", lambda: _with_client(publisher, publish))
        self.last_seconds = time.monotonic() - started
        log_to.write(f"==> signed {digest} with {self.key.public.key_id}; provenance for "
                     f"commit {facts.commit[:12]} "
                     f"{'attested' if attested else 'already attested'} "
                     f"({self.last_seconds * 1000:.0f} ms)\n")


def _provenance(facts: BuildFacts, key: SigningKey) -> Provenance:
    if "@sha256:" in facts.toolchain_image:
        # An isolated build: the pinned image names every tool; the builder's own PATH says
        # nothing about what compiled the plugin.
        toolchain = {"image": facts.toolchain_image, "tools": " ".join(facts.tools)}
    else:
        # The process executor ran the host's tools: record their versions.
        toolchain = dict(tool_versions(facts.tools))
        if facts.toolchain_image:
            toolchain["toolchain"] = facts.toolchain_image
    return Provenance(
        source_url=facts.source_url, commit=facts.commit, ref=facts.ref, tree=facts.tree,
        path=facts.path, template=facts.template,
        recipe_sha256=hashlib.sha256(facts.recipe).hexdigest(), broker=facts.broker,
        build_name=facts.build_name, builder_version=facts.builder_version,
        toolchain=toolchain, started=_rfc3339(facts.started), finished=_rfc3339(time.time()))


def _rfc3339(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@functools.cache
def _tool_version(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        return "not found"
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return path
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0][:200] if done.returncode == 0 and lines else path


def tool_versions(tools: tuple[str, ...]) -> dict[str, str]:
    """First line of ``tool --version`` per recipe tool (asked once per builder process)."""
    return {tool: _tool_version(tool) for tool in tools}


def _with_client(publisher: Publisher, fn: Callable[[RegistryClient], T]) -> T:
    with publisher.client() as client:
        return fn(client)


def _wrap(what: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except TransientRegistryError as e:
        raise RegistryUnavailable(f"{what}: {e}") from e
    except OciError as e:
        raise RegistryRefused(f"{what}: {e}") from e

