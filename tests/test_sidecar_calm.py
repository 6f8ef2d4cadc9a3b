"""A sidecar that stays calm under repeated failure, against the real registry and a real
mosquitto: a refused image is ``Rejected`` (refused digest in state and metrics) and not pulled
again until the desired state changes; a transient failure retries with backoff; a pull is
abandoned for a newer desired state; the image cache is bounded by bytes; a clean SIGTERM is
quiet."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from sidecar_support import (
    PLUGIN,
    adapter_options,
    broker_yaml,
    make_sidecar,
    plugin_yaml,
    start_dynsec_broker,
    wait_for,
)
from signing_support import policy_text, provenance

from plugforge.oci import (
    ImageMetadata,
    PackedImage,
    RegistryClient,
    cached_image,
    parse_reference,
)
from plugforge.oci.pack import assemble_image
from plugforge.signing import attest_provenance, generate, sign_image
from plugforge.v1 import sidecar_pb2 as pb
from sidecar.app import Sidecar
from sidecar.grpc_service import SidecarServicer
from sidecar.images import ImagePuller
from sidecar.settings import Settings, parse_args
from sidecar.state import ApplyEvent, EventKind, Phase
from testbed.configmap_dir import ConfigMapDir
from testbed.mosquitto import Mosquitto
from testbed.registry import Registry

pytestmark = pytest.mark.timeout(180)

CONFIG = broker_yaml({"max_inflight_messages": "20"})
CONFIG2 = broker_yaml({"max_inflight_messages": "21"})
MIB = 1024 * 1024


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = start_dynsec_broker(tmp_path / "broker")
    yield b
    b.stop()


def _packed(entries: dict[str, bytes]) -> PackedImage:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return assemble_image(buf.getvalue(), ImageMetadata("https://git.test/calm.git", "r",
                                                        "mosquitto", PLUGIN, "0.0.1"))


def _push(registry: Registry, repository: str, image: PackedImage) -> str:
    ref = parse_reference(f"{registry.host}/plugins/{repository}:1")
    with RegistryClient(registry.host, ca_bundle=registry.ca.cert) as client:
        pinned = client.push_image(ref, image)
    return f"{registry.host}/plugins/{repository}@{pinned.digest}"


def _plugin_image(payload: bytes = b"\x7fELF-not-loaded") -> PackedImage:
    return _packed({f"plugin/{PLUGIN}/{PLUGIN}.so": payload})


def _bad_image(registry: Registry, case: str) -> tuple[str, str]:
    """A refused image and the reason word its refusal carries."""
    if case == "unsafe layer":
        return _push(registry, "calm-escape", _packed(
            {f"plugin/{PLUGIN}/../../../../tmp/calm-owned.so": b"x"})), "UnsafeLayer"
    if case == "too big":  # the manifest declares a layer over the 512 MiB blob limit
        packed = _plugin_image(os.urandom(64))
        small = _push(registry, "calm-big-declared", packed)
        manifest = json.loads(packed.manifest)
        manifest["layers"][0]["size"] = 600 * MIB
        declared = json.dumps(manifest).encode()
        with RegistryClient(registry.host, ca_bundle=registry.ca.cert) as client:
            digest = client.push_manifest("plugins/calm-big-declared", "2", declared,
                                          packed.media_type)
        return f"{small.split('@')[0]}@{digest}", "ContentRefused"
    if case == "wrong artifact":
        return _push(registry, "calm-other", _packed({"plugin/other/other.so": b"x"})), \
            "WrongArtifact"
    image = _push(registry, "calm-tampered", _plugin_image(os.urandom(4096)))
    with RegistryClient(registry.host, ca_bundle=registry.ca.cert) as client:
        _, manifest = client.pull_manifest(parse_reference(image))
    hex_digest = manifest.layers[0].digest.split(":")[1]
    blob = registry.storage / "docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest / \
        "data"
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    return image, "DigestMismatch"


def _metrics(sidecar: Sidecar) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{sidecar.http_port}/metrics",
                                timeout=5) as response:
        return str(response.read().decode())


@pytest.mark.parametrize("case", ["unsafe layer", "digest mismatch", "too big",
                                  "wrong artifact"])
def test_final_refusal_is_rejected_once_and_not_pulled_again(
        case: str, broker: Mosquitto, registry: Registry, tmp_path: Path) -> None:
    image, reason = _bad_image(registry, case)
    digest = image.split("@")[1]
    events: list[ApplyEvent] = []
    cm = ConfigMapDir(tmp_path / "cm")
    cm.update({"broker.yaml": CONFIG})
    sidecar, adapter = make_sidecar(broker, [cm.path], tmp_path / "sc", registry.ca.cert,
                                    sinks=[events.append], allow_unsigned_images=True)
    puller = sidecar.puller
    assert isinstance(puller, ImagePuller)
    sidecar.start()
    try:
        wait_for(lambda: sidecar.state.phase is Phase.APPLIED, "config applied")
        cm.update({"broker.yaml": CONFIG, f"plugin.{PLUGIN}.yaml": plugin_yaml(image)})
        wait_for(lambda: sidecar.state.phase is Phase.REJECTED, f"{case} refused")
        state = sidecar.state
        assert state.refused_image == image and state.refused_reason == reason
        assert reason in state.last_error and "rolled back" not in state.last_error
        assert state.failed_hash == state.desired_hash != state.last_applied.content_hash
        assert puller.attempts == 1 and adapter.mutating_calls() == 1  # the first config
        assert state.ready  # the last good state runs on
        metrics = _metrics(sidecar)
        assert f'digest="{digest}",reason="{reason}"}} 1' in metrics
        assert f'plugin="{PLUGIN}",desired_digest="{digest}",running_digest="",' \
               'status="Refused"} 1' in metrics
        reply = SidecarServicer(sidecar).GetState(pb.GetStateRequest(), None)
        assert (reply.refused_image, reply.refused_reason) == (image, reason)
        assert reply.phase == pb.PHASE_REJECTED and reply.plugins[0].desired_digest == digest
        assert reply.plugins[0].status == pb.PLUGIN_STATUS_REFUSED
        rejected = [e for e in events if e.kind is EventKind.REJECTED]
        assert len(rejected) == 1 and digest in rejected[0].message
        assert not [e for e in events if e.kind in (EventKind.ROLLED_BACK, EventKind.FAILED)]

        # Resyncs and retries of the same desired state: nothing pulled, nothing new reported.
        for _ in range(3):
            outcome = sidecar.reconcile_now("periodic resync")
            assert outcome.phase is Phase.REJECTED and outcome.retry_after is None
        assert puller.attempts == 1 and len(events) == 2
        assert not (tmp_path / "sc" / "plugins" / PLUGIN).exists()

        # A changed desired state (same image) is tried once more (a wrong artifact is a
        # valid image: the cache serves it again).
        cm.update({"broker.yaml": CONFIG2, f"plugin.{PLUGIN}.yaml": plugin_yaml(image)})
        wait_for(lambda: len([e for e in events if e.kind is EventKind.REJECTED]) == 2,
                 "changed desired state retried")
        pulls = 1 if case == "wrong artifact" else 2
        assert puller.attempts == pulls and sidecar.state.phase is Phase.REJECTED
        # Without the image: applied, the refusal is gone from state and metrics.
        cm.update({"broker.yaml": CONFIG2})
        wait_for(lambda: sidecar.state.phase is Phase.APPLIED, "good state applied")
        assert sidecar.state.refused_image == "" and "image_refused{" not in _metrics(sidecar)
        assert puller.attempts == pulls
    finally:
        sidecar.stop()


def test_transient_failure_retries_with_backoff(broker: Mosquitto, registry: Registry,
                                                tmp_path: Path) -> None:
    """The ConfigMap names an image not pushed yet (a registry 404 is not final): Failed,
    nothing changed, retried with backoff; once pushed, the next retry applies it."""
    packed = _plugin_image(os.urandom(1024))
    image = f"{registry.host}/plugins/calm-late@{packed.digest}"
    cm = ConfigMapDir(tmp_path / "cm")
    cm.update({"broker.yaml": CONFIG, f"plugin.{PLUGIN}.yaml": plugin_yaml(image)})
    events: list[ApplyEvent] = []
    sidecar, adapter = make_sidecar(broker, [cm.path], tmp_path / "sc", registry.ca.cert,
                                    sinks=[events.append], allow_unsigned_images=True)
    puller = sidecar.puller
    assert isinstance(puller, ImagePuller)
    sidecar.start()
    try:
        wait_for(lambda: sidecar.state.phase is Phase.FAILED, "missing image failed")
        assert "manifest unknown" in sidecar.state.last_error
        assert events[0].kind is EventKind.FAILED and "nothing was changed" in events[0].message
        assert sidecar.state.refused_image == "" and adapter.mutating_calls() == 0
        started = time.monotonic()
        wait_for(lambda: puller.attempts >= 3, "two retries", timeout=15)
        # Backoff 1 s, 2 s: the third attempt comes ~3 s after the first, not at once.
        assert time.monotonic() - started > 1.5
        assert _push(registry, "calm-late", packed) == image
        wait_for(lambda: sidecar.state.phase is Phase.RESTART_REQUIRED, "staged after the push",
                 timeout=20)
        assert sidecar.state.plugins[0].status == "Staged"
    finally:
        sidecar.stop()


class SlowLink:
    """A TCP relay to the real registry at ``rate`` bytes/s from it: a slow network path."""

    def __init__(self, target: tuple[str, int], rate: int) -> None:
        self._target = target
        self._rate = rate
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            threading.Thread(target=self._pipe, args=(client, upstream, 0), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, self._rate),
                             daemon=True).start()

    def _pipe(self, source: socket.socket, dest: socket.socket, rate: int) -> None:
        try:
            while data := source.recv(16384):
                dest.sendall(data)
                if rate:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            for s in (source, dest):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop = True
        self._server.close()


def test_pull_abandoned_when_a_newer_desired_state_arrives(
        broker: Mosquitto, registry: Registry, tmp_path: Path) -> None:
    big = _plugin_image(os.urandom(24 * MIB))
    _push(registry, "calm-big", big)
    host, port = registry.host.rsplit(":", 1)
    link = SlowLink((host, int(port)), 4 * MIB)  # ~6 s for the whole layer
    image = f"127.0.0.1:{link.port}/plugins/calm-big@{big.digest}"
    cm = ConfigMapDir(tmp_path / "cm")
    cm.update({"broker.yaml": CONFIG})
    sidecar, _ = make_sidecar(broker, [cm.path], tmp_path / "sc", registry.ca.cert,
                              allow_unsigned_images=True)
    puller = sidecar.puller
    assert isinstance(puller, ImagePuller)
    tmp = tmp_path / "sc" / "cache" / "tmp"
    sidecar.start()
    try:
        wait_for(lambda: sidecar.state.phase is Phase.APPLIED, "config applied")
        cm.update({"broker.yaml": CONFIG, f"plugin.{PLUGIN}.yaml": plugin_yaml(image)})
        wait_for(lambda: any(tmp.glob("pull-*/layer-0")), "the big layer downloading")
        started = time.monotonic()
        cm.update({"broker.yaml": CONFIG2})
        wait_for(lambda: sidecar.state.phase is Phase.APPLIED and
                 sidecar.state.last_applied.config.get("max_inflight_messages") == "21",
                 "the newer state applied", timeout=10)
        took = time.monotonic() - started
        assert took < 3.0, f"the newer state waited {took:.1f}s behind the pull"
        assert cached_image(tmp_path / "sc" / "cache", big.digest) is None
        assert not list(tmp.glob("pull-*")) and puller.attempts == 1
    finally:
        sidecar.stop()
        link.close()


def test_cache_bounded_by_bytes_keeps_the_running_release(registry: Registry,
                                                           tmp_path: Path) -> None:
    images = [_push(registry, f"calm-cache-{i}", _plugin_image(os.urandom(MIB)))
              for i in range(4)]
    digests = [i.split("@")[1] for i in images]
    puller = ImagePuller(tmp_path / "cache", ca_bundle=registry.ca.cert,
                         max_cache_bytes=MIB * 5 // 2)
    puller.protect = lambda: frozenset({digests[0]})  # the running release
    for image in images:
        puller(image)
        time.sleep(0.01)  # distinct recency
    kept = {d for d in digests if cached_image(tmp_path / "cache", d) is not None}
    # Newest first: 3 and 2 fit in 2.5 MiB, 1 does not; 0 runs, so it stays over the bound.
    assert kept == {digests[0], digests[2], digests[3]}
    assert puller.pulls == 4

    assert Settings("mosquitto").image_cache_bytes == 2 * 1024 ** 3
    assert parse_args(["--broker", "mosquitto", "--config-dir", "d", "--allow-unsigned-images",
                       "--image-cache-bytes", "1000"], environ={}).image_cache_bytes == 1000


def test_clean_sigterm_logs_no_unwatched_warning(broker: Mosquitto, tmp_path: Path) -> None:
    cm = ConfigMapDir(tmp_path / "cm")
    cm.update({"broker.yaml": CONFIG})
    options = [f"--adapter-opt={k}={v}" for k, v in adapter_options(broker).items()]
    log = tmp_path / "sidecar.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "--broker", "mosquitto", "--source", "files",
             "--config-dir", str(cm.path), "--allow-unsigned-images", "--debounce", "0",
             "--plugin-dir", str(tmp_path / "plugins"), "--cache-dir", str(tmp_path / "cache"),
             "--http-address", "127.0.0.1:0", *options],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "KUBECONFIG": ""})
        try:
            wait_for(lambda: "decision=Applied" in log.read_text(), "sidecar applied")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    assert "decision=unwatched" not in text and "directory was removed" not in text, text
    warnings = [line for line in text.splitlines()
                if "level=WARNING" in line and "decision=verification-off" not in line]
    assert not warnings, text


def test_trust_refusals_final_until_the_policy_changes_else_retried(
        broker: Mosquitto, registry: Registry, tmp_path: Path) -> None:
    """TrustPolicyInvalid stays true until the policy changes: not asked again. A missing
    signature may be pushed later: retried with backoff, applied once it is there."""
    key = generate()
    packed = _plugin_image(os.urandom(256))
    image = _push(registry, "calm-signed-later", packed)
    trust = ConfigMapDir(tmp_path / "trust")
    trust.update({"policy.yaml": "keys: [\n"})
    cm = ConfigMapDir(tmp_path / "cm")
    cm.update({"broker.yaml": CONFIG, f"plugin.{PLUGIN}.yaml": plugin_yaml(image)})
    sidecar, _ = make_sidecar(broker, [cm.path], tmp_path / "sc", registry.ca.cert,
                              trust_policy=trust.path / "policy.yaml")
    puller = sidecar.puller
    assert isinstance(puller, ImagePuller)
    sidecar.start()
    try:
        wait_for(lambda: sidecar.state.refused_reason == "TrustPolicyInvalid", "bad policy")
        for _ in range(3):
            assert sidecar.reconcile_now("periodic resync").retry_after is None
        assert puller.attempts == 1

        trust.update({"policy.yaml": policy_text(key, sources=("https://git.test/*",)).decode()})
        wait_for(lambda: sidecar.state.refused_reason == "SignatureMissing", "policy re-read")
        wait_for(lambda: puller.attempts >= 3, "unsigned image retried", timeout=15)
        assert sidecar.state.phase is Phase.REJECTED
        with RegistryClient(registry.host, ca_bundle=registry.ca.cert) as client:
            ref = parse_reference(image)
            sign_image(client, ref, key)
            attest_provenance(client, ref, key, provenance(source="https://git.test/calm.git"))
        wait_for(lambda: sidecar.state.phase is Phase.RESTART_REQUIRED, "signed image staged",
                 timeout=40)
        assert sidecar.state.refused_image == ""
    finally:
        sidecar.stop()
