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

    run(podman, ref, argv, workspace=None, env=None, log=None) -> str
        # one step in a container the way a build's step runs: the image's non-root user,
        # read-only root, fresh HOME and /tmp, no network, no capabilities, the workspace
        # (chowned to the build user) as working directory; returns the output

    podman = images.Podman.in_cache()
    image = build_toolchain(podman, "mosquitto-c")
    run(podman, image.ref, ["gcc", "--version"])
"""

from __future__ import annotations

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


def declared_tools(template: str) -> tuple[str, ...]:
    return toolchains.declared_tools(
        toolchains.containerfile(templates_root(), template).read_text())


def run(podman: images.Podman, ref: str, argv: Sequence[str], workspace: Path | None = None,
        env: Mapping[str, str] | None = None, log: Path | None = None) -> str:
    flags = ["--rm", "--network=none", "--cgroupns=host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro",
             "--read-only", "--cap-drop=all", "--security-opt=no-new-privileges",
             "--tmpfs", f"{toolchains.BUILD_HOME}:rw,exec,mode=0700",
             # /tmp of the container, a fresh tmpfs per run
             "--tmpfs", "/tmp:rw,exec,mode=1777", "--env", "TMPDIR=/tmp"]  # noqa: S108
    for key, value in (env or {}).items():
        flags += ["--env", f"{key}={value}"]
    if workspace is not None:
        # :U chowns the directory to the container's user (uid BUILD_UID), as an emptyDir's
        # fsGroup would in a pod.
        flags += ["-v", f"{workspace}:/workspace:U", "--workdir", "/workspace"]
    return podman("run", *flags, ref, *argv, timeout=900, log=log)
