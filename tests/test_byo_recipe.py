"""A recipe in the plugin's repository (``.plugforge/recipe.yaml``): overlays of a template and
complete recipes, validated like the templates' own, with precise errors for bad input; which
recipe builds a tree (``repo_recipe.resolve``); isolation required for repository recipes.

Pure: files in a temporary tree, no compiler (the third-party builds are in test_byo_mosquitto).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from builder.build import repo_recipe
from builder.build.recipe import RecipeError
from builder.build.repo_recipe import REPO_RECIPE, parse_repo_recipe, require_isolation, resolve

HEAD = "apiVersion: plugforge.dev/v1alpha1\nkind: Recipe\n"
OVERLAY = HEAD + "template: mosquitto-c\n"
COMPLETE = HEAD + """broker: mosquitto
description: a complete recipe
toolchain: mosquitto-c
tools: [gcc]
metadata:
  name: {value: my_plugin}
  version: {value: "1.0"}
build:
  - argv: [gcc, -shared, -o, "{name}.so", plugin.c]
artifacts:
  - path: "{name}.so"
"""


def _write(root: Path, text: str) -> Path:
    (root / ".plugforge").mkdir(parents=True, exist_ok=True)
    (root / REPO_RECIPE).write_text(text)
    return root


# (id, recipe text, the exact fragment the error must contain)
BAD = [
    ("unknown-key-overlay", OVERLAY + "toolz: [gcc]\n",
     "toolz: unknown key 'toolz' in a recipe with 'template' (allowed: apiVersion"),
    ("unknown-key-complete", COMPLETE + "sandbox: off\n",
     "sandbox: unknown key 'sandbox' (allowed here:"),
    ("unknown-key-in-step", OVERLAY + "build:\n  - {argv: [gcc, x.c], shell: true}\n",
     "build[0].shell: unknown key 'shell' (allowed here: argv, env)"),
    ("artifact-escape-dotdot", OVERLAY + "artifacts:\n  - path: ../../etc/passwd\n",
     "artifacts[0].path: expected a relative path inside the tree (no '..', not absolute), "
     "found '../../etc/passwd'"),
    ("artifact-escape-absolute", OVERLAY + "artifacts:\n  - {path: x.so, to: /usr/lib}\n",
     "artifacts[0].to: expected a relative path inside the tree"),
    ("metadata-file-escape", OVERLAY + "metadata:\n  name: {file: ../x, pattern: '(a)'}\n",
     "metadata.name.file: expected a relative path inside the tree"),
    ("step-is-a-string", OVERLAY + "build:\n  - argv: gcc -shared -o x.so x.c\n",
     "build[0].argv: expected a list, found str 'gcc -shared -o x.so x.c'"),
    ("step-is-a-shell-line", OVERLAY + "build:\n  - 'gcc x.c && curl evil'\n",
     "build[0]: expected a mapping, found str"),
    ("step-arg-not-string", OVERLAY + "build:\n  - argv: [gcc, {a: b}]\n",
     "build[0].argv[1]: expected a string, found dict"),
    ("tool-not-in-toolchain-overlay", OVERLAY + "build:\n  - argv: [make, all]\n",
     "build[0].argv[0]: 'make' is not a tool of template mosquitto-c's toolchain "
     "(it provides: gcc)"),
    ("tool-not-in-toolchain-complete", COMPLETE.replace("tools: [gcc]", "tools: [gcc, make]"),
     "tools[1]: 'make' is not provided by toolchain mosquitto-c (it provides: gcc"),
    ("extra-args-unknown-tool", OVERLAY + "extraArgs: {clang: [-O3]}\n",
     "extraArgs.clang: 'clang' is not a tool of the template's toolchain (it provides: gcc)"),
    ("extra-args-a-string", OVERLAY + "extraArgs: {gcc: -I. -DX}\n",
     "extraArgs.gcc: expected a list of strings (one argument each, no shell)"),
    ("template-with-slash", HEAD + "template: ../mosquitto-c\n",
     "template: template name '../mosquitto-c' is invalid: expected a plain name"),
    ("template-path", HEAD + "template: /etc/templates/x\n",
     "template: template name '/etc/templates/x' is invalid"),
    ("template-unknown", HEAD + "template: cobol-zos\n", "template: no template 'cobol-zos'"),
    ("template-not-a-string", HEAD + "template: [mosquitto-c]\n",
     "template: expected a template name, found list"),
    ("wrong-api-version", OVERLAY.replace("v1alpha1", "v9"),
     "apiVersion: expected 'plugforge.dev/v1alpha1', found 'plugforge.dev/v9'"),
    ("reserved-env", OVERLAY + "build:\n  - {argv: [gcc, x.c], env: {PATH: /tmp/evil}}\n",
     "build[0].env.PATH: is set by the runner; a recipe may not override it"),
    ("unknown-toolchain", COMPLETE.replace("toolchain: mosquitto-c", "toolchain: ../../bin"),
     "'../../bin'"),
    ("bad-metadata-key", OVERLAY + "metadata: {name: {value: x}, license: MIT}\n",
     "metadata: expected a mapping with 'name' and/or 'version'"),
    ("metadata-literal-and-file", OVERLAY + "metadata:\n  name: {value: x, file: a}\n",
     "metadata.name.file: unknown key 'file' (allowed here: value)"),
    ("not-a-mapping", "- template: mosquitto-c\n", "expected a mapping with 'template: NAME'"),
    ("not-yaml", "template: [unclosed\n", "not valid YAML"),
    ("empty-build", OVERLAY + "build: []\n", "build: expected at least one step"),
    ("timeout-too-long", OVERLAY + "timeoutSeconds: 99999999\n",
     "timeoutSeconds: expected 0 < seconds <= 21600"),
]


@pytest.mark.parametrize(("text", "fragment"), [(t, f) for _, t, f in BAD],
                         ids=[i for i, _, _ in BAD])
def test_bad_repository_recipes_get_precise_errors(text: str, fragment: str,
                                                   tmp_path: Path) -> None:
    _write(tmp_path, text)
    with pytest.raises(RecipeError) as err:
        resolve(tmp_path, broker="mosquitto")
    message = str(err.value)
    assert fragment in message, message
    assert message.startswith(REPO_RECIPE), message  # every error names the file
    assert err.value.reason == "RecipeInvalid"


def test_overlay_keeps_the_template_and_replaces_what_it_names(tmp_path: Path) -> None:
    _write(tmp_path, OVERLAY + """metadata:
  name: {value: my_plugin}
  version: {file: VERSION, pattern: '^(\\S+)'}
