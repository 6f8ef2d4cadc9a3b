"""The sidecar end to end against Debian's real mosquitto 2.0 (dynamic-security plugin loaded),
driven through kubelet-style atomic-writer directories the test updates."""

from __future__ import annotations

import json
import os
import queue
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mqtt_support import Client
from sidecar_support import (
    ADMIN,
    PLUGIN,
    adapter_options,
    broker_yaml,
    make_sidecar,
    plugin_yaml,
    start_dynsec_broker,
    wait_for,
)

from plugforge.contract import Document, content_hash
from sidecar.adapters import mosquitto as mosq
from sidecar.adapters.mosquitto_dynsec import DynsecAdmin
from sidecar.probes import ProbeResult
from sidecar.reconcile import Reconciler
from sidecar.state import ApplyEvent, EventKind, Phase
from testbed.configmap_dir import ConfigMapDir
from testbed.mosquitto import Mosquitto

pytestmark = pytest.mark.timeout(180)

ROLE = ("publishClientSend test/# allow; subscribePattern test/# allow; "
        "publishClientReceive test/# allow")
BASE = {
    "dynsec.role.writer.acls": ROLE,
    "dynsec.role.reader.acls": "subscribePattern test/# allow; publishClientReceive test/# allow",
    "dynsec.client.bob.password": "bob-pw",
    "dynsec.client.bob.roles": "reader",
    "dynsec.client.alice.password": "alice-pw",
    "dynsec.client.alice.roles": "writer",
    "max_inflight_messages": "20",
}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = start_dynsec_broker(tmp_path / "broker")
    yield b
    b.stop()


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_config_edit_applied_live(broker: Mosquitto, tmp_path: Path) -> None:
    cm = ConfigMapDir(tmp_path / "cm")
    cm.update({"broker.yaml": broker_yaml(BASE)})
    sidecar, adapter = make_sidecar(broker, [cm.path], tmp_path / "sc", None)
    sidecar.start()
    try:
        wait_for(lambda: sidecar.state.phase is Phase.APPLIED, "first apply")
        assert http_get(sidecar.http_port, "/readyz")[0] == 200
        pid = broker.pid
        # bob's role is not edited below: he must stay connected through the whole change.
        sub = Client(broker.port, "bob", password="bob-pw")
        assert sub.accepted, sub.connect_rc
        sub.subscribe("test/#")
        pub = Client(broker.port, "alice", password="alice-pw")
        assert not pub.publish("test/big", b"x" * 6000).is_failure
        sub.wait_for_message("test/big")

        # Edit: a SIGHUP-reloadable option and a dynsec ACL change, in one update.
        cm.update({"broker.yaml": broker_yaml({
            **BASE, "message_size_limit": "5000",
            "dynsec.role.writer.acls": ROLE + "; publishClientSend test/locked/# deny 10"})})
        wait_for(lambda: sidecar.state.last_applied.config.get("message_size_limit") == "5000",
                 "second apply")
        # dynsec itself disconnects the clients of an edited role so they pick up the new
        # ACLs when they reconnect; alice reconnects.
        pub.close()
        pub = Client(broker.port, "alice", password="alice-pw")
        pub.publish_qos0("test/big2", b"x" * 6000)  # now over message_size_limit: dropped
        assert pub.publish("test/locked/a", b"small").is_failure  # the new ACL denies
        assert not pub.publish("test/ok", b"small").is_failure
        sub.wait_for_message("test/ok")  # delivered in order, so test/big2 would be here
        assert not any(t in ("test/big2", "test/locked/a") for t, _ in sub.messages)
        assert sub.connected and not sub.disconnected  # bob stayed connected throughout
        assert broker.pid == pid  # same broker process: applied live
        assert adapter.calls["restart"] == 0

        # A converged broker: a resync plans nothing and makes no admin calls.
        before = adapter.mutating_calls()
        outcome = sidecar.reconcile_now("test resync")
        assert outcome.actions == ()
        assert sidecar.plan() == []
        assert adapter.mutating_calls() == before
        metrics = http_get(sidecar.http_port, "/metrics")[1]
        assert "plugforge_sidecar_applies_total 2" in metrics
        sub.close()
        pub.close()
    finally:
        sidecar.stop()


