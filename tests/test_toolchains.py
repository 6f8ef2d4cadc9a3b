"""Toolchain images (plugin-templates/*/toolchain.Containerfile), built here with podman FROM the
Debian base made from Debian's archive: each provides its recipe's tools, runs as the non-root
build user, and builds its template's starter with the recipe's steps, one plain ``podman run``
per step with the workspace mounted (the executors are tested elsewhere). Then the release path:
``plugforge toolchains build --push`` into a real registry writes the pin file the builder
resolves recipes with, and a recipe whose toolchain has no pin (or lacks a tool) fails before a
build starts, naming what is missing and the command that fixes it.
"""

from __future__ import annotations

import shutil
import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest
import yaml

from builder.app import toolchain_pins
from builder.build import toolchains
from builder.build.executors import BuildJob
from builder.build.pipeline import Pipeline
from builder.build.recipe import load_recipe, run_recipe, template_dir, templates_root
from builder.build.recipe_errors import BuildError, RecipeError, ToolMissing
from builder.build.recipe_schema import parse_recipe
from builder.build.source import SourceCache
from builder.secrets import Secret
from builder.settings import parse_settings
from plugforge.cli import main
from testbed import images
from testbed import toolchains as testbed_toolchains
from testbed.images import Podman
from testbed.registry import Registry

pytestmark = pytest.mark.timeout(1800)

TEMPLATES = testbed_toolchains.TEMPLATES
HELLO_ERL = "-module(hello).\n-export([main/1]).\nmain(_) -> io:format(\"hello~n\").\n"
# What proves each tool runs (some have no --version); files are written to the workspace.
TOOL_CHECKS: dict[str, tuple[list[str], dict[str, str], str]] = {
    "gcc": (["gcc", "--version"], {}, "gcc"),
    "erl": (["erl", "-noshell", "-eval",
             'io:format("OTP ~s~n", [erlang:system_info(otp_release)]), halt().'], {}, "OTP 25"),
    "erlc": (["erlc", "hello.erl"], {"hello.erl": HELLO_ERL}, ""),
    "escript": (["escript", "hello.escript"], {"hello.escript": "#!/usr/bin/env escript\n"
                                               "main(_) -> io:format(\"escript ok~n\").\n"},
                "escript ok"),
    "rebar3": (["rebar3", "version"], {}, "rebar 3"),
    "mvn": (["mvn", "--version"], {}, "Apache Maven 3"),
    "java": (["java", "-version"], {}, "17."),
    "javac": (["javac", "-version"], {}, "javac 17"),
}


@pytest.fixture(scope="module")
def podman() -> Podman:
    return Podman.in_cache()


