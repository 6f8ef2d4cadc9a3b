"""Typed, validated views of BrokerPlugin and PluginBuild objects, and condition helpers.

Pure: dicts from the apiserver in, frozen dataclasses out (or ``InvalidSpec`` naming the field).
The CRD schema already rejects most bad input; the checks that guard git and the filesystem are
repeated here (``builder.build.source``) because the builder must not trust that a schema was
applied.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from builder.errors import InvalidSpec
from plugforge.contract import (
    INLINE_PROBE_CREDENTIAL_REFUSAL,
    ContractError,
    Probe,
    parse_secret_key_ref,
)

PHASES = ("Pending", "Running", "Succeeded", "Failed")
FINISHED = ("Succeeded", "Failed")
TRIGGERS = ("ResourceChange", "Webhook", "Manual")

Obj = Mapping[str, Any]



def rfc3339(t: datetime) -> str:
    """A status timestamp as Kubernetes writes them (seconds, UTC, ``Z``)."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None

@dataclass(frozen=True)
class GitSource:
    url: str
    ref: str
    path: str = "."
    revision: str | None = None
    secret: str | None = None


SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclass(frozen=True)
class Requirement:
    """One ``matchExpressions`` entry of a label selector."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        inside = self.key in labels and labels[self.key] in self.values
        return inside if self.operator == "In" else not inside


@dataclass(frozen=True)
class PodSelector:
    """``spec.target.selector``: the broker pods, by label (Kubernetes LabelSelector rules)."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and \
            all(r.matches(labels) for r in self.match_expressions)


@dataclass(frozen=True)
class CanaryStrategy:
    """``spec.target.strategy.canary``: the first wave, which must pass before any other."""

    enabled: bool = True
    count: int = 1
    probe_timeout_seconds: int = 60


@dataclass(frozen=True)
class WaveStrategy:
    """``spec.target.strategy.waves``: how many pods may be updating at once after the canary
    (a count, or a percent of the pods, rounded down, at least 1), and how long each may take."""

    max_unavailable: int | str = "25%"
    pod_timeout_seconds: int = 120

    def size(self, pods: int) -> int:
        value = self.max_unavailable
        if isinstance(value, str):
            value = pods * int(value.removesuffix("%")) // 100
        return max(1, value)


