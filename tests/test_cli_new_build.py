"""`plugforge new` and `plugforge build --local`: exit codes, validation, template selection,
and that a new broker needs only a template dir plus one line in plugin-templates/index.yaml.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from builder.build.recipe import templates_root
from builder.build.scaffold import plugin_names
from plugforge.cli import main


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout


def test_new_scaffolds_a_git_repo_with_names_substituted(tmp_path: Path) -> None:
    repo = tmp_path / "acl-demo"
    assert main(["new", "--broker", "mosquitto", "acl-demo", "--dir", str(repo)]) == 0
    assert git(repo, "branch", "--show-current").strip() == "main"
    assert git(repo, "log", "--format=%s").strip() == "Scaffold acl-demo from mosquitto-c"
    assert git(repo, "status", "--porcelain") == ""
    assert (repo / "src" / "acl_demo.c").is_file()
    every_text = "".join(p.read_text() for p in repo.rglob("*")
                         if p.is_file() and ".git" not in p.parts)
    for placeholder in ("plugforge_starter", "plugforge-starter", "PlugforgeStarter"):
        assert placeholder not in every_text
    assert "# acl-demo" in (repo / "README.md").read_text()
    project = yaml.safe_load((repo / "plugforge.yaml").read_text())
    assert project == {"template": "mosquitto-c", "broker": "mosquitto", "name": "acl_demo"}


def test_names() -> None:
    names = plugin_names("deny-test_x")
    assert (names.snake, names.kebab, names.camel) == ("deny_test_x", "deny-test-x", "DenyTestX")


@pytest.mark.parametrize("bad", ["Deny", "1abc", "a", "a/b", "../x", "x" * 42, "a--b", "ab-",
                                 "a b"])
def test_new_rejects_bad_names(tmp_path: Path, bad: str,
                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["new", "--broker", "mosquitto", bad, "--dir", str(tmp_path / "x")]) == 2
    assert "plugin name" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_new_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["new", "deny-test"]) == 2  # --broker missing
    assert main(["new", "--broker", "nats", "deny-test", "--dir", str(tmp_path / "a")]) == 2
    assert "unknown broker 'nats'" in capsys.readouterr().err
    assert main(["new", "--broker", "mosquitto", "--template", "../etc", "deny-test"]) == 2
    assert "template name '../etc' is invalid" in capsys.readouterr().err
    assert main(["new", "--broker", "emqx", "--template", "mosquitto-c", "deny-test",
                 "--dir", str(tmp_path / "b")]) == 2
    assert "is for mosquitto, not emqx" in capsys.readouterr().err
    assert main([]) == 2
    assert main(["frobnicate"]) == 2


def test_new_refuses_a_non_empty_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["new", "--broker", "mosquitto", "deny-test", "--dir", str(tmp_path)]) == 1
    assert "already exists and is not an empty directory" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_build_uses_the_project_file_and_reports_the_artifact(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "deny-test"
    assert main(["new", "--broker", "mosquitto", "deny-test", "--dir", str(repo)]) == 0
    capsys.readouterr()
    work = tmp_path / "work"
    assert main(["build", "--local", str(repo), "--work-dir", str(work)]) == 0
    out = capsys.readouterr().out
    assert "$ gcc " in out  # the build output is streamed
    assert f"artifact: {work / 'artifact'}" in out
    assert "becomes /plugin/deny_test/" in out
    assert "  deny_test.so" in out


def test_build_failure_exits_1_with_reason_and_log(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "deny-test"
    assert main(["new", "--broker", "mosquitto", "deny-test", "--dir", str(repo)]) == 0
    source = repo / "src" / "deny_test.c"
    source.write_text(source.read_text() + "\nthis is not C;\n")
    capsys.readouterr()
    assert main(["build", "--local", str(repo), "--work-dir", str(tmp_path / "w"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "BuildFailed: build step 1 (gcc" in err
    assert "exited with code 1" in err
    assert "deny_test.c" in err  # the compiler's message is in the tail
    assert f"full log: {tmp_path / 'w' / 'build.log'}" in err


def test_build_needs_to_know_the_template(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", "--local", str(tmp_path)]) == 2
    assert "pass --template or --broker" in capsys.readouterr().err
    assert main(["build", "--local", str(tmp_path / "missing"), "--broker", "mosquitto"]) == 2
    assert main(["build", "--local", str(tmp_path), "--broker", "x", "--template", "y"]) == 2


def test_console_script_runs(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "plugforge"
    result = subprocess.run([str(script), "new", "--broker", "vernemq", "my-auth", "--dir",
                             str(tmp_path / "my-auth")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "my-auth" / "src" / "my_auth.app.src").is_file()


def test_a_new_broker_needs_only_its_template_and_an_index_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "templates"
    shutil.copytree(templates_root(), root)
    index = yaml.safe_load((root / "index.yaml").read_text())
    index["brokers"]["nanomq"] = "nanomq-c"
    (root / "index.yaml").write_text(yaml.safe_dump(index))
    template = root / "nanomq-c"
    (template / "starter").mkdir(parents=True)
    (template / "starter" / "VERSION").write_text("plugforge_starter 2.0.0\n")
    (template / "recipe.yaml").write_text(yaml.safe_dump({
        "apiVersion": "plugforge.dev/v1alpha1", "kind": "Recipe", "broker": "nanomq",
        "description": "test broker", "tools": ["cp"],
        "metadata": {"name": {"file": "VERSION", "pattern": r"^(\S+) "},
                     "version": {"file": "VERSION", "pattern": r" (\S+)$"}},
        "build": [{"argv": ["cp", "VERSION", "{name}.plugin"]}],
        "artifacts": [{"path": "{name}.plugin"}],
    }))
    monkeypatch.setenv("PLUGFORGE_TEMPLATES", str(root))
    repo = tmp_path / "nano-auth"
    assert main(["new", "--broker", "nanomq", "nano-auth", "--dir", str(repo)]) == 0
    work = tmp_path / "work"
    assert main(["build", "--local", str(repo), "--work-dir", str(work), "--quiet"]) == 0
    assert (work / "artifact" / "nano_auth.plugin").read_text() == "nano_auth 2.0.0\n"
