"""Container images made on this machine, the way a user makes them, cached by their inputs.

- a Debian base image straight from Debian's archive (mmdebstrap through apt's mirror; no other
  image registry is reachable here), imported into a podman store in the plugforge cache;
- the project's Containerfiles built with their ``RUN`` steps by podman on that base;
- ``FROM scratch`` images of static programs (the node's pause image).

podman runs containers here only with runc, cgroupfs, the host's cgroup namespace and no
default ulimits (../shared/notes/real-kubernetes-node.md); builds use the host's network, so
they add no firewall rules. Behind a TLS-intercepting proxy the ``RUN`` steps need the host's
CA bundle: a root home with it (and a pip.conf and .mavenrc naming it) is mounted for the build
only and ends up in no image.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from builder.build import toolchains
from testbed.certs import CertificateAuthority

ROOT = Path(__file__).resolve().parent.parent
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
BASE_REPOSITORY = "localhost/plugforge/debian"
RUNC = "/usr/sbin/runc"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
HOST_JAVA_CA = Path("/etc/ssl/certs/java/cacerts")


class ImageBuildFailed(RuntimeError):
    """A build step failed; the message carries the command and the tail of its output."""


def cache_dir() -> Path:
    return Path(os.environ.get("PLUGFORGE_CACHE")
                or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "plugforge")


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:16]


def _run(argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 3600,
         log: Path | None = None) -> str:
    """Run ``argv``; with ``log``, its output goes there as it happens (builds are long)."""
    if log is None:
        result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout,
                                check=False)
        output = result.stdout + result.stderr
    else:
        with log.open("a") as f:
            f.write(f"$ {' '.join(argv)}\n")
            f.flush()
            result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=f, text=True, env=env,
                                    timeout=timeout, check=False)
            f.write(result.stdout)
        output = log.read_text(errors="replace")
    if result.returncode != 0:
        tail = "\n".join(output.splitlines()[-40:])
        raise ImageBuildFailed(f"{' '.join(argv[:8])} ... exited {result.returncode}:\n{tail}")
    return result.stdout


@dataclass(frozen=True)
class Podman:
    """podman on a private store (overlay, in the cache, so images survive the session)."""

    home: Path

    @classmethod
    def in_cache(cls) -> Podman:
        home = cache_dir() / "images" / "podman"
        home.mkdir(parents=True, exist_ok=True)
        conf = home / "containers.conf"
        conf.write_text('[containers]\ndefault_ulimits = []\ncgroupns = "host"\n'
                        '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n')
        return cls(home)

    @property
    def env(self) -> dict[str, str]:
        # The runroot path must stay short (podman limits it to ~50 characters).
        tag = hashlib.sha256(bytes(self.home)).hexdigest()[:8]
        run = Path(tempfile.gettempdir()) / f"pf-images-{tag}"
        run.mkdir(exist_ok=True)
        return {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                "HOME": str(self.home), "CONTAINERS_CONF": str(self.home / "containers.conf"),
                "XDG_RUNTIME_DIR": str(run), "TMPDIR": str(self.home / "tmp")}

    def __call__(self, *args: str, timeout: float = 3600, log: Path | None = None) -> str:
        (self.home / "tmp").mkdir(exist_ok=True)
        argv = ["podman", "--root", str(self.home / "storage"),
                "--runroot", self.env["XDG_RUNTIME_DIR"], "--storage-driver", "overlay",
                "--runtime", RUNC, "--cgroup-manager", "cgroupfs", *args]
        return _run(argv, env=self.env, timeout=timeout, log=log)

    def exists(self, ref: str) -> bool:
        try:
            self("image", "exists", ref, timeout=60)
            return True
        except ImageBuildFailed:
            return False


@dataclass(frozen=True)
class Built:
    ref: str  # in the cache's podman store
    seconds: float  # 0 when it came from the cache
    size: int  # bytes, uncompressed, as podman reports it


def debian_base(podman: Podman, log: Path | None = None) -> Built:
    """Debian ``SUITE`` minbase + ca-certificates from the archive, as a podman image."""
    # Like Debian's slim images: no manuals, docs (but the copyrights) or translations, also
    # in what later layers install (the dpkg settings stay in the image).
    argv = ["mmdebstrap", "--variant=minbase", "--include=ca-certificates", "--format=tar",
            *(f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("man", "doc", "info", "locale")),
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            "--customize-hook=rm -rf \"$1\"/var/cache/apt/* \"$1\"/var/lib/apt/lists/*"]
    key = _digest(json.dumps([argv, SUITE, MIRROR]).encode())
    ref = f"{BASE_REPOSITORY}:{SUITE}-{key}"
    if podman.exists(ref):
        return Built(ref, 0.0, _size(podman, ref))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pf-base-") as tmp:
        tar = Path(tmp) / "rootfs.tar"
        _run([*argv, SUITE, str(tar), MIRROR], timeout=1800, log=log)
        podman("import", "--change", 'CMD ["/bin/bash"]', str(tar), ref, log=log)
    return Built(ref, time.monotonic() - started, _size(podman, ref))


def _size(podman: Podman, ref: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", ref, timeout=60).strip())


def context_files(containerfile: Path, context: Path = ROOT) -> list[Path]:
    """The build-context files a Containerfile's ``COPY`` instructions read."""
    text = re.sub(r"\\\n", " ", containerfile.read_text())
    files: list[Path] = []
    for line in text.splitlines():
        words = line.split()
        if len(words) < 3 or words[0].upper() != "COPY" or words[1].startswith("--from="):
            continue
        for source in words[1:-1]:
            path = context / source
            if path.is_dir():
                files += sorted(p for p in path.rglob("*") if p.is_file() and not _ignored(p))
            else:
                files.append(path)
    return files