INVALID = {
    "bad YAML": {"broker.yaml": "apiVersion: [unclosed\n"},
    "unknown key": {"broker.yaml": broker_yaml(BASE).replace("config:", "colour: red\nconfig:")},
    "tag instead of digest": {"plugin.deny_test.yaml": (
        "apiVersion: plugforge.dev/v1alpha1\nkind: PluginRelease\nname: deny_test\n"
        "image: registry.test:5000/plugins/deny-test:1.0\n")},
    "value mosquitto would refuse": {"broker.yaml": broker_yaml(
        {**BASE, "max_inflight_messages": "lots"})},
    "unknown mosquitto option": {"broker.yaml": broker_yaml({**BASE, "max_inflight": "3"})},
    "limit that locks out the admin": {"broker.yaml": broker_yaml(
        {**BASE, "message_size_limit": "100"})},
}
EXPECTED = {
    "bad YAML": "not valid YAML",
    "unknown key": "unknown field(s) colour",
    "tag instead of digest": "pulled by digest only",
    "value mosquitto would refuse": "max_inflight_messages: expected an integer from 0 to 65535",
    "unknown mosquitto option": "unknown mosquitto option",
    "limit that locks out the admin": "would lock it out",
}


def test_invalid_configmaps_rejected_broker_untouched(broker: Mosquitto, tmp_path: Path) -> None:
    cm = ConfigMapDir(tmp_path / "cm")
    cm2 = ConfigMapDir(tmp_path / "cm2")
    cm.update({"broker.yaml": broker_yaml(BASE)})
    cm2.update({})
    sidecar, adapter = make_sidecar(broker, [cm.path, cm2.path], tmp_path / "sc", None)
    sidecar.start()
    try:
        wait_for(lambda: sidecar.state.phase is Phase.APPLIED, "first apply")
        good_hash = sidecar.state.last_applied.content_hash
        include = (broker.include_dir / "50-plugforge-config.conf").read_text()
        calls = adapter.mutating_calls()
        cases = dict(INVALID)
        # Duplicate plugin name: the same key in two ConfigMaps.
        digest = "sha256:" + "a" * 64
        dup = ("apiVersion: plugforge.dev/v1alpha1\nkind: PluginRelease\nname: deny_test\n"
               f"image: registry.test:5000/plugins/deny-test@{digest}\n")
        for name, data in [*cases.items(), ("duplicate name", {"plugin.deny_test.yaml": dup})]:
            if name == "duplicate name":
                cm.update({"broker.yaml": broker_yaml(BASE), **data})
                cm2.update(data)
                expected = "plugin names must be unique"
            else:
                cm.update({"broker.yaml": broker_yaml(BASE), **data})
                expected = EXPECTED[name]
            wait_for(lambda: sidecar.state.phase is Phase.REJECTED
                     and expected in sidecar.state.last_error,  # noqa: B023
                     f"rejection of {name}")
            assert sidecar.state.last_applied.content_hash == good_hash, name
            # Attributed to the document at fault (none alone is, for a duplicate name).
            assert sidecar.state.failed_keys == \
                (() if name == "duplicate name" else tuple(data)), name
            assert adapter.mutating_calls() == calls, name  # nothing applied
            assert (broker.include_dir / "50-plugforge-config.conf").read_text() == include
            # Fixed again: back to Applied with the good state.
            cm2.update({})
            cm.update({"broker.yaml": broker_yaml(BASE)})
            wait_for(lambda: sidecar.state.phase is Phase.APPLIED, f"recovery after {name}")
        status, body = http_get(sidecar.http_port, "/readyz")
        assert status == 200, body
        assert json.loads(body)["ready"] is True
    finally:
        sidecar.stop()


def test_broker_not_running_at_start_waits_then_applies(broker: Mosquitto,
                                                         tmp_path: Path) -> None:
    broker.stop()
    cm = ConfigMapDir(tmp_path / "cm")
    cm.update({"broker.yaml": broker_yaml(BASE)})
    sidecar, adapter = make_sidecar(broker, [cm.path], tmp_path / "sc", None)
    sidecar.start()
    try:
        wait_for(lambda: sidecar.state.phase is Phase.UNAVAILABLE, "waiting for the broker")
        status, body = http_get(sidecar.http_port, "/readyz")
        assert status == 503 and "broker not reachable" in body
        assert http_get(sidecar.http_port, "/healthz")[0] == 200
        assert adapter.mutating_calls() == 0
        broker.restart()
        wait_for(lambda: sidecar.state.phase is Phase.APPLIED and sidecar.state.ready,
                 "applied once the broker answers")
        assert http_get(sidecar.http_port, "/readyz")[0] == 200
    finally:
        sidecar.stop()


