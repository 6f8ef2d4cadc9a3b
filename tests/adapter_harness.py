"""Per-broker harnesses for the shared adapter contract suite (``test_adapter_contract.py``).

A harness starts (or borrows) a real broker, builds the broker's template plugin in three
versions and pushes them to the real registry (v1 refuses mallory; v2 is changed code that
refuses eve; ``broken`` fails to load), creates the real adapter, and checks the policy with
real MQTT clients. Adding a broker = one class here + one entry in ``HARNESSES``.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest
from emqx_support import PLUGIN as EMQX_PLUGIN
from emqx_support import adapter_options as emqx_options
from emqx_support import build_versions as build_emqx_versions
from emqx_support import enable_password_database
from emqx_support import publish_refused as emqx_publish_refused
from emqx_support import remove_plugins as remove_emqx_plugins
from hivemq_support import PLUGIN as HIVEMQ_PLUGIN
from hivemq_support import adapter_options as hivemq_options
from hivemq_support import build_hivemq_images, start_loader_broker
from mqtt_support import ANY_PASSWORD, Client
from rabbitmq_adapter_support import PLUGIN as RABBITMQ_PLUGIN
from rabbitmq_adapter_support import Version, build_versions
from rabbitmq_adapter_support import adapter_options as rabbitmq_options
from rabbitmq_adapter_support import cleanup as rabbitmq_cleanup
from rabbitmq_adapter_support import connect as rabbitmq_connect
from rabbitmq_adapter_support import publish_refused as rabbitmq_publish_refused
from sidecar_support import PLUGIN as MOSQUITTO_PLUGIN
from sidecar_support import adapter_options as mosquitto_options
from sidecar_support import build_plugin_images, start_dynsec_broker
from vernemq_support import PLUGIN as VERNEMQ_PLUGIN
from vernemq_support import build_versions as build_vernemq_versions
from vernemq_support import publish_outcome as vernemq_publish_outcome
from vernemq_support import reset as reset_vernemq

from plugforge.oci import ImageMetadata, RegistryClient, parse_reference
from plugforge.oci.pack import assemble_image, pack_image
from sidecar.adapters.base import BrokerAdapter
from sidecar.adapters.registry import create_adapter
from testbed.emqx import Emqx
from testbed.procs import Supervisor
from testbed.rabbitmq import RabbitMQ
from testbed.registry import Registry
from testbed.vernemq import USERS, VerneMQ


@dataclass(frozen=True)
class Images:
    v1: str
    v2: str
    broken: str

    @staticmethod
    def digest(image: str) -> str:
        return image.rpartition("@")[2]


class Harness(Protocol):
    broker: str            # the adapter's name
    plugin: str            # the plugin's name as the broker knows it
    hot_plugins: bool      # plugin changes load without a broker restart
    only_refuses: bool     # the plugin only refuses; the broker's own authentication admits
    images: Images
    plugin_dir: Path

    def adapter(self) -> BrokerAdapter: ...

    def connect(self, user: str, password: str) -> Client: ...

    def publish_refused(self, user: str, password: str, topic: str) -> bool: ...

    def login_config(self, user: str, password: str) -> dict[str, str] | None:
        """broker.yaml keys that let ``user`` log in with ``password`` when no plugin decides
        (the broker's own user database, changed live); None: the broker has none, and with
        no plugin it refuses everybody (fail closed)."""
        ...

    def pid(self) -> int: ...

    @contextmanager
    def stopped(self) -> Iterator[None]:
        """The broker process is down inside the block and back (same ports) after it."""
        ...

    def close(self) -> None: ...


def accepted(harness: Harness, user: str, password: str = ANY_PASSWORD) -> bool:
    client = harness.connect(user, password)
    client.close()
    return client.accepted


def _push(registry: Registry, repository: str, tag: str, image: object) -> str:
    ref = parse_reference(f"{registry.host}/plugins/{repository}:{tag}")
    with RegistryClient(registry.host, ca_bundle=registry.ca.cert) as client:
        pinned = client.push_image(ref, image)  # type: ignore[arg-type]
    return f"{registry.host}/plugins/{repository}@{pinned.digest}"


# --- RabbitMQ: plugins hot (online enable/disable), config hot ---------------------------------


class RabbitMQHarness:
    broker = "rabbitmq"
    plugin = RABBITMQ_PLUGIN
    hot_plugins = True
    only_refuses = False

    def __init__(self, node: RabbitMQ, registry: Registry, root: Path) -> None:
        self.node = node
        self.plugin_dir = node.shared_plugins_dir
        self._original = node.eval("application:get_env(rabbit, auth_backends).")[4:-1]
        versions = build_versions(root)

        def push(version: Version, tag: str) -> str:
            image = pack_image(version.artifact_dir, ImageMetadata(
                "https://git.test/deny-test.git", f"rev-{tag}", "rabbitmq", self.plugin,
                version.vsn))
            return _push(registry, "contract-rabbitmq", tag, image)

        self.images = Images(push(versions.v1, "v1"), push(versions.v2, "v2"),
                             push(versions.broken, "broken"))

    def adapter(self) -> BrokerAdapter:
        return create_adapter("rabbitmq", rabbitmq_options(self.node), self.plugin_dir)

    def connect(self, user: str, password: str) -> Client:
        return rabbitmq_connect(self.node, user, password)

    def publish_refused(self, user: str, password: str, topic: str) -> bool:
        return rabbitmq_publish_refused(self.node, user, topic, password)

    def login_config(self, user: str, password: str) -> dict[str, str]:
        return {f"user.{user}.password": password,
                **{f"permission.{user}.{f}": ".*" for f in ("configure", "write", "read")}}

    def pid(self) -> int:
        return self.node.os_pid()

    @contextmanager
    def stopped(self) -> Iterator[None]:
        self.node.stop_node()
        try:
            yield
        finally:
            self.node.start_node()

    def close(self) -> None:
        rabbitmq_cleanup(self.node, self._original, users=("early", "carol"))


# --- Mosquitto: plugins need a restart (opt-in), config hot (dynsec) ---------------------------


class MosquittoHarness:
    broker = "mosquitto"
    plugin = MOSQUITTO_PLUGIN
    hot_plugins = False
    only_refuses = False

    def __init__(self, registry: Registry, root: Path) -> None:
        self.mosquitto = start_dynsec_broker(root / "broker")
        self.plugin_dir = root / "plugins"
        self.supervisor = Supervisor(self.mosquitto)
        built = build_plugin_images(root / "build", registry.host, registry.ca.cert)
        self.images = Images(built.v1, built.v2, self._broken(registry))

    def _broken(self, registry: Registry) -> str:
        """An image whose plugin directory holds no shared object."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            data = b"no library here\n"
            info = tarfile.TarInfo(f"plugin/{self.plugin}/README")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        image = assemble_image(buf.getvalue(), ImageMetadata(
            "https://git.test/deny-test.git", "rev-broken", "mosquitto", self.plugin, "0.3.0"))
        return _push(registry, "contract-mosquitto", "broken", image)

    def adapter(self) -> BrokerAdapter:
        return create_adapter("mosquitto", mosquitto_options(self.mosquitto), self.plugin_dir)

    def connect(self, user: str, password: str) -> Client:
        return Client(self.mosquitto.port, user, password=password)

    def publish_refused(self, user: str, password: str, topic: str) -> bool:
        client = self.connect(user, password)
        try:
            return client.publish(topic, b"x").is_failure
        finally:
            client.close()

    def login_config(self, user: str, password: str) -> dict[str, str]:
        return {f"dynsec.client.{user}.password": password}

    def pid(self) -> int:
        return self.mosquitto.pid

    @contextmanager
    def stopped(self) -> Iterator[None]:
        self.supervisor.paused.set()
        self.mosquitto.stop()
        try:
            yield
        finally:
            self.mosquitto.restart()
            self.supervisor.paused.clear()

    def close(self) -> None:
        self.supervisor.stop()
        self.mosquitto.stop()


# --- HiveMQ CE with the plugforge loader: plugins hot, no broker config, fail closed ------------


class HiveMQHarness:
    broker = "hivemq"
    plugin = HIVEMQ_PLUGIN
    hot_plugins = True
    only_refuses = False

    def __init__(self, registry: Registry, root: Path) -> None:
        self.plugin_dir = root / "plugins"
        self.hivemq = start_loader_broker(root / "broker", self.plugin_dir)
        built = build_hivemq_images(root / "build", registry.host, registry.ca.cert)
        self.images = Images(built.v1, built.v2, built.broken)

    def adapter(self) -> BrokerAdapter:
        return create_adapter("hivemq", hivemq_options(self.hivemq), self.plugin_dir)

    def connect(self, user: str, password: str) -> Client:
        return Client(self.hivemq.port, user, password=password)

    def publish_refused(self, user: str, password: str, topic: str) -> bool:
        client = self.connect(user, password)
        try:
            return client.publish(topic, b"x").is_failure
        finally:
            client.close()

    def login_config(self, user: str, password: str) -> dict[str, str] | None:
        return None

    def pid(self) -> int:
        return self.hivemq.pid

    @contextmanager
    def stopped(self) -> Iterator[None]:
        self.hivemq.stop()
        try:
            yield
        finally:
            self.hivemq.restart()

    def close(self) -> None:
        self.hivemq.stop()


# --- EMQX 5.8.9: plugins hot (REST API), config hot, its password database admits ----------------


class EmqxHarness:
    broker = "emqx"
    plugin = EMQX_PLUGIN
    hot_plugins = True
    only_refuses = True

    def __init__(self, node: Emqx, registry: Registry, root: Path) -> None:
        self.node = node
        enable_password_database(node)
        remove_emqx_plugins(node)
        self.plugin_dir = root / "plugins"
        self.plugin_dir.mkdir()
        self._options = emqx_options(node, root / "secret")
        versions = build_emqx_versions(root / "build")

        def push(artifact_dir: Path, vsn: str, tag: str) -> str:
            image = pack_image(artifact_dir, ImageMetadata(
                "https://git.test/deny-test.git", f"rev-{tag}", "emqx", self.plugin, vsn))
            return _push(registry, "contract-emqx", tag, image)

        self.images = Images(*(push(v.artifact_dir, v.vsn, tag) for v, tag in (
            (versions.v1, "v1"), (versions.v2, "v2"), (versions.broken, "broken"))))

    def adapter(self) -> BrokerAdapter:
        return create_adapter("emqx", self._options, self.plugin_dir)

    def connect(self, user: str, password: str) -> Client:
        return Client(self.node.mqtt_port, user, password=password)

    def publish_refused(self, user: str, password: str, topic: str) -> bool:
        return emqx_publish_refused(self.node, user, password, topic)

    def login_config(self, user: str, password: str) -> dict[str, str] | None:
        return None  # EMQX's users live in its authentication database, not in broker.yaml

    def pid(self) -> int:
        return self.node.server.pid  # bin/emqx foreground execs the VM

    @contextmanager
    def stopped(self) -> Iterator[None]:
        self.node.stop_node()
        try:
            yield
        finally:
            self.node.start_node()

    def close(self) -> None:
        remove_emqx_plugins(self.node, self.plugin_dir)


# --- VerneMQ 2.0.1: plugins hot (HTTP API), asked before vmq_passwd, which admits -------------


class VerneMQHarness:
    broker = "vernemq"
    plugin = VERNEMQ_PLUGIN
    hot_plugins = True
    only_refuses = True  # the starter answers `next`; vmq_passwd checks the passwords

    def __init__(self, node: VerneMQ, registry: Registry, root: Path) -> None:
        self.node = node
        reset_vernemq(node)
        # The suite's users log in with ANY_PASSWORD; "early" exists before any plugin.
        for user in ("alice", "mallory", "eve"):
            node.passwords[user] = ANY_PASSWORD
        node.set_password("early", "early-password")
        self.plugin_dir = root / "plugins"
        self.plugin_dir.mkdir()
        key = root / "api-key"
        key.write_text(node.api_key + "\n")
        self._options = {"api_url": node.api_url, "api_key_file": str(key),
                         "vmq_admin": str(node.vmq_admin)}
        versions = build_vernemq_versions(root / "build")

        def push(artifact_dir: Path, vsn: str, tag: str) -> str:
            image = pack_image(artifact_dir, ImageMetadata(
                "https://git.test/deny-test.git", f"rev-{tag}", "vernemq", self.plugin, vsn))
            return _push(registry, "contract-vernemq", tag, image)

        self.images = Images(push(versions.v1.artifact_dir, "0.1.0", "v1"),
                             push(versions.v2.artifact_dir, "0.2.0", "v2"),
                             push(versions.missing_module.artifact_dir, "0.2.0", "broken"))

    def adapter(self) -> BrokerAdapter:
        return create_adapter("vernemq", self._options, self.plugin_dir)

    def connect(self, user: str, password: str) -> Client:
        return Client(self.node.port, user, password=password)

    def publish_refused(self, user: str, password: str, topic: str) -> bool:
        return vernemq_publish_outcome(self.node, user, topic) != "puback 0"

    def login_config(self, user: str, password: str) -> dict[str, str] | None:
        return None  # vmq_passwd reads its file; broker.yaml has no user keys

    def pid(self) -> int:
        return self.node.pid

    @contextmanager
    def stopped(self) -> Iterator[None]:
        self.node.stop_node()
        try:
            yield
        finally:
            self.node.start_node()

    def close(self) -> None:
        reset_vernemq(self.node)
        self.node.passwords.pop("early", None)
        for user, password in USERS.items():
            self.node.set_password(user, password)


# --- registration ------------------------------------------------------------------------------

HarnessFactory = Callable[[pytest.FixtureRequest, Registry, Path], Harness]


def _rabbitmq(request: pytest.FixtureRequest, registry: Registry, root: Path) -> Harness:
    return RabbitMQHarness(request.getfixturevalue("rabbitmq"), registry, root)


def _mosquitto(_request: pytest.FixtureRequest, registry: Registry, root: Path) -> Harness:
    return MosquittoHarness(registry, root)


def _hivemq(_request: pytest.FixtureRequest, registry: Registry, root: Path) -> Harness:
    return HiveMQHarness(registry, root)


def _emqx(request: pytest.FixtureRequest, registry: Registry, root: Path) -> Harness:
    return EmqxHarness(request.getfixturevalue("emqx"), registry, root)


def _vernemq(request: pytest.FixtureRequest, registry: Registry, root: Path) -> Harness:
    return VerneMQHarness(request.getfixturevalue("vernemq"), registry, root)


HARNESSES: Mapping[str, HarnessFactory] = {
    "emqx": _emqx,
    "hivemq": _hivemq,
    "mosquitto": _mosquitto,
    "rabbitmq": _rabbitmq,
    "vernemq": _vernemq,
}
