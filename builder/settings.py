"""The builder's settings: one object, built once from flags and environment, passed explicitly."""

from __future__ import annotations

import argparse
import os
import re
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from builder.build.executors import EXECUTORS

ENV_PREFIX = "PLUGFORGE_BUILDER_"
ENV_KUBECONFIG = "KUBECONFIG"
ENV_CACHE = "PLUGFORGE_CACHE"


def _default_cache() -> Path:
    value = os.environ.get(ENV_CACHE)
    return Path(value) if value else Path.home() / ".cache" / "plugforge"


@dataclass(frozen=True)
class Settings:
    kubeconfig: Path | None = None
    """None: in-cluster service account."""
    namespace: str = "plugforge-system"
    """Where the leader-election Lease lives."""
    lease_name: str = "plugforge-builder"
    identity: str = field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    """This instance, as written into the Lease and into PluginBuilds it runs."""
    state_dir: Path = field(default_factory=lambda: _default_cache() / "builder")
    """Git mirrors (``git/``), work dirs (``work/``) and full build logs (``logs/``)."""
    workers: int = 2
    """Builds running at once (different plugins; one plugin never builds twice at a time)."""
    max_build_seconds: float = 1800.0
    """Upper bound on any build's wall clock; a recipe or plugin may ask for less."""
    resync_seconds: float = 300.0
    """Every plugin is reconciled at least this often (catches new commits on the ref)."""
    watch_timeout_seconds: int = 240
    lease_duration_seconds: float = 15.0
    lease_renew_seconds: float = 5.0
    backoff_base_seconds: float = 5.0
    backoff_max_seconds: float = 600.0
    max_attempts: int = 5
    """Transient failures of one build are retried this many times, then it is Failed."""
    registry_ca: Path | None = None
    """Extra CA bundle for registries with a private CA."""
    log_tail_lines: int = 40
    docker_url: str | None = None
    """Push through this Docker-API engine (e.g. ``unix:///run/podman/podman.sock``) instead of
    the daemonless registry client (the default, and the only byte-reproducible one)."""
    watch_namespace: str | None = None
    """Only this namespace's BrokerPlugins (None: every namespace the RBAC allows)."""
    webhook_address: tuple[str, int] | None = None
    """Serve push webhooks on this host and port (plain HTTP; terminate TLS at the Ingress).
    Every replica serves them, leader or not: a webhook only records a build request."""
    metrics_address: tuple[str, int] | None = None
    """Serve Prometheus ``/metrics`` and ``/healthz`` on this host and port."""
    grpc_address: tuple[str, int] | None = None
    """Serve the BuildService (TLS + bearer tokens) on this host and port; every replica."""
    grpc_token_file: Path | None = None
    """Tokens callers of the BuildService present, one per line, ``NAME:TOKEN`` (a mounted
    Secret); NAME is recorded as the user of builds they trigger."""
    grpc_tls_cert: Path | None = None
    grpc_tls_key: Path | None = None
    sidecar_token_file: Path | None = None
    """The token the builder presents to the sidecars' gRPC service."""
    sidecar_ca: Path | None = None
    """CA bundle that signed the sidecars' gRPC certificates."""
    signing_key: Path | None = None
    """A mounted cosign key pair Secret (``cosign.key``, ``cosign.password``): every image
    pushed is signed and gets a SLSA provenance attestation. None: unsigned, logged at start."""
    toolchains: Path | None = None
    """The toolchain pin file (``plugforge toolchains build --out``; in ``manifests/`` the
    ``plugforge-toolchains`` ConfigMap): each recipe's toolchain as ``image@digest``. Read at
    start; without it, builds outside the ``process`` executor fail with ToolchainMissing."""
    executor: str = "kubernetes"
    """Where builds' steps run (``builder/build/executors``): ``kubernetes`` (a Job per build),
    ``container`` (podman on this machine) or ``process`` (subprocesses of the builder)."""
    allow_process_executor: bool = False
    """``process`` lets a build read everything the builder can: refused unless this is set."""
    build_namespace: str = "plugforge-builds"
    """``kubernetes`` executor: where build Jobs run (manifests/builder/50-builds.yaml)."""
    transfer_address: tuple[str, int] = ("0.0.0.0", 8090)  # noqa: S104 - pods must reach it
    """``kubernetes`` executor: where build pods fetch sources and return results."""
    transfer_host: str | None = None
    """The address build pods reach ``transfer_address`` at: this pod's IP (downward API)."""
    transfer_image: str | None = None
    """A static busybox image (wget, tar, base64) for the build pods' transfer containers."""

    @property
    def git_dir(self) -> Path:
        return self.state_dir / "git"

    @property
    def work_dir(self) -> Path:
        return self.state_dir / "work"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]


PROCESS_REFUSED = (
    "--executor process runs untrusted plugin builds as the builder's own user: they can read "
    "its ServiceAccount token, mounted Secrets and every tenant's mirrors. It is for "
    "development only; add --allow-process-executor (PLUGFORGE_BUILDER_ALLOW_PROCESS_EXECUTOR"
    "=true) to accept that, or use --executor kubernetes or container")