def test_broker_killed_and_restarted_is_reconverged_by_resync(broker: Mosquitto,
                                                              tmp_path: Path) -> None:
    cm = ConfigMapDir(tmp_path / "cm")
    cm.update({"broker.yaml": broker_yaml({**BASE, "dynsec.default_acl.subscribe": "allow"})})
    sidecar, _adapter = make_sidecar(broker, [cm.path], tmp_path / "sc", None, resync=0.5)
    sidecar.start()
    try:
        wait_for(lambda: sidecar.state.phase is Phase.APPLIED, "first apply")
        # Someone undoes things by hand (drift), then the broker is killed and comes back.
        os.kill(broker.pid, signal.SIGKILL)
        broker.server.proc.wait()
        (broker.include_dir / "50-plugforge-config.conf").unlink()
        dynsec_file = broker.workdir / "dynamic-security.json"
        doc = json.loads(dynsec_file.read_text())
        doc["clients"] = [c for c in doc["clients"] if c["username"] == ADMIN[0]]
        doc["roles"] = [r for r in doc["roles"] if r["rolename"] == "admin"]
        dynsec_file.write_text(json.dumps(doc))
        wait_for(lambda: not sidecar.state.ready, "readiness drops while the broker is down")
        broker.restart()
        wait_for(lambda: sidecar.state.ready and (
            broker.include_dir / "50-plugforge-config.conf").exists(), "re-applied by resync")
        alice = Client(broker.port, "alice", password="alice-pw")
        assert alice.accepted
        alice.close()
        assert "max_inflight_messages 20" in (
            broker.include_dir / "50-plugforge-config.conf").read_text()
    finally:
        sidecar.stop()


def test_burst_of_swaps_is_debounced_and_none_missed(broker: Mosquitto, tmp_path: Path) -> None:
    cm = ConfigMapDir(tmp_path / "cm")

    def version(i: int) -> dict[str, str]:
        # Two keys that must always come from the same version.
        release = plugin_yaml(f"registry.test:5000/plugins/x@sha256:{i:064x}", enabled=False)
        return {"broker.yaml": broker_yaml({**BASE, "max_queued_messages": str(100 + i)}),
                f"plugin.{PLUGIN}.yaml": release}

    def hash_of(i: int) -> str:
        return content_hash([Document(str(cm.path), k, v) for k, v in version(i).items()])

    cm.update(version(0))
    sidecar, adapter = make_sidecar(broker, [cm.path], tmp_path / "sc", None, debounce=0.3)
    sidecar.start()
    try:
        wait_for(lambda: sidecar.state.phase is Phase.APPLIED, "first apply")
        events = sidecar.subscribe()
        calls = adapter.calls["apply_config"]
        n = 30
        for i in range(1, n + 1):
            cm.update(version(i))
        wait_for(lambda: sidecar.state.last_applied.content_hash == hash_of(n), "last version")
        time.sleep(1.0)  # anything still trailing would show up now
        applied = [e for e in iter_queue(events) if e.kind is EventKind.APPLIED]
        assert 1 <= len(applied) <= 2, [e.reason for e in applied]
        assert adapter.calls["apply_config"] - calls == len(applied)
        written = {hash_of(i) for i in range(n + 1)}
        assert all(e.content_hash in written for e in applied)  # never a mixed version
        assert "max_queued_messages 130" in (
            broker.include_dir / "50-plugforge-config.conf").read_text()
    finally:
        sidecar.stop()


def iter_queue(q: queue.Queue[ApplyEvent]) -> list[ApplyEvent]:
    items = []
    while True:
        try:
            items.append(q.get_nowait())
        except queue.Empty:
            return items


def test_change_refused_by_the_broker_rolls_back_config(broker: Mosquitto,
                                                        tmp_path: Path) -> None:
    cm = ConfigMapDir(tmp_path / "cm")
    cm.update({"broker.yaml": broker_yaml(BASE)})
    sidecar, _ = make_sidecar(broker, [cm.path], tmp_path / "sc", None)
    sidecar.start()
    include = broker.include_dir / "50-plugforge-config.conf"
    try:
        wait_for(lambda: sidecar.state.phase is Phase.APPLIED, "first apply")
        # Valid as far as anyone can tell before asking the broker: the role does not exist.
        cm.update({"broker.yaml": broker_yaml({
            **BASE, "max_inflight_messages": "30", "max_queued_messages": "999",
            "dynsec.client.bob.roles": "reader,nosuchrole"})})
        wait_for(lambda: sidecar.state.phase is Phase.ROLLED_BACK, "rolled back")
        assert "nosuchrole" in sidecar.state.last_error
        assert sidecar.state.failed_keys == ("broker.yaml",)
        text = include.read_text()
        assert "max_inflight_messages 20" in text  # previous value restored
        assert "max_queued_messages" not in text   # added key removed again
        assert sidecar.state.ready  # the last good state runs
        metrics = http_get(sidecar.http_port, "/metrics")[1]
        rollbacks = next(line for line in metrics.splitlines()
                         if line.startswith("plugforge_sidecar_rollbacks_total "))
        assert int(rollbacks.split()[1]) >= 1  # (and retried with backoff since)
    finally:
        sidecar.stop()


