"""Watch mounted ConfigMap directories and notify the reconcile loop of any change.

The watch is on the *directory* (the kubelet swaps the ``..data`` symlink inside it; the key
files themselves never change in place). Events are only a hint: the loop re-reads the state
through ``desired.read_documents`` and compares content hashes, so a missed, duplicated or
reordered event cannot make the sidecar apply a wrong or half-written state, and the periodic
resync bounds the delay of an event watchdog never delivered.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from sidecar.trigger import Trigger


class _Notify(FileSystemEventHandler):
    def __init__(self, directory: Path, trigger: Trigger) -> None:
        self._directory = directory
        self._trigger = trigger

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return  # reads (ours included) are not changes
        self._trigger.notify(f"{self._directory} changed")


class DirectoryWatcher:
    def __init__(self, dirs: Sequence[Path], trigger: Trigger) -> None:
        self._observer = Observer()
        for directory in dirs:
            self._observer.schedule(_Notify(directory, trigger), str(directory), recursive=False)

    def start(self) -> None:
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=5)
