"""Pure planning: (desired, observed, last applied) -> the ordered actions that converge the broker.

No I/O here. The executor (``reconcile``) performs the actions through an adapter and observes
again; an unchanged, converged broker plans to nothing, so a resync issues no admin calls.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from plugforge.contract import DesiredState, PluginRelease
from sidecar.adapters.base import ChangeClass, Observed, ObservedPlugin


class ActionKind(enum.Enum):
    INSTALL_PLUGIN = "install_plugin"   # pull, verify, extract, copy into the plugin directory
    ENABLE_PLUGIN = "enable_plugin"     # load (or stage) a version with its settings
    DISABLE_PLUGIN = "disable_plugin"
    SET_CONFIG = "set_config"
    UNSET_CONFIG = "unset_config"       # back to the broker's default
    RESTART_BROKER = "restart_broker"   # staged changes take effect only after a restart


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    target: str                 # plugin name or config key
    change: ChangeClass
    reason: str
    value: str | None = None    # config value, or the plugin digest
    previous: str | None = None
    image: str | None = None    # repository@digest for INSTALL_PLUGIN
    settings: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for logs and the dry run; secret values never appear."""
        if self.kind in (ActionKind.SET_CONFIG, ActionKind.UNSET_CONFIG):
            detail = " (value redacted)" if is_secret(self.target) else (
                f" {self.previous!r} -> {self.value!r}")
        else:
            detail = f" {self.value}" if self.value else ""
        return f"{self.kind.value} {self.target}{detail} [{self.change.value}]: {self.reason}"


@dataclass(frozen=True)
class Classifier:
    """What the planner needs to know about the broker; built from the adapter."""

    classify: Callable[[str], ChangeClass]
    plugin_change: ChangeClass
    write_only: Callable[[str], bool]
    normalize: Callable[[str, str], str] = lambda _key, value: value
    """The broker's canonical spelling of a value (list order, spacing), as observe reports."""


@dataclass(frozen=True)
class Applied:
    """What the sidecar last applied successfully (its memory of what it manages)."""

    config: Mapping[str, str]
    plugins: Mapping[str, str]  # name -> digest
    content_hash: str = ""


NOTHING_APPLIED = Applied({}, {})


def plan(desired: DesiredState, observed: Observed, last_applied: Applied,
         classifier: Classifier) -> list[Action]:
    """The ordered actions: installs, disables, enables, config changes, then a restart if any
    action takes effect only on restart and the running broker does not reflect it yet."""
    actions = _plugin_actions(desired, observed, classifier.plugin_change)
    actions += _config_actions(desired, observed, last_applied, classifier)
    if any(a.change is ChangeClass.BROKER_RESTART for a in actions) or _restart_pending(
            desired, observed):
        actions.append(Action(ActionKind.RESTART_BROKER, "broker", ChangeClass.BROKER_RESTART,
                              "staged changes take effect only when the broker restarts"))
    return actions


def max_change(actions: list[Action]) -> ChangeClass | None:
    """The most disruptive class in a plan; None for an empty plan."""
    return max((a.change for a in actions), key=lambda c: c.rank, default=None)


def _plugin_actions(desired: DesiredState, observed: Observed,
                    change: ChangeClass) -> list[Action]:
    installs: list[Action] = []
    disables: list[Action] = []
    enables: list[Action] = []
    for release in desired.plugins:
        seen = observed.plugins.get(release.name)
        if release.enabled:
            reason = _enable_reason(release, seen)
            if reason is None:
                continue
            if seen is None or _effective_digest(seen) != release.digest:
                installs.append(Action(ActionKind.INSTALL_PLUGIN, release.name, ChangeClass.HOT,
                                       f"version {release.digest} is not installed",
                                       value=release.digest, image=release.image))
            enables.append(Action(ActionKind.ENABLE_PLUGIN, release.name, change, reason,
                                  value=release.digest,
                                  previous=seen.digest if seen else None,
                                  settings=dict(release.settings)))
        elif seen is not None and (seen.enabled or seen.staged_digest):
            disables.append(Action(ActionKind.DISABLE_PLUGIN, release.name, change,
                                   "the desired state sets enabled: false",
                                   previous=seen.digest))
    wanted = {p.name for p in desired.plugins}
    for name, seen in sorted(observed.plugins.items()):
        if name not in wanted and (seen.enabled or seen.staged_digest):
            disables.append(Action(ActionKind.DISABLE_PLUGIN, name, change,
                                   "the plugin is no longer in the desired state",
                                   previous=seen.digest))
    return installs + disables + enables


def _effective_digest(seen: ObservedPlugin) -> str | None:
    return seen.staged_digest or seen.digest


def _enable_reason(release: PluginRelease, seen: ObservedPlugin | None) -> str | None:
    """Why plugin ``release`` must be (re)enabled, or None when the broker already has it."""
    if seen is None:
        return "the plugin is not loaded"
    staged_or_running = _effective_digest(seen)
    if staged_or_running != release.digest:
        return f"running version {seen.digest or 'none'}, desired {release.digest}"
    if not seen.enabled and not seen.staged_digest:
        return "the plugin is disabled"
    if seen.settings is not None and dict(seen.settings) != dict(release.settings):
        return "its settings differ from the desired ones"
    return None


def _restart_pending(desired: DesiredState, observed: Observed) -> bool:
    """A desired change was staged earlier but the running broker does not execute it yet."""
    wanted = {p.name: p for p in desired.plugins}
    for name, seen in observed.plugins.items():
        release = wanted.get(name)
        if release is not None and release.enabled and seen.staged_digest == release.digest \
                and seen.digest != release.digest:
            return True
        if (release is None or not release.enabled) and seen.digest and not seen.enabled:
            return True  # removal staged, still loaded
    return False


def _config_actions(desired: DesiredState, observed: Observed, last_applied: Applied,
                    classifier: Classifier) -> list[Action]:
    actions = []
    for key, value in sorted(desired.config.items()):
        if classifier.write_only(key):
            # The broker never reports the value, only whether the thing holding it exists
            # (observe reports the key then): trust our own record of what we applied.
            if key in observed.config and last_applied.config.get(key) == value:
                continue
            actions.append(Action(ActionKind.SET_CONFIG, key, classifier.classify(key),
                                  "write-only value changed since the last apply", value=value))
            continue
        current = observed.config.get(key)
        if current == classifier.normalize(key, value):
            continue
        reason = "not set on the broker" if current is None else "the broker has another value"
        actions.append(Action(ActionKind.SET_CONFIG, key, classifier.classify(key), reason,
                              value=value, previous=current))
    if desired.broker is None:
        # No broker.yaml at all (its ConfigMap vanished, or came back holding only plugin keys,
        # e.g. re-created by the builder): leave the broker's config as it is. Only a
        # broker.yaml that no longer lists a key unsets it.
        return actions
    for key in sorted(set(last_applied.config) - set(desired.config)):
        if key in observed.config or classifier.write_only(key):
            actions.append(Action(ActionKind.UNSET_CONFIG, key, classifier.classify(key),
                                  "removed from the desired state; back to the broker default",
                                  previous=observed.config.get(key)))
    return actions


def is_secret(key: str) -> bool:
    """Values of such keys never appear in logs, plans or the API."""
    lowered = key.lower()
    return any(word in lowered for word in ("password", "secret", "token", "key"))
