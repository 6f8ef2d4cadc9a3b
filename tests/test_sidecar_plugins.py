"""Plugin images end to end: the mosquitto-c template built twice (v2 is changed code), packed,
pushed to the real registry, pulled by digest by the sidecar, loaded by the real mosquitto 2.0;
behaviour proven with real MQTT clients. Tampered and path-escaping images are refused."""

from __future__ import annotations

import io
import logging
import tarfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mqtt_support import Client
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

from plugforge.contract import Probe, SecretKeyRef
from plugforge.oci import ImageMetadata, RegistryClient, parse_reference
from plugforge.oci.pack import assemble_image
from sidecar.adapters.mosquitto import PLUGINS_FILE
from sidecar.state import Phase
from testbed.configmap_dir import ConfigMapDir
from testbed.mosquitto import Mosquitto
from testbed.procs import Supervisor
from testbed.registry import Registry

pytestmark = pytest.mark.timeout(240)

CONFIG = broker_yaml({"max_inflight_messages": "20"})
ALICE = SecretKeyRef("probe-creds", "alice")  # mounted at <probe secrets dir>/probe-creds/alice
PROBES_V1 = (Probe("mallory-refused", "connect", "mallory", "refused"),
             Probe("alice-accepted", "connect", "alice", "accepted", ALICE),
             Probe("forbidden-publish", "publish", "alice", "refused", ALICE,
                   topic="forbidden/x"))
PROBES_V2 = (Probe("eve-refused", "connect", "eve", "refused"),
             Probe("alice-accepted", "connect", "alice", "accepted", ALICE))
PROBE_PASSWORD = "pw-from-the-mounted-secret-7f3a"


def probe_secrets(tmp_path: Path) -> Path:
    """The probe Secret as the kubelet mounts it: one directory per Secret, a file per key."""
    secrets = tmp_path / "probe-secrets"
    (secrets / ALICE.secret).mkdir(parents=True)
    (secrets / ALICE.secret / ALICE.key).write_text(PROBE_PASSWORD)
    return secrets


