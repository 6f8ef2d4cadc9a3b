"""Pure planning: every (desired, observed, last applied) case, no broker needed."""

from __future__ import annotations

from plugforge.contract import DesiredState, PluginRelease
from sidecar.adapters.base import WRITE_ONLY, ChangeClass, Observed, ObservedPlugin
from sidecar.plan import NOTHING_APPLIED, ActionKind, Applied, Classifier, max_change, plan

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
IMG = "registry.test:5000/plugins/deny"

CLASSIFIER = Classifier(
    classify=lambda k: ChangeClass.BROKER_RESTART if k == "max_connections" else ChangeClass.HOT,
    plugin_change=ChangeClass.BROKER_RESTART,
    write_only=lambda k: k.endswith(".password"))


def desired(plugins: tuple[PluginRelease, ...] = (), config: dict[str, str] | None = None,
            h: str = "h1") -> DesiredState:
    return DesiredState("mosquitto", config or {}, plugins, h)


def release(digest: str = D1, enabled: bool = True, **settings: str) -> PluginRelease:
    return PluginRelease("deny", f"{IMG}@{digest}", enabled, settings)


def running(digest: str | None = D1, enabled: bool = True, staged: str | None = None,
            **settings: str) -> Observed:
    return Observed(True, {"deny": ObservedPlugin("deny", digest, enabled, None, settings,
                                                  staged)}, {})


def kinds(actions: list) -> list[tuple[ActionKind, str]]:  # type: ignore[type-arg]
    return [(a.kind, a.target) for a in actions]


def test_converged_broker_plans_nothing() -> None:
    want = desired((release(),), {"max_inflight_messages": "10"})
    seen = Observed(True, running().plugins, {"max_inflight_messages": "10"})
    assert plan(want, seen, Applied({"max_inflight_messages": "10"}, {"deny": D1}),
                CLASSIFIER) == []


def test_new_plugin_is_installed_enabled_then_restart() -> None:
    actions = plan(desired((release(x="1"),)), Observed(True), NOTHING_APPLIED, CLASSIFIER)
    assert kinds(actions) == [(ActionKind.INSTALL_PLUGIN, "deny"), (ActionKind.ENABLE_PLUGIN,
                              "deny"), (ActionKind.RESTART_BROKER, "broker")]
    assert actions[0].image == f"{IMG}@{D1}"
    assert actions[1].settings == {"x": "1"}
    assert max_change(actions) is ChangeClass.BROKER_RESTART


def test_upgrade_installs_new_version_and_records_previous() -> None:
    actions = plan(desired((release(D2),)), running(D1), NOTHING_APPLIED, CLASSIFIER)
    assert kinds(actions)[:2] == [(ActionKind.INSTALL_PLUGIN, "deny"),
                                  (ActionKind.ENABLE_PLUGIN, "deny")]
    assert actions[1].previous == D1 and actions[1].value == D2


def test_staged_version_waiting_for_restart_only_plans_the_restart() -> None:
    actions = plan(desired((release(D2),)), running(D1, staged=D2), NOTHING_APPLIED,
                   CLASSIFIER)
    assert kinds(actions) == [(ActionKind.RESTART_BROKER, "broker")]


def test_settings_change_reenables_without_install() -> None:
    actions = plan(desired((release(x="2"),)), running(x="1"), NOTHING_APPLIED, CLASSIFIER)
    assert kinds(actions) == [(ActionKind.ENABLE_PLUGIN, "deny"),
                              (ActionKind.RESTART_BROKER, "broker")]


def test_unobservable_settings_are_not_compared() -> None:
    seen = Observed(True, {"deny": ObservedPlugin("deny", D1, True, None, None)})
    assert plan(desired((release(x="2"),)), seen, NOTHING_APPLIED, CLASSIFIER) == []


def test_disabled_in_desired_state_is_disabled() -> None:
    actions = plan(desired((release(enabled=False),)), running(), NOTHING_APPLIED, CLASSIFIER)
    assert kinds(actions) == [(ActionKind.DISABLE_PLUGIN, "deny"),
                              (ActionKind.RESTART_BROKER, "broker")]


def test_disabled_plugin_still_loaded_waits_for_restart() -> None:
    actions = plan(desired((release(enabled=False),)), running(enabled=False), NOTHING_APPLIED,
                   CLASSIFIER)
    assert kinds(actions) == [(ActionKind.RESTART_BROKER, "broker")]


def test_disabled_plugin_enabled_again() -> None:
    actions = plan(desired((release(),)), running(enabled=False), NOTHING_APPLIED, CLASSIFIER)
    assert kinds(actions)[0] == (ActionKind.ENABLE_PLUGIN, "deny")


def test_plugin_removed_from_desired_state_is_disabled() -> None:
    actions = plan(desired(()), running(), NOTHING_APPLIED, CLASSIFIER)
    assert kinds(actions)[0] == (ActionKind.DISABLE_PLUGIN, "deny")


