"""HiveMQ harness for adapter tests (and the shared contract suite): the hivemq-java template
built into real plugin images, a real HiveMQ CE with the plugforge loader, adapter options, and
a supervisor that plays the kubelet for the restart path."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from mqtt_support import Client

from plugforge.cli import main as plugforge_main
from plugforge.oci import ImageMetadata, RegistryClient, pack_image, parse_reference
from sidecar.adapters.hivemq import HiveMQAdapter, HiveMQSettings
from testbed.hivemq import HiveMQ, install_loader, start_hivemq

PLUGIN = "deny-test"


@dataclass(frozen=True)
class HiveMQImages:
    v1: str      # repository@digest: refuses mallory (settings default), forbidden/ publishes
    v2: str      # changed code: also refuses eve (whatever the settings say) and legacy/ publishes
    broken: str  # v1's folder with a jar that is not a jar

    @staticmethod
    def digest(image: str) -> str:
        return image.rpartition("@")[2]


def build_hivemq_images(root: Path, registry_host: str, ca: Path) -> HiveMQImages:
    """Scaffold the hivemq-java template, build v1 and v2 with the recipe, push three images."""
    repo = root / PLUGIN
    assert plugforge_main(["new", "--broker", "hivemq", PLUGIN, "--dir", str(repo)]) == 0
    artifacts = {}
    for version in ("0.1.0", "0.2.0"):
        if version == "0.2.0":
            source = repo / "src/main/java/deny_test/DenyListAuthenticator.java"
            source.write_text(source.read_text().replace(
                "if (denyUsers.get().contains(user)) {",
                'if (denyUsers.get().contains(user) || "eve".equals(user)) {'))
            authorizer = repo / "src/main/java/deny_test/TopicAuthorizer.java"
            authorizer.write_text(authorizer.read_text().replace(
                "return !topic.startsWith(FORBIDDEN_PREFIX);",
                'return !topic.startsWith(FORBIDDEN_PREFIX) && !topic.startsWith("legacy/");'))
            pom = repo / "pom.xml"
            pom.write_text(pom.read_text().replace("<version>0.1.0</version>",
                                                   "<version>0.2.0</version>", 1))
        work = root / f"work-{version}"
        assert plugforge_main(["build", "--local", str(repo), "--work-dir", str(work),
                               "--quiet"]) == 0
        artifacts[version] = work / "artifact"
    broken = root / "broken"
    shutil.copytree(artifacts["0.1.0"], broken)
    (broken / "deny-test-0.1.0.jar").write_bytes(b"this is not a zip file\n")
    artifacts["0.1.1-broken"] = broken
    refs = []
    for version, artifact in artifacts.items():
        image = pack_image(artifact, ImageMetadata(
            "https://git.test/deny-test.git", f"rev-{version}", "hivemq", PLUGIN, version))
        ref = parse_reference(f"{registry_host}/plugins/hivemq-deny-test:{version}")
        with RegistryClient(registry_host, ca_bundle=ca) as client:
            pinned = client.push_image(ref, image)
        refs.append(f"{registry_host}/plugins/hivemq-deny-test@{pinned.digest}")
    return HiveMQImages(*refs)


def start_loader_broker(workdir: Path, plugin_dir: Path) -> HiveMQ:
    """HiveMQ CE with the plugforge loader installed before its start (the init step's job)."""
    install_loader(workdir / "extensions", plugin_dir)
    return start_hivemq(workdir)


def adapter_options(broker: HiveMQ, mode: str = "loader") -> dict[str, str]:
    """As in a pod: with the loader, the loader reports the broker's pid; without it, the
    sidecar finds the broker in the shared process namespace by its command line."""
    options = {"mode": mode, "host": broker.host, "port": str(broker.port),
               "loader_timeout": "20", "restart_timeout": "90"}
    if mode == "restart":
        options.update(extensions_dir=str(broker.extensions_dir),
                       process_match=str(broker.workdir / "extensions"))
    return options


def make_adapter(broker: HiveMQ, plugin_dir: Path, mode: str = "loader") -> HiveMQAdapter:
    return HiveMQAdapter(HiveMQSettings.from_options(adapter_options(broker, mode), plugin_dir))


def accepted(broker: HiveMQ, user: str) -> bool:
    client = Client(broker.port, user)
    client.close()
    return client.accepted
