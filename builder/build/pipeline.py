"""One build: fetch → (content-key hit? done) → build → pack → push → outcome.

No Kubernetes here: the controller records the outcome. A content key (tree of ``path`` +
recipe bytes + template + builder version + source URL + broker) that the registry already has
under ``ck-<key>`` means no build at all: the compiler does not run.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO, TypeVar

from builder.build import recipe as recipes
from builder.build import repo_recipe, toolchains
from builder.build.executors import Executor
from builder.build.recipe_errors import ExecutorFailed
from builder.build.registry import Publisher, RegistryAccess, parse_repository
from builder.build.signing import BuildFacts, BuildSigner
from builder.build.source import GitCredentials, SourceCache, credentials_from_secret, normalize_url
from builder.errors import BuilderError, BuildStepFailed, ExecutorUnavailable, InvalidSpec
from builder.resources import PluginSpec
from builder.secrets import Secret, Use, check_use
from plugforge.oci import (
    ANNOTATION_PLUGIN_NAME,
    ANNOTATION_PLUGIN_VERSION,
    ImageMetadata,
    OciError,
    credentials_from_dockerconfigjson,
    pack_image,
)

BUILDER_VERSION = "0.2.0"
"""Part of every content key: bump it when building or packing changes its output.
0.2.0: images no longer carry the commit (it is in the signed provenance), so the same artifact
built from two commits is one digest."""
CONTENT_TAG_PREFIX = "ck-"

T = TypeVar("T")
SecretReader = Callable[[str, str], Secret]


@dataclass(frozen=True)
class Outcome:
    commit: str
    tree: str
    content_key: str
    image: str
    """repository@sha256:..."""
    digest: str
    plugin_name: str
    plugin_version: str
    cache_hit: bool
    duration: float
    ref: str = ""
    """The full ref the plugin follows (``refs/heads/main``); empty for a pinned revision."""


def content_key(*, tree: str, recipe_bytes: bytes, template: str, broker: str, url: str,
                toolchain: str = "") -> str:
    """Equal key, equal image: everything that can change the image's bytes goes in (the
    pinned toolchain image too, when builds run in one)."""
    h = hashlib.sha256()
    parts = ("plugforge-content-key/1", BUILDER_VERSION, template, broker,
             normalize_url(url), tree, hashlib.sha256(recipe_bytes).hexdigest())
    for part in (*parts, toolchain) if toolchain else parts:
        data = part.encode()
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()


class Pipeline:
    def __init__(self, sources: SourceCache, read_secret: SecretReader, work_root: Path,
                 max_build_seconds: float, registry_ca: Path | None = None,
                 docker_url: str | None = None, signer: BuildSigner | None = None,
                 toolchain_pins: toolchains.Pins | None = None,
                 executor: Executor | None = None) -> None:
        self.sources = sources
        self.read_secret = read_secret
        self.work_root = work_root
        self.max_build_seconds = max_build_seconds
        self.registry_ca = registry_ca
        self.docker_url = docker_url
        self.signer = signer
        """Signs and attests every image pushed; None: unsigned images (logged at start)."""
        self.executor = executor
        """Where build steps run (``--executor``); None: the ``process`` executor (tests)."""
        self.toolchain_pins = toolchain_pins
        """Toolchain name -> pinned image (``--toolchains``); None: no images, for the
        ``process`` executor only."""

    def toolchain_image(self, recipe: recipes.Recipe) -> str:
        """The recipe's toolchain pinned by digest, its tools checked; "" without pins."""
        if self.toolchain_pins is None:
            return ""
        return toolchains.resolve(self.toolchain_pins, recipe.toolchain, recipe.tools).image

    def git_credentials(self, spec: PluginSpec) -> GitCredentials | None:
        if spec.source.secret is None:
            return None
        where = f"Secret {spec.namespace}/{spec.source.secret} (source.git.secretRef)"
        data = check_use(self.read_secret(spec.namespace, spec.source.secret), Use.GIT)
        return credentials_from_secret(data, where)

    def resolve(self, spec: PluginSpec) -> str:
        """The commit the plugin's ref (or pinned revision) points at now."""
        return self.sources.fetch(spec.source, self.git_credentials(spec),
                                  namespace=spec.namespace)

    def registry_access(self, spec: PluginSpec, registry: str) -> RegistryAccess:
        creds = None
        if spec.push_secret:
            data = check_use(self.read_secret(spec.namespace, spec.push_secret), Use.PUSH)
            raw = data.get(".dockerconfigjson")
            if raw is None:
                raise InvalidSpec(
                    f"Secret {spec.namespace}/{spec.push_secret} (image.pushSecretRef) has no "
                    "'.dockerconfigjson' key; create it with kubectl create secret "
                    "docker-registry")
            try:
                creds = credentials_from_dockerconfigjson(raw, registry)
            except OciError as e:
                raise InvalidSpec(f"Secret {spec.namespace}/{spec.push_secret}: {e}") from e
        return RegistryAccess(credentials=creds, ca_bundle=self.registry_ca,
                              plain_http=spec.plain_http)

    def run(self, spec: PluginSpec, commit: str | None, build_name: str, log: TextIO) -> Outcome:
        started, started_wall = time.monotonic(), time.time()
        template = spec.template or _call_recipe(lambda: recipes.default_template(spec.broker))
        tdir = _call_recipe(lambda: recipes.template_dir(template))
        recipe = _call_recipe(lambda: recipes.load_recipe(tdir))
        if recipe.broker != spec.broker:
            raise InvalidSpec(f"spec.template {template!r} builds {recipe.broker} plugins, but "
                              f"spec.broker is {spec.broker!r}; pick a {spec.broker} template")
        # Before any fetch: an unpinned toolchain or a tool it lacks fails the build here.
        toolchain_image = _call_recipe(lambda: self.toolchain_image(recipe))
        repo = parse_repository(spec.repository)
        publisher = Publisher(repo.registry, self.registry_access(spec, repo.registry))

        log.write(f"==> fetching {spec.source.url} {spec.source.ref} "
                  f"{commit or spec.source.revision or ''}\n")
        creds = self.git_credentials(spec)
        ref = ""
        if spec.source.revision is None:
            # Every build knows the full ref it follows (status.ref), and one that names no
            # commit (a webhook's poke) builds that ref's tip, resolved here.
            ref, tip = self.sources.fetch_ref(spec.source, creds, namespace=spec.namespace)
            log.write(f"==> {spec.source.ref!r} is {ref} at {tip}\n")
            commit = commit or tip
        commit = self.sources.fetch(spec.source, creds, commit, namespace=spec.namespace)
        work = self.work_root / spec.namespace / build_name
        shutil.rmtree(work, ignore_errors=True)
        try:
            checkout = self.sources.checkout(spec.source, commit, work / "source",
                                             namespace=spec.namespace, creds=creds)
            recipe_bytes = (tdir / "recipe.yaml").read_bytes()
            # The repository's own recipe, or a layout it has instead of the template's, decides
            # from here on (a repository's recipe only where builds are isolated).
            chosen = _call_recipe(lambda: repo_recipe.for_checkout(
                checkout.directory, broker=spec.broker, template=spec.template,
                executor=self.executor.name if self.executor is not None else "process"))
            if chosen is not None:
                log.write(f"==> recipe: {chosen.origin}\n")
                recipe, recipe_bytes = chosen.recipe, chosen.recipe_bytes
                template = chosen.template or repo_recipe.REPO_RECIPE
                toolchain_image = _call_recipe(lambda: self.toolchain_image(recipe))
            key = content_key(tree=checkout.tree, recipe_bytes=recipe_bytes,
                              template=template, broker=spec.broker, url=spec.source.url,
                              toolchain=toolchain_image)
            tag = CONTENT_TAG_PREFIX + key
            log.write(f"==> commit {commit}, tree {checkout.tree}, content key {key}\n")
            facts = BuildFacts(
                spec.source.url, commit, ref or spec.source.ref, checkout.tree, spec.source.path,
                template, recipe_bytes, spec.broker,
                f"{spec.namespace}/{build_name}", BUILDER_VERSION,
                toolchain_image or recipe.toolchain,
                recipe.tools, started_wall)
            digest = publisher.lookup_tag(repo, tag)
            if digest is not None and self.signer is not None and not self.signer.follow_cache(
                    publisher, repo, digest, checkout.tree, log):
                digest = None
            if digest is not None:
                notes = publisher.annotations(repo, digest)
                log.write(f"==> cache hit: {repo.name}:{tag} is {digest}; nothing to build\n")
                if self.signer is not None:
                    self.signer.sign(publisher, repo, digest, facts, log)
                return Outcome(commit, checkout.tree, key, f"{repo.name}@{digest}", digest,
                               notes.get(ANNOTATION_PLUGIN_NAME, ""),
                               notes.get(ANNOTATION_PLUGIN_VERSION, ""), True,
                               time.monotonic() - started, ref)
            limit = min(float(spec.timeout_seconds or recipe.timeout_seconds),
                        self.max_build_seconds)
            log.write(f"==> building with template {template} (limit {limit:g}s)\n")
            log.flush()
            result = _call_recipe(lambda: recipes.run_recipe(
                recipe, checkout.directory, work / "build", log=log, timeout=limit,
                toolchain_image=toolchain_image, executor=self.executor, build_name=build_name,
                tenant=spec.namespace))
            _call_recipe(lambda: repo_recipe.check_release_name(result.name, chosen)
                         if chosen is not None else result.name)
            # No revision: the commit is in the provenance, the digest names the artifact.
            metadata = ImageMetadata(
                source=spec.source.url, revision="", broker=spec.broker,
                plugin_name=result.name, plugin_version=result.version)
            if self.docker_url:
                log.write(f"==> pushing through the Docker-API engine at {self.docker_url}\n")
                digest = publisher.push_through_engine(repo, result.artifact_dir, metadata, tag,
                                                       self.docker_url)
            else:
                try:
                    image = pack_image(result.artifact_dir, metadata)
                except OciError as e:
                    raise BuildStepFailed(f"packing the artifact failed: {e}",
                                          "PackFailed") from e
                log.write(f"==> packed {result.name} {result.version}: {image.digest}; "
                          "pushing\n")
                digest = publisher.push(repo, image, tag)
            log.write(f"==> pushed {repo.name}@{digest}\n")
            if self.signer is not None:
                self.signer.sign(publisher, repo, digest, facts, log)
            return Outcome(commit, checkout.tree, key, f"{repo.name}@{digest}", digest,
                           result.name, result.version, False, time.monotonic() - started,
                           ref)
        except BuilderError as e:
            e.commit = e.commit or commit  # a failed build still says which commit failed
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _call_recipe(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except ExecutorFailed as e:  # the cluster or runtime, not the recipe: retried
        raise ExecutorUnavailable(str(e)) from e
    except recipes.BuildError as e:
        tail = str(getattr(e, "log_tail", ""))
        raise BuildStepFailed(str(e), e.reason, tail) from e
