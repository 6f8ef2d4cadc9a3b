"""Layout recognition (``builder.build.layouts``) and ``plugforge init`` on small trees shaped like
each ecosystem's plugin projects: what is recognised, what is ambiguous, what is not a plugin,
and that every inferred recipe passes the repository-recipe validation. Pure: no compiler.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.build import layouts
from builder.build.repo_recipe import REPO_RECIPE, parse_repo_recipe, resolve
from plugforge.cli import main

POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
    <modelVersion>4.0.0</modelVersion>
    <parent>
        <groupId>com.example</groupId>
        <artifactId>parent-pom</artifactId>
        <version>9</version>
    </parent>
    <groupId>com.example.mqtt</groupId>
    <artifactId>Acme-Auth.Extension</artifactId>
    <version>1.4.2</version>
    <dependencies>
        <dependency>
            <groupId>com.hivemq</groupId>
            <artifactId>hivemq-extension-sdk</artifactId>
            <version>4.46.1</version>
        </dependency>
    </dependencies>
</project>
"""
APP_SRC = '{application, acme_auth, [{vsn, "0.3.0"}, {applications, [kernel, stdlib]}]}.\n'
VMQ_MODULE = """-module(acme_auth).
-behaviour(auth_on_register_hook).
-export([auth_on_register/5]).
auth_on_register(_Peer, _SubscriberId, _User, _Password, _CleanSession) -> next.
"""
RABBIT_MODULE = """-module(acme_auth).
-behaviour(rabbit_authn_backend).
-behaviour(rabbit_authz_backend).
"""
EMQX_REBAR = """{deps, [{emqx_plugin_helper, {git, "https://example.invalid/h.git", {tag, "5"}}}]}.
{emqx_plugrel, [{authors, ["acme"]}]}.
"""
MOSQ_C = '#include <mosquitto_broker.h>\n#include "mosquitto_plugin.h"\nint x;\n'


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


CASES = [
    ("hivemq-maven", {"pom.xml": POM, "src/main/java/A.java": "class A {}"},
     "hivemq", "pom.xml depends on hivemq-extension-sdk"),
    ("vernemq-rebar3", {"rebar.config": "{deps, []}.\n", "src/acme_auth.app.src": APP_SRC,
                        "src/acme_auth.erl": VMQ_MODULE},
     "vernemq", "src/acme_auth.erl implements VerneMQ hooks"),
    ("rabbitmq-backend", {"Makefile": "PROJECT = acme_auth\n",
                          "src/acme_auth.app.src": APP_SRC, "src/acme_auth.erl": RABBIT_MODULE},
     "rabbitmq", "src/acme_auth.erl is a RabbitMQ auth backend"),
    ("emqx-plugin", {"rebar.config": EMQX_REBAR, "src/acme_auth.app.src": APP_SRC,
                     "src/acme_auth.erl": "-module(acme_auth).\n"},
     "emqx", "rebar.config has EMQX's plugin release section"),
    ("mosquitto-c", {"plugin/acme.c": MOSQ_C, "README": "x"},
     "mosquitto", "plugin/acme.c includes the mosquitto plugin headers"),
]


