"""Many MQTT 3.1.1 clients from one thread: the load of the hot-swap benchmark.

A thousand paho clients need a thousand threads (or a hand-built selector loop); this is a
minimal asyncio client instead, enough for the load: CONNECT, SUBSCRIBE, PUBLISH at QoS 1 with
PUBACK both ways, PINGREQ, DISCONNECT. Every client subscribes to its own topic and publishes
there, so each message it sends should come back to it exactly once: a message that the broker
acknowledged and never delivered is lost. A connection the broker closes before ``stop`` is a
disconnect. Clients do not reconnect (a reconnect would hide the disconnect).
"""

from __future__ import annotations

import asyncio
import random
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

CONNACK, PUBLISH, PUBACK, SUBACK, PINGRESP = 0x20, 0x30, 0x40, 0x90, 0xD0


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str) -> bytes:
    data = s.encode()
    return struct.pack("!H", len(data)) + data


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def connect_packet(client_id: str, username: str, password: str, keepalive: int) -> bytes:
    flags = 0x80 | 0x40 | 0x02  # username, password, clean session
    return _packet(0x10, _str("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive)
                   + _str(client_id) + _str(username) + _str(password))


@dataclass
class LoadStats:
    clients: int = 0
    connected: int = 0
    refused: list[str] = field(default_factory=list)
    disconnects: list[str] = field(default_factory=list)
    sent: int = 0
    acked: int = 0
    delivered: int = 0
    duplicates: int = 0
    lost: int = 0
    """Sent and never delivered back (acknowledged or not)."""
    unacked: int = 0


class _Client:
    def __init__(self, load: MqttLoad, index: int) -> None:
        self.load, self.index = load, index
        self.topic = f"{load.topic_prefix}/{index}"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.next_id = 0
        self.inflight: dict[int, int] = {}  # packet id -> sequence number
        self.sent: set[int] = set()
        self.acked: set[int] = set()
        self.delivered: set[int] = set()
        self.duplicates = 0
        self.closing = False
        self.subscribed = asyncio.Event()

    async def connect(self) -> None:
        username, password = self.load.credentials(self.index)
        self.reader, self.writer = await asyncio.open_connection(self.load.host, self.load.port)
        self.writer.write(connect_packet(f"{self.load.topic_prefix}-{self.index}", username,
                                         password, self.load.keepalive))
        first, body = await self._read()
        if first & 0xF0 != CONNACK or len(body) < 2 or body[1] != 0:
            code = body[1] if first & 0xF0 == CONNACK and len(body) > 1 else None
            raise ConnectionRefusedError(f"CONNACK return code {code}")
        self.writer.write(_packet(0x82, struct.pack("!H", self._packet_id())
                                  + _str(self.topic) + b"\x01"))

    def _packet_id(self) -> int:
        self.next_id = self.next_id % 65535 + 1
        return self.next_id

    async def _read(self) -> tuple[int, bytes]:
        assert self.reader is not None
        first = (await self.reader.readexactly(1))[0]
        length, shift = 0, 0
        while True:
            byte = (await self.reader.readexactly(1))[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return first, await self.reader.readexactly(length)

    async def read_loop(self) -> None:
        assert self.writer is not None
        try:
            while True:
                first, body = await self._read()
                kind = first & 0xF0
                if kind == PUBLISH:
                    size = struct.unpack("!H", body[:2])[0]
                    rest = body[2 + size:]
                    if (first >> 1) & 3:
                        self.writer.write(_packet(0x40, rest[:2]))
                        rest = rest[2:]
                    seq = int(rest)
                    if seq in self.delivered:
                        self.duplicates += 1
                    self.delivered.add(seq)
                elif kind == PUBACK:
                    seq = self.inflight.pop(struct.unpack("!H", body[:2])[0], -1)
                    self.acked.add(seq)
                elif kind == SUBACK:
                    if body[2:3] == b"\x80":
                        self.load.note_refused(self.index, "SUBSCRIBE refused")
                    self.subscribed.set()
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as e:
            if not self.closing:
                self.load.note_disconnect(self.index, type(e).__name__)
        finally:
            self.subscribed.set()

    async def publish_loop(self) -> None:
        assert self.writer is not None
        await asyncio.sleep(random.uniform(0, self.load.interval))
        last_sent = time.monotonic()
        seq = 0
        while not self.load.stopping.is_set() and not self.writer.is_closing():
            pid = self._packet_id()
            self.inflight[pid] = seq
            self.sent.add(seq)
            self.writer.write(_packet(0x32, _str(self.topic) + struct.pack("!H", pid)
                                      + str(seq).encode()))
            seq += 1
            last_sent = time.monotonic()
            await asyncio.sleep(self.load.interval)
            if time.monotonic() - last_sent > self.load.keepalive / 2:
                self.writer.write(b"\xc0\x00")  # PINGREQ


class MqttLoad:
    """``clients`` connections to ``host:port``, each publishing every ``interval`` seconds.

    Runs its own event loop on one thread: ``start()`` returns once every client has connected
    and subscribed (or was refused), ``stop()`` stops publishing, waits ``drain`` seconds for
    acknowledgements and deliveries, disconnects cleanly and returns the counts.
    """

    def __init__(self, host: str, port: int, clients: int,
                 credentials: Callable[[int], tuple[str, str]], *, interval: float = 10.0,
                 keepalive: int = 60, topic_prefix: str = "bench", concurrency: int = 50) -> None:
        self.host, self.port, self.clients = host, port, clients
        self.credentials, self.interval, self.keepalive = credentials, interval, keepalive
        self.topic_prefix, self.concurrency = topic_prefix, concurrency
        self.stats = LoadStats(clients=clients)
        self.loop = asyncio.new_event_loop()
        self.stopping = asyncio.Event()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._clients: list[_Client] = []
        self._tasks: list[asyncio.Task[None]] = []

    def note_disconnect(self, index: int, why: str) -> None:
        self.stats.disconnects.append(f"client {index}: {why} at {time.strftime('%X')}")

    def note_refused(self, index: int, why: str) -> None:
        self.stats.refused.append(f"client {index}: {why}")

    def start(self, timeout: float = 180.0) -> LoadStats:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout)
        return self.stats

    async def _start(self) -> None:
        gate = asyncio.Semaphore(self.concurrency)

        async def one(i: int) -> None:
            client = _Client(self, i)
            async with gate:
                try:
                    await asyncio.wait_for(client.connect(), 30)
                except (TimeoutError, OSError, asyncio.IncompleteReadError) as e:
                    self.note_refused(i, f"{type(e).__name__}: {e}")
                    return
            self._clients.append(client)
            self._tasks.append(asyncio.create_task(client.read_loop()))
            await asyncio.wait_for(client.subscribed.wait(), 60)

        await asyncio.gather(*(one(i) for i in range(self.clients)))
        self.stats.connected = len(self._clients)
        self._tasks += [asyncio.create_task(c.publish_loop()) for c in self._clients]

    def stop(self, drain: float = 5.0) -> LoadStats:
        asyncio.run_coroutine_threadsafe(self._stop(drain), self.loop).result(drain + 60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        return self.stats

    async def _stop(self, drain: float) -> None:
        self.stopping.set()
        await asyncio.sleep(drain)
        for c in self._clients:
            c.closing = True
            if c.writer is not None and not c.writer.is_closing():
                c.writer.write(b"\xe0\x00")  # DISCONNECT
                c.writer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        s = self.stats
        s.sent = sum(len(c.sent) for c in self._clients)
        s.acked = sum(len(c.acked & c.sent) for c in self._clients)
        s.delivered = sum(len(c.delivered & c.sent) for c in self._clients)
        s.duplicates = sum(c.duplicates for c in self._clients)
        s.lost = s.sent - s.delivered
        s.unacked = s.sent - s.acked