def test_apply_starts_from_the_state_observe_just_read(broker: Mosquitto) -> None:
    """One dynsec round trip per change after the loop's observe (the second read cost ~1 ms on
    every change); a reading that is stale, or already used, is read again."""
    adapter = mosq.create(adapter_options(broker), broker.workdir / "plugins")
    admin = DynsecAdmin(broker.host, broker.port, *ADMIN)
    try:
        key = "dynsec.role.r.acls"
        adapter.observe()
        calls = adapter.admin_calls
        adapter.apply_config({key: "publishClientSend a allow"})
        assert adapter.admin_calls == calls + 1  # createRole + addRoleACL, no read first
        # Someone else changes the role; the next apply has no fresh reading of its own and
        # reads again, so it removes what is there now (not what the last observe saw).
        admin.call([{"command": "addRoleACL", "rolename": "r", "acltype": "subscribeLiteral",
                     "topic": "x", "allow": True}])
        adapter.apply_config({key: "publishClientSend b allow"})
        assert adapter.observe().config[key] == "publishClientSend b allow"
        old, mosq.DYNSEC_FRESH = mosq.DYNSEC_FRESH, 0.0  # every reading is stale at once
        try:
            admin.call([{"command": "addRoleACL", "rolename": "r", "acltype": "subscribeLiteral",
                         "topic": "y", "allow": True}])
            adapter.apply_config({key: "publishClientSend c allow"})
        finally:
            mosq.DYNSEC_FRESH = old
        assert adapter.observe().config[key] == "publishClientSend c allow"
    finally:
        admin.close()
        adapter.close()


def test_plugins_mapped_by_a_broker_instance_are_read_once(
        broker: Mosquitto, monkeypatch: pytest.MonkeyPatch) -> None:
    """mosquitto maps its plugins only while starting: /proc/<pid>/maps is read once per broker
    instance that has answered, and again after a restart (a new instance)."""
    reads: list[int] = []
    real_read = mosq._read_maps

    def counting(pid: int) -> str:
        reads.append(pid)
        return real_read(pid)

    monkeypatch.setattr(mosq, "_read_maps", counting)
    adapter = mosq.create(adapter_options(broker), broker.workdir / "plugins")
    try:
        first = adapter.observe()
        assert adapter.observe().instance == first.instance
        assert len(reads) == 1
        broker.restart()
        assert adapter.observe().instance != first.instance
        assert len(reads) == 2
    finally:
        adapter.close()


def test_the_loop_asks_for_the_broker_state_before_reading_the_files(
        broker: Mosquitto, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reconcile prefetches the dynsec state, so the broker answers while the sidecar reads
    and parses the files; observe() takes that answer (no second request), unless it is
    stale."""
    adapter = mosq.create(adapter_options(broker), broker.workdir / "plugins")
    sent: list[int] = []
    real_prefetch = adapter.prefetch

    def prefetch() -> None:
        real_prefetch()
        sent.append(adapter.admin_calls)

    monkeypatch.setattr(adapter, "prefetch", prefetch)
    documents = [Document("cm", "broker.yaml", broker_yaml(
        {"dynsec.role.r.acls": "publishClientSend a allow"}))]
    reconciler = Reconciler(adapter, lambda: documents, lambda image: Path(image),
                            lambda probe: ProbeResult(probe.name, True, "accepted", ""))
    try:
        assert reconciler.reconcile("test").phase is Phase.APPLIED
        # prefetch (1), apply from that state (1), verify (1): three round trips in all
        assert sent == [1] and adapter.admin_calls == 3
        assert adapter.observe().config["dynsec.role.r.acls"] == "publishClientSend a allow"
        calls = adapter.admin_calls
        adapter.prefetch()
        adapter.observe()
        assert adapter.admin_calls == calls + 1  # the prefetched answer
        monkeypatch.setattr(mosq, "DYNSEC_FRESH", 0.0)
        adapter.prefetch()
        adapter.observe()
        assert adapter.admin_calls == calls + 3  # too old: asked again
    finally:
        adapter.close()
