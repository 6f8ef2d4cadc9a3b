"""The builder signs what it pushes and follows its cache only through its own signatures.

Real git server, real registry, the mosquitto-c template's real compiler; no Kubernetes (the
pipeline is the builder's push path; the controller only records its outcome).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import NoReturn

import pytest
from signing_support import client_for, policy_text, push_plugin

from builder.build import recipe as recipes
from builder.build.pipeline import CONTENT_TAG_PREFIX, Outcome, Pipeline
from builder.build.scaffold import scaffold
from builder.build.signing import BuildSigner
from builder.build.source import SourceCache
from builder.resources import GitSource, PluginSpec
from plugforge.oci import parse_reference
from plugforge.signing import generate, parse_policy, verify_image
from testbed.gitserver import GitServer, run_git
from testbed.registry import Registry

KEY = generate()


@pytest.fixture(scope="module")
def plugin_repo(git_server: GitServer, tmp_path_factory: pytest.TempPathFactory
                ) -> tuple[Path, str]:
    url = git_server.create_repo("signing/deny.git")
    repo = scaffold(recipes.template_dir("mosquitto-c"), "mosquitto-c", "mosquitto",
                    "deny_plugin", tmp_path_factory.mktemp("signing-repo") / "repo")
    run_git(repo, "push", "-q", url, "main")
    return repo, url


def _no_secret(namespace: str, name: str) -> NoReturn:
    raise AssertionError(f"these builds read no Secret, asked for {namespace}/{name}")


def _spec(url: str, registry: Registry, repository: str) -> PluginSpec:
    return PluginSpec(namespace="team", name="deny", uid="u1", generation=1, broker="mosquitto",
                      source=GitSource(url=url, ref="main", path="."),
                      repository=f"{registry.host}/{repository}", template="mosquitto-c")


def _build(pipeline: Pipeline, spec: PluginSpec, name: str) -> tuple[Outcome, str]:
    log = io.StringIO()
    outcome = pipeline.run(spec, None, name, log)
    return outcome, log.getvalue()


def _commit(repo: Path, url: str, path: str, text: str) -> str:
    (repo / path).write_text(text)
    run_git(repo, "add", path)
    run_git(repo, "commit", "-q", "-m", f"edit {path}")
    run_git(repo, "push", "-q", url, "main")
    return run_git(repo, "rev-parse", "HEAD").strip()


def test_builds_are_signed_and_attested(plugin_repo: tuple[Path, str], registry: Registry,
                                        tmp_path: Path) -> None:
    repo, url = plugin_repo
    signer = BuildSigner(KEY)
    pipeline = Pipeline(SourceCache(tmp_path / "git"), _no_secret, tmp_path / "work",
                        300, registry_ca=registry.ca.cert, signer=signer)
    spec = _spec(url, registry, "signing/deny")
    first, log = _build(pipeline, spec, "deny-1")
    assert not first.cache_hit
    assert f"==> signed {first.digest} with {KEY.public.key_id}" in log
    assert signer.last_seconds < 1.0
    image = parse_reference(first.image)
    policy = parse_policy(policy_text(KEY, sources=(url,), refs=("refs/heads/main", "main")))
    with client_for(registry) as client:
        (prov,) = verify_image(client, image, policy).provenance
    assert (prov.commit, prov.tree, prov.build_name) == (first.commit, first.tree, "team/deny-1")
    assert prov.source_url == url and prov.template == "mosquitto-c"
    assert "gcc" in prov.toolchain and prov.builder_version == "0.2.0"

    # The same tree again: a cache hit, through the verified signature and provenance.
    again, log = _build(pipeline, spec, "deny-2")
    assert again.cache_hit and again.digest == first.digest, log

    # A README-only commit: the compiler runs (new tree) but the artifact is the same, so the
    # digest is too (no pod reloads); the provenance now names both commits.
    readme_commit = _commit(repo, url, "README.md", "only the docs changed\n")
    third, log = _build(pipeline, spec, "deny-3")
    assert not third.cache_hit and third.commit == readme_commit
    assert third.digest == first.digest, log
    with client_for(registry) as client:
        commits = [p.commit for p in verify_image(client, image, policy).provenance]
    assert commits == [first.commit, readme_commit]


def test_moved_cache_tag_is_not_followed(plugin_repo: tuple[Path, str], registry: Registry,
                                         tmp_path: Path) -> None:
    _, url = plugin_repo
    pipeline = Pipeline(SourceCache(tmp_path / "git"), _no_secret, tmp_path / "work",
                        300, registry_ca=registry.ca.cert, signer=BuildSigner(KEY))
    spec = _spec(url, registry, "signing/moved")
    first, _ = _build(pipeline, spec, "moved-1")
    # Someone with push rights but without the key points the content tag at their image.
    evil = push_plugin(registry, tmp_path, "signing/moved", "evil")
    with client_for(registry) as client:
        manifest = client.get_manifest("signing/moved", str(evil.digest))
        assert manifest is not None
        client.push_manifest("signing/moved", CONTENT_TAG_PREFIX + first.content_key,
                             manifest[0], "application/vnd.oci.image.manifest.v1+json")
    second, log = _build(pipeline, spec, "moved-2")
    assert not second.cache_hit and second.digest == first.digest
    assert "has no signature and provenance by this builder's key" in log
    # An unsigned builder (no key) is not trusted either by a key-holding one.
    other = Pipeline(SourceCache(tmp_path / "git2"), _no_secret, tmp_path / "work2",
                     300, registry_ca=registry.ca.cert, signer=BuildSigner(generate()))
    third, log = _build(other, spec, "moved-3")
    assert not third.cache_hit, log


def test_provenance_of_an_isolated_build_names_the_pinned_toolchain_not_the_builders_tools(
) -> None:
    from builder.build.signing import BuildFacts, _provenance

    image = "registry.example/plugforge/toolchain-mosquitto-c@sha256:" + "a" * 64
    facts = BuildFacts("https://git.example/acl.git", "c" * 40, "refs/heads/main", "t" * 40, "",
                       "mosquitto-c", b"recipe", "mosquitto", "ns/acl-1", "0.2.0", image,
                       ("gcc",), 0.0)
    assert _provenance(facts, KEY).toolchain == {"image": image, "tools": "gcc"}
