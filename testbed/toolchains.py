"""The templates' toolchain images, built here for tests (cached by their inputs, like every
image in testbed/images.py), and pushed to a test registry.

API (for tests and fixtures)::

    TEMPLATES                                   # every template with a toolchain.Containerfile
    build_toolchain(podman, template, log=None) -> images.Built
        # FROM the Debian base made from Debian's archive; cached: 0 s when its inputs are
        # unchanged. Tag: localhost/plugforge/toolchain-<template>:<key>
    push_toolchain(podman, template, registry_host, ca, log=None) -> str
        # builds if needed, pushes to <registry_host>/plugforge/toolchain-<template>;
        # returns the pinned "host/plugforge/toolchain-<template>@sha256:..." (what an
        # executor gets as BuildJob.toolchain_image)
    pins(podman, registry_host, ca, templates=TEMPLATES, log=None) -> dict[str, Pin]
        # push_toolchain for each, with the tools each image declares: what
        # builder.build.toolchains.resolve() reads (dump_pins() writes it as the pin file)

    local_pins(podman, templates=TEMPLATES, log=None) -> dict[str, Pin]
        # each toolchain image in the local store, pinned by its digest: what the
        # ``container`` executor runs on this machine (no registry involved)
    executor_env(podman, directory) -> dict[str, str]
        # podman's own config files for this machine (runtime, cgroups, ulimits) and the
        # environment naming them: how the container executor's ``podman`` finds this store

    run(podman, ref, argv, workspace=None, env=None, volumes=None, log=None) -> str
        # one step in a container the way a build's step runs: the image's non-root user,
        # read-only root, fresh HOME and /tmp, no network, no capabilities, the workspace
        # (chowned to the build user) as working directory, ``volumes`` (host dir -> path,
        # chowned too: caches); returns the output
    cli_env(podman) -> dict[str, str]
        # environment for a plain ``podman`` (e.g. under ``plugforge toolchains build``) with
        # this store and the settings podman needs here, through podman's own config files

    podman = images.Podman.in_cache()
    image = build_toolchain(podman, "mosquitto-c")
    run(podman, image.ref, ["gcc", "--version"])
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from builder.build import toolchains
from builder.build.recipe import templates_root
from testbed import images
from testbed.certs import CertificateAuthority

TEMPLATES = tuple(toolchains.names(templates_root()))


def build_toolchain(podman: images.Podman, template: str,
                    log: Path | None = None) -> images.Built:
    base = images.debian_base(podman, log)
    return images.build(podman, toolchains.containerfile(templates_root(), template),
                        f"toolchain-{template}", base, log)


def push_toolchain(podman: images.Podman, template: str, registry_host: str,
                   ca: CertificateAuthority, log: Path | None = None) -> str:
    built = build_toolchain(podman, template, log)
    return images.push(podman, built.ref, registry_host, ca,
                       toolchains.REPOSITORY_PREFIX + template, log)


def pins(podman: images.Podman, registry_host: str, ca: CertificateAuthority,
         templates: tuple[str, ...] = TEMPLATES,
         log: Path | None = None) -> dict[str, toolchains.Pin]:
    return {t: toolchains.Pin(push_toolchain(podman, t, registry_host, ca, log),
                              declared_tools(t))
            for t in templates}


def local_pins(podman: images.Podman, templates: tuple[str, ...] = TEMPLATES,
               log: Path | None = None) -> dict[str, toolchains.Pin]:
    out = {}
    for template in templates:
        built = build_toolchain(podman, template, log)
        digest = podman("image", "inspect", "--format", "{{.Digest}}", built.ref).strip()
        out[template] = toolchains.Pin(f"{built.ref.rsplit(':', 1)[0]}@{digest}",
                                       declared_tools(template))
    return out


def executor_env(podman: images.Podman, directory: Path) -> dict[str, str]:
    """A plain ``podman`` on this store, with the machine's settings (../shared/notes/
    real-kubernetes-node.md) in podman's own config files, not in the executor. One of them:
    this machine reaches package registries through a TLS-intercepting proxy, so containers
    get the host's CA bundles (read-only, over the image's) to download dependencies."""
    directory.mkdir(parents=True, exist_ok=True)
    env = podman.env
    trust = [f"{path}:{path}:ro" for path in (images.HOST_CA, images.HOST_JAVA_CA)
             if path.exists()]
    (directory / "containers.conf").write_text(
        '[containers]\ndefault_ulimits = []\ncgroupns = "host"\n'
        f'volumes = {json.dumps(trust)}\n'
        '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\nruntime = "runc"\n'
        f'[engine.runtimes]\nrunc = ["{images.RUNC}"]\n')
    (directory / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{podman.home / "storage"}"\n'
        f'runroot = "{env["XDG_RUNTIME_DIR"]}"\n')
    return {**env, "CONTAINERS_CONF": str(directory / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(directory / "storage.conf")}


def declared_tools(template: str) -> tuple[str, ...]:
    return toolchains.declared_tools(
        toolchains.containerfile(templates_root(), template).read_text())


def run(podman: images.Podman, ref: str, argv: Sequence[str], workspace: Path | None = None,
        env: Mapping[str, str] | None = None, volumes: Mapping[Path, str] | None = None,
        log: Path | None = None) -> str:
    with tempfile.TemporaryDirectory(prefix="pf-build-home-") as home:
        return _run_in(podman, ref, argv, Path(home), workspace, env or {}, volumes or {}, log)


def _run_in(podman: images.Podman, ref: str, argv: Sequence[str], home: Path,
            workspace: Path | None, env: Mapping[str, str], volumes: Mapping[Path, str],
            log: Path | None) -> str:
    flags = ["--rm", "--network=none", "--cgroupns=host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro",
             "--read-only", "--cap-drop=all", "--security-opt=no-new-privileges",
             # A fresh HOME (an emptyDir in a pod) owned by the build user; /tmp of the
             # container, a fresh tmpfs per run.
             "-v", f"{home}:{toolchains.BUILD_HOME}:U",
             "--tmpfs", "/tmp:rw,exec,mode=1777", "--env", "TMPDIR=/tmp"]  # noqa: S108
    for key, value in env.items():
        flags += ["--env", f"{key}={value}"]
    if workspace is not None:
        # :U chowns the directory to the container's user (uid BUILD_UID), as an emptyDir's
        # fsGroup would in a pod.
        flags += ["-v", f"{workspace}:/workspace:U", "--workdir", "/workspace"]
    for host, inside in volumes.items():
        flags += ["-v", f"{host}:{inside}:U"]
    return podman("run", *flags, ref, *argv, timeout=900, log=log)


def cli_env(podman: images.Podman) -> dict[str, str]:
    """``podman``'s environment with ``podman``'s store (same graph and run roots, so the two
    share images and locks) and this machine's settings, as podman's own config files."""
    env = dict(podman.env)
    conf_dir = podman.home / "cli"
    conf_dir.mkdir(exist_ok=True)
    (conf_dir / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{podman.home / "storage"}"\n'
        f'runroot = "{env["XDG_RUNTIME_DIR"]}"\n')
    (conf_dir / "containers.conf").write_text(
        '[containers]\ndefault_ulimits = []\ncgroupns = "host"\nnetns = "host"\n'
        'volumes = ["/sys/fs/cgroup:/sys/fs/cgroup:ro"]\n'
        '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\nruntime = "runc"\n'
        f'[engine.runtimes]\nrunc = ["{images.RUNC}"]\n')
    env["CONTAINERS_CONF"] = str(conf_dir / "containers.conf")
    env["CONTAINERS_STORAGE_CONF"] = str(conf_dir / "storage.conf")
    return env


if __name__ == "__main__":  # the demo's install step: the Debian base and every toolchain
    import time
    started = time.monotonic()
    for name, pin in local_pins(images.Podman.in_cache()).items():
        print(f"    toolchain {name}: {pin.image}")
    print(f"    toolchain images ready in {time.monotonic() - started:.0f} s")