@dataclass(frozen=True)
class PluginSpec:
    namespace: str
    name: str
    uid: str
    generation: int
    broker: str
    source: GitSource
    repository: str
    template: str | None = None
    push_secret: str | None = None
    plain_http: bool = False
    configmap: str | None = None
    rollout: str = "Automatic"
    settings: Mapping[str, str] = field(default_factory=dict)
    probes: tuple[Probe, ...] = ()
    enabled: bool = True
    history_limit: int = 5
    timeout_seconds: int | None = None
    selector: PodSelector | None = None
    sidecar_port: int = 9443
    canary: CanaryStrategy = field(default_factory=CanaryStrategy)
    waves: WaveStrategy = field(default_factory=WaveStrategy)

    @property
    def uses_canary(self) -> bool:
        """A new release goes to the selected pods in waves, canary first, through per-pod
        keys, before it becomes the plugin key. With the canary disabled it is written to the
        plugin key at once (every pod takes it together; per-pod status still follows)."""
        return self.selector is not None and self.canary.enabled and \
            self.rollout == "Automatic"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def parse_plugin(obj: Obj) -> PluginSpec:
    """The spec of a BrokerPlugin object, or ``InvalidSpec`` saying which field is wrong."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec")
    where = f"BrokerPlugin {meta.get('namespace')}/{meta.get('name')}"
    if not isinstance(spec, Mapping):
        raise InvalidSpec(f"{where}: spec is missing")
    git = _mapping(_mapping(spec.get("source"), f"{where}: spec.source").get("git"),
                   f"{where}: spec.source.git")
    image = _mapping(spec.get("image"), f"{where}: spec.image")
    target = spec.get("target")
    target = _mapping(target, f"{where}: spec.target") if target is not None else {}
    build = spec.get("build") or {}
    source = GitSource(
        url=_str(git.get("url"), f"{where}: spec.source.git.url"),
        ref=_str(git.get("ref", "main"), f"{where}: spec.source.git.ref"),
        path=_str(git.get("path", "."), f"{where}: spec.source.git.path"),
        revision=_opt_str(git.get("revision"), f"{where}: spec.source.git.revision"),
        secret=_secret_name(git.get("secretRef"), f"{where}: spec.source.git.secretRef"),
    )
    settings = spec.get("settings") or {}
    if not isinstance(settings, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in settings.items()):
        raise InvalidSpec(f"{where}: spec.settings must map strings to strings")
    return PluginSpec(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        generation=int(meta.get("generation") or 0),
        broker=_str(spec.get("broker"), f"{where}: spec.broker"),
        source=source,
        repository=_str(image.get("repository"), f"{where}: spec.image.repository"),
        template=_opt_str(spec.get("template"), f"{where}: spec.template"),
        push_secret=_secret_name(image.get("pushSecretRef"), f"{where}: spec.image.pushSecretRef"),
        plain_http=bool(image.get("plainHTTP", False)),
        configmap=_opt_str(target.get("configMap"), f"{where}: spec.target.configMap"),
        rollout=str(target.get("rollout", "Automatic")),
        settings=dict(settings),
        probes=_probes(spec.get("probes") or [], f"{where}: spec.probes"),
        enabled=bool(spec.get("enabled", True)),
        history_limit=int(spec.get("buildHistoryLimit", 5)),
        timeout_seconds=(int(build["timeoutSeconds"]) if isinstance(build, Mapping)
                         and build.get("timeoutSeconds") else None),
        selector=(_selector(target["selector"], f"{where}: spec.target.selector")
                  if target.get("selector") is not None else None),
        sidecar_port=_port(target.get("sidecarPort", 9443), f"{where}: spec.target.sidecarPort"),
        canary=_canary(((target.get("strategy") or {}).get("canary") or {}),
                       f"{where}: spec.target.strategy.canary"),
        waves=_waves(((target.get("strategy") or {}).get("waves") or {}),
                     f"{where}: spec.target.strategy.waves"),
    )


@dataclass(frozen=True)
class BuildView:
    """What the controller needs to know about one PluginBuild."""

    namespace: str
    name: str
    plugin: str
    phase: str
    created: str
    commit: str | None
    generation: int | None
    trigger: str
    holder: str | None
    attempts: int
    next_attempt_at: str | None

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED


def parse_build(obj: Obj) -> BuildView:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    generation = spec.get("pluginGeneration")
    return BuildView(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        plugin=str(spec.get("plugin", "")),
        phase=str(status.get("phase") or "Pending"),
        created=str(meta.get("creationTimestamp", "")),
        # A request without a commit (a webhook's poke) is known by what it built.
        commit=spec.get("commit") or status.get("commit") or None,
        generation=int(generation) if generation is not None else None,
        trigger=str((spec.get("trigger") or {}).get("type", "Manual")),
        holder=status.get("holder") or None,
        attempts=int(status.get("attempts") or 0),
        next_attempt_at=status.get("nextAttemptAt") or None,
    )


# --- conditions (Kubernetes conventions) ----------------------------------------------------


def set_condition(conditions: Sequence[Obj], type_: str, status: str, reason: str,
                  message: str, now: str, generation: int) -> list[dict[str, Any]]:
    """``conditions`` with ``type_`` set; ``lastTransitionTime`` moves only if status changes."""
    result: list[dict[str, Any]] = []
    found = False
    for cond in conditions:
        if cond.get("type") != type_:
            result.append(dict(cond))
            continue
        found = True
        changed = cond.get("status") != status
        result.append({"type": type_, "status": status, "reason": reason,
                       "message": message[:32000], "observedGeneration": generation,
                       "lastTransitionTime": now if changed else cond.get(
                           "lastTransitionTime", now)})
    if not found:
        result.append({"type": type_, "status": status, "reason": reason,
                       "message": message[:32000], "observedGeneration": generation,
                       "lastTransitionTime": now})
    return result


def get_condition(conditions: Sequence[Obj], type_: str) -> Obj | None:
    return next((c for c in conditions if c.get("type") == type_), None)


# --- field helpers ----------------------------------------------------------------------------


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidSpec(f"{where}: expected an object, found {type(value).__name__}")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidSpec(f"{where}: expected a non-empty string, found {value!r}")
    return value


def _opt_str(value: Any, where: str) -> str | None:
    return None if value in (None, "") else _str(value, where)


def _secret_name(value: Any, where: str) -> str | None:
    if value is None:
        return None
    return _str(_mapping(value, where).get("name"), f"{where}.name")


def _selector(value: Any, where: str) -> PodSelector:
    value = _mapping(value, where)
    labels = _mapping(value.get("matchLabels") or {}, f"{where}.matchLabels")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise InvalidSpec(f"{where}.matchLabels: expected a map of strings to strings")
    expressions = value.get("matchExpressions") or []
    if not isinstance(expressions, list):
        raise InvalidSpec(f"{where}.matchExpressions: expected a list")
    requirements = []
    for i, item in enumerate(expressions):
        item = _mapping(item, f"{where}.matchExpressions[{i}]")
        operator = item.get("operator")
        values = item.get("values") or []
        if operator not in SELECTOR_OPERATORS:
            raise InvalidSpec(f"{where}.matchExpressions[{i}].operator: expected one of "
                              f"{', '.join(SELECTOR_OPERATORS)}, found {operator!r}")
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values) or \
                bool(values) != (operator in ("In", "NotIn")):
            raise InvalidSpec(f"{where}.matchExpressions[{i}].values: In/NotIn need a list of "
                              "strings, Exists/DoesNotExist none")
        requirements.append(Requirement(_str(item.get("key"),
                                             f"{where}.matchExpressions[{i}].key"),
                                        operator, tuple(values)))
    if not labels and not requirements:
        raise InvalidSpec(f"{where}: an empty selector would select every pod of the "
                          "namespace; name the broker pods' labels (matchLabels)")
    return PodSelector(tuple(sorted(labels.items())), tuple(requirements))


def _port(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
        raise InvalidSpec(f"{where}: expected a port number 1-65535, found {value!r}")
    return value


def _waves(value: Any, where: str) -> WaveStrategy:
    value = _mapping(value, where)
    bound = value.get("maxUnavailable", "25%")
    if isinstance(bound, str):
        number = bound.removesuffix("%")
        if not (bound.endswith("%") and number.isdigit() and 0 < int(number) <= 100):
            raise InvalidSpec(f"{where}.maxUnavailable: expected a count or a percent "
                              f"(1%-100%), found {bound!r}")
    elif not isinstance(bound, int) or isinstance(bound, bool) or bound < 1:
        raise InvalidSpec(f"{where}.maxUnavailable: expected at least 1, found {bound!r}")
    timeout = value.get("podTimeoutSeconds", 120)
    if not isinstance(timeout, int) or timeout < 1:
        raise InvalidSpec(f"{where}.podTimeoutSeconds: expected at least 1, found {timeout!r}")
    return WaveStrategy(bound, timeout)


def _canary(value: Any, where: str) -> CanaryStrategy:
    value = _mapping(value, where)
    strategy = CanaryStrategy(enabled=bool(value.get("enabled", True)),
                              count=int(value.get("count", 1)),
                              probe_timeout_seconds=int(value.get("probeTimeoutSeconds", 60)))
    if strategy.count < 1 or strategy.probe_timeout_seconds < 1:
        raise InvalidSpec(f"{where}: count and probeTimeoutSeconds must be at least 1")
    return strategy


def _probes(value: Any, where: str) -> tuple[Probe, ...]:
    if not isinstance(value, list):
        raise InvalidSpec(f"{where}: expected a list")
    probes = []
    for i, item in enumerate(value):
        item = _mapping(item, f"{where}[{i}]")
        if "password" in item:  # the CRD refuses it too; its value is not repeated
            raise InvalidSpec(f"{where}[{i}].password: {INLINE_PROBE_CREDENTIAL_REFUSAL}")
        try:
            password_from = (parse_secret_key_ref(item["passwordFrom"],
                                                  f"{where}[{i}].passwordFrom")
                             if "passwordFrom" in item else None)
        except ContractError as e:
            raise InvalidSpec(str(e)) from None
        probes.append(Probe(name=_str(item.get("name"), f"{where}[{i}].name"),
                            action=item.get("action", "connect"),
                            username=str(item.get("username", "")),
                            expect=item.get("expect", "refused"),
                            password_from=password_from,
                            topic=str(item.get("topic", ""))))
    return tuple(probes)
