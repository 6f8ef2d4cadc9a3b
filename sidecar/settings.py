"""All sidecar settings in one object, built once from flags and environment variables."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sidecar.adapters.registry import probe_mqtt_version
from sidecar.probes import DEFAULT_SECRETS_DIR

# Environment variables (the Downward API sets the pod ones).
ENV_POD_NAME = "POD_NAME"
ENV_POD_NAMESPACE = "POD_NAMESPACE"
ENV_KUBECONFIG = "KUBECONFIG"
ENV_SERVICE_HOST = "KUBERNETES_SERVICE_HOST"
ENV_TRUST_POLICY = "PLUGFORGE_TRUST_POLICY"


class SettingsError(ValueError):
    """A flag or variable is invalid; the message names it."""


@dataclass(frozen=True)
class Settings:
    broker: str
    """Adapter name (``sidecar.adapters.registry.ADAPTERS``)."""
    config_dirs: tuple[Path, ...] = ()
    """Mounted ConfigMap directories (file mode, and the fallback of API mode)."""
    source: str = "auto"
    """files | api | auto (api when Kubernetes credentials are present)."""
    configmaps: tuple[str, ...] = ()
    """ConfigMap names watched in API mode (in ``namespace``)."""
    namespace: str = "default"
    kubeconfig: Path | None = None
    adapter_options: Mapping[str, str] = field(default_factory=dict)
    plugin_dir: Path = Path("/plugins")
    """Shared with the broker container: installed plugin versions live here."""
    cache_dir: Path = Path("/var/cache/plugforge")
    """Content-addressed image cache."""
    image_cache_bytes: int = 2 * 1024 ** 3
    """Bound of the image cache in bytes (least recently used images go first; the running
    release's images always stay). It shares the pod's ephemeral storage with the broker."""
    allow_broker_restart: bool = False
    """Restart the broker for changes it cannot apply live; else report RestartRequired."""
    debounce: float = 0.2
    """Seconds of quiet after a change before applying (0 = apply at once)."""
    resync_interval: float = 30.0
    """Seconds between full re-reads of desired and observed state (drift correction)."""
    watch_idle_timeout: float = 90.0
    """API mode: restart a watch that delivered nothing (not even a bookmark) this long."""
    http_address: str = "127.0.0.1:8080"
    grpc_address: str = ""
    """host:port for the gRPC service; empty = off."""
    grpc_token_file: Path | None = None
    """A file (mounted Secret) with the bearer token gRPC callers must present."""
    grpc_tls_cert: Path | None = None
    grpc_tls_key: Path | None = None
    registry_ca: Path | None = None
    docker_config: Path | None = None
    """A mounted dockerconfigjson Secret (``.dockerconfigjson``) with registry credentials."""
    insecure_http_registries: tuple[str, ...] = ()
    """Registries (host:port) reached over plain HTTP; explicit opt-in only."""
    trust_policy: Path | None = None
    """Verify every image against this trust policy (a mounted ConfigMap) before pulling it."""
    allow_unsigned_images: bool = False
    """Verification off, chosen explicitly (``--allow-unsigned-images``); logged at every start."""
    probe_host: str = "127.0.0.1"
    probe_port: int = 1883
    probe_mqtt_version: str = "5"
    """MQTT version the probes speak; by default the adapter's (RabbitMQ 3.10: 3.1.1)."""
    probe_secrets_dir: Path = DEFAULT_SECRETS_DIR
    """Where the Secrets named by probes' ``passwordFrom`` are mounted, one directory each."""
    pod_name: str = ""
    pod_namespace: str = ""
    log_level: str = "INFO"


def parse_args(argv: Sequence[str] | None = None,
               environ: Mapping[str, str] = os.environ) -> Settings:
    p = argparse.ArgumentParser(prog="python -m sidecar", description=(
        "Reconcile plugins and broker config from ConfigMaps into the running broker."))
    p.add_argument("--broker", required=True, help="adapter: mosquitto, ...")
    p.add_argument("--config-dir", action="append", default=[], type=Path,
                   help="mounted ConfigMap directory (repeatable)")
    p.add_argument("--source", choices=("files", "api", "auto"), default="auto")
    p.add_argument("--configmap", action="append", default=[],
                   help="ConfigMap name watched in API mode (repeatable)")
    p.add_argument("--namespace", default=environ.get(ENV_POD_NAMESPACE, "default"))
    p.add_argument("--kubeconfig", type=Path, default=environ.get(ENV_KUBECONFIG) or None)
    p.add_argument("--adapter-opt", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--plugin-dir", type=Path, default=Settings.plugin_dir)
    p.add_argument("--cache-dir", type=Path, default=Settings.cache_dir)
    p.add_argument("--image-cache-bytes", type=int, default=Settings.image_cache_bytes,
                   help="bound of the image cache in bytes (default 2 GiB)")
    p.add_argument("--allow-broker-restart", action="store_true")
    p.add_argument("--debounce", type=float, default=Settings.debounce)
    p.add_argument("--resync-interval", type=float, default=Settings.resync_interval)
    p.add_argument("--watch-idle-timeout", type=float, default=Settings.watch_idle_timeout)
    p.add_argument("--http-address", default=Settings.http_address)
    p.add_argument("--grpc-address", default="")
    p.add_argument("--grpc-token-file", type=Path)
    p.add_argument("--grpc-tls-cert", type=Path)
    p.add_argument("--grpc-tls-key", type=Path)
    p.add_argument("--registry-ca", type=Path)
    p.add_argument("--docker-config", type=Path)
    p.add_argument("--insecure-http-registry", action="append", default=[])
    p.add_argument("--trust-policy", type=Path, default=environ.get(ENV_TRUST_POLICY) or None,
                   help="trust policy file (YAML, mounted from a ConfigMap): images are "
                        "verified against it before anything is pulled")
    p.add_argument("--allow-unsigned-images", action="store_true",
                   help="turn image verification off (logged at every start)")
    p.add_argument("--probe-host", default=None)
    p.add_argument("--probe-port", type=int, default=None)
    p.add_argument("--probe-mqtt-version", choices=("5", "3.1.1"), default=None,
                   help="MQTT version of the post-load probes (default: the broker's)")
    p.add_argument("--probe-secrets-dir", type=Path, default=DEFAULT_SECRETS_DIR,
                   help="a probe's passwordFrom {secret: S, key: K} is read from DIR/S/K "
                        f"(mount each Secret at DIR/S; default {DEFAULT_SECRETS_DIR})")
    p.add_argument("--log-level", default="INFO")
    a = p.parse_args(argv)
    options = {}
    for item in a.adapter_opt:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SettingsError(f"--adapter-opt: expected KEY=VALUE, found {item!r}")
        options[key] = value
    if a.grpc_address:
        missing = [flag for flag, value in (("--grpc-token-file", a.grpc_token_file),
                                            ("--grpc-tls-cert", a.grpc_tls_cert),
                                            ("--grpc-tls-key", a.grpc_tls_key)) if value is None]
        if missing:
            # Reconcile is a write, and a bearer token in clear text is anyone's on the path.
            raise SettingsError(f"--grpc-address needs {', '.join(missing)}: the API is only "
                                "served over TLS to callers with a token")
    if a.source == "api" and not a.configmap:
        raise SettingsError("--source api needs at least one --configmap NAME")
    if a.source == "files" and not a.config_dir:
        raise SettingsError("--source files needs at least one --config-dir DIR")
    if a.image_cache_bytes < 1:
        raise SettingsError("--image-cache-bytes: expected a positive number of bytes")
    for name in ("debounce", "resync_interval", "watch_idle_timeout"):
        if getattr(a, name) < 0:
            raise SettingsError(f"--{name.replace('_', '-')}: expected >= 0 seconds")
    if (a.trust_policy is None) == (not a.allow_unsigned_images):
        raise SettingsError(
            "image verification: pass --trust-policy FILE (the trust ConfigMap, see "
            "manifests/README.md), or --allow-unsigned-images to load images nobody signed"
            if a.trust_policy is None else
            "--trust-policy and --allow-unsigned-images contradict each other; pick one")
    return Settings(
        broker=a.broker, config_dirs=tuple(a.config_dir), source=a.source,
        configmaps=tuple(a.configmap), namespace=a.namespace, kubeconfig=a.kubeconfig,
        adapter_options=options, plugin_dir=a.plugin_dir, cache_dir=a.cache_dir,
        image_cache_bytes=a.image_cache_bytes,
        allow_broker_restart=a.allow_broker_restart, debounce=a.debounce,
        resync_interval=a.resync_interval, watch_idle_timeout=a.watch_idle_timeout,
        http_address=a.http_address, grpc_address=a.grpc_address,
        grpc_token_file=a.grpc_token_file, grpc_tls_cert=a.grpc_tls_cert,
        grpc_tls_key=a.grpc_tls_key, registry_ca=a.registry_ca,
        docker_config=a.docker_config, insecure_http_registries=tuple(a.insecure_http_registry),
        trust_policy=a.trust_policy, allow_unsigned_images=a.allow_unsigned_images,
        probe_host=a.probe_host or options.get("host", "127.0.0.1"),
        probe_port=a.probe_port or int(options.get("port", "1883")),
        probe_mqtt_version=a.probe_mqtt_version or probe_mqtt_version(a.broker),
        probe_secrets_dir=a.probe_secrets_dir,
        pod_name=environ.get(ENV_POD_NAME, ""), pod_namespace=environ.get(ENV_POD_NAMESPACE, ""),
        log_level=a.log_level)


def api_credentials_present(settings: Settings, environ: Mapping[str, str] = os.environ) -> bool:
    return settings.kubeconfig is not None or bool(environ.get(ENV_SERVICE_HOST))