def test_config_set_changed_and_unchanged() -> None:
    seen = Observed(True, {}, {"a": "1", "b": "2"})
    actions = plan(desired(config={"a": "1", "b": "3", "c": "4"}), seen, NOTHING_APPLIED,
                   CLASSIFIER)
    assert [(a.kind, a.target, a.value, a.previous) for a in actions] == [
        (ActionKind.SET_CONFIG, "b", "3", "2"), (ActionKind.SET_CONFIG, "c", "4", None)]
    assert all(a.change is ChangeClass.HOT for a in actions)


def test_config_removed_from_desired_state_is_unset_only_if_we_set_it() -> None:
    seen = Observed(True, {}, {"a": "1", "foreign": "x"})
    actions = plan(desired(), seen, Applied({"a": "1"}, {}), CLASSIFIER)
    assert kinds(actions) == [(ActionKind.UNSET_CONFIG, "a")]


def test_restart_only_key_adds_restart() -> None:
    actions = plan(desired(config={"max_connections": "10"}), Observed(True), NOTHING_APPLIED,
                   CLASSIFIER)
    assert kinds(actions) == [(ActionKind.SET_CONFIG, "max_connections"),
                              (ActionKind.RESTART_BROKER, "broker")]


def test_write_only_key_compared_with_last_applied() -> None:
    want = desired(config={"dynsec.client.a.password": "s3cr3t-value"})
    exists = Observed(True, {}, {"dynsec.client.a.password": WRITE_ONLY})
    assert plan(want, exists, Applied({"dynsec.client.a.password": "s3cr3t-value"}, {}),
                CLASSIFIER) == []
    # The client was deleted behind our back (or the broker lost its state): set it again.
    assert len(plan(want, Observed(True), Applied({"dynsec.client.a.password": "s3cr3t-value"},
                                                  {}), CLASSIFIER)) == 1
    actions = plan(want, exists, Applied({"dynsec.client.a.password": "old"}, {}),
                   CLASSIFIER)
    assert kinds(actions) == [(ActionKind.SET_CONFIG, "dynsec.client.a.password")]
    assert "s3cr3t" not in actions[0].describe()


def test_write_only_key_removed_is_unset() -> None:
    actions = plan(desired(), Observed(True), Applied({"dynsec.client.a.password": "p"}, {}),
                   CLASSIFIER)
    assert kinds(actions) == [(ActionKind.UNSET_CONFIG, "dynsec.client.a.password")]


def test_order_installs_disables_enables_config_restart() -> None:
    other = PluginRelease("other", f"{IMG}@{D2}")
    seen = Observed(True, {"gone": ObservedPlugin("gone", D1, True)}, {})
    actions = plan(desired((release(), other), {"a": "1"}), seen, NOTHING_APPLIED, CLASSIFIER)
    assert [a.kind for a in actions] == [
        ActionKind.INSTALL_PLUGIN, ActionKind.INSTALL_PLUGIN, ActionKind.DISABLE_PLUGIN,
        ActionKind.ENABLE_PLUGIN, ActionKind.ENABLE_PLUGIN, ActionKind.SET_CONFIG,
        ActionKind.RESTART_BROKER]


def test_hot_plugin_brokers_plan_no_restart() -> None:
    hot = Classifier(lambda _k: ChangeClass.HOT, ChangeClass.PLUGIN_RELOAD, lambda _k: False)
    actions = plan(desired((release(),)), Observed(True), NOTHING_APPLIED, hot)
    assert kinds(actions) == [(ActionKind.INSTALL_PLUGIN, "deny"),
                              (ActionKind.ENABLE_PLUGIN, "deny")]
    assert max_change(actions) is ChangeClass.PLUGIN_RELOAD
    assert max_change([]) is None


def test_backoff_doubles_to_a_cap() -> None:
    from sidecar.reconcile import Backoff
    b = Backoff(initial=1.0, maximum=10.0)
    assert [b.delay(n) for n in (1, 2, 3, 4, 5, 9)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_describe_never_shows_secrets() -> None:
    actions = plan(desired(config={"dynsec.client.a.password": "hunter2-secret"}),
                   Observed(True), NOTHING_APPLIED, CLASSIFIER)
    assert "hunter2" not in actions[0].describe()
    assert "redacted" in actions[0].describe()


def test_no_broker_yaml_leaves_the_broker_config_alone() -> None:
    """Issue 16, hole 6: a ConfigMap that vanished and came back without broker.yaml (e.g.
    holding one plugin's key) is no instruction to unset what was applied before."""
    seen = Observed(True, {}, {"a": "1", "dynsec.client.a.password": WRITE_ONLY})
    applied = Applied({"a": "1", "dynsec.client.a.password": "p"}, {})
    assert plan(DesiredState(None, {}, (), "h"), seen, applied, CLASSIFIER) == []
    # A broker.yaml that no longer lists a key still unsets it.
    assert kinds(plan(desired(), seen, applied, CLASSIFIER)) == [
        (ActionKind.UNSET_CONFIG, "a"), (ActionKind.UNSET_CONFIG, "dynsec.client.a.password")]
