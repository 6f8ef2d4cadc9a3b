"""The one interface every broker adapter implements, and the types it speaks.

The reconciler only ever talks to a broker through ``BrokerAdapter``; each broker is one module
in this package that registers itself in ``sidecar.adapters.registry``. Adapters wrap every
third-party or OS error at their boundary into ``AdapterError`` (the broker refused: permanent
for this input) or ``BrokerUnavailable`` (try again later).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


class ChangeClass(enum.Enum):
    """How disruptive applying a change is; the dry-run plan shows one per action."""

    HOT = "hot"                        # applied live, clients stay connected
    PLUGIN_RELOAD = "plugin_reload"    # the broker reloads one plugin, clients stay connected
    BROKER_RESTART = "broker_restart"  # takes effect only when the broker process restarts

    @property
    def rank(self) -> int:
        return {"hot": 0, "plugin_reload": 1, "broker_restart": 2}[self.value]


class AdapterError(Exception):
    """The broker refused the change (bad path, unknown key...); retrying the same input fails."""


def refuse_unknown_options(adapter: str, options: Mapping[str, str], known: set[str]) -> None:
    """``--adapter-opt`` keys are typed by hand: a misspelt one is an error, never ignored."""
    unknown = sorted(set(options) - known)
    if unknown:
        raise AdapterError(f"{adapter} adapter: unknown option(s) {', '.join(unknown)}; "
                           f"expected some of {', '.join(sorted(known))}")


class SettingsRejected(AdapterError):
    """A plugin's settings it cannot take, found before anything was sent to the broker: the
    desired state is refused like a bad config key (Rejected), not retried."""


class BrokerUnavailable(Exception):
    """The broker cannot be reached right now (starting, restarting); retry with backoff."""


class RestartRequired(Exception):
    """A staged change takes effect only after a broker restart the sidecar may not perform."""


@dataclass(frozen=True)
class ObservedPlugin:
    """A plugin as the running broker has it."""

    name: str
    digest: str | None           # the version the running broker executes, None if not loaded
    enabled: bool
    path: str | None = None      # where its code lives on the shared volume
    settings: Mapping[str, str] | None = None  # None: the broker does not expose them
    staged_digest: str | None = None  # configured but not yet running (waits for a restart)


WRITE_ONLY = "<write-only>"


@dataclass(frozen=True)
class Observed:
    """The broker's actual state, as far as its admin interface can tell."""

    reachable: bool
    plugins: Mapping[str, ObservedPlugin] = field(default_factory=dict)
    config: Mapping[str, str] = field(default_factory=dict)
    """Current values; a write-only key (password) is present, with value WRITE_ONLY, when the
    thing that holds it exists."""
    instance: str = ""  # changes when the broker process is replaced (pid, node start time)
    detail: str = ""    # why it is unreachable, for the state report


@dataclass(frozen=True)
class ConfigProblem:
    """A config value the broker would refuse; ``message`` says what it expects instead."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"config.{self.key}: {self.message}"


class BrokerAdapter(Protocol):
    """Observe and change one running broker through its own admin interface."""

    name: str

    def observe(self) -> Observed:
        """Read the broker's plugins and config; ``reachable=False`` instead of raising."""
        ...

    def validate_config(self, config: Mapping[str, str]) -> list[ConfigProblem]:
        """Every key/value the broker would refuse (unknown key, bad value); empty if fine."""
        ...

    def classify(self, key: str) -> ChangeClass:
        """How a change of config ``key`` takes effect."""
        ...

    def plugin_change_class(self) -> ChangeClass:
        """How installing, enabling, disabling or upgrading a plugin takes effect."""
        ...

    def write_only(self, key: str) -> bool:
        """True when the broker never reports ``key``'s value back (passwords)."""
        ...

    def normalize(self, key: str, value: str) -> str:
        """``value`` spelled the way ``observe`` reports it (sorted lists, single spaces)."""
        ...

    def install_plugin(self, name: str, digest: str, image_tree: Path) -> Path:
        """Copy the plugin's files from an extracted image into the broker's plugin directory."""
        ...

    def enable(self, name: str, digest: str, settings: Mapping[str, str]) -> None:
        """Load (or stage) plugin ``name`` at version ``digest`` with ``settings``."""
        ...

    def disable(self, name: str) -> None:
        """Unload (or stage the removal of) plugin ``name``."""
        ...

    def apply_config(self, changes: Mapping[str, str | None]) -> None:
        """Set each key to its value (None: back to the broker's default)."""
        ...

    def restart(self) -> None:
        """Restart the broker gracefully and wait until it answers again."""
        ...

    def health(self) -> bool:
        """True when the broker answers its admin interface."""
        ...
