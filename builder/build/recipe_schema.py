"""The ``recipe.yaml`` model and its strict validation (pure: data in, ``Recipe`` or error out).

Every error names the path of the offending field (``build[1].argv[0]``), what was expected
and what was found, so a template author can fix it without reading this code.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, NoReturn

from builder.build.recipe_errors import RecipeError

API_VERSION = "plugforge.dev/v1alpha1"
KIND = "Recipe"

# Cache names the runner knows how to wire into a build (see builder.build.sandbox.cache_env).
KNOWN_CACHES = ("maven", "rebar3")

_TOOL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
# A toolchain is named after the template whose toolchain.Containerfile defines it.
_TOOLCHAIN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The runner owns these; a recipe setting them would break isolation or the cache wiring.
_RESERVED_ENV = frozenset({"PATH", "HOME", "TMPDIR", "LANG"})
MAX_TIMEOUT_SECONDS = 6 * 3600


@dataclass(frozen=True)
class MetadataSource:
    """Where one metadata value lives: a file (glob allowed, must match one file) and a regex,
    or a literal ``value`` (then ``file`` is empty)."""

    file: str
    pattern: re.Pattern[str] | None
    value: str = ""


@dataclass(frozen=True)
class Step:
    """One build command: argv run in the source dir without a shell, plus static env."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ArtifactSpec:
    """``path`` (relative to the source dir) copied into ``to`` (relative to the artifact root).

    A file lands in ``to`` under its own name; a directory's contents are copied into ``to``.
    """

    path: str
    to: str


@dataclass(frozen=True)
class Recipe:
    broker: str
    description: str
    toolchain: str
    """The toolchain image the steps run in, by name (builder.build.toolchains resolves it to
    a pinned image); ``tools`` must be programs it provides. Empty: none named."""
    tools: tuple[str, ...]
    caches: tuple[str, ...]
    name_source: MetadataSource
    version_source: MetadataSource
    timeout_seconds: float
    build: tuple[Step, ...]
    artifacts: tuple[ArtifactSpec, ...]
    origin: str = "recipe.yaml"


def parse_recipe(data: object, *, brokers: Collection[str], origin: str = "recipe.yaml") -> Recipe:
    """Validate parsed YAML ``data`` and build a ``Recipe``; ``brokers`` are the known names."""
    v = _Validator(origin)
    top = v.mapping(data, "", required=("apiVersion", "kind", "broker", "description", "metadata",
                                        "build", "artifacts"),
                    optional=("toolchain", "tools", "caches", "timeoutSeconds"))
    if top["apiVersion"] != API_VERSION:
        v.fail("apiVersion", f"expected {API_VERSION!r}, found {top['apiVersion']!r}")
    if top["kind"] != KIND:
        v.fail("kind", f"expected {KIND!r}, found {top['kind']!r}")
    broker = v.string(top["broker"], "broker")
    if broker not in brokers:
        v.fail("broker", f"expected one of {', '.join(sorted(brokers))}, found {broker!r} "
                         "(register new brokers in plugin-templates/index.yaml)")
    tools = tuple(v.string(t, f"tools[{i}]") for i, t in enumerate(v.seq(top.get("tools", []),
                                                                          "tools")))
    for i, tool in enumerate(tools):
        if not _TOOL.match(tool):
            v.fail(f"tools[{i}]", f"expected a bare executable name, found {tool!r}")
    caches = tuple(v.string(c, f"caches[{i}]") for i, c in enumerate(v.seq(top.get("caches", []),
                                                                           "caches")))
    for i, cache in enumerate(caches):
        if cache not in KNOWN_CACHES:
            v.fail(f"caches[{i}]", f"expected one of {', '.join(KNOWN_CACHES)}, found {cache!r}")
    meta = v.mapping(top["metadata"], "metadata", required=("name", "version"))
    timeout = top.get("timeoutSeconds", 600)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        v.fail("timeoutSeconds", f"expected a number of seconds, found {_describe(timeout)}")
    if not 0 < timeout <= MAX_TIMEOUT_SECONDS:
        v.fail("timeoutSeconds", f"expected 0 < seconds <= {MAX_TIMEOUT_SECONDS}, found {timeout}")
    steps = v.seq(top["build"], "build")
    if not steps:
        v.fail("build", "expected at least one step, found an empty list")
    artifacts = v.seq(top["artifacts"], "artifacts")
    if not artifacts:
        v.fail("artifacts", "expected at least one artifact, found an empty list")
    recipe = Recipe(
        broker=broker,
        description=v.string(top["description"], "description"),
        toolchain=_toolchain(v, top.get("toolchain", "")),
        tools=tools,
        caches=caches,
        name_source=_metadata(v, meta["name"], "metadata.name"),
        version_source=_metadata(v, meta["version"], "metadata.version"),
        timeout_seconds=float(timeout),
        build=tuple(_step(v, s, f"build[{i}]", tools) for i, s in enumerate(steps)),
        artifacts=tuple(_artifact(v, a, f"artifacts[{i}]") for i, a in enumerate(artifacts)),
        origin=origin,
    )
    return recipe


