"""The recipe runner: strict validation, clean environment, timeouts, artifact containment.

Builds here run real processes (sh, env, sleep) through the real runner; recipes are written
to tmp dirs.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder.build.recipe import (
    ArtifactError,
    BuildError,
    BuildFailed,
    BuildTimeout,
    MetadataError,
    RecipeError,
    ToolMissing,
    broker_templates,
    load_recipe,
    run_recipe,
    template_dir,
    templates_root,
)
from builder.build.recipe_schema import parse_recipe
from builder.build.sandbox import run_steps

BROKERS = ("mosquitto", "vernemq", "emqx", "hivemq", "rabbitmq")


def recipe_data(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "apiVersion": "plugforge.dev/v1alpha1",
        "kind": "Recipe",
        "broker": "mosquitto",
        "description": "test recipe",
        "tools": ["sh"],
        "metadata": {
            "name": {"file": "meta.txt", "pattern": r"^name=(\S+)$"},
            "version": {"file": "meta.txt", "pattern": r"^version=(\S+)$"},
        },
        "build": [{"argv": ["sh", "-c", "echo built {name} {version} > out.txt"]}],
        "artifacts": [{"path": "out.txt", "to": "."}],
    }
    data.update(overrides)
    return data


def write_template(root: Path, data: dict[str, Any]) -> Path:
    tdir = root / "template"
    tdir.mkdir(parents=True, exist_ok=True)
    (tdir / "recipe.yaml").write_text(yaml.safe_dump(data))
    return tdir


def make_source(root: Path, name: str = "demo_plugin", version: str = "1.2.3") -> Path:
    src = root / "source"
    src.mkdir(parents=True)
    (src / "meta.txt").write_text(f"name={name}\nversion={version}\n")
    return src


def build(tmp_path: Path, data: dict[str, Any], **kwargs: Any) -> Any:
    recipe = load_recipe(write_template(tmp_path, data))
    src = tmp_path / "source" if (tmp_path / "source").exists() else make_source(tmp_path)
    return run_recipe(recipe, src, tmp_path / "work", **kwargs)


# --- validation -----------------------------------------------------------------------------

@pytest.mark.parametrize(("change", "expected"), [
    ({"bogus": 1}, r"bogus: unknown key 'bogus'"),
    ({"build": [{"argz": ["sh"]}]}, r"build\[0\]\.argz: unknown key 'argz'"),
    ({"metadata": {"name": {"file": "a", "pattern": "(x)", "flags": "i"},
                   "version": {"file": "a", "pattern": "(x)"}}},
     r"metadata\.name\.flags: unknown key"),
    ({"build": [{"argv": ["sh", 5]}]}, r"build\[0\]\.argv\[1\]: expected a string, found int 5"),
    ({"timeoutSeconds": "600"}, r"timeoutSeconds: expected a number of seconds, found str"),
    ({"timeoutSeconds": 0}, r"timeoutSeconds: expected 0 < seconds"),
    ({"tools": "sh"}, r"tools: expected a list, found str 'sh'"),
    ({"artifacts": {"path": "x"}}, r"artifacts: expected a list, found dict"),
    ({"broker": "nats"}, r"broker: expected one of .*mosquitto.*found 'nats'"),
    ({"apiVersion": "v1"}, r"apiVersion: expected 'plugforge.dev/v1alpha1'"),
    ({"caches": ["npm"]}, r"caches\[0\]: expected one of maven, rebar3, found 'npm'"),
    ({"build": [{"argv": ["make"]}]},
     r"build\[0\]\.argv\[0\]: expected a program listed in 'tools'"),
    ({"build": [{"argv": ["sh"], "env": {"PATH": "/evil"}}]},
     r"build\[0\]\.env\.PATH: is set by the runner"),
    ({"build": []}, r"build: expected at least one step"),
    ({"artifacts": [{"path": "../x"}]}, r"artifacts\[0\]\.path: expected a relative path inside"),
    ({"artifacts": [{"path": "/etc/passwd"}]}, r"artifacts\[0\]\.path: expected a relative path"),
    ({"artifacts": [{"path": "x", "to": "a/../../b"}]}, r"artifacts\[0\]\.to: expected a relative"),
    ({"metadata": {"name": {"file": "a", "pattern": "x"},
                   "version": {"file": "a", "pattern": "(x)"}}},
     r"metadata\.name\.pattern: expected exactly one capture group, found 0"),
    ({"metadata": {"name": {"file": "a", "pattern": "(x"},
                   "version": {"file": "a", "pattern": "(x)"}}},
     r"metadata\.name\.pattern: expected a valid regular expression"),
])
def test_invalid_recipe_names_the_bad_field(change: dict[str, Any], expected: str) -> None:
    with pytest.raises(RecipeError, match=expected) as info:
        parse_recipe(recipe_data(**change), brokers=BROKERS, origin="t/recipe.yaml")
    assert str(info.value).startswith("t/recipe.yaml: ")
    assert info.value.reason == "RecipeInvalid"


def test_missing_required_key() -> None:
    data = recipe_data()
    del data["artifacts"]
    with pytest.raises(RecipeError, match=r"artifacts: is required but missing"):
        parse_recipe(data, brokers=BROKERS)


def test_load_recipe_reports_yaml_errors_with_the_file(tmp_path: Path) -> None:
    (tmp_path / "recipe.yaml").write_text("build: [unclosed\n")
    with pytest.raises(RecipeError, match=r"recipe\.yaml: not valid YAML"):
        load_recipe(tmp_path)


def test_template_dir_refuses_paths() -> None:
    for bad in ("../etc", "a/b", "..", "", "UPPER"):
        with pytest.raises(RecipeError, match="template name"):
            template_dir(bad)
    with pytest.raises(RecipeError, match=r"no template 'nonexistent'.*available: .*mosquitto-c"):
        template_dir("nonexistent")


def test_index_maps_every_broker_to_a_template() -> None:
    mapping = broker_templates()
    assert set(BROKERS) <= set(mapping)
    assert mapping["mosquitto"] == "mosquitto-c"


def test_shipped_templates_load() -> None:
    shipped = [p.name for p in templates_root().iterdir() if (p / "recipe.yaml").is_file()]
    assert {"mosquitto-c", "vernemq-erlang", "emqx-erlang"} <= set(shipped)
    for name in shipped:
        recipe = load_recipe(template_dir(name))
        assert broker_templates()[recipe.broker] == name


# --- running --------------------------------------------------------------------------------

def test_build_interpolates_metadata_and_collects_artifacts(tmp_path: Path) -> None:
    data = recipe_data(
        build=[{"argv": ["sh", "-c", "mkdir -p out/sub && echo {name}-{version} > out/sub/f.txt "
                                     "&& echo $GREETING > top.txt"],
                "env": {"GREETING": "hello {name}"}}],
        artifacts=[{"path": "top.txt"}, {"path": "out", "to": "lib/{name}"}],
    )
    echo = io.StringIO()
    result = build(tmp_path, data, log=echo)
    assert (result.name, result.version) == ("demo_plugin", "1.2.3")
    files = sorted(p.relative_to(result.artifact_dir).as_posix()
                   for p in result.artifact_dir.rglob("*") if p.is_file())
    assert files == ["lib/demo_plugin/sub/f.txt", "top.txt"]
    assert (result.artifact_dir / "top.txt").read_text() == "hello demo_plugin\n"
    assert (result.artifact_dir / "lib/demo_plugin/sub/f.txt").read_text() == "demo_plugin-1.2.3\n"
    assert "$ sh -c mkdir -p out/sub" in result.log_path.read_text()
    assert "$ sh -c mkdir -p out/sub" in echo.getvalue()
    assert result.duration > 0
    # The caller's tree is never written: the build ran in a copy.
    assert not (tmp_path / "source" / "top.txt").exists()


def test_build_env_is_clean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLUGFORGE_FAKE_SECRET", "hunter2-registry-token")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "also-secret")
    data = recipe_data(tools=["sh", "env"],
                       build=[{"argv": ["env"]}, {"argv": ["sh", "-c", "env > out.txt"]}])
    result = build(tmp_path, data)
    log = result.log_path.read_text()
    assert "hunter2" not in log and "also-secret" not in log
    seen = dict(line.split("=", 1) for line in
                (result.artifact_dir / "out.txt").read_text().splitlines())
    seen.pop("PWD", None)  # set by sh itself
    seen.pop("SHLVL", None)
    seen.pop("_", None)
    assert set(seen) == {"PATH", "HOME", "LANG", "TMPDIR"}
    work = (tmp_path / "work").resolve()
    assert Path(seen["HOME"]).resolve().parent == work
    assert Path(seen["TMPDIR"]).resolve().parent == work


def test_caches_are_wired_through_env(tmp_path: Path) -> None:
    data = recipe_data(caches=["rebar3", "maven"],
                       build=[{"argv": ["sh", "-c", "env > out.txt; cat $HOME/.m2/settings.xml "
                                                    ">> out.txt"]}])
    result = build(tmp_path, data, cache_root=tmp_path / "cache")
    out = (result.artifact_dir / "out.txt").read_text()
    assert f"REBAR_CACHE_DIR={tmp_path / 'cache/build-caches/rebar3'}" in out
    assert f"<localRepository>{tmp_path / 'cache/build-caches/maven'}</localRepository>" in out


def test_missing_tool_is_reported_before_building(tmp_path: Path) -> None:
    data = recipe_data(tools=["sh", "plugforge-no-such-compiler"])
    with pytest.raises(ToolMissing, match=r"'plugforge-no-such-compiler'.*not on PATH") as info:
        build(tmp_path, data)
    assert info.value.tool == "plugforge-no-such-compiler"
    assert info.value.reason == "ToolMissing"
    assert "$ " not in (tmp_path / "work" / "build.log").read_text()  # no step ran


def test_failing_step_reports_exit_code_and_log_tail(tmp_path: Path) -> None:
    script = "for i in $(seq 1 100); do echo line-$i; done; echo 'error: it broke' >&2; exit 3"
    data = recipe_data(build=[{"argv": ["sh", "-c", "true"]}, {"argv": ["sh", "-c", script]}])
    with pytest.raises(BuildFailed, match=r"build step 2 .* exited with code 3") as info:
        build(tmp_path, data)
    err = info.value
    assert (err.exit_code, err.step, err.reason) == (3, 2, "BuildFailed")
    assert err.log_tail.splitlines()[-1] == "error: it broke"
    assert "line-100" in err.log_tail and "line-1\n" not in err.log_tail
    assert "error: it broke" in str(err)
    # The full log is kept.
    assert "line-1\n" in (tmp_path / "work" / "build.log").read_text()


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    # The step leaves a background grandchild behind; the kill must reach it too.
    data = recipe_data(build=[{"argv": ["sh", "-c", "sleep 300 & echo $! > child.pid; echo started;"
                                                    " wait"]}])
    started = time.monotonic()
    with pytest.raises(BuildTimeout, match=r"time limit of 1.5s.*killed") as info:
        build(tmp_path, data, timeout=1.5)
    assert time.monotonic() - started < 10
    assert info.value.reason == "BuildTimeout"
    assert "started" in info.value.log_tail
    pid = int((tmp_path / "work" / "src" / "child.pid").read_text())
    assert _gone(pid), f"background child {pid} survived the timeout"


def _gone(pid: int) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def test_symlink_artifact_escaping_the_tree_is_refused(tmp_path: Path) -> None:
    data = recipe_data(tools=["sh", "ln"], build=[{"argv": ["ln", "-s", "/etc/passwd", "out.txt"]}])
    with pytest.raises(ArtifactError, match=r"'out.txt' resolves to /etc/passwd, outside"):
        build(tmp_path, data)


def test_symlink_inside_artifact_dir_escaping_is_refused(tmp_path: Path) -> None:
    data = recipe_data(build=[{"argv": ["sh", "-c", "mkdir ebin && touch ebin/a.beam && "
                                                    "ln -s /etc ebin/etc"]}],
                       artifacts=[{"path": "ebin", "to": "ebin"}])
    with pytest.raises(ArtifactError, match=r"'ebin/etc' resolves to /etc, outside") as info:
        build(tmp_path, data)
    assert info.value.reason == "ArtifactInvalid"


def test_symlink_inside_the_tree_is_copied_as_a_file(tmp_path: Path) -> None:
    data = recipe_data(build=[{"argv": ["sh", "-c",
                                        "echo x > real.txt && ln -s real.txt out.txt"]}])
    result = build(tmp_path, data)
    out = result.artifact_dir / "out.txt"
    assert not out.is_symlink() and out.read_text() == "x\n"


def test_missing_artifact(tmp_path: Path) -> None:
    data = recipe_data(build=[{"argv": ["sh", "-c", "true"]}])
    with pytest.raises(ArtifactError, match=r"'out.txt' was not produced by the build"):
        build(tmp_path, data)


def test_metadata_not_found(tmp_path: Path) -> None:
    src = make_source(tmp_path)
    (src / "meta.txt").write_text("nothing here\n")
    with pytest.raises(MetadataError, match=r"plugin name: pattern .* found nothing in meta.txt"):
        build(tmp_path, recipe_data())


def test_metadata_with_unsafe_name(tmp_path: Path) -> None:
    make_source(tmp_path, name="../../etc")
    with pytest.raises(MetadataError, match=r"plugin name '\.\./\.\./etc'"):
        build(tmp_path, recipe_data())


def test_metadata_glob_must_match_one_file(tmp_path: Path) -> None:
    src = make_source(tmp_path)
    (src / "a.app.src").write_text("x")
    (src / "b.app.src").write_text("x")
    meta = {"name": {"file": "*.app.src", "pattern": "(x)"},
            "version": {"file": "meta.txt", "pattern": r"version=(\S+)"}}
    with pytest.raises(MetadataError, match=r"exactly one file matching '\*.app.src'.*a.app.src, "
                                            r"b.app.src"):
        build(tmp_path, recipe_data(metadata=meta))


def test_work_dir_must_be_empty(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "stale").write_text("")
    with pytest.raises(BuildError, match="must be empty"):
        build(tmp_path, recipe_data())


def test_errors_share_one_base() -> None:
    for cls in (RecipeError, ToolMissing, BuildFailed, BuildTimeout, ArtifactError, MetadataError):
        assert issubclass(cls, BuildError)


def test_log_is_capped_but_the_build_still_drains(tmp_path: Path) -> None:
    log_path = tmp_path / "build.log"
    # 1 MB without a single newline, then a normal exit: the pipe must be drained.
    run_steps([(["sh", "-c", "head -c 1000000 /dev/zero | tr '\\0' x; echo; echo done"],
                {"PATH": os.environ["PATH"]})],
              cwd=tmp_path, log_path=log_path, deadline=time.monotonic() + 30, timeout=30,
              echo=None, log_limit=4096)
    text = log_path.read_text()
    assert len(text) < 4096 + 200
    assert "!! log truncated:" in text and "more bytes of output not kept" in text