extraArgs: {gcc: [-I., -DMY_FLAG]}
""")
    resolved = resolve(tmp_path)
    template = resolve(tmp_path / "nowhere", template="mosquitto-c")
    r, t = resolved.recipe, template.recipe
    assert resolved.from_repository and resolved.template == "mosquitto-c"
    assert r.broker == "mosquitto" and r.tools == t.tools and r.artifacts == t.artifacts
    assert r.name_source.value == "my_plugin" and r.name_source.pattern is None
    assert r.version_source.file == "VERSION"
    assert r.build[0].argv == (*t.build[0].argv, "-I.", "-DMY_FLAG")
    # The key and the provenance see both files: editing either rebuilds.
    raw = (tmp_path / REPO_RECIPE).read_bytes()
    assert resolved.recipe_bytes.startswith(template.recipe_bytes)
    assert resolved.recipe_bytes.endswith(raw)


def test_complete_recipe(tmp_path: Path) -> None:
    resolved = resolve(_write(tmp_path, COMPLETE))
    assert resolved.template == "" and resolved.from_repository
    assert resolved.recipe.build[0].argv[0] == "gcc"
    assert resolved.recipe_bytes == COMPLETE.encode()


def test_repository_recipe_of_another_broker_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="builds a mosquitto plugin, but the build is for "
                                          "broker 'vernemq'"):
        resolve(_write(tmp_path, OVERLAY), broker="vernemq")


def test_a_symlinked_or_huge_recipe_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere.yaml").write_text(OVERLAY)
    (tmp_path / ".plugforge").mkdir()
    os.symlink(tmp_path / "elsewhere.yaml", tmp_path / REPO_RECIPE)
    with pytest.raises(RecipeError, match="must be a regular file"):
        resolve(tmp_path)
    big = tmp_path / "big"
    _write(big, OVERLAY + "#" * (repo_recipe.MAX_RECIPE_BYTES + 1))
    with pytest.raises(RecipeError, match="larger than 65536 bytes"):
        resolve(big)


def test_without_recipe_or_layout_one_error_says_what_to_add(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("print('not a plugin')\n")
    with pytest.raises(RecipeError) as err:
        resolve(tmp_path, broker="mosquitto")
    message = str(err.value)
    assert "no .plugforge/recipe.yaml and no layout a template recognises" in message
    assert "for broker 'mosquitto'" in message
    # The example in the message is itself a valid recipe.
    example = message.split("for example:\n", 1)[1].split("\n(or run", 1)[0]
    parsed = parse_repo_recipe(example.replace("\n  ", "\n").strip().encode())
    assert parsed.template == "mosquitto-c"


def test_order_recipe_then_template_then_default_layout(tmp_path: Path) -> None:
    starter = tmp_path / "starter"
    (starter / "src").mkdir(parents=True)
    (starter / "src" / "plugin_info.h").write_text(
        '#define PLUGIN_NAME "x"\n#define PLUGIN_VERSION "1"\n')
    # The default template's layout: its own recipe, trusted.
    default = resolve(starter, broker="mosquitto")
    assert default.origin == "template mosquitto-c" and not default.from_repository
    assert resolve(starter, template="mosquitto-c").origin == "template mosquitto-c"
    # A recipe in the repository wins over everything else.
    _write(starter, OVERLAY)
    assert resolve(starter, template="mosquitto-c").from_repository


def test_repository_recipes_need_isolated_builds(tmp_path: Path) -> None:
    repo = resolve(_write(tmp_path, OVERLAY))
    with pytest.raises(RecipeError, match=r"runs only in isolated builds .*'process' executor"):
        require_isolation(repo, "process")
    require_isolation(repo, "container")
    require_isolation(repo, "kubernetes")
    # Templates' recipes (not the repository's) keep running where they ran.
    require_isolation(resolve(tmp_path / "x", template="mosquitto-c"), "process")


def test_every_error_case_is_valid_yaml_or_meant_not_to_be() -> None:
    for case, text, _ in BAD:
        if case != "not-yaml":
            yaml.safe_load(text)
