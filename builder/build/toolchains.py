"""Toolchain images: which image a recipe's steps run in, and where a build's caches live.

**Definition.** A toolchain is named after the template whose
``plugin-templates/<name>/toolchain.Containerfile`` defines it. The image holds exactly what
that recipe's steps run, a non-root build user (``BUILD_UID``:``BUILD_UID``, ``HOME`` =
``BUILD_HOME``, set by the image's ``USER``/``ENV``) and nothing else. It declares the programs
it provides as ``LABEL dev.plugforge.toolchain.tools="gcc ..."`` (``TOOLS_LABEL``, space
separated).

**Naming and pinning.** A recipe says ``toolchain: mosquitto-c``. At release time
``plugforge toolchains build --push REGISTRY --out toolchains.yaml`` builds every toolchain with
podman, pushes each to ``REGISTRY/plugforge/toolchain-<name>`` and writes the pin file::

    apiVersion: plugforge.dev/v1alpha1
    kind: ToolchainPins
    toolchains:
      mosquitto-c:
        image: registry.example.com/plugforge/toolchain-mosquitto-c@sha256:<64 hex>
        tools: [gcc]

The builder reads it (``--toolchains FILE``; in ``manifests/`` the ``plugforge-toolchains``
ConfigMap) and ``resolve()`` turns a recipe into its pin *before* a build starts: a toolchain
without a pin is ``ToolchainMissing`` (naming it and the command that fixes it), a recipe tool the
image does not declare is ``ToolMissing`` (naming the tool). Executors get the pinned
``image@digest`` as ``BuildJob.toolchain_image`` and never see a tag.

**What executors apply** (``container`` and ``kubernetes``):

- run as the image's user (uid ``BUILD_UID``, non-root), ``HOME`` a fresh writable directory at
  ``BUILD_HOME`` (the root filesystem is read-only), ``TMPDIR`` a fresh writable directory, the
  workspace the working directory;
- caches live on the machine/volume at ``cache_dir(root, tenant, image, name)`` =
  ``<root>/build-caches/<tenant namespace>/sha256-<toolchain digest hex>/<cache name>``: per
  tenant (never shared across tenants, so one tenant's build cannot plant a trojaned Maven
  plugin in another's) and per toolchain digest (a new toolchain starts clean; an old one's
  cache is never reused with different compilers). ``container``: mount it read-write for
  that tenant's builds only, at ``cache_mount(name)`` (``CACHE_MOUNT/<cache name>``) inside the
  container, and point the tool at it as ``builder.build.sandbox.cache_env`` does.
  ``kubernetes``: a copy goes into the build pod with the source, and only the files the build
  added come back, merged without overwriting (``executors/kubernetes.py``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import yaml

from builder.build.recipe_errors import BuildError, RecipeError, ToolMissing

API_VERSION = "plugforge.dev/v1alpha1"
KIND = "ToolchainPins"
CONTAINERFILE = "toolchain.Containerfile"
REPOSITORY_PREFIX = "plugforge/toolchain-"
"""``<registry>/plugforge/toolchain-<name>``: where ``plugforge toolchains build`` pushes."""
TOOLS_LABEL = "dev.plugforge.toolchain.tools"
NAME_LABEL = "dev.plugforge.toolchain"
BUILD_UID = 65532
BUILD_HOME = "/home/build"
CACHE_MOUNT = "/var/cache/plugforge"
FIX_COMMAND = "plugforge toolchains build --push REGISTRY --out toolchains.yaml"

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_TOOL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
# A pinned reference: registry/path@sha256:..., no tag, nothing a shell or a path could abuse.
_PINNED = re.compile(r"^[a-z0-9][a-z0-9.-]*(:[0-9]+)?(/[a-z0-9][a-z0-9._/-]*)@sha256:[0-9a-f]{64}$")
# A Kubernetes namespace (DNS label), or the ``local`` tenant of ``plugforge build --local``.
_TENANT = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class ToolchainMissing(BuildError):
    """A recipe names a toolchain the builder has no pinned image for."""

    reason = "ToolchainMissing"

    def __init__(self, message: str, toolchain: str) -> None:
        super().__init__(message)
        self.toolchain = toolchain


class PinsInvalid(BuildError):
    """The pin file is unreadable or malformed: a deployment error, not the plugin's."""

    reason = "ToolchainPinsInvalid"


@dataclass(frozen=True)
class Pin:
    image: str
    """``registry/plugforge/toolchain-<name>@sha256:...``"""
    tools: tuple[str, ...]

    @property
    def digest(self) -> str:
        return self.image.rsplit("@", 1)[1]


Pins = Mapping[str, Pin]


def check_name(name: str) -> str:
    """A toolchain name is a template name: plain, lowercase, no path separators."""
    if not _NAME.match(name) or ".." in name:
        raise RecipeError(f"toolchain name {name!r} is invalid: expected a template name like "
                          "'mosquitto-c' (lowercase letters, digits, '.', '_', '-')")
    return name


def containerfile(templates_root: Path, name: str) -> Path:
    """``<templates_root>/<name>/toolchain.Containerfile`` (which must exist)."""
    path = templates_root / check_name(name) / CONTAINERFILE
    if not path.is_file():
        raise RecipeError(f"no toolchain {name!r}: expected {path}")
    return path


