"""What the sidecar's scale curve showed growing too fast, pinned by counting calls (no timing):
see bench/sidecar_scale.py."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

import pytest

from plugforge import contract
from plugforge.contract import Document, PluginRelease, parse_desired_state, render_plugin_release
from sidecar import desired
from sidecar.desired import read_documents
from testbed.configmap_dir import ConfigMapDir


def _docs(n: int, changed: int = -1) -> list[Document]:
    docs = [Document("configmap ns/cm", "broker.yaml", "apiVersion: plugforge.dev/v1alpha1\n"
                     "kind: BrokerConfig\nbroker: mosquitto\nconfig: {max_keepalive: '60'}\n")]
    for i in range(n):
        image = "r.test/p@sha256:" + ("cd" if i == changed else "ab") * 32
        docs.append(Document("configmap ns/cm", f"plugin.p{i}.yaml", render_plugin_release(
            PluginRelease(f"p{i}", image, False, {"k": "v"}))))
    return docs


def test_a_resync_parses_no_document_again(monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[str] = []
    real = contract._load

    def counting(doc: Document, kind: str) -> dict[str, object]:
        loads.append(doc.key)
        return real(doc, kind)

    monkeypatch.setattr(contract, "_load", counting)
    contract._parse_plugin_release.cache_clear()
    contract._parse_broker_config.cache_clear()
    first = parse_desired_state(_docs(500))
    assert len(loads) == 501
    again = parse_desired_state(_docs(500))
    assert len(loads) == 501, "an unchanged ConfigMap is not parsed again"
    assert again == first
    parse_desired_state(_docs(500, changed=7))
    assert loads[501:] == ["plugin.p7.yaml"], "one edited key: one document parsed"


def test_cached_config_is_not_shared_with_callers() -> None:
    state = parse_desired_state(_docs(1))
    assert isinstance(state.config, dict)
    state.config["max_keepalive"] = "1"
    assert parse_desired_state(_docs(1)).config["max_keepalive"] == "60"


def test_a_resync_reads_no_unchanged_file_again(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []

    def counting(path: str, encoding: str) -> IO[str]:
        reads.append(os.path.basename(path))
        return open(path, encoding=encoding)

    monkeypatch.setattr(desired, "open", counting, raising=False)
    cm = ConfigMapDir(tmp_path / "cm")
    cm.update({f"plugin.p{i}.yaml": f"text {i}" for i in range(300)})
    first = read_documents([cm.path])
    assert len(reads) == 300
    assert read_documents([cm.path]) == first
    assert len(reads) == 300, "an unchanged version is not read again"
    cm.update({**{f"plugin.p{i}.yaml": f"text {i}" for i in range(300)}, "plugin.p7.yaml": "new"})
    assert [d.text for d in read_documents([cm.path]) if d.key == "plugin.p7.yaml"] == ["new"]

    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "broker.yaml").write_text("a: 1")
    read_documents([plain])
    (plain / "broker.yaml").write_text("a: 2")  # same size, maybe the same mtime tick
    assert read_documents([plain])[0].text == "a: 2", "a plain directory is always read"