@pytest.fixture(scope="module")
def images(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> PluginImages:
    return build_plugin_images(tmp_path_factory.mktemp("plugin-build"), registry.host,
                               registry.ca.cert)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = start_dynsec_broker(tmp_path / "broker")
    yield b
    b.stop()


def connect_ok(broker: Mosquitto, user: str) -> bool:
    client = Client(broker.port, user, password="pw")
    try:
        return client.accepted
    finally:
        client.close()


def running_digest(broker: Mosquitto, workdir: Path) -> str | None:
    maps = Path(f"/proc/{broker.pid}/maps").read_text()
    for line in maps.splitlines():
        if str(workdir / "plugins" / PLUGIN) in line:
            return "sha256:" + line.split(f"/{PLUGIN}/")[1].split("/")[0]
    return None


def test_plugin_waits_for_restart_when_not_allowed(broker: Mosquitto, images: PluginImages,
                                                   registry: Registry, tmp_path: Path) -> None:
    cm = ConfigMapDir(tmp_path / "cm")
    cm.update({"broker.yaml": CONFIG, f"plugin.{PLUGIN}.yaml": plugin_yaml(
        images.v1, probes=PROBES_V1)})
    sidecar, adapter = make_sidecar(broker, [cm.path], tmp_path / "sc", registry.ca.cert,
                                    resync=0.5, probe_secrets_dir=probe_secrets(tmp_path))
    pid = broker.pid
    sidecar.start()
    try:
        wait_for(lambda: sidecar.state.phase is Phase.RESTART_REQUIRED, "RestartRequired")
        assert sidecar.state.restart_required
        events = sidecar.subscribe()
        sidecar.reconcile_now("resync while the restart is pending")
        assert events.empty()  # reported once, not on every resync
        assert broker.pid == pid and adapter.calls["restart"] == 0
        # Fail closed: the desired auth plugin is not loaded, so the pod is not ready.
        assert not sidecar.state.ready and "deny_test (staged)" in sidecar.state.ready_reason
        # The running broker has no plugin yet: only dynsec decides, and it does not know alice.
        assert not connect_ok(broker, "alice")
        broker.restart()  # the operator (or a rollout) restarts the broker
        wait_for(lambda: sidecar.state.phase is Phase.APPLIED and sidecar.state.ready,
                 "applied and probed after the restart")
        assert connect_ok(broker, "alice") and not connect_ok(broker, "mallory")
        assert running_digest(broker, tmp_path / "sc") == images.v1.split("@")[1]
    finally:
        sidecar.stop()


def test_upgrade_runs_fresh_code_and_failed_probe_rolls_back(
        broker: Mosquitto, images: PluginImages, registry: Registry, tmp_path: Path) -> None:
    cm = ConfigMapDir(tmp_path / "cm")
    cm.update({"broker.yaml": CONFIG, f"plugin.{PLUGIN}.yaml": plugin_yaml(
        images.v1, probes=PROBES_V1)})
    supervisor = Supervisor(broker)
    sidecar, adapter = make_sidecar(broker, [cm.path], tmp_path / "sc", registry.ca.cert,
                                    allow_restart=True, probe_secrets_dir=probe_secrets(tmp_path))
    sidecar.start()
    try:
        wait_for(lambda: sidecar.state.phase is Phase.APPLIED and sidecar.state.ready,
                 "v1 applied", timeout=40)
        assert not connect_ok(broker, "mallory") and connect_ok(broker, "eve")
        assert sidecar.state.plugins[0].status == "Running"

        # Upgrade: v2 is different code (it denies eve by default, not mallory).
        cm.update({"broker.yaml": CONFIG, f"plugin.{PLUGIN}.yaml": plugin_yaml(
            images.v2, probes=PROBES_V2)})
        wait_for(lambda: sidecar.state.last_applied.plugins.get(PLUGIN) == images.v2.split(
            "@")[1], "v2 applied", timeout=40)
        assert connect_ok(broker, "mallory") and not connect_ok(broker, "eve")  # new code runs
        assert running_digest(broker, tmp_path / "sc") == images.v2.split("@")[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{sidecar.http_port}/metrics") as r:
            metrics = r.read().decode()
        v2 = images.v2.split("@")[1]
        assert (f'plugforge_sidecar_plugin_info{{plugin="{PLUGIN}",desired_digest="{v2}",'
                f'running_digest="{v2}",status="Running"}} 1') in metrics
        restarts = supervisor.restarts

        # Converged: a resync performs no admin call and reports nothing new.
        calls = adapter.mutating_calls()
        events = sidecar.subscribe()
        assert sidecar.reconcile_now("test").actions == ()
        assert adapter.mutating_calls() == calls and events.empty()

        # A release whose probe fails (it refuses alice, the probe expects her accepted).
        cm.update({"broker.yaml": CONFIG, f"plugin.{PLUGIN}.yaml": plugin_yaml(
            images.v1, settings={"deny_users": "alice"}, probes=PROBES_V1)})
        wait_for(lambda: sidecar.state.phase is Phase.ROLLED_BACK, "rollback", timeout=60)
        assert "alice-accepted" in sidecar.state.last_error
        assert sidecar.state.failed_keys == (f"plugin.{PLUGIN}.yaml",)
        # The last good state runs again: v2's code and settings.
        assert running_digest(broker, tmp_path / "sc") == images.v2.split("@")[1]
        assert connect_ok(broker, "alice") and not connect_ok(broker, "eve")
        assert supervisor.restarts >= restarts + 2  # restarted into v1, then back
        assert sidecar.state.ready

        # Disabled: unloaded at the next (graceful) restart; nothing left to require.
        cm.update({"broker.yaml": CONFIG, f"plugin.{PLUGIN}.yaml": plugin_yaml(
            images.v2, enabled=False)})
        wait_for(lambda: sidecar.state.phase is Phase.APPLIED and
                 running_digest(broker, tmp_path / "sc") is None, "plugin unloaded", timeout=40)
        assert not connect_ok(broker, "alice")  # only dynsec decides again
        assert sidecar.state.plugins[0].status == "Disabled" and sidecar.state.ready
    finally:
        sidecar.stop()
        supervisor.stop()


def _evil_image(registry: Registry, name: str, entry: str) -> str:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"\x7fELF-not-really"
        info = tarfile.TarInfo(entry)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    image = assemble_image(buf.getvalue(), ImageMetadata("https://git.test/x.git", "r", "mosquitto",
                                                         PLUGIN, "6.6.6"))
    ref = parse_reference(f"{registry.host}/plugins/{name}:1")
    with RegistryClient(registry.host, ca_bundle=registry.ca.cert) as client:
        pinned = client.push_image(ref, image)
    return f"{registry.host}/plugins/{name}@{pinned.digest}"


def _blob_path(registry: Registry, digest: str) -> Path:
    hex_digest = digest.split(":")[1]
    return registry.storage / "docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest / \
        "data"


def _tampered(registry: Registry, what: str) -> str:
    """A fresh image in its own repository, with its layer or manifest changed on disk."""
    image = _evil_image(registry, f"tamper-{what}", f"plugin/{PLUGIN}/{PLUGIN}.so")
    digest = image.split("@")[1]
    if what == "manifest":
        path = _blob_path(registry, digest)
    else:
        with RegistryClient(registry.host, ca_bundle=registry.ca.cert) as client:
            _, manifest = client.pull_manifest(parse_reference(image))
        path = _blob_path(registry, manifest.layers[0].digest)
    data = path.read_bytes()
    if what == "manifest":  # still valid JSON, same size: only the digest can tell
        tampered = data.replace(b"6.6.6", b"6.6.7")
    else:
        changed = bytearray(data)
        changed[len(changed) // 2] ^= 0xFF
        tampered = bytes(changed)
    assert tampered != data
    path.write_bytes(tampered)
    return image


@pytest.mark.parametrize("case", ["tampered layer", "digest mismatch", "path escape"])
def test_bad_images_refused_nothing_installed(case: str, broker: Mosquitto, images: PluginImages,
                                             registry: Registry, tmp_path: Path) -> None:
    if case == "path escape":
        image = _evil_image(registry, "escape", f"plugin/{PLUGIN}/../../../../tmp/owned.so")
        expected = "UnsafeLayer"
    elif case == "tampered layer":
        image = _tampered(registry, "layer")
        expected = "DigestMismatch"
    else:
        image = _tampered(registry, "manifest")
        expected = "DigestMismatch"
    cm = ConfigMapDir(tmp_path / "cm")
    cm.update({"broker.yaml": CONFIG, f"plugin.{PLUGIN}.yaml": plugin_yaml(image)})
    sidecar, adapter = make_sidecar(broker, [cm.path], tmp_path / "sc", registry.ca.cert)
    sidecar.start()
    try:
        wait_for(lambda: sidecar.state.phase is Phase.REJECTED, f"{case} refused")
        assert expected in sidecar.state.last_error, sidecar.state.last_error
        assert sidecar.state.refused_image == image
        assert sidecar.state.failed_keys == (f"plugin.{PLUGIN}.yaml",)
        assert adapter.calls["install_plugin"] == 0 and adapter.calls["enable"] == 0
        assert not (tmp_path / "sc" / "plugins" / PLUGIN).exists()  # nothing installed
        assert not (broker.include_dir / PLUGINS_FILE).exists()
        assert not sidecar.state.ready
        assert not Path("/tmp/owned.so").exists()
    finally:
        sidecar.stop()


def test_a_probe_password_comes_from_the_mounted_secret_and_is_shown_nowhere(
        broker: Mosquitto, images: PluginImages, registry: Registry, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """Issue 16, hole 8: the ConfigMap names the Secret key, the sidecar reads the mounted file;
    a key that is not mounted fails the probe with the path, and the last good release runs."""
    caplog.set_level(logging.DEBUG)
    secrets = probe_secrets(tmp_path)
    cm = ConfigMapDir(tmp_path / "cm")
    cm.update({"broker.yaml": CONFIG, f"plugin.{PLUGIN}.yaml": plugin_yaml(
        images.v1, probes=PROBES_V1)})
    assert PROBE_PASSWORD not in (cm.path / f"plugin.{PLUGIN}.yaml").read_text()
    supervisor = Supervisor(broker)
    sidecar, _ = make_sidecar(broker, [cm.path], tmp_path / "sc", registry.ca.cert,
                              allow_restart=True, probe_secrets_dir=secrets)
    sidecar.start()
    try:
        wait_for(lambda: sidecar.state.phase is Phase.APPLIED and sidecar.state.ready,
                 "v1 applied with its probes passing", timeout=40)
        # v2 names a key nobody mounted: its probe fails with the path, v1 runs again.
        unmounted = Probe("bob-accepted", "connect", "bob", "accepted",
                          SecretKeyRef("probe-creds", "bob"))
        cm.update({"broker.yaml": CONFIG, f"plugin.{PLUGIN}.yaml": plugin_yaml(
            images.v2, probes=(unmounted,))})
        wait_for(lambda: sidecar.state.phase is Phase.ROLLED_BACK, "rollback", timeout=60)
        error = sidecar.state.last_error
        assert f"no file {secrets / 'probe-creds' / 'bob'}" in error, error
        assert "is Secret 'probe-creds' with key 'bob' mounted" in error
        assert running_digest(broker, tmp_path / "sc") == images.v1.split("@")[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{sidecar.http_port}/metrics") as r:
            metrics = r.read().decode()
        # sidecar.state is what GetState serves.
        for seen in (metrics, repr(sidecar.state), caplog.text,
                     (tmp_path / "sc" / "cache" / "last-good.json").read_text()):
            assert PROBE_PASSWORD not in seen
    finally:
        sidecar.stop()
        supervisor.stop()
