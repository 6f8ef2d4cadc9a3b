"""Watch mounted ConfigMap directories with inotify and wake the reconcile loop on a change.

The watch is on each *directory*: the kubelet swaps the ``..data`` symlink inside it, the key
files never change in place. Only what can change the desired state wakes the loop: ``..data``
appearing or going (the swap), a visible key created, written, moved or removed (plain
directories), the directory itself going away, or the kernel dropping events. The writer's own
entries (``..<timestamp>`` version directories, ``..data_tmp``) are ignored and reads (ours
included) are not even subscribed to: a reconcile started when the new version directory is
created reads the old state and holds the loop while the swap that matters arrives.

One thread blocks in ``poll`` on the inotify descriptor and notifies the trigger itself, once
per directory per batch of events. No queue, dispatcher thread or rename-pairing delay sits
between the kernel and the loop (watchdog had three threads and held an unpaired rename half
for up to 0.5 s, which set the tail of the propagation latency).

Events are only a hint: the loop re-reads the state through ``desired.read_documents`` and
compares content hashes, so a missed, duplicated or reordered event cannot make the sidecar
apply a wrong or half-written state, and the periodic resync bounds the delay of an event never
delivered (also after a watched directory was removed: its watch is gone).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import select
import struct
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from sidecar.desired import DATA_LINK, SourceError
from sidecar.trigger import Trigger

log = logging.getLogger("plugforge.sidecar")

# <sys/inotify.h>
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x0100_0000

# Content changes of an entry. IN_MODIFY is left out on purpose: it fires on every write(), so
# a reader woken by it could see a half-written plain file; IN_CLOSE_WRITE marks the end.
ENTRY_EVENTS = IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
GONE_EVENTS = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED
WATCH_MASK = ENTRY_EVENTS | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR

_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then the name
_READ_SIZE = 64 * 1024


def is_change(mask: int, name: str) -> bool:
    """Whether one inotify event can change what ``read_documents`` returns (``name`` is empty
    for an event on the watched directory itself)."""
    if mask & (IN_Q_OVERFLOW | GONE_EVENTS):
        return True
    if not name or not mask & ENTRY_EVENTS:
        return False
    return name == DATA_LINK or not name.startswith("..")


def parse_events(buffer: bytes) -> Iterator[tuple[int, int, str]]:
    """(watch descriptor, mask, name) of each ``struct inotify_event`` in one read."""
    offset = 0
    while offset + _HEADER.size <= len(buffer):
        wd, mask, _cookie, length = _HEADER.unpack_from(buffer, offset)
        offset += _HEADER.size
        name = buffer[offset:offset + length].split(b"\0", 1)[0]
        offset += length
        yield wd, mask, os.fsdecode(name)


class DirectoryWatcher:
    def __init__(self, dirs: Sequence[Path], trigger: Trigger) -> None:
        self._dirs = list(dirs)
        self._trigger = trigger
        self._watches: dict[int, Path] = {}
        self._fd = -1
        self._stop_r = self._stop_w = -1
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        libc = _libc()
        fd = int(libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK))
        if fd < 0:
            raise SourceError(f"cannot watch the config directories: inotify_init1 failed "
                              f"({os.strerror(ctypes.get_errno())}); raise "
                              "fs.inotify.max_user_instances or use --source api")
        for directory in self._dirs:
            wd = int(libc.inotify_add_watch(fd, os.fsencode(directory), WATCH_MASK))
            if wd < 0:
                code = ctypes.get_errno()
                os.close(fd)
                hint = ("expected a mounted ConfigMap directory" if code in
                        (errno.ENOENT, errno.ENOTDIR) else
                        "raise fs.inotify.max_user_watches" if code == errno.ENOSPC else
                        "check the mount and the sidecar's permissions")
                raise SourceError(f"{directory}: cannot watch it ({os.strerror(code)}); {hint}")
            self._watches[wd] = directory
        self._fd = fd
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="watch-files", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        os.write(self._stop_w, b"x")
        self._thread.join(timeout=5)
        self._thread = None
        for fd in (self._fd, self._stop_r, self._stop_w):
            os.close(fd)

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if self._stop_r in ready:
                return
            try:
                buffer = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                continue
            for reason in self._reasons(buffer):
                self._trigger.notify(reason)

    def _reasons(self, buffer: bytes) -> list[str]:
        reasons: dict[str, None] = {}
        for wd, mask, name in parse_events(buffer):
            if not is_change(mask, name):
                continue
            if mask & IN_Q_OVERFLOW:
                reasons["file events were lost (inotify queue overflow)"] = None
                continue
            directory = self._watches.get(wd)
            if directory is None:
                continue  # IN_IGNORED after the IN_DELETE_SELF already reported
            if mask & GONE_EVENTS:
                del self._watches[wd]
                log.warning("decision=unwatched dir=%s detail=%r", directory,
                            "the directory was removed or moved; only the periodic resync "
                            "reads it now")
            reasons[f"{directory} changed"] = None
        return list(reasons)


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "inotify_init1"):
        raise SourceError("watching config directories needs Linux inotify, which this C "
                          "library lacks; use --source api")
    libc.inotify_init1.argtypes = [ctypes.c_int]
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    return libc
