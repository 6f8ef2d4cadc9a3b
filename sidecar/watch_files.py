"""Watch mounted ConfigMap directories with inotify and wake the reconcile loop on a change.

The watch is on each *directory*: the kubelet swaps the ``..data`` symlink inside it, the key
files never change in place. Only what can change the desired state wakes the loop: ``..data``
appearing or going (the swap), a visible key created, written, moved or removed (plain
directories), the directory itself going away, or the kernel dropping events. The writer's own
entries (``..<timestamp>`` version directories, ``..data_tmp``) are ignored and reads (ours
included) are not even subscribed to: a reconcile started when the new version directory is
created reads the old state and holds the loop while the swap that matters arrives.

watchdog's inotify layer (``InotifyFD``: one thread reading the descriptor) calls us for each
event and we notify the trigger directly. Its observer API is not used on purpose: it adds an
emitter and a dispatcher thread with queues between the kernel and the loop and holds an
unpaired rename half for up to 0.5 s, which set the tail of the propagation latency.

Events are only a hint: the loop re-reads the state through ``desired.read_documents`` and
compares content hashes, so a missed, duplicated or reordered event cannot make the sidecar
apply a wrong or half-written state, and the periodic resync bounds the delay of an event never
delivered (also after a watched directory was removed: its watch is gone).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from watchdog.observers.inotify_c import CallbackId, InotifyEvent, InotifyFD, Mask
from watchdog.observers.inotify_c import InotifyConstants as C

from sidecar.desired import DATA_LINK, SourceError
from sidecar.trigger import Trigger

log = logging.getLogger("plugforge.sidecar")

# Content changes of an entry. IN_MODIFY is left out on purpose: it fires on every write(), so
# a reader woken by it could see a half-written plain file; IN_CLOSE_WRITE marks the end.
ENTRY_EVENTS = C.IN_CLOSE_WRITE | C.IN_MOVED_FROM | C.IN_MOVED_TO | C.IN_CREATE | C.IN_DELETE
GONE_EVENTS = C.IN_DELETE_SELF | C.IN_MOVE_SELF | C.IN_IGNORED
WATCH_MASK = ENTRY_EVENTS | C.IN_DELETE_SELF | C.IN_MOVE_SELF | C.IN_ONLYDIR


def is_change(mask: int, name: str) -> bool:
    """Whether one inotify event can change what ``read_documents`` returns (``name`` is empty
    for an event on the watched directory itself)."""
    if mask & (C.IN_Q_OVERFLOW | GONE_EVENTS):
        return True
    if not name or not mask & ENTRY_EVENTS:
        return False
    return name == DATA_LINK or not name.startswith("..")


class _DirectoryCallback:
    """watchdog calls this from its reader thread for every event on one directory."""

    def __init__(self, directory: Path, trigger: Trigger) -> None:
        self.directory = directory
        self.trigger = trigger
        self.stopping = False

    def on_event(self, event: InotifyEvent) -> None:
        if is_change(event.mask, os.fsdecode(event.name)):
            self.trigger.notify(f"{self.directory} changed")

    def on_watch_deleted(self, wd: int) -> None:
        if self.stopping:
            return  # our own stop() removed the watch (a clean shutdown): nothing is wrong
        log.warning("decision=unwatched dir=%s detail=%r", self.directory,
                    "the directory was removed or moved; only the periodic resync reads it now")
        self.trigger.notify(f"{self.directory} changed")

    def on_queue_overflow(self) -> None:
        # The kernel dropped events but kept the watches: nothing to repair. The re-read waits
        # for on_events_lost, which watchdog calls once every callback has heard of this.
        pass

    def on_events_lost(self) -> None:
        # Which entries changed is unknown now: re-read every directory (the loop always reads
        # the whole desired state, so one notification is the whole rescan).
        log.warning("decision=rescan dir=%s detail=%r", self.directory,
                    "file events were lost (inotify queue overflow); re-reading everything")
        self.trigger.notify("file events were lost (inotify queue overflow)", urgent=True)


class DirectoryWatcher:
    def __init__(self, dirs: Sequence[Path], trigger: Trigger) -> None:
        self._dirs = list(dirs)
        self._trigger = trigger
        self._inotify: InotifyFD | None = None
        self._callbacks: list[_DirectoryCallback] = []

    def start(self) -> None:
        try:
            inotify = InotifyFD()
        except OSError as e:
            raise SourceError(f"cannot watch the config directories: {e.strerror}; raise "
                              "fs.inotify.max_user_instances or use --source api") from e
        for directory in self._dirs:
            callback = _DirectoryCallback(directory, self._trigger)
            self._callbacks.append(callback)
            try:
                inotify.add_callback(os.fsencode(directory), Mask(WATCH_MASK), callback,
                                     CallbackId(0))
            except OSError as e:
                inotify.close()
                hint = ("expected a mounted ConfigMap directory" if e.errno in
                        (errno.ENOENT, errno.ENOTDIR) else
                        "raise fs.inotify.max_user_watches" if e.errno == errno.ENOSPC else
                        "check the mount and the sidecar's permissions")
                raise SourceError(f"{directory}: cannot watch it ({e.strerror}); {hint}") from e
        inotify.start()
        self._inotify = inotify

    def stop(self) -> None:
        if self._inotify is None:
            return
        for callback in self._callbacks:
            callback.stopping = True
        self._inotify.stop()
        self._inotify.join(timeout=5)
        self._inotify = None
