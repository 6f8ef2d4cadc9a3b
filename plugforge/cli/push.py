"""``plugforge push WORK_DIR REPO``: pack a local build into the builder's image and push it.

``plugforge build --local`` leaves ``<work dir>/artifact/`` and ``<work dir>/plugforge-build.json``
(plugin name, version, broker, source URL). This packs them exactly as the builder does
(``plugforge.oci.pack_image``, no commit in the image), so the same tree built from the same
recipe gives the builder's digest when ``--source`` is the BrokerPlugin's ``source.git.url``.
Registry credentials come from a Docker config file (``auths``), as ``docker login`` writes it.
Prints ``repository@sha256:...``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from plugforge.cli._common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CliError
from plugforge.oci import (
    Credentials,
    ImageMetadata,
    OciError,
    RegistryClient,
    credentials_from_dockerconfigjson,
    pack_image,
    parse_reference,
)

BUILD_FILE = "plugforge-build.json"
ARTIFACT_DIR = "artifact"


@dataclass(frozen=True)
class BuildRecord:
    """What ``build --local`` knew about the build that ``push`` needs to pack it."""

    name: str
    version: str
    broker: str
    source: str
    """The repository URL written into the image (``org.opencontainers.image.source``)."""

    def metadata(self) -> ImageMetadata:
        return ImageMetadata(source=self.source, revision="", broker=self.broker,
                             plugin_name=self.name, plugin_version=self.version)


def write_record(work_dir: Path, record: BuildRecord) -> None:
    (work_dir / BUILD_FILE).write_text(json.dumps(asdict(record), indent=2) + "\n")


def read_record(work_dir: Path) -> BuildRecord:
    path = work_dir / BUILD_FILE
    try:
        data = json.loads(path.read_text())
        return BuildRecord(**{k: str(data[k]) for k in ("name", "version", "broker", "source")})
    except FileNotFoundError:
        raise CliError(f"{path} is missing: {work_dir} is not the work dir of a "
                       "`plugforge build --local --work-dir DIR` run", EXIT_USAGE) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CliError(f"{path}: unreadable build record ({e})", EXIT_USAGE) from e


def docker_config_path(explicit: Path | None) -> Path:
    if explicit is not None:
        return explicit
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def registry_credentials(config: Path, registry: str) -> Credentials | None:
    """The ``auths`` entry for ``registry``; None (anonymous) when the file or entry is absent."""
    try:
        raw = config.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CliError(f"docker config {config}: {e.strerror}", EXIT_USAGE) from e
    try:
        return credentials_from_dockerconfigjson(raw, registry)
    except OciError as e:  # never quotes the file's content
        raise CliError(f"docker config {config}: {e}", EXIT_USAGE) from e


def push_build(work_dir: Path, repository: str, *, docker_config: Path | None = None,
               ca_file: Path | None = None, plain_http: bool = False) -> str:
    """Pack ``work_dir``'s build and push it to ``repository`` (a tag optional); ``repo@digest``."""
    record = read_record(work_dir)
    artifact = work_dir / ARTIFACT_DIR
    if not artifact.is_dir():
        raise CliError(f"{artifact} is missing: nothing to pack", EXIT_USAGE)
    try:
        ref = parse_reference(repository)
    except OciError as e:
        raise CliError(f"repository {repository!r}: {e}", EXIT_USAGE) from e
    if ref.digest is not None:
        raise CliError(f"repository {repository!r}: a digest cannot be pushed to; name the "
                       "repository (optionally with a tag)", EXIT_USAGE)
    creds = registry_credentials(docker_config_path(docker_config), ref.registry)
    try:
        image = pack_image(artifact, record.metadata())
        with RegistryClient(ref.registry, credentials=creds, ca_bundle=ca_file,
                            insecure_http=plain_http) as client:
            pinned = client.push_image(ref, image)
    except OciError as e:
        raise CliError(f"push to {ref.registry}: {e}") from e
    return f"{ref.name}@{pinned.digest}"


def add_registry_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("registry")
    g.add_argument("--docker-config", type=Path, metavar="FILE",
                   help="Docker config with the registry's credentials under 'auths' "
                        "(default $DOCKER_CONFIG/config.json, else ~/.docker/config.json; "
                        "absent: anonymous)")
    g.add_argument("--registry-ca", type=Path, metavar="FILE",
                   help="CA bundle of a registry with a private CA")
    g.add_argument("--plain-http", action="store_true",
                   help="talk plain HTTP to the registry (local development registries only)")


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "push", help="push a local build as the builder's image",
        description="Pack the artifact of `plugforge build --local --work-dir DIR` into the same "
                    "reproducible image the builder makes and push it; prints REPO@DIGEST.")
    p.add_argument("work_dir", type=Path, metavar="WORK_DIR",
                   help="the --work-dir of a finished `plugforge build --local`")
    p.add_argument("repository", metavar="REPO", help="registry/repository[:tag] to push to")
    add_registry_flags(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        print(push_build(args.work_dir, args.repository, docker_config=args.docker_config,
                         ca_file=args.registry_ca, plain_http=args.plain_http))
    except CliError as e:
        print(f"plugforge push: {e}", file=sys.stderr)
        return e.code
    return EXIT_OK


__all__ = ["BUILD_FILE", "EXIT_FAILED", "BuildRecord", "push_build", "read_record",
           "write_record"]
