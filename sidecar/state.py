"""What the sidecar reports: its state (GetState, /readyz) and its apply events."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from plugforge.contract import DesiredState
from sidecar.adapters.base import Observed
from sidecar.plan import Action, Applied


class Phase(enum.Enum):
    PENDING = "Pending"                  # nothing applied yet
    APPLIED = "Applied"                  # desired == observed, probes pass
    RESTART_REQUIRED = "RestartRequired"  # staged; takes effect on the next broker restart
    REJECTED = "Rejected"                # the desired state is invalid; last good state kept
    ROLLED_BACK = "RolledBack"           # applying failed; the last good state was restored
    FAILED = "Failed"                    # applying failed before anything changed
    UNAVAILABLE = "Unavailable"          # the broker does not answer; waiting


class EventKind(enum.Enum):
    APPLIED = "Applied"
    REJECTED = "Rejected"
    ROLLED_BACK = "RolledBack"
    FAILED = "Failed"
    RESTART_REQUIRED = "RestartRequired"


@dataclass(frozen=True)
class ApplyEvent:
    kind: EventKind
    reason: str           # what woke the loop
    message: str
    content_hash: str
    duration: float       # seconds spent applying
    time: float           # wall clock
    actions: tuple[str, ...] = ()


@dataclass(frozen=True)
class PluginStatus:
    name: str
    desired_digest: str
    running_digest: str | None
    status: str           # Running | Staged | Disabled | Missing | ProbeFailed | Refused
    probes: tuple[str, ...] = ()


@dataclass
class SidecarState:
    phase: Phase = Phase.PENDING
    desired: DesiredState | None = None
    desired_hash: str = ""
    failed_hash: str = ""
    """Content hash of the desired state whose last apply failed or was rejected; "" after a
    success. With ``desired_hash`` alone a caller cannot tell an old failure from one of the
    state being applied right now."""
    failed_keys: tuple[str, ...] = ()
    """The documents (keys as this pod sees them) the failure of ``failed_hash`` is attributed
    to; () when it cannot be: a rollout of one plugin must not take a broken broker.yaml for
    its own failure."""
    observed: Observed | None = None
    last_applied: Applied = field(default_factory=lambda: Applied({}, {}))
    last_error: str = ""
    restart_required: bool = False
    ready: bool = False
    ready_reason: str = "no desired state applied yet"
    plugins: tuple[PluginStatus, ...] = ()
    last_plan: tuple[Action, ...] = ()
    applied_once: bool = False
    refused_image: str = ""
    """repository@digest refused (unsafe, too big, not matching its digest, not a plugin,
    not trusted) for the desired state; "" when nothing is refused."""
    refused_reason: str = ""
