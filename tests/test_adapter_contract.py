"""The adapter contract, one suite for every adapter whose real broker runs here.

Parametrized over ``adapter_harness.HARNESSES`` (EMQX 5.8.9, HiveMQ CE, mosquitto 2.0,
RabbitMQ 3.10, VerneMQ 2.0.1). Each broker starts once per module; every test drives the real
sidecar reconciler (``sidecar.reconcile.Reconciler``) from a kubelet-style ConfigMap directory,
with plugin images pulled by digest from the real registry, and checks the outcome with real
MQTT clients.

The adapter is wrapped in a counter (the real adapter underneath, every call passed through) so
"a converged broker needs no admin calls" is measured, not assumed.

Plugin changes follow each broker's design: where plugins load live (``hot_plugins``), a client
connected before the change stays connected and the broker process is the same; where they
load only at start (mosquitto), the change is ``RestartRequired`` until a restart is allowed,
and with ``--allow-broker-restart`` the sidecar restarts the broker itself.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from adapter_harness import HARNESSES, Harness, Images, accepted

from plugforge.contract import API_VERSION, PluginRelease, render_plugin_release
from sidecar.adapters.base import BrokerAdapter, ChangeClass, ConfigProblem, Observed
from sidecar.desired import read_documents
from sidecar.images import ImagePuller
from sidecar.plan import plan
from sidecar.probes import ProbeResult
from sidecar.reconcile import Outcome, Reconciler, classifier_for
from sidecar.state import Phase
from testbed.configmap_dir import ConfigMapDir
from testbed.registry import Registry

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

# In the broker's own user database (baseline). Not mallory: mosquitto asks its plugins in
# order and the first that admits a user wins, so a dynsec client mallory would get in.
EARLY = ("early", "early-password")


class CountingAdapter:
    """The real adapter; every call passes through and is counted."""

    MUTATING = ("install_plugin", "enable", "disable", "apply_config", "restart")

    def __init__(self, real: BrokerAdapter) -> None:
        self.real = real
        self.name = real.name
        self.calls: collections.Counter[str] = collections.Counter()

    def mutating_calls(self) -> int:
        return sum(self.calls[m] for m in self.MUTATING)

    def observe(self) -> Observed:
        self.calls["observe"] += 1
        return self.real.observe()

    def validate_config(self, config: Mapping[str, str]) -> list[ConfigProblem]:
        return self.real.validate_config(config)

    def classify(self, key: str) -> ChangeClass:
        return self.real.classify(key)

    def plugin_change_class(self) -> ChangeClass:
        return self.real.plugin_change_class()

    def write_only(self, key: str) -> bool:
        return self.real.write_only(key)

    def normalize(self, key: str, value: str) -> str:
        return self.real.normalize(key, value)

    def install_plugin(self, name: str, digest: str, image_tree: Path) -> Path:
        self.calls["install_plugin"] += 1
        return self.real.install_plugin(name, digest, image_tree)

    def enable(self, name: str, digest: str, settings: Mapping[str, str]) -> None:
        self.calls["enable"] += 1
        self.real.enable(name, digest, settings)

    def disable(self, name: str) -> None:
        self.calls["disable"] += 1
        self.real.disable(name)

    def apply_config(self, changes: Mapping[str, str | None]) -> None:
        self.calls["apply_config"] += 1
        self.real.apply_config(changes)

    def restart(self) -> None:
        self.calls["restart"] += 1
        self.real.restart()

    def health(self) -> bool:
        return self.real.health()

    def close(self) -> None:
        close = getattr(self.real, "close", None)
        if callable(close):
            close()


@dataclass
class Contract:
    harness: Harness
    puller: ImagePuller
    root: Path
    runs: int = 0

    def run(self, *, allow_restart: bool = True) -> Run:
        self.runs += 1
        cm = ConfigMapDir(self.root / f"cm-{self.runs}")
        adapter = CountingAdapter(self.harness.adapter())

        def no_probes(probe: object) -> ProbeResult:
            raise AssertionError(f"the contract suite declares no probes, got {probe}")

        reconciler = Reconciler(adapter, lambda: read_documents([cm.path]), self.puller,
                                no_probes, allow_broker_restart=allow_restart)
        return Run(self.harness, cm, adapter, reconciler)


@dataclass
class Run:
    harness: Harness
    cm: ConfigMapDir
    adapter: CountingAdapter
    reconciler: Reconciler
    baseline: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.baseline = self.harness.login_config(*EARLY) or {}

    def set(self, image: str | None, config: Mapping[str, str] | None = None, *,
            enabled: bool = True) -> Outcome:
        """Write the ConfigMap (plugin release + broker.yaml over the baseline) and reconcile."""
        broker = yaml.safe_dump({"apiVersion": API_VERSION, "kind": "BrokerConfig",
                                 "broker": self.harness.broker,
                                 "config": {**self.baseline, **(config or {})}})
        documents = {"broker.yaml": broker}
        if image is not None:
            documents[f"plugin.{self.harness.plugin}.yaml"] = render_plugin_release(
                PluginRelease(self.harness.plugin, image, enabled))
        self.cm.update(documents)
        return self.reconciler.reconcile("contract test")

    def applied(self, outcome: Outcome) -> None:
        state = self.reconciler.state
        assert outcome.phase is Phase.APPLIED, (outcome.phase, state.last_error)

    def running(self) -> str | None:
        observed = self.adapter.real.observe()
        assert observed.reachable, observed.detail
        plugin = observed.plugins.get(self.harness.plugin)
        return plugin.digest if plugin else None


@pytest.fixture(scope="module", params=sorted(HARNESSES))
def contract(request: pytest.FixtureRequest, registry: Registry,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Contract]:
    root = tmp_path_factory.mktemp(f"contract-{request.param}")
    harness = HARNESSES[request.param](request, registry, root)
    try:
        yield Contract(harness, ImagePuller(root / "cache", ca_bundle=registry.ca.cert), root)
    finally:
        harness.close()


@pytest.fixture
def run(contract: Contract) -> Iterator[Run]:
    """A fresh sidecar reconciler; afterwards the broker goes back to the baseline (no plugin,
    only ``early`` in its user database) through the same reconciler."""
    current = contract.run()
    current.applied(current.set(None))
    yield current
    current.applied(current.set(None))


def images(run: Run) -> Images:
    return run.harness.images


def test_converged_broker_needs_no_admin_calls(run: Run) -> None:
    v1 = images(run).v1
    run.applied(run.set(v1))
    assert run.running() == Images.digest(v1)

    desired = run.reconciler.state.desired
    assert desired is not None
    observed = run.adapter.observe()
    assert plan(desired, observed, run.reconciler.state.last_applied,
                classifier_for(run.adapter)) == []
    before = run.adapter.mutating_calls()
    outcome = run.reconciler.reconcile("resync")
    assert outcome.actions == () and outcome.phase is Phase.APPLIED
    assert run.adapter.mutating_calls() == before  # zero admin calls on the second pass


def test_install_enable_upgrade_rollback_disable(run: Run) -> None:
    harness, imgs = run.harness, images(run)
    own_users = harness.login_config(*EARLY) is not None
    # Logged in before the plugin changes (where nobody gets in without a plugin: right after
    # the first one is loaded).
    early = harness.connect(*EARLY) if own_users else None
    pid = harness.pid()

    def same_process_and_clients() -> None:
        if harness.hot_plugins:
            assert harness.pid() == pid, "a hot plugin change restarted the broker"
            assert early is not None and early.accepted
            assert early.connected and not early.disconnected, "a connected client was dropped"
            assert run.adapter.calls["restart"] == 0
        else:
            assert run.adapter.calls["restart"] >= 1, "the restart path was not taken"

    try:
        # Install + enable v1: the plugin decides.
        run.applied(run.set(imgs.v1))
        assert run.running() == Images.digest(imgs.v1)
        assert not accepted(harness, "mallory")
        assert accepted(harness, "alice")
        assert harness.publish_refused("alice", "any-password", "forbidden/x")
        assert not harness.publish_refused("alice", "any-password", "ok/x")
        if harness.only_refuses:  # unknown users: the broker's own authentication refuses
            assert not accepted(harness, "nobody")
        if early is None:
            early = harness.connect(*EARLY)
        same_process_and_clients()

        # Upgrade: v2's changed code refuses eve (proof by behaviour that the new code runs).
        assert accepted(harness, "eve")
        run.applied(run.set(imgs.v2))
        assert run.running() == Images.digest(imgs.v2)
        assert not accepted(harness, "eve") and accepted(harness, "alice")
        same_process_and_clients()

        # A broken release: refused by the adapter, rolled back, v2 keeps working.
        outcome = run.set(imgs.broken)
        state = run.reconciler.state
        assert outcome.phase in (Phase.ROLLED_BACK, Phase.FAILED), outcome.phase
        assert harness.plugin in state.last_error, state.last_error
        assert outcome.retry_after is not None
        assert run.running() == Images.digest(imgs.v2)
        assert not accepted(harness, "eve") and accepted(harness, "alice")
        assert state.last_applied.plugins[harness.plugin] == Images.digest(imgs.v2)
        same_process_and_clients()

        # Disable: the broker's own user database decides again.
        run.applied(run.set(imgs.v2, enabled=False))
        assert run.running() is None
        if harness.only_refuses:  # nobody refuses mallory any more; strangers stay out
            assert accepted(harness, "mallory") and not accepted(harness, "nobody")
        else:
            assert accepted(harness, *EARLY) is own_users  # own database, or fail closed
            assert not accepted(harness, "alice")  # no longer admitted by the plugin
        same_process_and_clients()
    finally:
        if early is not None:
            early.close()


def test_plugin_change_follows_the_brokers_design_without_restart_permission(
        contract: Contract, run: Run) -> None:
    """Without --allow-broker-restart: hot brokers load the plugin anyway; restart-only brokers
    stage it, report RestartRequired, stay unready (fail closed) and keep their process."""
    strict = contract.run(allow_restart=False)
    harness, v1 = contract.harness, images(run).v1
    pid = harness.pid()
    outcome = strict.set(v1)
    state = strict.reconciler.state
    if harness.hot_plugins:
        strict.applied(outcome)
        assert strict.running() == Images.digest(v1) and state.ready
        assert accepted(harness, "alice") and not accepted(harness, "mallory")
    else:
        assert outcome.phase is Phase.RESTART_REQUIRED and state.restart_required
        assert not state.ready and "staged" in state.ready_reason
        assert strict.running() is None
        assert not accepted(harness, "alice")  # not loaded: the old policy still decides
        before = strict.adapter.mutating_calls()
        assert strict.reconciler.reconcile("resync").phase is Phase.RESTART_REQUIRED
        assert strict.adapter.mutating_calls() == before  # reported once, not re-staged
    assert strict.adapter.calls["restart"] == 0 and harness.pid() == pid


def test_config_change_is_live(run: Run) -> None:
    harness = run.harness
    if harness.login_config("carol", "pw-1") is None:
        pytest.skip(f"{harness.broker}: no user database the sidecar changes through "
                    "broker.yaml")
    early = harness.connect(*EARLY)
    pid = harness.pid()
    try:
        outcome = run.set(None, harness.login_config("carol", "pw-1") or {})
        run.applied(outcome)
        assert {a.change for a in outcome.actions} == {ChangeClass.HOT}
        assert accepted(harness, "carol", "pw-1")
        run.applied(run.set(None, harness.login_config("carol", "pw-2") or {}))
        assert accepted(harness, "carol", "pw-2") and not accepted(harness, "carol", "pw-1")
        assert early.connected and not early.disconnected
        assert harness.pid() == pid
    finally:
        early.close()


def test_rejected_config_keeps_the_last_good_state(run: Run) -> None:
    harness, v1 = run.harness, images(run).v1
    run.applied(run.set(v1))
    before = run.adapter.mutating_calls()
    outcome = run.set(v1, {"no_such_option.at_all": "1"})
    state = run.reconciler.state
    assert outcome.phase is Phase.REJECTED
    assert "config.no_such_option.at_all" in state.last_error, state.last_error
    assert run.adapter.mutating_calls() == before  # nothing applied
    assert run.running() == Images.digest(v1)
    assert not accepted(harness, "mallory") and accepted(harness, "alice")
    run.applied(run.set(v1))  # the good state again: recovered, nothing to do
    assert run.adapter.mutating_calls() == before


def test_unreachable_broker_is_retried_and_recovers(run: Run) -> None:
    harness, v1 = run.harness, images(run).v1
    run.applied(run.set(v1))
    with harness.stopped():
        # Adapters that learn liveness from a heartbeat (HiveMQ's loader) notice a little later.
        deadline = time.monotonic() + 30
        while run.reconciler.reconcile("retry").phase is not Phase.UNAVAILABLE:
            assert time.monotonic() < deadline, "the stopped broker still looks reachable"
            time.sleep(0.5)
        for _ in range(2):  # every retry finds it down, and says so
            outcome = run.reconciler.reconcile("retry")
            assert outcome.phase is Phase.UNAVAILABLE and outcome.retry_after is not None
            assert not run.reconciler.state.ready
            assert "not reachable" in run.reconciler.state.ready_reason
    # Back (a new process: runtime state such as RabbitMQ's auth_backends is gone).
    outcome = run.reconciler.reconcile("retry")
    run.applied(outcome)
    assert run.reconciler.state.ready, run.reconciler.state.ready_reason
    assert run.running() == Images.digest(v1)
    assert not accepted(harness, "mallory") and accepted(harness, "alice")
