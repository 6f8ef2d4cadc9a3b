"""Desired-state reading and file watching on real kubelet-style atomic-writer directories."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from plugforge.contract import Document
from sidecar.desired import SourceError, read_documents
from sidecar.trigger import Debouncer, Trigger
from sidecar.watch_files import DirectoryWatcher
from testbed.configmap_dir import ConfigMapDir


def test_reads_visible_keys_through_data_link(tmp_path: Path) -> None:
    cm = ConfigMapDir(tmp_path / "cm")
    cm.update({"broker.yaml": "a", "other": "b"})
    cm.update({"broker.yaml": "c"})
    docs = read_documents([tmp_path / "cm"])
    assert docs == [Document(str(tmp_path / "cm"), "broker.yaml", "c")]


def test_missing_directory_explains(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="expected a mounted ConfigMap directory"):
        read_documents([tmp_path / "nope"])


def test_concurrent_swaps_never_yield_mixed_versions(tmp_path: Path) -> None:
    cm = ConfigMapDir(tmp_path / "cm")
    cm.update({"a": "0", "b": "0"})
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            cm.update({"a": str(i), "b": str(i)})

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(300):
            docs = {d.key: d.text for d in read_documents([tmp_path / "cm"], attempts=50)}
            assert docs["a"] == docs["b"], docs  # both keys from one version
    finally:
        stop.set()
        thread.join()


def test_debouncer_trailing_edge_with_cap() -> None:
    d = Debouncer(quiet=1.0, max_delay=5.0)
    assert not d.take(0.0)
    d.note(0.0)
    d.note(0.5)
    assert d.due_at() == 1.5
    assert not d.take(1.4)
    for t in (1.2, 2.0, 2.9, 3.8, 4.7):
        d.note(t)
    assert d.due_at() == 5.0  # the cap: a drizzle cannot postpone forever
    assert d.take(5.0)
    assert d.due_at() is None


def test_debounce_zero_is_immediate() -> None:
    d = Debouncer(quiet=0.0, max_delay=0.0)
    d.note(3.0)
    assert d.take(3.0)


def test_trigger_with_fake_clock() -> None:
    now = [0.0]
    trigger = Trigger(debounce=1.0, resync_interval=100.0, clock=lambda: now[0])
    trigger.notify("a")
    trigger.notify("b")
    now[0] = 1.0
    assert trigger.wait() == "a (+1 more notifications)"
    now[0] = 200.0
    assert trigger.wait() == "periodic resync"


def test_watcher_sees_data_swap_and_burst_is_coalesced(tmp_path: Path) -> None:
    cm = ConfigMapDir(tmp_path / "cm")
    cm.update({"k": "0"})
    trigger = Trigger(debounce=0.3, resync_interval=3600)
    watcher = DirectoryWatcher([tmp_path / "cm"], trigger)
    watcher.start()
    try:
        for i in range(1, 21):
            cm.update({"k": str(i)})
        t0 = time.monotonic()
        reason = trigger.wait()
        assert reason is not None and "changed" in reason
        assert time.monotonic() - t0 < 3
        assert read_documents([tmp_path / "cm"])[0].text == "20"
        done = threading.Event()
        extra: list[str | None] = []

        def second() -> None:
            extra.append(trigger.wait())
            done.set()

        threading.Thread(target=second, daemon=True).start()
        # At most one more wake-up for events that trailed the first one; then quiet.
        done.wait(1.0)
        assert len(extra) <= 1
    finally:
        trigger.close()
        watcher.stop()
