"""``plugforge toolchains build``: make the templates' toolchain images, push and pin them.

Run at release time. Every ``plugin-templates/<name>/toolchain.Containerfile`` (or the ones
named) is built with podman ``FROM --base``; with ``--push REGISTRY`` each goes to
``REGISTRY/plugforge/toolchain-<name>`` and, with ``--out FILE``, the pin file the builder
reads (``--toolchains``, the ``plugforge-toolchains`` ConfigMap) records its ``image@digest``
and the tools its label declares (``builder.build.toolchains``). podman runs with the
machine's own configuration (``containers.conf``, ``storage.conf``, ``podman login``).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from builder.build import toolchains
from builder.build.recipe import templates_root

DEFAULT_BASE = "docker.io/library/debian:bookworm-slim"
_TAIL_LINES = 30


class ToolchainBuildFailed(Exception):
    pass


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "toolchains", help="build, push and pin the templates' toolchain images",
        description="Toolchain images: where a recipe's build steps run.")
    sub = p.add_subparsers(dest="toolchains_command", metavar="COMMAND", required=True)
    b = sub.add_parser(
        "build", help="build toolchain images with podman (and push and pin them)",
        description="Build every template's toolchain.Containerfile (or NAME ...) with podman; "
                    "with --push, push each to REGISTRY/plugforge/toolchain-<name> and print "
                    "its pinned reference; with --out, write the pin file the builder reads.")
    b.add_argument("names", nargs="*", metavar="NAME", help="toolchains to build (default: all)")
    b.add_argument("--push", metavar="REGISTRY",
                   help="registry host[:port][/path] to push to (credentials: podman login)")
    b.add_argument("--out", type=Path, metavar="FILE",
                   help="write the pin file (toolchains.yaml) here; needs --push")
    b.add_argument("--base", default=DEFAULT_BASE,
                   help="Debian bookworm image to build FROM (default %(default)s)")
    b.add_argument("--registry-ca", type=Path, metavar="FILE",
                   help="CA bundle of a registry with a private CA")
    b.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    root = templates_root()
    known = toolchains.names(root)
    names: list[str] = list(args.names) or known
    unknown = [n for n in names if n not in known]
    if unknown:
        print(f"plugforge toolchains build: no toolchain {', '.join(map(repr, unknown))} in "
              f"{root} (known: {', '.join(known) or 'none'})", file=sys.stderr)
        return 2
    if args.out is not None and not args.push:
        print("plugforge toolchains build: --out needs --push (pins name pushed digests)",
              file=sys.stderr)
        return 2
    if shutil.which("podman") is None:
        print("plugforge toolchains build: podman is not installed (Debian: apt-get install "
              "podman)", file=sys.stderr)
        return 1
    pins: dict[str, toolchains.Pin] = {}
    with tempfile.TemporaryDirectory(prefix="plugforge-toolchains-") as tmp:
        try:
            cert_dir = _cert_dir(Path(tmp), args.push, args.registry_ca)
            for name in names:
                pin = _build_one(root, name, args.base, args.push, cert_dir, Path(tmp))
                if pin is not None:
                    pins[name] = pin
        except ToolchainBuildFailed as e:
            print(f"plugforge toolchains build: {e}", file=sys.stderr)
            return 1
    if args.out is not None:
        if args.out.exists():
            # Pins of toolchains not rebuilt this time stay as they were.
            pins = {**toolchains.load_pins(args.out), **pins}
        args.out.write_text(toolchains.dump_pins(pins))
        print(f"wrote {len(pins)} pins to {args.out}")
    return 0


def _build_one(root: Path, name: str, base: str, registry: str | None, cert_dir: Path | None,
               tmp: Path) -> toolchains.Pin | None:
    containerfile = toolchains.containerfile(root, name)
    # The tag names the inputs; the pin names the bytes (a digest).
    tag = hashlib.sha256(base.encode() + b"\0" + containerfile.read_bytes()).hexdigest()[:16]
    local = f"localhost/{toolchains.REPOSITORY_PREFIX}{name}:{tag}"
    started = time.monotonic()
    print(f"==> building toolchain {name} from {containerfile}", flush=True)
    # podman's own output shows the build as it happens.
    code = subprocess.run(["podman", "build", "--layers", "--build-arg", f"BASE_IMAGE={base}",
                           "-f", str(containerfile), "-t", local, str(containerfile.parent)],
                          check=False).returncode
    if code != 0:
        raise ToolchainBuildFailed(f"building {name} failed (podman exited {code}; its output "
                                   "is above)")
    size = int(_podman("image", "inspect", "--format", "{{.Size}}", local, what="inspect"))
    tools = tuple(_podman("image", "inspect", "--format",
                          f'{{{{index .Labels "{toolchains.TOOLS_LABEL}"}}}}', local,
                          what="inspect").split())
    if not tools or tools == ("<no", "value>"):
        raise ToolchainBuildFailed(f"{containerfile} declares no tools: add LABEL "
                                   f'{toolchains.TOOLS_LABEL}="<program> ..."')
    built = f"{time.monotonic() - started:.0f} s"
    if registry is None:
        print(f"    {name}: {local} ({size / 1e6:.0f} MB, {built}; tools: {' '.join(tools)})")
        return None
    target = f"{registry.rstrip('/')}/{toolchains.REPOSITORY_PREFIX}{name}"
    digest_file = tmp / f"{name}.digest"
    _podman("push", *(["--cert-dir", str(cert_dir)] if cert_dir else []),
            "--digestfile", str(digest_file), local, f"docker://{target}:{tag}",
            what=f"pushing {name} to {target}")
    pinned = f"{target}@{digest_file.read_text().strip()}"
    print(f"    {name}: {pinned} ({size / 1e6:.0f} MB uncompressed, {built}; tools: "
          f"{' '.join(tools)})", flush=True)
    try:
        return toolchains.parse_pins({"apiVersion": toolchains.API_VERSION,
                                      "kind": toolchains.KIND,
                                      "toolchains": {name: {"image": pinned,
                                                            "tools": list(tools)}}})[name]
    except toolchains.PinsInvalid as e:
        raise ToolchainBuildFailed(f"{name}: the pushed reference cannot be pinned: {e}") from e


def _cert_dir(tmp: Path, registry: str | None, ca: Path | None) -> Path | None:
    if ca is None or registry is None:
        return None
    if not ca.is_file():
        raise ToolchainBuildFailed(f"--registry-ca {ca} is not a file")
    directory = tmp / "certs"
    directory.mkdir()
    shutil.copyfile(ca, directory / "ca.crt")
    return directory


def _podman(*args: str, what: str) -> str:
    result = subprocess.run(["podman", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join(result.stdout.splitlines()[-_TAIL_LINES:])
        raise ToolchainBuildFailed(f"{what} failed (podman exited {result.returncode}):\n{tail}")
    return result.stdout.strip()