def _ignored(path: Path) -> bool:
    return any(part in ("__pycache__", "target", ".pytest_cache", ".mypy_cache")
               for part in path.parts) or path.suffix == ".pyc"


def build(podman: Podman, containerfile: Path, name: str, base: Built,
          log: Path | None = None, context: Path | None = None) -> Built:
    """``podman build`` of a Containerfile FROM ``base``; skipped when its inputs are cached.
    ``context``: the build context (default: the repository), e.g. a cached broker release."""
    context = context or ROOT
    key = _digest(base.ref.encode(),
                  str(containerfile.relative_to(ROOT)).encode() + containerfile.read_bytes(),
                  *(str(p.relative_to(context)).encode() + p.read_bytes()
                    for p in context_files(containerfile, context)))
    ref = f"localhost/plugforge/{name}:{key}"
    if podman.exists(ref):
        return Built(ref, 0.0, _size(podman, ref))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pf-build-") as tmp:
        podman("build", "--layers", "--network=host", "--cgroupns=host",
               "-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro",
               *_proxy_trust(Path(tmp)),
               "--build-arg", f"BASE_IMAGE={base.ref}",
               "-f", str(containerfile), "-t", ref, str(context), log=log)
    _drop_older(podman, ref)
    return Built(ref, time.monotonic() - started, _size(podman, ref))


def _drop_older(podman: Podman, ref: str) -> None:
    """Remove the earlier builds of this image, so the cache holds one per image. (No prune:
    the untagged intermediate images are the layer cache of the next build.)"""
    repository = ref.rsplit(":", 1)[0]
    listed = podman("images", "--format", "{{.Repository}}:{{.Tag}}", repository, timeout=60)
    older = [r for r in listed.split() if r != ref and r.startswith(repository + ":")]
    if older:
        podman("rmi", *older, timeout=300)


def _proxy_trust(tmp: Path) -> list[str]:
    """A root home for the ``RUN`` steps whose pip.conf and .mavenrc trust what the host trusts.

    Mounted over ``/root`` (which every Debian image has, so the build leaves no mount points
    behind in the image); Maven's downloads land there too and go away with it.
    """
    home = tmp / "root"
    (home / ".config" / "pip").mkdir(parents=True)
    shutil.copyfile(HOST_CA, home / "host-ca.crt")
    (home / ".config" / "pip" / "pip.conf").write_text("[global]\ncert = /root/host-ca.crt\n")
    if HOST_JAVA_CA.exists():
        shutil.copyfile(HOST_JAVA_CA, home / "host-java-cacerts")
        (home / ".mavenrc").write_text(
            'MAVEN_OPTS="$MAVEN_OPTS -Djavax.net.ssl.trustStore=/root/host-java-cacerts"\n')
    return ["-v", f"{home}:/root"]


def static_image(podman: Podman, name: str, files: dict[str, Path], entrypoint: list[str],
                 log: Path | None = None) -> Built:
    """A ``FROM scratch`` image holding ``files`` (path in image -> file here)."""
    key = _digest(json.dumps(entrypoint).encode(),
                  *(dest.encode() + src.read_bytes() for dest, src in sorted(files.items())))
    ref = f"localhost/plugforge/{name}:{key}"
    if podman.exists(ref):
        return Built(ref, 0.0, _size(podman, ref))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pf-static-") as tmp:
        lines = ["FROM scratch"]
        for i, (dest, src) in enumerate(sorted(files.items())):
            shutil.copy2(src, Path(tmp) / f"f{i}")
            lines.append(f"COPY f{i} {dest}")
        lines += [f"ENTRYPOINT {json.dumps(entrypoint)}", "USER 65535:65535"]
        (Path(tmp) / "Containerfile").write_text("\n".join(lines) + "\n")
        podman("build", "-f", str(Path(tmp) / "Containerfile"), "-t", ref, tmp, log=log)
    return Built(ref, time.monotonic() - started, _size(podman, ref))


