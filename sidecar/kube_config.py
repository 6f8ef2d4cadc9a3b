"""Where the Kubernetes API is and how to authenticate: in-cluster or from a kubeconfig file.

Only what the sidecar's lean client (``sidecar.kube_http``) needs: server URL, CA, bearer token
(inline or a file re-read periodically, since bound service-account tokens rotate) and client
certificates. Exec plugins and auth providers are refused with a clear error rather than half
supported.
"""

from __future__ import annotations

import base64
import binascii
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sidecar.kube_errors import KubeConfigError

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
ENV_SERVICE_HOST = "KUBERNETES_SERVICE_HOST"
ENV_SERVICE_PORT = "KUBERNETES_SERVICE_PORT"
TOKEN_REREAD_SECONDS = 60.0  # as client-go: the kubelet refreshes bound tokens well before expiry


class TokenSource:
    """A bearer token: fixed, or read from a file and re-read at most every ``reread`` seconds."""

    def __init__(self, *, token: str | None = None, path: Path | None = None,
                 reread: float = TOKEN_REREAD_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if (token is None) == (path is None):
            raise ValueError("TokenSource takes exactly one of token and path")
        self.path = path
        self._token = token
        self._reread = reread
        self._clock = clock
        self._read_at: float | None = None
        self._lock = threading.Lock()

    def get(self) -> str:
        if self.path is None:
            return self._token or ""
        with self._lock:
            now = self._clock()
            if self._token is None or self._read_at is None or now - self._read_at >= self._reread:
                self._token = _read_token(self.path)
                self._read_at = now
            return self._token

    def invalidate(self) -> None:
        """Re-read the file on the next ``get`` (after a 401: the token may have rotated)."""
        with self._lock:
            self._read_at = None


@dataclass(frozen=True)
class ClusterConfig:
    server: str
    """Base URL, e.g. ``https://10.96.0.1:443``."""
    ca_file: Path | None = None
    ca_data: str | None = None
    """PEM text of the CA (kubeconfig ``certificate-authority-data``)."""
    insecure_skip_tls_verify: bool = False
    tls_server_name: str | None = None
    token: TokenSource | None = None
    client_cert: bytes | None = None
    """PEM of the client certificate; ``client_key`` goes with it."""
    client_key: bytes | None = None
    source: str = ""
    """Where this came from, for error messages."""


def load_config(kubeconfig: Path | None, *, environ: Mapping[str, str] = os.environ,
                service_account_dir: Path = SERVICE_ACCOUNT_DIR) -> ClusterConfig:
    """A kubeconfig file when given (``os.pathsep``-separated lists merge), else in-cluster."""
    if kubeconfig is not None:
        return load_kubeconfig(kubeconfig)
    return load_incluster(environ, service_account_dir)


def load_incluster(environ: Mapping[str, str] = os.environ,
                   service_account_dir: Path = SERVICE_ACCOUNT_DIR) -> ClusterConfig:
    host, port = environ.get(ENV_SERVICE_HOST, ""), environ.get(ENV_SERVICE_PORT, "")
    if not host or not port:
        raise KubeConfigError(
            f"not running in a pod: {ENV_SERVICE_HOST}/{ENV_SERVICE_PORT} are unset; pass "
            "--kubeconfig (or set KUBECONFIG) to reach the API from outside a cluster")
    token_file, ca_file = service_account_dir / "token", service_account_dir / "ca.crt"
    for needed in (token_file, ca_file):
        if not needed.is_file():
            raise KubeConfigError(
                f"in-cluster config: {needed} is missing; mount the service account token "
                "(automountServiceAccountToken: true or a projected token volume)")
    token = TokenSource(path=token_file)
    token.get()  # fail now, not on the first request, if it is unreadable or empty
    bracketed = f"[{host}]" if ":" in host else host  # IPv6 service address
    return ClusterConfig(server=f"https://{bracketed}:{port}", ca_file=ca_file, token=token,
                         source="in-cluster service account")


def load_kubeconfig(path: Path) -> ClusterConfig:
    files = [Path(p) for p in str(path).split(os.pathsep) if p]
    merged: dict[str, Any] = {"clusters": {}, "users": {}, "contexts": {}, "current": None}
    for file in files:
        doc = _read_yaml(file)
        merged["current"] = merged["current"] or doc.get("current-context")
        for section, inner in (("clusters", "cluster"), ("users", "user"),
                               ("contexts", "context")):
            for entry in doc.get(section) or []:
                if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                    # First file wins per name, as kubectl merges KUBECONFIG lists.
                    merged[section].setdefault(entry["name"], (entry.get(inner) or {}, file.parent))
    where = f"kubeconfig {path}"
    current = merged["current"]
    if not current:
        raise KubeConfigError(f"{where}: no current-context; set one with "
                              "'kubectl config use-context NAME'")
    if current not in merged["contexts"]:
        raise KubeConfigError(f"{where}: current-context {current!r} is not among its contexts")
    context, _ = merged["contexts"][current]
    cluster_name, user_name = context.get("cluster"), context.get("user")
    if cluster_name not in merged["clusters"]:
        raise KubeConfigError(f"{where}: context {current!r} names cluster {cluster_name!r}, "
                              "which is not defined")
    cluster, cluster_dir = merged["clusters"][cluster_name]
    user, user_dir = merged["users"].get(user_name, ({}, path.parent))
    server = cluster.get("server")
    if not isinstance(server, str) or not server.startswith(("https://", "http://")):
        raise KubeConfigError(f"{where}: cluster {cluster_name!r} has server {server!r}; "
                              "expected an https:// URL")
    for unsupported in ("exec", "auth-provider", "username"):
        if user.get(unsupported):
            raise KubeConfigError(
                f"{where}: user {user_name!r} authenticates with {unsupported!r}, which the "
                "sidecar does not support; use a token, tokenFile or client certificate")
    token: TokenSource | None = None
    if user.get("token"):
        token = TokenSource(token=str(user["token"]))
    elif user.get("tokenFile"):
        token = TokenSource(path=_resolve(user["tokenFile"], user_dir))
    cert = _pem(user, "client-certificate", user_dir, where)
    key = _pem(user, "client-key", user_dir, where)
    if (cert is None) != (key is None):
        raise KubeConfigError(f"{where}: user {user_name!r} has a client certificate without "
                              "its key or a key without its certificate; give both")
    ca_data = _pem(cluster, "certificate-authority", cluster_dir, where, read_file=False)
    ca_file = cluster.get("certificate-authority")
    return ClusterConfig(
        server=server.rstrip("/"),
        ca_file=_resolve(ca_file, cluster_dir) if ca_file and ca_data is None else None,
        ca_data=ca_data.decode() if ca_data is not None else None,
        insecure_skip_tls_verify=bool(cluster.get("insecure-skip-tls-verify")),
        tls_server_name=cluster.get("tls-server-name") or None,
        token=token, client_cert=cert, client_key=key, source=where)


def _read_yaml(file: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(file.read_text())
    except OSError as e:
        raise KubeConfigError(f"cannot read kubeconfig {file}: {e.strerror or e}") from e
    except yaml.YAMLError as e:
        raise KubeConfigError(f"kubeconfig {file} is not valid YAML: {e}") from e
    if not isinstance(doc, dict):
        raise KubeConfigError(f"kubeconfig {file}: expected a mapping (kind: Config), "
                              f"found {type(doc).__name__}")
    return doc


def _resolve(value: object, base: Path) -> Path:
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else base / path


def _pem(section: Mapping[str, Any], field: str, base: Path, where: str, *,
         read_file: bool = True) -> bytes | None:
    """``<field>-data`` (base64) or, with ``read_file``, the file named by ``<field>``."""
    data = section.get(f"{field}-data")
    if data:
        try:
            return base64.b64decode(str(data), validate=True)
        except binascii.Error as e:
            raise KubeConfigError(f"{where}: {field}-data is not valid base64: {e}") from e
    if read_file and section.get(field):
        file = _resolve(section[field], base)
        try:
            return file.read_bytes()
        except OSError as e:
            raise KubeConfigError(f"{where}: cannot read {field} {file}: "
                                  f"{e.strerror or e}") from e
    return None


def _read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise KubeConfigError(f"cannot read the API token {path}: {e.strerror or e}") from e
    if not token:
        raise KubeConfigError(f"the API token file {path} is empty")
    return token
