"""For the hot-swap benchmark: versions of a real RabbitMQ auth plugin built from the
rabbitmq-erlang template (pushed as images to a real registry), the sidecar for a RabbitMQ node,
and one-shot MQTT logins that prove which version runs."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from bench.mqtt_load_support import connect_packet
from bench.propagation_support import (
    HIVEMQ_PLUGIN,
    ROOT,
    RabbitMQVersion,
    build_hivemq_images,
    hivemq_adapter_options,
    rabbitmq_adapter_options,
    rabbitmq_versions,
    start_loader_broker,
)
from plugforge.oci import ImageMetadata, RegistryClient, pack_image, parse_reference
from testbed.registry import Registry

PLUGIN = "deny_test"
build_versions = rabbitmq_versions
__all__ = ["HIVEMQ_PLUGIN", "build_hivemq_images", "hivemq_adapter_options",
           "rabbitmq_adapter_options", "start_loader_broker"]


def push_version(registry: Registry, version: RabbitMQVersion, tag: str) -> str:
    """Pack a built version as plugforge's one-layer image, push it; ``repo@digest``."""
    image = pack_image(version.artifact_dir, ImageMetadata(
        "https://git.test/deny-test.git", f"rev-{tag}", "rabbitmq", PLUGIN, version.vsn))
    ref = parse_reference(f"{registry.host}/plugins/bench-rabbitmq:{tag}")
    with RegistryClient(registry.host, ca_bundle=registry.ca.cert) as client:
        pinned = client.push_image(ref, image)
    return f"{registry.host}/plugins/bench-rabbitmq@{pinned.digest}"


def start_plugin_sidecar(broker: str, options: Mapping[str, str], config_dir: Path,
                         plugin_dir: Path, work: Path, ca_cert: Path) -> subprocess.Popen[bytes]:
    """``python -m sidecar --broker BROKER`` in file mode (debounce 0.2 s, the default), wired
    to the broker like the adapter tests wire it, ``plugin_dir`` shared with the broker."""
    work.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "sidecar", "--broker", broker, "--source", "files",
            "--config-dir", str(config_dir),
            *[a for k, v in options.items() for a in ("--adapter-opt", f"{k}={v}")],
            "--plugin-dir", str(plugin_dir), "--cache-dir", str(work / "cache"),
            "--registry-ca", str(ca_cert), "--http-address", "127.0.0.1:0",
            "--debounce", "0.2", "--resync-interval", "3600", "--log-level", "INFO",
            "--allow-unsigned-images"]
    log = open(work / "sidecar.log", "ab")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def mqtt_accepts(host: str, port: int, username: str, password: str = "any") -> bool:  # noqa: S107
    """One MQTT 3.1.1 login: True on CONNACK 0, False on a refusal or a closed connection."""
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(connect_packet(f"probe-{username}", username, password, 30))
        reply = b""
        while len(reply) < 4:
            chunk = s.recv(4 - len(reply))
            if not chunk:
                return False
            reply += chunk
        accepted = reply[0] == 0x20 and reply[3] == 0
        if accepted:
            s.sendall(b"\xe0\x00")
        return accepted


def count_in_file(path: Path, needle: bytes) -> int:
    return path.read_bytes().count(needle) if path.exists() else 0
