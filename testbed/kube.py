"""A real Kubernetes control plane: kube-apiserver with an embedded etcd (tests/kube-harness).

There is no kubelet, scheduler or controller-manager. Identities authenticate with static
tokens; every identity but the admin gets its rights only from RBAC objects someone applies
(the ones in manifests/), so tests prove that our RBAC is sufficient.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from testbed.certs import CertificateAuthority, make_ca, make_rsa_keypair
from testbed.procs import ServerFailed, ServerProcess, start_with_port

HARNESS_ENV = "PLUGFORGE_KUBE_HARNESS"

# The namespace and service accounts that manifests/ defines; static tokens name the same
# users a real cluster would give those service accounts.
SYSTEM_NAMESPACE = "plugforge-system"
BUILDER_USER = f"system:serviceaccount:{SYSTEM_NAMESPACE}:plugforge-builder"
SIDECAR_USER = "system:serviceaccount:default:plugforge-sidecar"


@dataclass(frozen=True)
class Identity:
    name: str
    user: str
    groups: tuple[str, ...]
    token: str = field(default_factory=lambda: secrets.token_hex(24), repr=False)


def _service_account(name: str, user: str) -> Identity:
    namespace = user.split(":")[2]
    return Identity(name, user, ("system:serviceaccounts", f"system:serviceaccounts:{namespace}"))


class ControlPlane:
    """A running kube-apiserver; ``kubeconfig(identity)`` gives a file the clients can load."""

    def __init__(self, workdir: Path, server: ServerProcess, port: int, ca: CertificateAuthority,
                 identities: dict[str, Identity], host: str = "127.0.0.1") -> None:
        self.workdir = workdir
        self.server = server
        self.port = port
        self.ca = ca
        self.identities = identities
        self.host = host

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def kubeconfig(self, identity: str = "admin") -> Path:
        ident = self.identities[identity]
        path = self.workdir / f"kubeconfig-{identity}.yaml"
        if not path.exists():
            config = {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "testbed", "cluster": {
                    "server": self.url, "certificate-authority": str(self.ca.cert)}}],
                "users": [{"name": ident.name, "user": {"token": ident.token}}],
                "contexts": [{"name": ident.name,
                              "context": {"cluster": "testbed", "user": ident.name}}],
                "current-context": ident.name,
            }
            path.write_text(yaml.safe_dump(config))
            path.chmod(0o600)
        return path

    def request(self, method: str, path: str, identity: str = "admin",
                body: object | None = None) -> tuple[int, dict[str, object]]:
        """A raw API call, for probes and tests of status codes (403 and the like)."""
        req = urllib.request.Request(
            self.url + path, method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.identities[identity].token}",
                     "Content-Type": "application/json", "Accept": "application/json"})
        ctx = ssl.create_default_context(cafile=str(self.ca.cert))
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            payload = e.read()
            try:
                return e.code, json.loads(payload)
            except ValueError:
                return e.code, {"raw": payload.decode(errors="replace")}

    def stop(self) -> None:
        # A graceful apiserver shutdown drains open watches for ~10 s; this control plane and
        # its etcd are thrown away, so 2 s is plenty before the kill.
        self.server.stop(grace=2)


def harness_binary() -> Path:
    """The harness binary: ``$PLUGFORGE_KUBE_HARNESS``, else the one scripts/lib.sh cached."""
    value = os.environ.get(HARNESS_ENV)
    path = Path(value) if value else _cached_harness()
    if not os.access(path, os.X_OK):
        raise ServerFailed(
            f"no kube-apiserver harness at {path}: run scripts/test (or, in a shell, "
            "'source scripts/lib.sh && ensure_kube_harness'), which builds tests/kube-harness")
    return path


def _cached_harness() -> Path:
    # Same key as ensure_kube_harness in scripts/lib.sh: the harness's sources, hashed.
    src = Path(__file__).resolve().parent.parent / "tests" / "kube-harness"
    digest = hashlib.sha256(b"".join(
        (src / name).read_bytes() for name in ("go.mod", "go.sum", "main.go"))).hexdigest()
    cache = Path(os.environ.get("PLUGFORGE_CACHE")
                 or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "plugforge")
    return cache / "kube-harness" / digest[:12] / "kube-harness"


def start_control_plane(workdir: Path, extra_identities: tuple[Identity, ...] = (),
                        host: str = "127.0.0.1", authorization: str = "RBAC",
                        extra_args: tuple[str, ...] = ()) -> ControlPlane:
    """``host``: the address it binds and advertises (the real node's pods need one that is
    not loopback); ``extra_args`` go to kube-apiserver as they are."""
    workdir.mkdir(parents=True, exist_ok=True)
    ca = make_ca(workdir / "pki")
    serving = ca.issue("kube-apiserver", sans=tuple(dict.fromkeys((
        host, "127.0.0.1", "localhost", "kubernetes.default.svc"))))
    sa_keys = make_rsa_keypair(workdir / "pki", "service-accounts")

    identities = {i.name: i for i in (
        Identity("admin", "plugforge-admin", ("system:masters",)),
        _service_account("builder", BUILDER_USER),
        _service_account("sidecar", SIDECAR_USER),
        *extra_identities,
    )}
    tokens = workdir / "tokens.csv"
    tokens.write_text("".join(
        f'{i.token},{i.user},{i.user},"{",".join(i.groups)}"\n' for i in identities.values()))
    tokens.chmod(0o600)
    binary = harness_binary()

    def start(port: int) -> ServerProcess:
        etcd_dir = workdir / f"etcd-{port}"
        return ServerProcess("kube-apiserver", [
            str(binary), f"-etcd-dir={etcd_dir}", "--",
            f"--bind-address={host}", f"--advertise-address={host}",
            f"--secure-port={port}",
            f"--tls-cert-file={serving.cert}", f"--tls-private-key-file={serving.key}",
            f"--client-ca-file={ca.cert}",
            f"--token-auth-file={tokens}",
            f"--authorization-mode={authorization}",
            "--anonymous-auth=false",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={sa_keys.cert}",
            f"--service-account-signing-key-file={sa_keys.key}",
            "--service-cluster-ip-range=10.96.0.0/24",
            # One small box shared with the tests: skip what a single-user cluster does not need.
            "--enable-priority-and-fairness=false",
            "--profiling=false",
            f"--cert-dir={workdir / 'pki'}",
            *extra_args,
        ], workdir / "kube-apiserver.log")

    def ready(server: ServerProcess, port: int) -> None:
        admin = identities["admin"]
        ctx = ssl.create_default_context(cafile=str(ca.cert))

        def probe() -> bool:
            req = urllib.request.Request(f"https://{host}:{port}/readyz",
                                         headers={"Authorization": f"Bearer {admin.token}"})
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=2) as resp:
                    return bool(resp.status == 200)
            except urllib.error.HTTPError:
                return False

        server.wait_ready(probe, timeout=120)

    server, port = start_with_port(start, ready)
    return ControlPlane(workdir, server, port, ca, identities, host)