@pytest.fixture(scope="module", params=TEMPLATES)
def toolchain(request: pytest.FixtureRequest, podman: Podman,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[str, images.Built]:
    name = str(request.param)
    log = tmp_path_factory.mktemp("toolchain-build") / f"{name}.log"
    return name, testbed_toolchains.build_toolchain(podman, name, log)


def test_every_template_has_a_toolchain_its_recipe_names() -> None:
    names = [p.name for p in templates_root().iterdir() if (p / "recipe.yaml").is_file()]
    assert sorted(names) == sorted(TEMPLATES)
    for name in names:
        assert load_recipe(template_dir(name)).toolchain == name


def test_image_provides_the_recipe_tools(toolchain: tuple[str, images.Built], podman: Podman,
                                         tmp_path: Path) -> None:
    name, image = toolchain
    declared = testbed_toolchains.declared_tools(name)
    label = podman("image", "inspect", "--format",
                   f'{{{{index .Labels "{toolchains.TOOLS_LABEL}"}}}}', image.ref).split()
    assert label == list(declared)
    recipe = load_recipe(template_dir(name))
    assert set(recipe.tools) <= set(declared), f"{name}: recipe tools not in the image's label"
    for tool in declared:
        argv, files, expected = TOOL_CHECKS[tool]
        work = tmp_path / tool
        work.mkdir()
        for file, text in files.items():
            (work / file).write_text(text)
        output = testbed_toolchains.run(podman, image.ref, ["sh", "-c", '"$@" 2>&1', "-", *argv],
                                        work)
        assert expected in output, f"{name}: {argv} printed {output!r}"
    if "erlc" in declared:
        assert (tmp_path / "erlc" / "hello.beam").is_file()


def test_image_runs_as_the_build_user_and_holds_only_that_home(
        toolchain: tuple[str, images.Built], podman: Podman) -> None:
    _, image = toolchain
    user = podman("image", "inspect", "--format", "{{.Config.User}}", image.ref).strip()
    assert user == f"{toolchains.BUILD_UID}:{toolchains.BUILD_UID}"
    out = testbed_toolchains.run(podman, image.ref, [
        "sh", "-c", 'id -u; id -g; echo "$HOME"; ls -A "$HOME" | wc -l; '
                    "touch /usr/x 2>/dev/null && echo root-writable || echo root-read-only"])
    assert out.split() == [str(toolchains.BUILD_UID), str(toolchains.BUILD_UID),
                           toolchains.BUILD_HOME, "0", "root-read-only"]
    # No apt lists or caches left behind (they would only make the image bigger).
    leftovers = testbed_toolchains.run(podman, image.ref, [
        "sh", "-c", "ls /var/lib/apt/lists /var/cache/apt/archives | grep -v -e '^lock$' "
                    "-e '^partial$' -e ':$' -e '^$' | wc -l"])
    assert leftovers.strip() == "0"


class _StepsInToolchain:
    """Each recipe step as one ``podman run`` of the toolchain image (executors are elsewhere)."""

    name = "podman-steps"

    def __init__(self, podman: Podman, ref: str, caches: dict[str, Path]) -> None:
        self.podman, self.ref, self.caches = podman, ref, caches

    def run(self, job: BuildJob, workspace: Path, log_path: Path,
            echo: TextIO | None = None) -> None:
        # The cache variables the runner sets, pointing at the mounts inside the container.
        env = {}
        if "rebar3" in job.caches:
            env["REBAR_CACHE_DIR"] = toolchains.cache_mount("rebar3")
        if "maven" in job.caches:
            env["MAVEN_OPTS"] = f"-Dmaven.repo.local={toolchains.cache_mount('maven')}"
        volumes = {self.caches[c]: toolchains.cache_mount(c) for c in job.caches}
        for step in job.steps:
            out = testbed_toolchains.run(self.podman, self.ref, step.argv, workspace,
                                         {**env, **step.env}, volumes)
            with log_path.open("a") as f:
                f.write(out)


def test_starter_builds_inside_its_toolchain(toolchain: tuple[str, images.Built], podman: Podman,
                                             tmp_path: Path) -> None:
    name, image = toolchain
    recipe = load_recipe(template_dir(name))
    repo = tmp_path / "repo"
    assert main(["new", "--broker", recipe.broker, "--template", name, "tc-starter",
                 "--dir", str(repo)]) == 0
    caches: dict[str, Path] = {}
    for cache in recipe.caches:
        caches[cache] = tmp_path / "caches" / cache
        host_cache = images.cache_dir() / "build-caches" / cache
        if host_cache.is_dir():  # what scripts/ensure.d/hivemq.sh fetched: no network here
            shutil.copytree(host_cache, caches[cache], symlinks=True)
        else:
            caches[cache].mkdir(parents=True)
    result = run_recipe(recipe, repo, tmp_path / "work",
                        executor=_StepsInToolchain(podman, image.ref, caches),
                        toolchain_image=image.ref)
    files = [p for p in result.artifact_dir.rglob("*") if p.is_file()]
    assert files, f"{name}: no artifact"
    assert result.name in {"tc_starter", "tc-starter"}


@pytest.fixture(scope="module")
def pin_file(registry: Registry, podman: Podman, tmp_path_factory: pytest.TempPathFactory,
             ) -> Iterator[Path]:
    """``plugforge toolchains build mosquitto-c --push`` into a real registry, pins written."""
    base = images.debian_base(podman)
    out = tmp_path_factory.mktemp("pins") / "toolchains.yaml"
    with pytest.MonkeyPatch.context() as mp:
        for key, value in testbed_toolchains.cli_env(podman).items():
            mp.setenv(key, value)
        assert main(["toolchains", "build", "mosquitto-c", "--push", registry.host,
                     "--registry-ca", str(registry.ca.cert), "--base", base.ref,
                     "--out", str(out)]) == 0
    yield out


def test_pin_file_round_trip(pin_file: Path, registry: Registry) -> None:
    pins = toolchains.load_pins(pin_file)
    assert list(pins) == ["mosquitto-c"]
    pin = pins["mosquitto-c"]
    assert pin.image.startswith(f"{registry.host}/plugforge/toolchain-mosquitto-c@sha256:")
    assert pin.tools == ("gcc",)
    assert toolchains.parse_pins(yaml.safe_load(toolchains.dump_pins(pins))) == pins
    # The registry serves exactly that manifest.
    req = urllib.request.Request(
        f"{registry.url}/v2/plugforge/toolchain-mosquitto-c/manifests/{pin.digest}",
        method="HEAD", headers={"Accept": "application/vnd.oci.image.manifest.v1+json, "
                                          "application/vnd.docker.distribution.manifest.v2+json"})
    ctx = ssl.create_default_context(cafile=str(registry.ca.cert))
    with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
        assert resp.status == 200
    # The builder resolves the mosquitto recipe to it, before any fetch.
    pipeline = Pipeline(SourceCache(pin_file.parent / "git"), _no_secret, pin_file.parent / "w",
                        60, toolchain_pins=pins)
    assert pipeline.toolchain_image(load_recipe(template_dir("mosquitto-c"))) == pin.image


def test_unpinned_toolchain_is_named_with_the_fix(pin_file: Path) -> None:
    pins = toolchains.load_pins(pin_file)
    recipe = load_recipe(template_dir("vernemq-erlang"))
    with pytest.raises(toolchains.ToolchainMissing) as err:
        toolchains.resolve(pins, recipe.toolchain, recipe.tools)
    assert err.value.toolchain == "vernemq-erlang"
    assert "'vernemq-erlang'" in str(err.value) and toolchains.FIX_COMMAND in str(err.value)
    assert err.value.reason == "ToolchainMissing"


def test_a_tool_the_toolchain_lacks_is_named() -> None:
    pins = {"mosquitto-c": toolchains.Pin("r.example/plugforge/toolchain-mosquitto-c@sha256:"
                                          + "a" * 64, ("gcc",))}
    with pytest.raises(ToolMissing) as err:
        toolchains.resolve(pins, "mosquitto-c", ["gcc", "make"])
    assert err.value.tool == "make" and "'make'" in str(err.value)
    assert "mosquitto-c" in str(err.value)


def test_pipeline_reports_a_missing_pin_as_the_build_failure() -> None:
    pipeline = Pipeline(SourceCache(Path("/nonexistent")), _no_secret, Path("/nonexistent"), 60,
                        toolchain_pins={})
    recipe = load_recipe(template_dir("mosquitto-c"))
    with pytest.raises(toolchains.ToolchainMissing):
        pipeline.toolchain_image(recipe)
    # Without pins (process executor, development) the builder names no image.
    assert Pipeline(SourceCache(Path("/nonexistent")), _no_secret, Path("/nonexistent"),
                    60).toolchain_image(recipe) == ""


@pytest.mark.parametrize("entry, problem", [
    ({"image": "r.example/plugforge/toolchain-x:latest", "tools": ["gcc"]}, "sha256"),
    ({"image": "r.example/x@sha256:" + "a" * 64, "tools": "gcc"}, "tools"),
    ({"image": "r.example/x@sha256:" + "a" * 64, "tools": ["$(id)"]}, "tools"),
    ({"image": "r.example/x@sha256:" + "a" * 64}, "exactly the keys"),
])
def test_bad_pin_files_are_refused(entry: dict[str, object], problem: str) -> None:
    data = {"apiVersion": toolchains.API_VERSION, "kind": toolchains.KIND,
            "toolchains": {"x": entry}}
    with pytest.raises(toolchains.PinsInvalid) as err:
        toolchains.parse_pins(data, "pins.yaml")
    assert problem in str(err.value) and "pins.yaml" in str(err.value)


def test_recipe_names_a_toolchain_not_an_image() -> None:
    doc = yaml.safe_load((template_dir("mosquitto-c") / "recipe.yaml").read_text())
    with pytest.raises(RecipeError, match="toolchain"):
        parse_recipe({**doc, "toolchain": "../etc"}, brokers=["mosquitto"])
    doc.pop("toolchain")
    with pytest.raises(RecipeError, match="unknown key 'toolchainImage'"):
        parse_recipe({**doc, "toolchainImage": "debian + gcc"}, brokers=["mosquitto"])


def test_cache_dir_is_per_tenant_and_toolchain_digest(tmp_path: Path) -> None:
    image = "r.example/plugforge/toolchain-hivemq-java@sha256:" + "b" * 64
    path = toolchains.cache_dir(tmp_path, "team-a", image, "maven")
    assert path == tmp_path / "build-caches" / "team-a" / ("sha256-" + "b" * 64) / "maven"
    assert toolchains.cache_dir(tmp_path, "team-b", image, "maven") != path
    for tenant, ref in (("../team-b", image), ("team-a", "r.example/x:latest")):
        with pytest.raises(BuildError):
            toolchains.cache_dir(tmp_path, tenant, ref, "maven")


def _no_secret(namespace: str, name: str) -> Secret:
    raise AssertionError(f"no Secret expected, asked for {namespace}/{name}")


def test_cli_refuses_unknown_toolchains_and_pins_without_push(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["toolchains", "build", "no-such"]) == 2
    assert "no toolchain 'no-such'" in capsys.readouterr().err
    assert main(["toolchains", "build", "--out", str(tmp_path / "pins.yaml")]) == 2
    assert "--out needs --push" in capsys.readouterr().err
    assert not (tmp_path / "pins.yaml").exists()


def test_builder_reads_the_pin_file_at_start(pin_file: Path, tmp_path: Path) -> None:
    settings = parse_settings(["--toolchains", str(pin_file)], {})
    assert settings.toolchains == pin_file
    assert toolchain_pins(settings, "kubernetes") == toolchains.load_pins(pin_file)
    assert toolchain_pins(settings, "process") is None  # host tools; the file is still read
    assert toolchain_pins(parse_settings([], {}), "container") == {}  # every build names the fix
    bad = tmp_path / "toolchains.yaml"
    bad.write_text("apiVersion: plugforge.dev/v1alpha1\nkind: ToolchainPins\ntoolchains:\n"
                   "  mosquitto-c: {image: 'r.example/x:latest', tools: [gcc]}\n")
    for executor in ("kubernetes", "process"):
        with pytest.raises(toolchains.PinsInvalid, match=r"toolchains\.mosquitto-c\.image"):
            toolchain_pins(parse_settings(["--toolchains", str(bad)], {}), executor)