def names(templates_root: Path) -> list[str]:
    """Every toolchain defined under ``templates_root``, sorted."""
    return sorted(p.parent.name for p in templates_root.glob(f"*/{CONTAINERFILE}"))


def declared_tools(containerfile_text: str) -> tuple[str, ...]:
    """The tools a Containerfile's ``TOOLS_LABEL`` declares (what its image's label will say)."""
    text = re.sub(r"\\\n", " ", containerfile_text)
    match = re.search(rf'^LABEL\s.*\b{re.escape(TOOLS_LABEL)}="([^"]*)"', text, re.MULTILINE)
    return tuple(match.group(1).split()) if match else ()


def resolve(pins: Pins, toolchain: str, tools: Iterable[str]) -> Pin:
    """The pin of ``toolchain``, after checking it provides every one of ``tools``."""
    if not toolchain:
        raise ToolchainMissing(
            "the recipe names no toolchain; add `toolchain: <template>` (a template with a "
            f"{CONTAINERFILE}, e.g. mosquitto-c) so its build runs in that image", toolchain)
    pin = pins.get(toolchain)
    if pin is None:
        known = ", ".join(sorted(pins)) or "none"
        raise ToolchainMissing(
            f"no pinned image for toolchain {toolchain!r} (pinned: {known}); build and pin it "
            f"with `{FIX_COMMAND}` and give the file to the builder (--toolchains, the "
            "plugforge-toolchains ConfigMap)", toolchain)
    for tool in tools:
        if tool not in pin.tools:
            raise ToolMissing(
                f"tool {tool!r} is not provided by toolchain {toolchain!r} ({pin.image} provides "
                f"{', '.join(pin.tools) or 'nothing'}); use one of those or add it to "
                f"plugin-templates/{toolchain}/{CONTAINERFILE}", tool=tool)
    return pin


def parse_pins(data: object, origin: str = "toolchains.yaml") -> dict[str, Pin]:
    """Validate a parsed pin file; every error names the field."""
    def fail(problem: str) -> PinsInvalid:
        return PinsInvalid(f"{origin}: {problem}; regenerate it with `{FIX_COMMAND}`")

    if not isinstance(data, dict) or data.get("apiVersion") != API_VERSION \
            or data.get("kind") != KIND:
        raise fail(f"expected a mapping with apiVersion {API_VERSION!r} and kind {KIND!r}")
    entries = data.get("toolchains")
    if not isinstance(entries, dict):
        raise fail("toolchains: expected a mapping of toolchain name -> {image, tools}")
    pins: dict[str, Pin] = {}
    for name, entry in entries.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise fail(f"toolchains: {name!r} is not a toolchain name")
        if not isinstance(entry, dict) or set(entry) != {"image", "tools"}:
            raise fail(f"toolchains.{name}: expected exactly the keys image and tools")
        image, tools = entry["image"], entry["tools"]
        if not isinstance(image, str) or not _PINNED.match(image):
            raise fail(f"toolchains.{name}.image: expected registry/repository@sha256:<64 hex>, "
                       f"found {image!r}")
        if not isinstance(tools, list) or not all(
                isinstance(t, str) and _TOOL.match(t) for t in tools):
            raise fail(f"toolchains.{name}.tools: expected a list of program names, "
                       f"found {tools!r}")
        pins[name] = Pin(image, tuple(tools))
    return pins


def load_pins(path: Path) -> dict[str, Pin]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise PinsInvalid(f"cannot read the toolchain pins {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise PinsInvalid(f"{path}: not valid YAML: {e}") from e
    return parse_pins(data, str(path))


def dump_pins(pins: Pins) -> str:
    """The pin file's text (``parse_pins(yaml.safe_load(dump_pins(p))) == p``)."""
    return yaml.safe_dump({"apiVersion": API_VERSION, "kind": KIND, "toolchains": {
        name: {"image": pin.image, "tools": list(pin.tools)}
        for name, pin in sorted(pins.items())}}, sort_keys=False)


def cache_dir(root: Path, tenant: str, toolchain_image: str, cache: str) -> Path:
    """``<root>/build-caches/<tenant>/sha256-<hex>/<cache>``: the one place a cache lives.

    ``toolchain_image`` is the pinned ``...@sha256:...`` (only its digest is used).
    """
    if not _TENANT.match(tenant):
        raise BuildError(f"tenant {tenant!r} is not a namespace name; refusing it in a path")
    digest = toolchain_image.rsplit("@", 1)[-1]
    if not _DIGEST.match(digest):
        raise BuildError(f"toolchain image {toolchain_image!r} is not pinned by digest "
                         "(expected ...@sha256:<64 hex>); caches are keyed by it")
    if not _NAME.match(cache):
        raise BuildError(f"cache name {cache!r} is invalid")
    return root / "build-caches" / tenant / digest.replace(":", "-") / cache


def cache_mount(cache: str) -> str:
    """Where a cache appears inside a build container."""
    return str(PurePosixPath(CACHE_MOUNT) / cache)