_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class SettingsError(ValueError):
    pass


_HELP = {
    "kubeconfig": "kubeconfig file (default $KUBECONFIG, else the in-cluster service account)",
    "namespace": "namespace of the leader-election Lease (default %(default)s)",
    "lease_name": "name of the Lease replicas compete for (default %(default)s)",
    "identity": "this replica's name in the Lease and on the builds it runs",
    "watch_namespace": "only build BrokerPlugins of this namespace (default: all namespaces)",
    "state_dir": "git mirrors, work dirs and build logs (default %(default)s)",
    "registry_ca": "CA bundle for registries with a private CA",
    "docker_url": "push through this Docker-API engine instead of the registry client",
    "webhook_address": "serve push webhooks (/webhooks/github|gitea|gitlab) on HOST:PORT "
                       "(default: no webhook endpoint)",
    "metrics_address": "serve Prometheus /metrics and /healthz on HOST:PORT (default: off)",
    "grpc_address": "serve the BuildService gRPC API on HOST:PORT (needs --grpc-token-file, "
                    "--grpc-tls-cert and --grpc-tls-key)",
    "grpc_token_file": "tokens of API callers, one NAME:TOKEN per line",
    "grpc_tls_cert": "TLS certificate of the gRPC API (PEM)",
    "grpc_tls_key": "TLS private key of the gRPC API (PEM)",
    "sidecar_token_file": "the token presented to the sidecars' gRPC service",
    "sidecar_ca": "CA bundle of the sidecars' gRPC certificates",
    "signing_key": "directory of the cosign key pair Secret (cosign.key, cosign.password): "
                   "sign every image and attest its provenance (default: unsigned)",
    "toolchains": "the toolchain pin file (plugforge toolchains build --push REGISTRY --out "
                  "FILE): the image each recipe's steps run in",
    "executor": "where builds run: kubernetes (a Job per build, the default), container "
                "(podman on this machine) or process (development only; needs "
                "--allow-process-executor)",
    "build_namespace": "kubernetes executor: namespace of build Jobs (default %(default)s)",
    "transfer_address": "kubernetes executor: serve build pods their sources and take their "
                        "results on HOST:PORT (default 0.0.0.0:8090)",
    "transfer_host": "kubernetes executor: the address build pods reach the builder at (its "
                     "pod IP)",
    "transfer_image": "kubernetes executor: a static busybox image for the build pods' "
                      "transfer containers",
    "allow_process_executor": "accept --executor process, whose builds can read the "
                              "builder's token, Secrets and every tenant's sources",
    "workers": "builds running at once, one per plugin at most (default %(default)s)",
    "max_build_seconds": "wall-clock cap for any build (default %(default)s)",
    "resync_seconds": "reconcile every plugin at least this often (default %(default)s)",
    "watch_timeout_seconds": "restart watches after this long (default %(default)s)",
    "lease_duration_seconds": "Lease validity without renewal (default %(default)s)",
    "lease_renew_seconds": "Lease renewal period (default %(default)s)",
    "backoff_base_seconds": "first retry delay after a transient failure (default %(default)s)",
    "backoff_max_seconds": "longest retry delay (default %(default)s)",
    "max_attempts": "attempts of one build before a transient failure is final "
                    "(default %(default)s)",
}


