"""SLSA provenance v1 for one plugforge build: what went in (source, recipe, toolchain), who
built it, when. The image digest names the plugin; this names the build, so the same artifact
from two commits is one digest with two provenance statements."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from plugforge.signing.errors import VerificationFailed

BUILD_TYPE = "https://plugforge.dev/build/plugin/v1"
BUILDER_ID = "https://plugforge.dev/builder"


@dataclass(frozen=True)
class Provenance:
    source_url: str
    commit: str
    ref: str
    tree: str
    """The git tree of the built path: the builder's cache follows a tag only for this tree."""
    path: str
    template: str
    recipe_sha256: str
    broker: str
    build_name: str
    """The PluginBuild (namespace/name)."""
    builder_id: str = BUILDER_ID
    builder_version: str = ""
    toolchain: dict[str, str] = field(default_factory=dict)
    """Tool name -> version or image digest, as the recipe reports them."""
    started: str = ""
    finished: str = ""
    """RFC 3339 UTC times."""

    def predicate(self) -> dict[str, Any]:
        return {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "source": {"url": self.source_url, "ref": self.ref, "path": self.path},
                    "template": self.template, "broker": self.broker,
                },
                "internalParameters": {"pluginBuild": self.build_name, "tree": self.tree},
                "resolvedDependencies": [
                    {"uri": f"git+{self.source_url}@{self.ref}",
                     "digest": {"gitCommit": self.commit, "gitTree": self.tree}},
                    {"uri": f"plugforge:template/{self.template}/recipe.yaml",
                     "digest": {"sha256": self.recipe_sha256}},
                    *({"name": tool, "uri": f"plugforge:toolchain/{tool}",
                       "annotations": {"version": version}}
                      for tool, version in sorted(self.toolchain.items())),
                ],
            },
            "runDetails": {
                "builder": {"id": self.builder_id,
                            "version": {"plugforge-builder": self.builder_version}},
                "metadata": {"invocationId": self.build_name, "startedOn": self.started,
                             "finishedOn": self.finished},
            },
        }

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def from_predicate(predicate: dict[str, Any]) -> Provenance:
    """Read back what ``Provenance.predicate`` wrote; ``AttestationInvalid`` if it is not ours."""
    try:
        definition = predicate["buildDefinition"]
        if definition["buildType"] != BUILD_TYPE:
            raise VerificationFailed("AttestationInvalid", f"provenance buildType is "
                                     f"{definition['buildType']!r}, expected {BUILD_TYPE!r}")
        external, internal = definition["externalParameters"], definition["internalParameters"]
        deps = definition["resolvedDependencies"]
        git = next(d for d in deps if str(d.get("uri", "")).startswith("git+"))
        recipe = next(d for d in deps if str(d.get("uri", "")).endswith("/recipe.yaml"))
        toolchain = {str(d["name"]): str(d["annotations"]["version"]) for d in deps
                     if str(d.get("uri", "")).startswith("plugforge:toolchain/")}
        run = predicate["runDetails"]
        return Provenance(
            source_url=_text(external["source"]["url"]), commit=_text(git["digest"]["gitCommit"]),
            ref=_text(external["source"]["ref"]), tree=_text(internal["tree"]),
            path=_text(external["source"].get("path", "")), template=_text(external["template"]),
            recipe_sha256=_text(recipe["digest"]["sha256"]), broker=_text(external["broker"]),
            build_name=_text(internal["pluginBuild"]), builder_id=_text(run["builder"]["id"]),
            builder_version=_text(run["builder"]["version"]["plugforge-builder"]),
            toolchain=toolchain, started=_text(run["metadata"]["startedOn"]),
            finished=_text(run["metadata"]["finishedOn"]))
    except (KeyError, TypeError, AttributeError, StopIteration) as e:
        raise VerificationFailed("AttestationInvalid",
                                 f"SLSA provenance lacks {e!r}; not written by plugforge's "
                                 "builder") from e


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, found {type(value).__name__}")
    return value
