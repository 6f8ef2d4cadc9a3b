"""Hand coalesced build requests to the builder: one PluginBuild per request.

A PluginBuild without a status is a Pending build request to the builder's controller (see
builder/controller.py and manifests/crds/), so a request survives a builder restart and records
its trigger: event, delivery, pusher, commit, compare URL. The request names no commit: it
asks for "the plugin's ref, now" (``builder.build.refs``), whatever commit the push claimed. The
controller runs the newest Pending build of a plugin (creation time, then name) and marks
older ones Superseded; the coalescer in front of this sink requests at most one build per
plugin per quiet period (at least a second), so two requests of one replica never share a
creation second. The name is derived from the delivery, so when a forge redelivers to another
builder replica the create conflicts instead of queueing the build twice.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

from builder.errors import BuilderError, Conflict
from builder.kube import API_VERSION, PLUGIN_LABEL, Kube
from builder.webhooks.dedupe import BuildRequest, Coalescer
from builder.webhooks.matching import PluginSource

log = logging.getLogger("plugforge.webhooks")

TRIGGER_LABEL = "plugforge.dev/trigger"

BuildSink = Callable[[BuildRequest], None]


def _clean(text: str, limit: int) -> str:
    """Printable, encodable, bounded: a pusher name comes from outside."""
    printable = "".join(c if c.isprintable() else "?" for c in text)
    return printable.encode("utf-8", "replace").decode("utf-8")[:limit]


def build_name(plugin: str, commit: str, delivery: str) -> str:
    token = delivery or uuid.uuid4().hex
    suffix = hashlib.sha256(token.encode()).hexdigest()[:8]
    return f"{plugin[:230]}-{commit[:7]}-{suffix}"


def plugin_build(plugin: PluginSource, request: BuildRequest) -> dict[str, Any]:
    """The PluginBuild object that asks for ``request`` (pure)."""
    t = request.trigger
    trigger: dict[str, str] = {"type": "Webhook", "event": _clean(f"{t.forge}:{t.event}", 64)}
    if t.user:
        trigger["user"] = _clean(t.user, 256)
    if t.delivery:
        trigger["delivery"] = t.delivery[:128]
    if t.compare_url:
        trigger["compareURL"] = _clean(t.compare_url, 2048)
    metadata: dict[str, Any] = {
        "name": build_name(plugin.name, request.commit, f"{t.forge}/{t.delivery}"
                           if t.delivery else ""),
        "namespace": plugin.namespace,
        "labels": {PLUGIN_LABEL: plugin.name[:63], TRIGGER_LABEL: "webhook"},
    }
    if plugin.uid:
        metadata["ownerReferences"] = [{"apiVersion": API_VERSION, "kind": "BrokerPlugin",
                                        "name": plugin.name, "uid": plugin.uid,
                                        "blockOwnerDeletion": False}]
    # A poke, not an order: no spec.commit, so the build resolves the plugin's ref itself
    # when it starts. A replayed or forged push cannot move a plugin backwards or off its
    # branch; the commit it named is kept as a record only.
    trigger["commit"] = request.commit
    spec: dict[str, Any] = {"plugin": plugin.name, "trigger": trigger}
    if plugin.generation is not None:
        # Lets the controller see that this (generation, commit) was requested already.
        spec["pluginGeneration"] = plugin.generation
    return {"apiVersion": API_VERSION, "kind": "PluginBuild", "metadata": metadata,
            "spec": spec}


class PluginBuildSink:
    """``BuildSink`` that creates PluginBuilds through the apiserver."""

    def __init__(self, kube: Kube, lookup: Callable[[str], PluginSource | None]) -> None:
        self._kube = kube
        self._lookup = lookup

    def __call__(self, request: BuildRequest) -> None:
        plugin = self._lookup(request.plugin_key)
        if plugin is None:
            log.info("plugin %s vanished before its build request; dropped", request.plugin_key)
            return
        body = plugin_build(plugin, request)
        try:
            self._kube.create_build(plugin.namespace, body)
        except Conflict:
            log.info("build request %s/%s exists already (redelivery to another replica)",
                     plugin.namespace, body["metadata"]["name"])
            return
        log.info("requested build %s/%s of %s at %s (delivery %s)", plugin.namespace,
                 body["metadata"]["name"], plugin.key, request.commit[:12],
                 request.trigger.delivery or "-")


class Enqueuer:
    """Background thread: hands due requests from the coalescer to the sink, retrying failures."""

    def __init__(self, coalescer: Coalescer, sink: BuildSink, retry_delay: float = 2.0,
                 max_attempts: int = 5) -> None:
        self._coalescer = coalescer
        self._sink = sink
        self._retry_delay = retry_delay
        self._max_attempts = max_attempts
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhook-enqueuer", daemon=True)
        self.handed_off = 0
        self.failed = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._coalescer.changed:
            self._coalescer.changed.notify_all()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            due, next_in = self._coalescer.take_due()
            for request in due:
                self._deliver(request)
            if due:
                continue
            with self._coalescer.changed:
                self._coalescer.changed.wait(timeout=min(next_in, 1.0) if next_in else 1.0)

    def _deliver(self, request: BuildRequest) -> None:
        for attempt in range(1, self._max_attempts + 1):
            try:
                self._sink(request)
                self.handed_off += 1
                return
            except BuilderError as e:
                if not e.transient or attempt == self._max_attempts:
                    self.failed += 1
                    log.error("build request for %s at %s failed: %s", request.plugin_key,
                              request.commit[:12], e)
                    return
                log.warning("build request for %s failed (attempt %d), retrying: %s",
                            request.plugin_key, attempt, e)
                if self._stop.wait(self._retry_delay * attempt):
                    return
            except Exception:
                # A bug in a sink must not stop every later build request.
                self.failed += 1
                log.exception("build request for %s at %s failed unexpectedly",
                              request.plugin_key, request.commit[:12])
                return