@pytest.mark.parametrize(("files", "broker", "why"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_recognised_layouts_infer_a_valid_recipe(files: dict[str, str], broker: str, why: str,
                                                 tmp_path: Path) -> None:
    (found,) = layouts.detect(_tree(tmp_path, files))
    assert (found.broker, found.why) == (broker, why)
    # What build --local and the builder use: the template itself where it can read the
    # tree's name and version, else the inferred recipe; never the repository's (untrusted).
    resolved = resolve(tmp_path, broker=broker)
    assert resolved.origin in (f"inferred: {why}", f"template {found.template}")
    assert resolved.template == found.template and not resolved.from_repository
    assert resolved.recipe.broker == broker


def test_maven_coordinates_skip_the_parent_and_become_release_names(tmp_path: Path) -> None:
    (found,) = layouts.detect(_tree(tmp_path, {"pom.xml": POM}))
    # The template reads a two-space-indented pom; this one is not: the inferred recipe builds.
    assert resolve(tmp_path, broker="hivemq").origin.startswith("inferred: ")
    # The contract's plugin names are lower case: the artifactId is mapped, explicitly.
    assert found.recipe["metadata"] == {"name": {"value": "acme-auth_extension"},
                                        "version": {"value": "1.4.2"}}


def test_mosquitto_name_from_the_plugins_makefile(tmp_path: Path) -> None:
    _tree(tmp_path, {"p/acme_auth.c": MOSQ_C, "p/Makefile": "PLUGIN_NAME=acme_auth\n",
                     "config.h": "#define UNUSED(A) (void)(A)\n"})
    (tmp_path / "p" / "acme_auth.c").write_text('#include "config.h"\n' + MOSQ_C)
    (found,) = layouts.detect(tmp_path)
    assert found.recipe["metadata"]["name"]["file"] == "p/Makefile"
    assert "-I." in found.recipe["build"][0]["argv"]  # config.h lives at the top
    parse_repo_recipe(repr(found.recipe).encode())  # a dict's repr is valid YAML flow style


NOT_PLUGINS = [
    ("maven-without-sdk", {"pom.xml": POM.replace("hivemq-extension-sdk", "junit")}),
    ("erlang-app-without-hooks", {"rebar.config": "{deps, []}.\n",
                                  "src/acme_auth.app.src": APP_SRC,
                                  "src/acme_auth.erl": "-module(acme_auth).\n"}),
    ("c-without-mosquitto", {"main.c": "#include <stdio.h>\nint main(void){return 0;}\n"}),
    ("header-in-a-comment-only", {"x.c": "/* see mosquitto_plugin.h */\n"}),
]


@pytest.mark.parametrize("files", [c[1] for c in NOT_PLUGINS], ids=[c[0] for c in NOT_PLUGINS])
def test_trees_that_are_not_plugins_are_not_guessed(files: dict[str, str],
                                                    tmp_path: Path) -> None:
    assert layouts.detect(_tree(tmp_path, files)) == []


def test_two_plugins_in_one_tree_are_ambiguous(tmp_path: Path) -> None:
    _tree(tmp_path, {"a/one.c": MOSQ_C, "b/two.c": MOSQ_C})
    assert len(layouts.detect(tmp_path)) == 2
    with pytest.raises(Exception, match="matches more than one layout"):
        resolve(tmp_path)


def test_build_outputs_and_vendored_trees_are_not_read(tmp_path: Path) -> None:
    _tree(tmp_path, {"_build/default/lib/x/src/x.c": MOSQ_C, "target/y.c": MOSQ_C,
                     ".git/z.c": MOSQ_C})
    assert layouts.detect(tmp_path) == []


def test_init_writes_the_recipe_and_says_what_it_saw(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    _tree(tmp_path, {"pom.xml": POM})
    assert main(["init", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "hivemq plugin (pom.xml depends on hivemq-extension-sdk)" in out
    text = (tmp_path / REPO_RECIPE).read_text()
    assert text.startswith("# Written by `plugforge init`")
    assert parse_repo_recipe(text.encode()).template == "hivemq-java"
    # --broker filters; a broker whose layout is absent is the one error with an example.
    other = _tree(tmp_path / "other", {"pom.xml": POM})
    assert main(["init", str(other), "--broker", "vernemq"]) == 1
    err = capsys.readouterr().err
    assert "has no layout plugforge recognises" in err and "for example:" in err


def test_init_never_writes_through_a_symlinked_plugforge_dir(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = _tree(tmp_path / "repo", {"pom.xml": POM})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (repo / ".plugforge").symlink_to(elsewhere)
    assert main(["init", str(repo)]) == 1
    assert "is not a directory of the repository" in capsys.readouterr().err
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize(("url", "public"), [
    ("https://bob:ghp_secret@git.example.com/team/x.git", "https://git.example.com/team/x.git"),
    ("https://git.example.com/team/x.git", "https://git.example.com/team/x.git"),
    ("git@github.com:team/x.git", "git@github.com:team/x.git"),  # scp-like: a user, no secret
])
def test_the_source_url_in_an_image_carries_no_credentials(url: str, public: str) -> None:
    from plugforge.cli.build import public_url
    assert public_url(url) == public
