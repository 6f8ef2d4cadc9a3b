"""What the propagation and memory benchmarks share: the peer's binary, arrival recorders (an
HTTP webhook receiver for the peer, the broker's dynsec responses for plugforge), the update
schedule, and how arrivals are attributed to updates."""

from __future__ import annotations

import http.server
import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from sidecar.adapters.mosquitto_dynsec import RESPONSE_TOPIC

# The tests' broker helpers (tests/ is not a package): the benchmarks reuse them.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import hivemq_support  # noqa: E402
import rabbitmq_adapter_support  # noqa: E402
import sidecar_support  # noqa: E402

from bench.go_programs import peer_program  # noqa: E402

ADMIN = sidecar_support.ADMIN
broker_yaml = sidecar_support.broker_yaml
plugin_yaml = sidecar_support.plugin_yaml
start_dynsec_broker = sidecar_support.start_dynsec_broker
rabbitmq_versions = rabbitmq_adapter_support.build_versions
RabbitMQVersion = rabbitmq_adapter_support.Version
rabbitmq_adapter_options = rabbitmq_adapter_support.adapter_options
HIVEMQ_PLUGIN = hivemq_support.PLUGIN
build_hivemq_images = hivemq_support.build_hivemq_images
start_loader_broker = hivemq_support.start_loader_broker
hivemq_adapter_options = hivemq_support.adapter_options

PEER_LABEL = "configmap-reload 0ec4d67"  # shared/peers/configmap-reload (after v0.15.0)


@dataclass(frozen=True)
class Peer:
    binary: Path
    label: str


def peer() -> Peer:
    """The real configmap-reload, built from its unmodified source in shared/peers/."""
    return Peer(peer_program("configmap-reload"), PEER_LABEL)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"process {pid} has no VmRSS (exited?)")


class Arrivals:
    """Monotonic arrival times, recorded from any thread."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._times: list[float] = []

    def record(self) -> None:
        now = time.monotonic()
        with self._cond:
            self._times.append(now)
            self._cond.notify_all()

    def wait_after(self, after: float, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: any(t >= after for t in self._times), timeout)

    def between(self, start: float, end: float) -> list[float]:
        with self._cond:
            return [t for t in self._times if start <= t < end]

    def count(self) -> int:
        with self._cond:
            return len(self._times)


class WebhookReceiver:
    """The peer's reload target: answers 200 to any POST and records when it arrived."""

    def __init__(self) -> None:
        self.arrivals = Arrivals()
        record = self.arrivals.record

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                record()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/-/reload"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class DynsecResponses:
    """Records each dynsec response to an ``addRoleACL`` command: the broker has applied a
    change the sidecar sent (one response per admin call)."""

    def __init__(self, host: str, port: int, username: str, password: str) -> None:
        self.arrivals = Arrivals()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-responses")
        self._client.username_pw_set(username, password)
        subscribed = threading.Event()
        self._client.on_subscribe = lambda *_: subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect(host, port)
        self._client.loop_start()
        self._client.subscribe(RESPONSE_TOPIC, qos=0)
        if not subscribed.wait(10):
            raise RuntimeError("could not subscribe to the dynsec response topic")

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        responses = json.loads(msg.payload).get("responses", [])
        if any(r.get("command") == "addRoleACL" for r in responses):
            self.arrivals.record()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@dataclass(frozen=True)
class Schedule:
    updates: int = 200
    period: float = 0.3
    burst: int = 20
    burst_gap: float = 0.005
    drain: float = 3.0
    """After the last update of each phase: long enough for a debounced apply to land."""


@dataclass(frozen=True)
class Outcome:
    latencies: list[float]
    """Per received update: its swap to the first arrival attributed to it."""
    received: int
    missed: int
    duplicates: int
    burst_applies: int


@dataclass(frozen=True)
class Contender:
    """One consumer under test: how to give it update ``i``, and where its reactions arrive."""

    update: Callable[[int], None]
    arrivals: Arrivals


def attribute(starts: list[float], arrivals: list[float], end: float
              ) -> tuple[list[float], int]:
    """Update i owns the arrivals in [starts[i], starts[i+1]) (the last one, up to ``end``); its
    latency is to the first of them, later ones are duplicates. Returns (latencies,
    duplicates); updates owning no arrival have no latency."""
    latencies, duplicates = [], 0
    for start, stop in zip(starts, [*starts[1:], end], strict=True):
        seen = [t for t in arrivals if start <= t < stop]
        if seen:
            latencies.append(seen[0] - start)
            duplicates += len(seen) - 1
    return latencies, duplicates


def drive(contenders: Sequence[Contender], schedule: Schedule, first: int = 0
          ) -> list[Outcome]:
    """Run the schedule for every contender at once, interleaved: update i of contender k at
    ``i * period + k * period / len(contenders)``, at fixed times whatever the consumers do.
    Each reacts in a few ms, so they never overlap, yet all share the same stretch of time and
    so the same background load (run one after the other, a busy minute on this shared
    machine landed on one contender only). Then each contender's burst, one at a time, counted
    as one. Outcomes in the order of ``contenders``."""
    starts: list[list[float]] = [[] for _ in contenders]
    offset = schedule.period / len(contenders)
    began = time.monotonic()
    for i in range(schedule.updates):
        for k, contender in enumerate(contenders):
            _sleep_until(began + i * schedule.period + k * offset)
            starts[k].append(time.monotonic())
            contender.update(first + i)
    end = max(s[-1] for s in starts) + schedule.drain
    _sleep_until(end)
    outcomes = []
    for contender, own in zip(contenders, starts, strict=True):
        # Up to the next contender's first update would do; the drain is simpler and as right.
        latencies, duplicates = attribute(own, contender.arrivals.between(own[0], end), end)
        applies = _burst(contender, schedule, first + schedule.updates)
        outcomes.append(Outcome(latencies, len(latencies), schedule.updates - len(latencies),
                                duplicates, applies))
    return outcomes


def _burst(contender: Contender, schedule: Schedule, first: int) -> int:
    burst_start = time.monotonic()
    for i in range(schedule.burst):
        _sleep_until(burst_start + i * schedule.burst_gap)
        contender.update(first + i)
    burst_end = time.monotonic()
    _sleep_until(burst_end + schedule.drain)
    return len(contender.arrivals.between(burst_start, burst_end + schedule.drain))


def _sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        time.sleep(delay)
