"""The sidecar verifies before it pulls: refused images are never extracted, the last good
plugin keeps running, state, Events and metrics say why; key rotation during a rollout.

Real mosquitto 2.0 (dynamic security), real plugin builds of the mosquitto-c template, real
registry; the trust policy is a kubelet-style mounted ConfigMap directory.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from sidecar_support import (
    PLUGIN,
    PluginImages,
    broker_yaml,
    build_plugin_images,
    make_sidecar,
    plugin_yaml,
    start_dynsec_broker,
    wait_for,
)
from signing_support import COMMIT, client_for, policy_text, provenance, push_plugin
from test_sidecar_plugins import running_digest as _running_digest

from plugforge.contract import PluginRelease, render_plugin_release
from plugforge.contract import Provenance as ReleaseSource
from plugforge.oci import parse_reference
from plugforge.signing import SigningKey, attest_provenance, generate, sign_image
from sidecar.state import ApplyEvent, Phase
from testbed.configmap_dir import ConfigMapDir
from testbed.mosquitto import Mosquitto
from testbed.procs import Supervisor
from testbed.registry import Registry

pytestmark = pytest.mark.timeout(240)

OLD_KEY, NEW_KEY = generate(), generate()
CONFIG = broker_yaml({"max_inflight_messages": "20"})
SOURCES = ("https://git.test/*",)


def _sign(registry: Registry, image: str, key: SigningKey) -> None:
    with client_for(registry) as client:
        ref = parse_reference(image)
        sign_image(client, ref, key)
        attest_provenance(client, ref, key, provenance(source="https://git.test/deny-test.git"))


@pytest.fixture(scope="module")
def images(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> PluginImages:
    built = build_plugin_images(tmp_path_factory.mktemp("signed-build"), registry.host,
                                registry.ca.cert)
    _sign(registry, built.v1, OLD_KEY)   # built before the rotation
    _sign(registry, built.v2, NEW_KEY)   # built after it
    return built


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """mosquitto under a supervisor (the kubelet's restart), so the sidecar may restart it."""
    b = start_dynsec_broker(tmp_path / "broker")
    supervisor = Supervisor(b)
    yield b
    supervisor.stop()
    b.stop()


def running_digest(broker: Mosquitto, workdir: Path) -> str | None:
    """The digest mapped in the broker; None while a restart leaves no process to read."""
    try:
        return _running_digest(broker, workdir)
    except FileNotFoundError:
        return None


def _trust(tmp_path: Path, *keys: SigningKey) -> ConfigMapDir:
    trust = ConfigMapDir(tmp_path / "trust")
    trust.update({"policy.yaml": policy_text(*keys, sources=SOURCES).decode()})
    return trust


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def test_refusals_keep_the_last_good_plugin(broker: Mosquitto, images: PluginImages,
                                            registry: Registry, tmp_path: Path) -> None:
    trust = _trust(tmp_path, OLD_KEY)
    cm = ConfigMapDir(tmp_path / "cm")
    cm.update({"broker.yaml": CONFIG, f"plugin.{PLUGIN}.yaml": plugin_yaml(images.v1)})
    events: list[ApplyEvent] = []
    sidecar, adapter = make_sidecar(broker, [cm.path], tmp_path / "sc", registry.ca.cert,
                                    allow_restart=True, sinks=[events.append],
                                    trust_policy=trust.path / "policy.yaml")
    sidecar.start()
    try:
        wait_for(lambda: sidecar.state.phase is Phase.APPLIED, "signed v1 applied", timeout=40)
        v1 = images.v1.split("@")[1]
        assert running_digest(broker, tmp_path / "sc") == v1
        pid, installs = broker.pid, adapter.calls["install_plugin"]

        unsigned = push_plugin(registry, tmp_path, "plugins/deny-test", "unsigned")
        for image, reason in ((str(unsigned), "SignatureMissing"),
                              (images.v2, "SignatureInvalid")):   # signed, by another key
            cm.update({"broker.yaml": CONFIG, f"plugin.{PLUGIN}.yaml": plugin_yaml(image)})
            wait_for(lambda r=reason: r in sidecar.state.last_error,  # type: ignore[misc]
                     f"{reason} refused")
            assert sidecar.state.phase is Phase.REJECTED
            assert adapter.calls["install_plugin"] == installs  # nothing extracted or copied
            assert broker.pid == pid and running_digest(broker, tmp_path / "sc") == v1
            assert any(reason in e.message for e in events)
            assert f'result="refused",reason="{reason}"' in _metrics(sidecar.http_port)
        digest = image.split("@")[1]
        assert not (tmp_path / "sc" / "cache" / "images" / digest.replace(":", "-")).exists()

        # A trust policy that does not parse refuses everything, with its reason.
        trust.update({"policy.yaml": "keys: [\n"})
        cm.update({"broker.yaml": CONFIG, f"plugin.{PLUGIN}.yaml": plugin_yaml(images.v2)})
        wait_for(lambda: "TrustPolicyInvalid" in sidecar.state.last_error, "bad policy refused")
        assert running_digest(broker, tmp_path / "sc") == v1 and broker.pid == pid
    finally:
        sidecar.stop()


def test_key_rotation_with_a_rollout_in_flight(broker: Mosquitto, images: PluginImages,
                                               registry: Registry, tmp_path: Path) -> None:
    """Runbook order (manifests/README.md): trust both keys, switch the builder, roll out,
    drop the old key. Here the rollout of v2 (new key) arrives before the sidecar trusts the
    new key: it waits, refused, and completes by itself when the policy gains the key."""
    trust = _trust(tmp_path, OLD_KEY)
    cm = ConfigMapDir(tmp_path / "cm")
    cm.update({"broker.yaml": CONFIG, f"plugin.{PLUGIN}.yaml": plugin_yaml(images.v1)})
    sidecar, _ = make_sidecar(broker, [cm.path], tmp_path / "sc", registry.ca.cert,
                              allow_restart=True, trust_policy=trust.path / "policy.yaml")
    sidecar.start()
    try:
        wait_for(lambda: sidecar.state.phase is Phase.APPLIED, "v1 (old key) applied",
                 timeout=40)
        v1, v2 = images.v1.split("@")[1], images.v2.split("@")[1]
        cm.update({"broker.yaml": CONFIG, f"plugin.{PLUGIN}.yaml": plugin_yaml(images.v2)})
        wait_for(lambda: "SignatureInvalid" in sidecar.state.last_error, "v2 waits for trust")
        assert running_digest(broker, tmp_path / "sc") == v1

        trust.update({"policy.yaml": policy_text(OLD_KEY, NEW_KEY, sources=SOURCES).decode()})
        wait_for(lambda: sidecar.state.phase is Phase.APPLIED
                 and running_digest(broker, tmp_path / "sc") == v2,
                 "v2 applied once both keys are trusted", timeout=40)

        # Rotation done: the old key is dropped. A rollback to v1 (old key only) is refused.
        trust.update({"policy.yaml": policy_text(NEW_KEY, sources=SOURCES).decode()})
        cm.update({"broker.yaml": CONFIG, f"plugin.{PLUGIN}.yaml": plugin_yaml(images.v1)})
        wait_for(lambda: "SignatureInvalid" in sidecar.state.last_error, "old key refused")
        assert running_digest(broker, tmp_path / "sc") == v2
    finally:
        sidecar.stop()


def _release(image: str, commit: str) -> str:
    return render_plugin_release(PluginRelease(PLUGIN, image, True, {}, (),
                                               ReleaseSource(commit=commit)))


def test_release_and_provenance_must_name_the_same_commit(
        broker: Mosquitto, images: PluginImages, registry: Registry, tmp_path: Path) -> None:
    """The ConfigMap names the commit it releases; an image whose verified provenance names
    another one (a signed image of some other build) is refused."""
    trust = _trust(tmp_path, OLD_KEY, NEW_KEY)
    cm = ConfigMapDir(tmp_path / "cm")
    cm.update({"broker.yaml": CONFIG, f"plugin.{PLUGIN}.yaml": _release(images.v1, COMMIT)})
    sidecar, _ = make_sidecar(broker, [cm.path], tmp_path / "sc", registry.ca.cert,
                              allow_restart=True, trust_policy=trust.path / "policy.yaml")
    sidecar.start()
    try:
        wait_for(lambda: sidecar.state.phase is Phase.APPLIED, "v1 applied", timeout=40)
        cm.update({"broker.yaml": CONFIG, f"plugin.{PLUGIN}.yaml": _release(images.v2, "d" * 40)})
        wait_for(lambda: "ProvenanceMismatch" in sidecar.state.last_error, "commit mismatch")
        assert f"names commit {'d' * 40}" in sidecar.state.last_error
        assert running_digest(broker, tmp_path / "sc") == images.v1.split("@")[1]
        cm.update({"broker.yaml": CONFIG, f"plugin.{PLUGIN}.yaml": _release(images.v2, COMMIT)})
        wait_for(lambda: running_digest(broker, tmp_path / "sc") == images.v2.split("@")[1]
                 and sidecar.state.phase is Phase.APPLIED, "v2 applied", timeout=40)
    finally:
        sidecar.stop()
