"""containers/*.Containerfile: the files' structure (stages, non-root user, entrypoints), that
every build-context ``COPY`` exists — by a real ``podman build`` of exactly those ``COPY``
instructions on ``FROM scratch`` — and that the manifests agree with the images. The full builds
(``RUN`` steps, on a Debian base made here) run in tests/test_real_node.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from testbed.manifests import MANIFESTS, render

ROOT = Path(__file__).resolve().parent.parent
FILES = {"builder": ROOT / "containers" / "builder.Containerfile",
         "sidecar": ROOT / "containers" / "sidecar.Containerfile"}


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse(path: Path) -> list[Stage]:
    """Instructions per stage; continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        if op.upper() == "ARG" and not stages:
            continue  # a global build argument (BASE_IMAGE)
        if op.upper() == "FROM":
            parts = rest.split()
            stages.append(Stage(parts[0], parts[2] if len(parts) > 2 else str(len(stages))))
        else:
            stages[-1].instructions.append((op.upper(), rest.strip()))
    return stages


def context_copies(stages: list[Stage]) -> list[tuple[list[str], str]]:
    out = []
    for stage in stages:
        for op, rest in stage.instructions:
            if op == "COPY" and not rest.startswith("--from="):
                *sources, dest = rest.split()
                out.append((sources, dest))
    return out


@pytest.mark.parametrize("image", sorted(FILES))
def test_structure(image: str) -> None:
    stages = parse(FILES[image])
    assert len(stages) >= 2, "multi-stage: venv, final"
    names = [s.name for s in stages]
    for i, stage in enumerate(stages):
        for op, rest in stage.instructions:
            if op == "COPY" and rest.startswith("--from="):
                source = rest.split()[0].removeprefix("--from=")
                assert source in names[:i], f"{image}: COPY --from={source} before it exists"
    final = dict(stages[-1].instructions)
    uid = final["USER"].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric non-root user (runAsNonRoot can check it)"
    assert final["ENTRYPOINT"] == f'["python", "-m", "{image}"]'
    # The sidecar image carries no compilers; only the builder installs toolchains.
    installs = " ".join(rest for s in stages[-1:] for op, rest in s.instructions if op == "RUN")
    assert ("gcc" in installs) is (image == "builder")


@pytest.mark.parametrize("image", sorted(FILES))
def test_context_copies_exist(image: str) -> None:
    for sources, _dest in context_copies(parse(FILES[image])):
        for source in sources:
            assert (ROOT / source).exists(), f"{image}: COPY {source}: not in the repository"


@pytest.mark.skipif(shutil.which("podman") is None, reason="podman (Debian) is not installed")
@pytest.mark.parametrize("image", sorted(FILES))
def test_podman_builds_the_context_copies(image: str, tmp_path: Path) -> None:
    """A real podman build of the Containerfile's build-context COPYs, on FROM scratch."""
    lines = ["FROM scratch"]
    for sources, dest in context_copies(parse(FILES[image])):
        target = dest if dest.startswith("/") else f"/src/{dest}"
        lines.append(f"COPY {' '.join(sources)} {target}")
    containerfile = tmp_path / "Containerfile"
    containerfile.write_text("\n".join(lines) + "\n")
    # podman limits the runroot path to 50 characters: a short private temp dir.
    run = Path(tempfile.mkdtemp(prefix="pf-podman-"))
    storage = ["--root", str(tmp_path / "root"), "--runroot", str(run),
               "--storage-driver", "vfs"]
    out = subprocess.run(["podman", *storage, "build", "-q", "-f", str(containerfile),
                          "-t", f"localhost/plugforge-{image}-context:test", str(ROOT)],
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    listed = subprocess.run(["podman", *storage, "images", "--format", "{{.Repository}}"],
                            capture_output=True, text=True, timeout=60, check=True)
    assert f"localhost/plugforge-{image}-context" in listed.stdout
    shutil.rmtree(run, ignore_errors=True)


def test_manifests_agree_with_the_images() -> None:
    docs = render(MANIFESTS / "overlays" / "all-brokers", use_binary=False)
    pods = {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs
            if d["kind"] in ("Deployment", "StatefulSet")}
    builder = pods["plugforge-builder"]["containers"][0]
    assert builder["image"].endswith("plugforge/builder:0.1.0")
    assert "--webhook-address=0.0.0.0:8443" in builder["args"]
    assert "plugforge-webhooks" not in pods  # the builder serves the webhooks itself
    init = pods["hivemq"]["initContainers"][0]
    assert init["image"].endswith("plugforge/sidecar:0.1.0")
    loader = init["command"][-2]
    sidecar = FILES["sidecar"].read_text()
    assert f"COPY --from=loader /out/plugforge-loader {loader}" in sidecar
    assert "plugin_dir=/plugins" in sidecar
