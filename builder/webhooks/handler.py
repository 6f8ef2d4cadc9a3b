"""One delivery in, one response out: verify, dedupe, parse, match, offer. No sockets here.

Order matters. The signature is checked before anything in the body is parsed, so an
unauthenticated sender only ever costs one HMAC per distinct secret and learns nothing but
401. Delivery ids are remembered only after a delivery verified, so nobody can burn a real
delivery id in advance with an unsigned copy. The response lists only plugins whose secret
verified the delivery: a sender learns nothing about other tenants' plugins.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from builder.errors import BuilderError
from builder.webhooks import matching
from builder.webhooks.dedupe import BuildRequest, DeliveryCache, Offer, Trigger
from builder.webhooks.events import Ignored, PayloadError, Ping, PushEvent, parse
from builder.webhooks.matching import PluginSource, SecretRef
from builder.webhooks.plugins import PluginProvider
from builder.webhooks.signatures import Forge, has_credentials, verify

log = logging.getLogger("plugforge.webhooks")


@dataclass(frozen=True)
class Response:
    status: int
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class Stats:
    deliveries: int = 0
    unauthorized: int = 0
    duplicates: int = 0
    invalid: int = 0
    ignored: int = 0
    pings: int = 0
    pushes: int = 0
    offers: dict[str, int] = field(default_factory=lambda: {o.value: 0 for o in Offer})
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def bump(self, name: str, offer: Offer | None = None) -> None:
        with self.lock:
            if offer is not None:
                self.offers[offer.value] += 1
            else:
                setattr(self, name, getattr(self, name) + 1)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"deliveries": self.deliveries, "unauthorized": self.unauthorized,
                    "duplicates": self.duplicates, "invalid": self.invalid,
                    "ignored": self.ignored, "pings": self.pings, "pushes": self.pushes,
                    "offers": dict(self.offers)}


@dataclass(frozen=True)
class _Index:
    plugins: Sequence[PluginSource]
    """The provider's list it was built from (compared by identity)."""
    by_secret: dict[SecretRef, frozenset[int]]
    """Positions in ``plugins``, per webhook Secret."""
    by_key: dict[str, int]
    """Position of each plugin (``namespace/name``)."""
    pushes: matching.PushIndex
    """Positions by repository, ref and path (``matching.index_plugins``)."""

    @classmethod
    def of(cls, plugins: Sequence[PluginSource]) -> _Index:
        by_secret: dict[SecretRef, list[int]] = {}
        for i, plugin in enumerate(plugins):
            if plugin.secret is not None:
                by_secret.setdefault(plugin.secret, []).append(i)
        return cls(plugins, {ref: frozenset(members) for ref, members in by_secret.items()},
                   {p.key: i for i, p in enumerate(plugins)}, matching.index_plugins(plugins))