def pause_binary(log: Path | None = None) -> Path:
    """The pod sandbox's process, compiled statically from testbed/pause.c (cached)."""
    source = Path(__file__).with_name("pause.c")
    out = cache_dir() / "images" / f"pause-{_digest(source.read_bytes())}"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        _run(["gcc", "-Os", "-static", "-o", f"{out}.tmp", str(source)], timeout=300, log=log)
        os.replace(f"{out}.tmp", out)
    return out


def push(podman: Podman, ref: str, registry_host: str, ca: CertificateAuthority,
         repository: str, log: Path | None = None) -> str:
    """Push ``ref`` to ``registry_host/repository``; returns ``host/repository@digest``.

    Skipped when this image was pushed before and the registry still has that manifest (the
    node's registry keeps its blobs in the cache): podman recompresses every layer on push,
    over a minute for the builder image.
    """
    certs = podman.home / "certs.d" / registry_host
    certs.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ca.cert, certs / "ca.crt")
    target = f"{registry_host}/{repository}"
    image_id = podman("image", "inspect", "--format", "{{.Id}}", ref, timeout=60).strip()
    record = podman.home / "pushed" / f"{_digest(repository.encode(), image_id.encode())}"
    if record.exists() and _has_manifest(registry_host, repository, record.read_text(), ca):
        return f"{target}@{record.read_text()}"
    with tempfile.TemporaryDirectory(prefix="pf-push-") as tmp:
        digest_file = Path(tmp) / "digest"
        podman("push", "--cert-dir", str(certs), "--digestfile", str(digest_file),
               ref, f"docker://{target}:latest", log=log)
        digest = digest_file.read_text().strip()
    record.parent.mkdir(exist_ok=True)
    record.write_text(digest)
    return f"{target}@{digest}"


def _has_manifest(registry_host: str, repository: str, digest: str,
                  ca: CertificateAuthority) -> bool:
    req = urllib.request.Request(
        f"https://{registry_host}/v2/{repository}/manifests/{digest}", method="HEAD",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json, "
                           "application/vnd.docker.distribution.manifest.v2+json"})
    try:
        with urllib.request.urlopen(req, context=ssl.create_default_context(cafile=str(ca.cert)),
                                    timeout=10) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


# What the real-node tests build, made ahead of them by scripts/ensure.d/10-images.sh (in the
# background, beside the Go builds: these builds wait mostly on Debian's archive and dpkg).
CONTAINERFILES = {"sidecar": ROOT / "containers" / "sidecar.Containerfile",
                  "builder": ROOT / "containers" / "builder.Containerfile",
                  "mosquitto": ROOT / "testbed" / "containers" / "mosquitto.Containerfile",
                  "rabbitmq": ROOT / "testbed" / "containers" / "rabbitmq.Containerfile",
                  "hivemq": ROOT / "testbed" / "containers" / "hivemq.Containerfile",
                  "vernemq": ROOT / "testbed" / "containers" / "vernemq.Containerfile",
                  "emqx": ROOT / "testbed" / "containers" / "emqx.Containerfile"}


def broker_context(name: str) -> Path | None:
    """The build context of a broker image made from a cached distribution (None: the
    repository): HiveMQ CE's jars and launcher (testbed/hivemq.py), VerneMQ's and EMQX's
    releases (testbed/node_brokers.py)."""
    if name == "hivemq":
        from testbed.hivemq import ensure_runtime  # Maven, only when this image is built
        return ensure_runtime().lib_dir.parent
    if name in ("vernemq", "emqx"):  # the shared build's release + the image's entrypoint
        from testbed.node_brokers import release_context
        return release_context(name)
    return None


def prebuild(log: Path | None = None) -> dict[str, Built]:
    """Every image the real-node and toolchain tests use, into the cache's podman store (none
    pushed)."""
    podman = Podman.in_cache()
    base = debian_base(podman, log)
    built = {"debian": base}
    for name, containerfile in CONTAINERFILES.items():
        built[name] = build(podman, containerfile, name, base, log, broker_context(name))
    built["pause"] = static_image(podman, "pause", {"/pause": pause_binary(log)}, ["/pause"], log)
    built["busybox"] = static_image(podman, "busybox", {"/bin/busybox": Path("/bin/busybox")},
                                    ["/bin/busybox"], log)
    # The templates' toolchain images, as testbed/toolchains.py names them (same keys).
    templates = ROOT / "plugin-templates"
    for name in toolchains.names(templates):
        built[f"toolchain-{name}"] = build(podman, toolchains.containerfile(templates, name),
                                           f"toolchain-{name}", base, log)
    return built


if __name__ == "__main__":
    started = time.monotonic()
    for name, image in prebuild().items():
        how = f"built in {image.seconds:.0f} s" if image.seconds else "cached"
        print(f"    {name}: {image.ref} ({image.size / 1e6:.0f} MB, {how})")
    print(f"    images ready in {time.monotonic() - started:.0f} s")
