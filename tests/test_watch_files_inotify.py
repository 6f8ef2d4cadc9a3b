"""The inotify watcher: which events wake the reconcile loop, on real directories and the real
kernel interface (the event filter is also checked as a pure function)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar import inotify as C
from sidecar.desired import SourceError, read_documents
from sidecar.trigger import Trigger
from sidecar.watch_files import DirectoryWatcher, is_change
from testbed.configmap_dir import ConfigMapDir

IN_CLOSE_WRITE, IN_CREATE, IN_DELETE, IN_DELETE_SELF = (
    C.IN_CLOSE_WRITE, C.IN_CREATE, C.IN_DELETE, C.IN_DELETE_SELF)
IN_IGNORED, IN_MOVED_FROM, IN_MOVED_TO, IN_Q_OVERFLOW = (
    C.IN_IGNORED, C.IN_MOVED_FROM, C.IN_MOVED_TO, C.IN_Q_OVERFLOW)
IN_OPEN, IN_CLOSE_NOWRITE, IN_ISDIR = C.IN_OPEN, C.IN_CLOSE_NOWRITE, C.IN_ISDIR
QUIET = 0.5  # the resync interval: what wait() returns when no change woke it


@pytest.mark.parametrize(("mask", "name", "expected"), [
    (IN_MOVED_TO, "..data", True),                       # the kubelet's swap
    (IN_CREATE, "..data", True),
    (IN_MOVED_FROM, "..data", True),
    (IN_CREATE | IN_ISDIR, "..2026_01_01_00_00_00.1", False),  # a version being written
    (IN_DELETE | IN_ISDIR, "..2026_01_01_00_00_00.1", False),  # the old one removed
    (IN_CREATE, "..data_tmp", False),
    (IN_MOVED_FROM, "..data_tmp", False),
    (IN_CREATE, "broker.yaml", True),                    # key symlink, or a plain file
    (IN_CLOSE_WRITE, "broker.yaml", True),
    (IN_DELETE, "broker.yaml", True),
    (IN_MOVED_TO, "broker.yaml", True),
    (IN_OPEN | IN_ISDIR, "..2026_01_01_00_00_00.1", False),  # reads are never changes
    (IN_CLOSE_NOWRITE, "broker.yaml", False),
    (IN_DELETE_SELF, "", True),                          # the directory itself went away
    (IN_IGNORED, "", True),
    (IN_Q_OVERFLOW, "", True),                           # events were lost: re-read
    (IN_OPEN | IN_ISDIR, "", False),
])
def test_which_events_are_changes(mask: int, name: str, expected: bool) -> None:
    assert is_change(mask, name) is expected


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[ConfigMapDir, Trigger]]:
    cm = ConfigMapDir(tmp_path / "cm")
    cm.update({"broker.yaml": "0"})
    trigger = Trigger(debounce=0, resync_interval=QUIET)
    watcher = DirectoryWatcher([cm.path], trigger)
    watcher.start()
    try:
        yield cm, trigger
    finally:
        trigger.close()
        watcher.stop()


def test_a_swap_wakes_the_loop_at_once(watched: tuple[ConfigMapDir, Trigger]) -> None:
    cm, trigger = watched
    started = time.monotonic()
    cm.update({"broker.yaml": "1"})
    assert trigger.wait() == f"{cm.path} changed"
    assert time.monotonic() - started < QUIET


def test_the_loop_reads_the_events_itself(tmp_path: Path) -> None:
    # No reader thread: the waiting loop polls the inotify descriptor (one thread hand-off
    # fewer between the kernel and the reconcile).
    cm = ConfigMapDir(tmp_path / "cm")
    cm.update({"broker.yaml": "0"})
    trigger = Trigger(debounce=0, resync_interval=3600)
    threads = threading.active_count()
    watcher = DirectoryWatcher([cm.path], trigger)
    watcher.start()
    try:
        assert threading.active_count() == threads
        cm.update({"broker.yaml": "1"})
        assert trigger.wait() == f"{cm.path} changed"
    finally:
        trigger.close()
        watcher.stop()


def test_pending_reads_ready_events(watched: tuple[ConfigMapDir, Trigger]) -> None:
    # Asked during a long reconcile (an image pull), when nobody waits: a swap is seen.
    cm, trigger = watched
    assert not trigger.pending
    cm.update({"broker.yaml": "1"})
    deadline = time.monotonic() + 5
    while not trigger.pending:
        assert time.monotonic() < deadline, "the swap was never seen"
        time.sleep(0.01)
    assert trigger.wait() == f"{cm.path} changed"


def test_notify_from_another_thread_wakes_the_wait() -> None:
    trigger = Trigger(debounce=0, resync_interval=3600)
    timer = threading.Timer(0.05, trigger.notify, args=("retry",))
    timer.start()
    started = time.monotonic()
    assert trigger.wait() == "retry"
    assert time.monotonic() - started < 2
    trigger.close()
    assert trigger.wait() is None


def test_stop_while_the_loop_polls_closes_after_the_poll(tmp_path: Path) -> None:
    # The descriptor is closed only once no poll uses it: closed under a running poll, its
    # number could be reused by another file and read as this one.
    cm = ConfigMapDir(tmp_path / "cm")
    cm.update({"broker.yaml": "0"})
    trigger = Trigger(debounce=0, resync_interval=0.3)
    watcher = DirectoryWatcher([cm.path], trigger)
    watcher.start()
    reasons: list[str | None] = []
    loop = threading.Thread(target=lambda: reasons.append(trigger.wait()))
    loop.start()
    time.sleep(0.1)  # the loop is in its poll now
    fd = watcher._inotify.fd if watcher._inotify else -1
    watcher.stop()
    loop.join(5)
    assert reasons == ["periodic resync"]
    with pytest.raises(OSError):
        os.fstat(fd)
    cm.update({"broker.yaml": "1"})  # not watched any more: only the resync wakes the loop
    assert trigger.wait() == "periodic resync"
    trigger.close()


def test_version_dirs_and_reads_do_not_wake_the_loop(
        watched: tuple[ConfigMapDir, Trigger]) -> None:
    cm, trigger = watched
    (cm.path / "..2099_01_01_00_00_00.1").mkdir()  # a version not swapped in (yet)
    (cm.path / "..2099_01_01_00_00_00.1" / "broker.yaml").write_text("half")
    assert read_documents([cm.path])[0].text == "0"
    assert trigger.wait() == "periodic resync"


def test_plain_directory_file_written(tmp_path: Path) -> None:
    trigger = Trigger(debounce=0, resync_interval=QUIET)
    watcher = DirectoryWatcher([tmp_path], trigger)
    watcher.start()
    try:
        (tmp_path / "broker.yaml").write_text("x")
        reason = trigger.wait()  # creation and close-after-write may come as two notifications
        assert reason is not None and reason.startswith(f"{tmp_path} changed"), reason
    finally:
        trigger.close()
        watcher.stop()


def test_removed_directory_wakes_the_loop_and_is_explained(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cm = ConfigMapDir(tmp_path / "cm")
    cm.update({"broker.yaml": "0"})
    trigger = Trigger(debounce=0, resync_interval=3600)
    watcher = DirectoryWatcher([cm.path], trigger)
    watcher.start()
    try:
        shutil.rmtree(cm.path)
        reason = trigger.wait()
        assert reason is not None and reason.startswith(f"{cm.path} changed")
        with pytest.raises(SourceError, match="expected a mounted ConfigMap directory"):
            read_documents([cm.path])
        # The first wake-up may come from the entries' deletions, before the kernel drops the
        # watch itself (IN_IGNORED); the explanation follows that, so wait for it before stop().
        # Events are read by whoever waits on the trigger (or asks whether one is pending).
        deadline = time.monotonic() + 10
        while "only the periodic resync reads it now" not in caplog.text:
            assert time.monotonic() < deadline, "the removed directory was never explained"
            _ = trigger.pending  # reads what is ready
            time.sleep(0.01)
    finally:
        trigger.close()
        watcher.stop()


def test_missing_directory_is_refused_at_start(tmp_path: Path) -> None:
    watcher = DirectoryWatcher([tmp_path, tmp_path / "nope"], Trigger(0, 3600))
    with pytest.raises(SourceError, match=r"nope: cannot watch it \(No such file or directory\);"
                                          " expected a mounted ConfigMap directory"):
        watcher.start()
    watcher.stop()  # nothing started: a no-op



MAX_QUEUED = Path("/proc/sys/fs/inotify/max_queued_events")


def test_a_queue_overflow_rereads_every_directory(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A real overflow: the kernel reads max_queued_events when an inotify instance is created,
    # so this watcher gets a 16-event queue (the limit is restored at once; other instances keep
    # theirs) and a burst of writes outruns its reader thread.
    cm = ConfigMapDir(tmp_path / "cm")
    cm.update({"broker.yaml": "0"})
    plain = tmp_path / "plain"
    plain.mkdir()
    trigger = Trigger(debounce=0, resync_interval=3600)
    watcher = DirectoryWatcher([cm.path, plain], trigger)
    limit = MAX_QUEUED.read_text()
    MAX_QUEUED.write_text("16")
    try:
        watcher.start()
    finally:
        MAX_QUEUED.write_text(limit)
    try:
        for i in range(2000):
            (plain / f"key-{i}").write_text(str(i))
        deadline = time.monotonic() + 10
        while "events were lost" not in caplog.text and time.monotonic() < deadline:
            assert trigger.wait() is not None
        assert "decision=rescan" in caplog.text, "no overflow seen"
        # The rescan reads the whole current state, the events the kernel dropped included.
        assert len(read_documents([cm.path, plain])) == 2001
    finally:
        trigger.close()
        watcher.stop()