class WebhookHandler:
    def __init__(self, provider: PluginProvider, deliveries: DeliveryCache,
                 offer: Callable[[BuildRequest], Offer]) -> None:
        self._provider = provider
        self._deliveries = deliveries
        self._offer = offer
        self.stats = Stats()
        self._index_lock = threading.Lock()
        self._indexed: _Index | None = None

    def handle(self, forge: Forge, headers: Mapping[str, str], body: bytes,
               plugin: str | None = None) -> Response:
        """``plugin`` (``namespace/name``, from a per-plugin receiver path): check the delivery
        against that BrokerPlugin's secret only."""
        self.stats.bump("deliveries")
        try:
            index, allowed = self._verified(forge, headers, body, plugin)
        except BuilderError as e:
            log.error("%s delivery: cannot check it, the plugin list is unavailable: %s",
                      forge.value, e)
            return Response(503, {"error": "plugin list unavailable, redeliver later"},
                            (("Retry-After", "30"),))
        if not allowed:
            self.stats.bump("unauthorized")
            log.warning("%s delivery refused: %s", forge.value,
                        "signature does not verify with any webhook secret"
                        if has_credentials(forge, headers) else "no signature or token header")
            return Response(401, {"error": "signature verification failed: the delivery is not "
                                  "signed with the webhook secret of any BrokerPlugin "
                                  "(spec.webhook.secretRef)"})
        try:
            parsed = parse(forge, headers, body)
        except PayloadError as e:
            self.stats.bump("invalid")
            log.warning("%s delivery rejected: %s", forge.value, e)
            return Response(e.status, {"error": str(e)})
        if parsed.delivery and not self._deliveries.reserve(f"{forge.value}:{parsed.delivery}"):
            self.stats.bump("duplicates")
            log.info("%s delivery %s is a redelivery: already handled", forge.value,
                     parsed.delivery)
            return Response(200, {"status": "duplicate", "delivery": parsed.delivery,
                                  "queued": []})
        if isinstance(parsed, Ping):
            self.stats.bump("pings")
            return Response(200, {"status": "pong"})
        if isinstance(parsed, Ignored):
            self.stats.bump("ignored")
            log.info("%s delivery %s (%s) ignored: %s", forge.value, parsed.delivery or "-",
                     parsed.event, parsed.reason)
            return Response(202, {"status": "ignored", "reason": parsed.reason, "queued": []})
        self.stats.bump("pushes")
        return self._push(parsed, index, allowed)

    def _verified(self, forge: Forge, headers: Mapping[str, str], body: bytes,
                  only: str | None = None) -> tuple[_Index, frozenset[int]]:
        """The index and the positions of the plugins whose secret signed the delivery."""
        index = self._index()
        results: dict[bytes, bool] = {}  # one HMAC per distinct secret, not per plugin
        allowed: frozenset[int] = frozenset()
        by_secret = index.by_secret
        if only is not None:
            at = index.by_key.get(only)
            secret_ref = index.plugins[at].secret if at is not None else None
            by_secret = {secret_ref: frozenset({at})} \
                if at is not None and secret_ref is not None else {}
        for ref, members in by_secret.items():
            secret = self._provider.secret(ref)
            if secret is None:
                continue
            if secret not in results:
                results[secret] = verify(forge, headers, body, secret)
            if results[secret]:
                allowed = allowed | members if allowed else members
        return index, allowed

    def _index(self) -> _Index:
        """The provider's plugins grouped by webhook Secret, rebuilt only when the provider
        hands out a new list: a delivery then costs one secret look-up and HMAC per Secret,
        not a secret look-up per plugin."""
        plugins = self._provider.plugins()
        with self._index_lock:
            if self._indexed is None or self._indexed.plugins is not plugins:
                self._indexed = _Index.of(plugins)
            return self._indexed

    def _push(self, event: PushEvent, index: _Index, allowed: frozenset[int]) -> Response:
        planned = matching.plan_indexed(event, index.plugins, index.pushes, allowed)
        decisions = planned.decisions
        queued: list[dict[str, str]] = []
        skipped: list[dict[str, str]] = []
        trigger = Trigger(event.event, event.delivery, event.pusher, event.after,
                          event.compare_url, event.forge.value)
        for d in decisions:
            if not d.build:
                skipped.append({"plugin": d.plugin.key, "reason": d.reason})
                continue
            offer = self._offer(BuildRequest(d.plugin.key, event.after, event.before, trigger))
            self.stats.bump("offers", offer)
            if offer is Offer.STALE:
                skipped.append({"plugin": d.plugin.key, "reason": "a newer push to this ref "
                                "was seen already; this commit is not built"})
            else:
                queued.append({"plugin": d.plugin.key, "commit": event.after,
                               "coalescing": offer.value})
        log.info("%s push %s to %s at %s by %s: queued %s; skipped %s", event.forge.value,
                 event.delivery or "-", event.ref, event.after[:12], event.pusher or "?",
                 [q["plugin"] for q in queued] or "none",
                 [f"{s['plugin']} ({s['reason']})" for s in skipped] or "none")
        if planned.untouched:
            log.info("%s push %s: %d more plugins of the repository not rebuilt, no changed "
                     "file under their path", event.forge.value, event.delivery or "-",
                     planned.untouched)
        body: dict[str, Any] = {"status": "accepted", "event": "push", "ref": event.ref,
                                "commit": event.after, "queued": queued, "skipped": skipped}
        if planned.untouched:
            body["untouched"] = planned.untouched
        if not decisions and not planned.untouched:
            body["status"] = "ignored"
            repos = ", ".join(sorted(map(str, matching.repo_ids(event.repository_urls))))
            body["reason"] = (f"no BrokerPlugin using this webhook secret follows {repos} "
                              f"at {event.ref}")
        return Response(202, body)