def _toolchain(v: _Validator, data: object) -> str:
    name = v.string(data, "toolchain", empty_ok=True)
    if name and (not _TOOLCHAIN.match(name) or ".." in name):
        v.fail("toolchain", f"expected a toolchain name (a template with a "
                            f"toolchain.Containerfile, e.g. 'mosquitto-c'), found {name!r}")
    return name


def _metadata(v: _Validator, data: object, path: str) -> MetadataSource:
    if isinstance(data, dict) and "value" in data:
        literal = v.mapping(data, path, required=("value",))
        return MetadataSource(file="", pattern=None,
                              value=v.string(literal["value"], f"{path}.value"))
    m = v.mapping(data, path, required=("file", "pattern"))
    file = v.relative_path(m["file"], f"{path}.file")
    raw = v.string(m["pattern"], f"{path}.pattern")
    try:
        pattern = re.compile(raw, re.MULTILINE)
    except re.error as e:
        v.fail(f"{path}.pattern", f"expected a valid regular expression, found {raw!r} ({e})")
    if pattern.groups != 1:
        v.fail(f"{path}.pattern",
               f"expected exactly one capture group, found {pattern.groups} in {raw!r}")
    return MetadataSource(file=file, pattern=pattern)


def _step(v: _Validator, data: object, path: str, tools: tuple[str, ...]) -> Step:
    m = v.mapping(data, path, required=("argv",), optional=("env",))
    argv = v.seq(m["argv"], f"{path}.argv")
    if not argv:
        v.fail(f"{path}.argv", "expected a non-empty list of strings, found []")
    args = tuple(v.string(a, f"{path}.argv[{i}]", empty_ok=i > 0) for i, a in enumerate(argv))
    if args[0] not in tools:
        v.fail(f"{path}.argv[0]", f"expected a program listed in 'tools' ({', '.join(tools)}), "
                                  f"found {args[0]!r}; add it to 'tools' so it is checked first")
    env_data = m.get("env", {})
    env = v.mapping(env_data if env_data is not None else {}, f"{path}.env", free_keys=True)
    clean: dict[str, str] = {}
    for key, value in env.items():
        if not isinstance(key, str) or not _ENV_NAME.match(key):
            v.fail(f"{path}.env", f"expected environment variable names, found {key!r}")
        if key in _RESERVED_ENV:
            v.fail(f"{path}.env.{key}", "is set by the runner; a recipe may not override it")
        clean[key] = v.string(value, f"{path}.env.{key}", empty_ok=True)
    return Step(argv=args, env=clean)


def _artifact(v: _Validator, data: object, path: str) -> ArtifactSpec:
    m = v.mapping(data, path, required=("path",), optional=("to",))
    return ArtifactSpec(path=v.relative_path(m["path"], f"{path}.path"),
                        to=v.relative_path(m.get("to", "."), f"{path}.to"))


def _describe(value: object) -> str:
    return f"{type(value).__name__} {value!r}"


class _Validator:
    """Type checks that raise ``RecipeError`` with the field path."""

    def __init__(self, origin: str) -> None:
        self.origin = origin

    def fail(self, path: str, problem: str) -> NoReturn:
        where = f"{self.origin}: {path}: " if path else f"{self.origin}: "
        raise RecipeError(where + problem)

    def mapping(self, data: object, path: str, *, required: tuple[str, ...] = (),
                optional: tuple[str, ...] = (), free_keys: bool = False) -> dict[Any, Any]:
        if not isinstance(data, dict):
            self.fail(path, f"expected a mapping, found {_describe(data)}")
        if not free_keys:
            allowed = (*required, *optional)
            for key in data:
                if key not in allowed:
                    self.fail(_join(path, str(key)),
                              f"unknown key {key!r} (allowed here: {', '.join(allowed)})")
            for key in required:
                if key not in data:
                    self.fail(_join(path, key), "is required but missing")
        return data

    def seq(self, data: object, path: str) -> list[Any]:
        if not isinstance(data, list):
            self.fail(path, f"expected a list, found {_describe(data)}")
        return data

    def string(self, data: object, path: str, *, empty_ok: bool = False) -> str:
        if not isinstance(data, str):
            self.fail(path, f"expected a string, found {_describe(data)}")
        if not empty_ok and not data.strip():
            self.fail(path, "expected a non-empty string, found an empty one")
        if "\x00" in data:
            self.fail(path, "expected text, found a NUL byte")
        return data

    def relative_path(self, data: object, path: str) -> str:
        """A POSIX path relative to the source/artifact root that cannot climb out of it."""
        text = self.string(data, path)
        p = PurePosixPath(text)
        if p.is_absolute() or ".." in p.parts or "\\" in text:
            self.fail(path, f"expected a relative path inside the tree (no '..', not absolute), "
                            f"found {text!r}")
        return text


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
