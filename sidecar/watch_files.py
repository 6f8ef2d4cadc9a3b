"""Watch mounted ConfigMap directories with inotify and wake the reconcile loop on a change.

The watch is on each *directory*: the kubelet swaps the ``..data`` symlink inside it, the key
files never change in place. Only what can change the desired state wakes the loop: ``..data``
appearing or going (the swap), a visible key created, written, moved or removed (plain
directories), the directory itself going away, or the kernel dropping events. The writer's own
entries (``..<timestamp>`` version directories, ``..data_tmp``) are ignored and reads (ours
included) are not even subscribed to: a reconcile started when the new version directory is
created reads the old state and holds the loop while the swap that matters arrives.

No thread of its own: the inotify descriptor is a source of the trigger, read by the reconcile
loop's own thread when it is readable (``trigger.add_source``), so a kernel event wakes the
loop itself: no reader thread, queue or coalescing window between (``sidecar/inotify.py``).

Events are only a hint: the loop re-reads the state through ``desired.read_documents`` and
compares content hashes, so a missed, duplicated or reordered event cannot make the sidecar
apply a wrong or half-written state, and the periodic resync bounds the delay of an event never
delivered (also after a watched directory was removed: its watch is gone).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Sequence
from pathlib import Path

from sidecar.desired import DATA_LINK, SourceError
from sidecar.inotify import (
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_IGNORED,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_ONLYDIR,
    IN_Q_OVERFLOW,
    Event,
    Inotify,
)
from sidecar.trigger import Trigger

log = logging.getLogger("plugforge.sidecar")

# Content changes of an entry. IN_MODIFY is left out on purpose: it fires on every write(), so
# a reader woken by it could see a half-written plain file; IN_CLOSE_WRITE marks the end.
ENTRY_EVENTS = IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
GONE_EVENTS = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED
WATCH_MASK = ENTRY_EVENTS | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR


def is_change(mask: int, name: str) -> bool:
    """Whether one inotify event can change what ``read_documents`` returns (``name`` is empty
    for an event on the watched directory itself)."""
    if mask & (IN_Q_OVERFLOW | GONE_EVENTS):
        return True
    if not name or not mask & ENTRY_EVENTS:
        return False
    return name == DATA_LINK or not name.startswith("..")


class DirectoryWatcher:
    def __init__(self, dirs: Sequence[Path], trigger: Trigger) -> None:
        self._dirs = list(dirs)
        self._trigger = trigger
        self._watches: dict[int, Path] = {}  # watch descriptor -> directory
        self._inotify: Inotify | None = None

    def start(self) -> None:
        try:
            inotify = Inotify()
        except OSError as e:
            raise SourceError(f"cannot watch the config directories: {e.strerror}; raise "
                              "fs.inotify.max_user_instances or use --source api") from e
        for directory in self._dirs:
            try:
                self._watches[inotify.add_watch(str(directory), WATCH_MASK)] = directory
            except OSError as e:
                inotify.close()
                self._watches.clear()
                hint = ("expected a mounted ConfigMap directory" if e.errno in
                        (errno.ENOENT, errno.ENOTDIR) else
                        "raise fs.inotify.max_user_watches" if e.errno == errno.ENOSPC else
                        "check the mount and the sidecar's permissions")
                raise SourceError(f"{directory}: cannot watch it ({e.strerror}); {hint}") from e
        self._inotify = inotify
        self._trigger.add_source(inotify.fd, self._on_ready)

    def stop(self) -> None:
        """Stop reading, then close: our own watches' removal is never reported as a loss."""
        if self._inotify is not None:
            self._trigger.remove_source(self._inotify.fd, self._inotify.close)
            self._inotify = None

    def _on_ready(self) -> None:
        inotify = self._inotify
        if inotify is None:
            return
        try:
            events = inotify.read()
        except OSError:  # the periodic resync still reads the directories
            log.exception("decision=unwatched dirs=%s detail=%r", [str(d) for d in self._dirs],
                          "reading file events failed; only the periodic resync reads them now")
            self.stop()
            return
        self.dispatch(events)

    def dispatch(self, events: Sequence[Event]) -> None:
        """One read's events: each changed directory notifies once, a lost event rescans."""
        changed: list[Path] = []
        for event in events:
            if event.mask & IN_Q_OVERFLOW:
                # Which entries changed is unknown now: re-read everything (the loop always
                # reads the whole desired state, so one notification is the whole rescan).
                log.warning("decision=rescan dirs=%s detail=%r", [str(d) for d in self._dirs],
                            "file events were lost (inotify queue overflow); re-reading "
                            "everything")
                self._trigger.notify("file events were lost (inotify queue overflow)",
                                     urgent=True)
                continue
            directory = self._watches.get(event.wd)
            if directory is None:
                continue
            if event.mask & IN_IGNORED:
                # The kernel dropped the watch: the directory was removed or unmounted.
                del self._watches[event.wd]
                log.warning("decision=unwatched dir=%s detail=%r", directory,
                            "the directory was removed or moved; only the periodic resync "
                            "reads it now")
            if is_change(event.mask, event.name) and directory not in changed:
                changed.append(directory)
        for directory in changed:
            self._trigger.notify(f"{directory} changed")