def parse_settings(argv: Sequence[str], env: Mapping[str, str]) -> Settings:
    """Flags win over ``PLUGFORGE_BUILDER_<NAME>`` environment variables, then defaults."""
    d = Settings()
    p = argparse.ArgumentParser(
        prog="python -m builder",
        description="plugforge builder: BrokerPlugins to OCI images. Every flag can also be "
                    "set as PLUGFORGE_BUILDER_<FLAG_NAME> (e.g. PLUGFORGE_BUILDER_WORKERS).")
    p.add_argument("--kubeconfig", type=Path, default=env.get(ENV_KUBECONFIG),
                   help=_HELP["kubeconfig"])
    p.add_argument("--watch-namespace", default=env.get(ENV_PREFIX + "WATCH_NAMESPACE"),
                   help=_HELP["watch_namespace"])
    for name in ("namespace", "lease_name", "identity"):
        p.add_argument("--" + name.replace("_", "-"),
                       default=env.get(ENV_PREFIX + name.upper(), getattr(d, name)),
                       help=_HELP[name])
    p.add_argument("--state-dir", type=Path, help=_HELP["state_dir"],
                   default=Path(env.get(ENV_PREFIX + "STATE_DIR", str(d.state_dir))))
    p.add_argument("--registry-ca", type=Path, default=env.get(ENV_PREFIX + "REGISTRY_CA"),
                   help=_HELP["registry_ca"])
    p.add_argument("--docker-url", default=env.get(ENV_PREFIX + "DOCKER_URL"),
                   help=_HELP["docker_url"])
    p.add_argument("--webhook-address", metavar="HOST:PORT",
                   default=env.get(ENV_PREFIX + "WEBHOOK_ADDRESS"), help=_HELP["webhook_address"])
    p.add_argument("--metrics-address", metavar="HOST:PORT",
                   default=env.get(ENV_PREFIX + "METRICS_ADDRESS"), help=_HELP["metrics_address"])
    p.add_argument("--grpc-address", metavar="HOST:PORT",
                   default=env.get(ENV_PREFIX + "GRPC_ADDRESS"), help=_HELP["grpc_address"])
    for name in ("grpc_token_file", "grpc_tls_cert", "grpc_tls_key", "sidecar_token_file",
                 "sidecar_ca", "signing_key", "toolchains"):
        p.add_argument("--" + name.replace("_", "-"), type=Path,
                       default=env.get(ENV_PREFIX + name.upper()), help=_HELP[name])
    p.add_argument("--executor", choices=EXECUTORS, help=_HELP["executor"],
                   default=env.get(ENV_PREFIX + "EXECUTOR", d.executor))
    p.add_argument("--allow-process-executor", action="store_true",
                   help=_HELP["allow_process_executor"],
                   default=env.get(ENV_PREFIX + "ALLOW_PROCESS_EXECUTOR", "").lower()
                   in ("1", "true", "yes"))
    for name in ("build_namespace", "transfer_host", "transfer_image"):
        p.add_argument("--" + name.replace("_", "-"), help=_HELP[name],
                       default=env.get(ENV_PREFIX + name.upper(), getattr(d, name)))
    p.add_argument("--transfer-address", metavar="HOST:PORT", help=_HELP["transfer_address"],
                   default=env.get(ENV_PREFIX + "TRANSFER_ADDRESS"))
    numbers: dict[str, type[int] | type[float]] = {
        "workers": int, "max_build_seconds": float, "resync_seconds": float,
        "watch_timeout_seconds": int, "lease_duration_seconds": float,
        "lease_renew_seconds": float, "backoff_base_seconds": float,
        "backoff_max_seconds": float, "max_attempts": int,
    }
    for name, kind in numbers.items():
        variable = ENV_PREFIX + name.upper()
        try:
            default = kind(env.get(variable, getattr(d, name)))
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise SettingsError(f"${variable}: expected {expected}, found "
                                f"{env.get(variable)!r}") from None
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=default,
                       help=_HELP[name])
    args = p.parse_args(list(argv))
    values = vars(args)
    if values["webhook_address"] is not None:
        values["webhook_address"] = _address(values["webhook_address"])
    if values["metrics_address"] is not None:
        values["metrics_address"] = _address(values["metrics_address"], "--metrics-address",
                                             "METRICS_ADDRESS")
    values["transfer_address"] = d.transfer_address if values["transfer_address"] is None \
        else _address(values["transfer_address"], "--transfer-address", "TRANSFER_ADDRESS")
    if values["grpc_address"] is not None:
        values["grpc_address"] = _address(values["grpc_address"], "--grpc-address",
                                          "GRPC_ADDRESS")
        missing = [f"--{n.replace('_', '-')}" for n in ("grpc_token_file", "grpc_tls_cert",
                                                        "grpc_tls_key") if values[n] is None]
        if missing:
            raise SettingsError(f"--grpc-address needs {', '.join(missing)}: the API is only "
                                "served over TLS to callers with a token")
    for name in ("grpc_token_file", "grpc_tls_cert", "grpc_tls_key", "sidecar_token_file",
                 "sidecar_ca", "signing_key", "toolchains"):
        if values[name] is not None:
            values[name] = Path(values[name])
    for name in ("workers", "max_attempts"):
        if values[name] < 1:
            raise SettingsError(f"--{name.replace('_', '-')}: expected at least 1, "
                                f"found {values[name]}")
    for name in ("namespace", "watch_namespace", "build_namespace"):
        # They end up in API paths: a namespace is a DNS-1123 label.
        if values[name] is not None and not _NAMESPACE.fullmatch(values[name]):
            raise SettingsError(f"--{name.replace('_', '-')}: expected a namespace name (lower "
                                f"case letters, digits and '-', at most 63), found "
                                f"{values[name]!r}")
    if values["executor"] not in EXECUTORS:  # argparse checks flags, not the variable
        raise SettingsError(f"${ENV_PREFIX}EXECUTOR: expected one of {', '.join(EXECUTORS)}, "
                            f"found {values['executor']!r}")
    if values["executor"] == "process" and not values["allow_process_executor"]:
        raise SettingsError(PROCESS_REFUSED)
    if values["lease_renew_seconds"] >= values["lease_duration_seconds"]:
        raise SettingsError("--lease-renew-seconds must be shorter than --lease-duration-seconds")
    return Settings(**values)


def _address(text: str, flag: str = "--webhook-address",
             variable: str = "WEBHOOK_ADDRESS") -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise SettingsError(f"{flag} (${ENV_PREFIX}{variable}): expected "
                            f"HOST:PORT such as 0.0.0.0:8080, found {text!r}")
    return host.strip("[]"), int(port)
