"""Linux inotify(7) through libc: the three calls the file watcher needs and the event format.

Nothing sits between the kernel and the caller's read: watchdog's ``InotifyFD`` (used before)
hands every read to a second dispatcher thread and holds reads that follow one another within
1 ms to coalesce them, which put 1-2 ms between the kubelet's ``..data`` swap and the reconcile
loop waking (measured: ``bench/propagation_profile.py``).
"""

from __future__ import annotations

import ctypes
import os
import struct
from typing import NamedTuple

# <sys/inotify.h>
IN_CLOSE_WRITE = 0x00000008
IN_CLOSE_NOWRITE = 0x00000010
IN_OPEN = 0x00000020
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
_IN_CLOEXEC = os.O_CLOEXEC
_IN_NONBLOCK = os.O_NONBLOCK

_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len (of the NUL-padded name that follows)
_BUFFER = 64 * 1024  # many events per read; a name is at most NAME_MAX + 1 bytes

_libc = ctypes.CDLL(None, use_errno=True)


class Event(NamedTuple):
    wd: int
    """The watch the event is for; -1 for ``IN_Q_OVERFLOW`` (events were dropped)."""
    mask: int
    name: str
    """The entry inside the watched directory; empty for the directory itself."""


def _check(result: int) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


class Inotify:
    """One inotify instance (a non-blocking descriptor: poll it, then ``read``)."""

    def __init__(self) -> None:
        self.fd = _check(_libc.inotify_init1(_IN_CLOEXEC | _IN_NONBLOCK))

    def add_watch(self, path: str, mask: int) -> int:
        return _check(_libc.inotify_add_watch(self.fd, os.fsencode(path), ctypes.c_uint32(mask)))

    def read(self) -> list[Event]:
        """The events queued now; none if the descriptor has nothing to read."""
        try:
            data = os.read(self.fd, _BUFFER)
        except BlockingIOError:
            return []
        return parse_events(data)

    def close(self) -> None:
        """Closing removes every watch (no ``IN_IGNORED`` reaches anyone: nobody reads)."""
        os.close(self.fd)


def parse_events(data: bytes) -> list[Event]:
    events = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
        offset += _HEADER.size
        name = data[offset:offset + length].rstrip(b"\0")
        offset += length
        events.append(Event(wd, mask, os.fsdecode(name)))
    return events
