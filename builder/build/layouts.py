"""Recognise an existing plugin repository's layout and infer the recipe that builds it.

Pure reading of the tree (no commands run): each rule returns a ``Layout`` whose ``recipe`` is
a repository-recipe overlay (``template: ...`` plus overrides, see ``repo_recipe``), the text
``plugforge init`` writes. A rule answers only when its evidence is unambiguous:

- Mosquitto: one C file including ``mosquitto_plugin.h`` or ``mosquitto_broker.h``;
- HiveMQ: a Maven ``pom.xml`` depending on ``hivemq-extension-sdk``;
- EMQX: a rebar3 project whose ``rebar.config`` has EMQX's plugin release section
  (``emqx_plugrel``) or depends on ``emqx_plugin_helper``;
- VerneMQ: a rebar3 app with a module implementing VerneMQ hooks (``vmq_plugin`` hook
  behaviours, or exporting ``auth_on_register``);
- RabbitMQ: a module with ``-behaviour(rabbit_authn_backend)`` or ``rabbit_authz_backend``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plugforge.contract import PLUGIN_NAME

MAX_FILES = 2000
"""Files looked at per tree: a layout is recognised near the top, not in a vendored world."""
MAX_READ = 256 * 1024
_SKIP_DIRS = {".git", "_build", "target", "node_modules", "deps", ".plugforge"}
_MOSQ_INCLUDE = re.compile(r'^\s*#\s*include\s*[<"](mosquitto_plugin|mosquitto_broker)\.h[>"]',
                           re.MULTILINE)
_LOCAL_INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.MULTILINE)
_VMQ_HOOK = re.compile(r"-behaviou?r\(\s*(auth_on_\w+_hook|on_\w+_hook)\s*\)"
                       r"|-export\(\[[^\]]*\bauth_on_register\s*/", re.MULTILINE)
_RABBIT = re.compile(r"-behaviou?r\(\s*(rabbit_authn_backend|rabbit_authz_backend)\s*\)")
_EMQX = re.compile(r"\bemqx_plugrel\b|\bemqx_plugin_helper\b")
_APP_SRC_NAME = re.compile(r"^\{application,\s*([a-z][a-z0-9_]*)\s*,", re.MULTILINE)
_VERSION_LINE = re.compile(r"^VERSION\s*:?=\s*([0-9][A-Za-z0-9._+~-]*)\s*$", re.MULTILINE)
_MAKE_NAME = re.compile(r"^PLUGIN_NAME\s*:?=\s*(\S+)\s*$", re.MULTILINE)
_POM_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_POM_NESTED = re.compile(r"<(parent|dependencies|dependencyManagement|build|profiles|reporting"
                         r"|properties|modules|repositories|pluginRepositories)>.*?</\1>",
                         re.DOTALL)
_POM_ARTIFACT = re.compile(r"<artifactId>\s*([^<\s]+)\s*</artifactId>")
_POM_VERSION = re.compile(r"<version>\s*([^<\s]+)\s*</version>")


@dataclass(frozen=True)
class Layout:
    broker: str
    template: str
    why: str
    """The evidence, for people: ``src/x.c includes mosquitto_plugin.h``."""
    recipe: dict[str, Any]
    """The inferred repository recipe (an overlay of ``template``)."""


def detect(root: Path) -> list[Layout]:
    """Every layout the tree matches; one means unambiguous."""
    files = list(_walk(root))
    found: list[Layout] = []
    for rule in (_mosquitto, _hivemq, _rebar3):
        found += rule(root, files)
    return found


def _walk(root: Path) -> Iterator[Path]:
    count = 0
    stack = [root]
    while stack:
        here = stack.pop()
        for entry in sorted(here.iterdir()):
            if entry.is_symlink():
                continue
            if entry.is_dir():
                if entry.name not in _SKIP_DIRS:
                    stack.append(entry)
            elif entry.is_file():
                count += 1
                if count > MAX_FILES:
                    return
                yield entry


def _read(path: Path) -> str:
    with path.open("rb") as f:
        return f.read(MAX_READ).decode("utf-8", errors="replace")


def _overlay(template: str, **fields: Any) -> dict[str, Any]:
    return {"apiVersion": "plugforge.dev/v1alpha1", "kind": "Recipe", "template": template,
            **fields}


def _mosquitto(root: Path, files: list[Path]) -> list[Layout]:
    return [_mosquitto_plugin(root, files, p) for p in files
            if p.suffix == ".c" and _MOSQ_INCLUDE.search(_read(p))]


def _mosquitto_plugin(root: Path, files: list[Path], source: Path) -> Layout:
    rel = source.relative_to(root).as_posix()
    makefile = source.parent / "Makefile"
    name: dict[str, str]
    make_match = _MAKE_NAME.search(_read(makefile)) if makefile in files else None
    if make_match and PLUGIN_NAME.match(make_match.group(1)):
        name = {"file": makefile.relative_to(root).as_posix(),
                "pattern": _MAKE_NAME.pattern.replace(r"(\S+)", r"([a-z][a-z0-9_-]*)")}
    else:
        name = {"value": _plugin_name(source.stem)}
    # Headers the plugin includes with "..." that the tree has elsewhere (mosquitto's own
    # examples include the repository's config.h): their directories become -I flags.
    includes: list[str] = []
    for header in _LOCAL_INCLUDE.findall(_read(source)):
        if (source.parent / header).is_file():
            continue
        hits = [p for p in files if p.relative_to(root).as_posix().endswith("/" + header)
                or p.relative_to(root).as_posix() == header]
        if len(hits) == 1:
            inc = hits[0].parent.relative_to(root).as_posix()
            includes.append(f"-I{inc}" if inc != "." else "-I.")
    version: dict[str, str] = {"value": "0.1.0"}
    for candidate in (source.parent / "Makefile", root / "config.mk", root / "VERSION"):
        text = _read(candidate) if candidate in files else ""
        if _VERSION_LINE.search(text) or (candidate.name == "VERSION" and text.strip()):
            version = {"file": candidate.relative_to(root).as_posix(),
                       "pattern": _VERSION_LINE.pattern if candidate.name != "VERSION"
                       else r"^\s*(\S+)"}
            break
    recipe = _overlay(
        "mosquitto-c",
        metadata={"name": name, "version": version},
        build=[{"argv": ["gcc", "-std=gnu11", "-O2", "-g0", "-Wall", "-fPIC", "-shared",
                         *includes, "-o", "{name}.so", rel]}],
        artifacts=[{"path": "{name}.so", "to": "."}])
    return Layout("mosquitto", "mosquitto-c", f"{rel} includes the mosquitto plugin headers",
                  recipe)


def _hivemq(root: Path, files: list[Path]) -> list[Layout]:
    pom = root / "pom.xml"
    if pom not in files or "hivemq-extension-sdk" not in _read(pom):
        return []
    # The project's own coordinates: the first ones outside nested sections (no XML parser on
    # untrusted input; a pom's top level is regular enough for this).
    top = _POM_NESTED.sub("", _POM_COMMENT.sub("", _read(pom)))
    artifact_m, version_m = _POM_ARTIFACT.search(top), _POM_VERSION.search(top)
    artifact = artifact_m.group(1) if artifact_m else ""
    version = version_m.group(1) if version_m else ""
    meta: dict[str, Any] = {}
    if artifact:
        meta["name"] = {"value": _plugin_name(artifact)}
    if version and "$" not in version:
        meta["version"] = {"value": version}
    return [Layout("hivemq", "hivemq-java", "pom.xml depends on hivemq-extension-sdk",
                   _overlay("hivemq-java", **({"metadata": meta} if meta else {})))]


def _rebar3(root: Path, files: list[Path]) -> list[Layout]:
    config = root / "rebar.config"
    app_srcs = [p for p in files if p.name.endswith(".app.src")
                and p.parent.relative_to(root).as_posix() == "src"]
    erls = [p for p in files if p.suffix == ".erl"]
    if config in files and _EMQX.search(_read(config)):
        return [Layout("emqx", "emqx-erlang", "rebar.config has EMQX's plugin release section",
                       _overlay("emqx-erlang"))]
    if len(app_srcs) != 1:
        return []
    found: list[Layout] = []
    vmq = [p for p in erls if _VMQ_HOOK.search(_read(p))]
    if config in files and vmq:
        found.append(Layout("vernemq", "vernemq-erlang",
                            f"{vmq[0].relative_to(root).as_posix()} implements VerneMQ hooks",
                            _overlay("vernemq-erlang")))
    rabbit = [p for p in erls if _RABBIT.search(_read(p))]
    if rabbit:
        found.append(Layout("rabbitmq", "rabbitmq-erlang",
                            f"{rabbit[0].relative_to(root).as_posix()} is a RabbitMQ auth "
                            "backend", _overlay("rabbitmq-erlang")))
    return found


def _plugin_name(text: str) -> str:
    """A release-safe name (``plugforge.contract.PLUGIN_NAME``) from a file or artifact name."""
    name = re.sub(r"[^a-z0-9_-]+", "_", text.lower()).strip("_-")
    if not name or not name[0].isalpha():
        name = "plugin_" + name
    return name[:63]
