"""Shared by the sidecar tests and bench: a real mosquitto with dynamic security, real plugin
images in the real registry, a counting wrapper at the adapter boundary, a broker supervisor."""

from __future__ import annotations

import collections
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from plugforge.cli import main as plugforge_main
from plugforge.contract import API_VERSION, PluginRelease, Probe, render_plugin_release
from plugforge.oci import ImageMetadata, RegistryClient, pack_image, parse_reference
from sidecar.adapters.base import ChangeClass, ConfigProblem, Observed
from sidecar.adapters.mosquitto import MosquittoAdapter, MosquittoSettings
from sidecar.app import Sidecar
from sidecar.settings import Settings
from sidecar.state import ApplyEvent
from testbed.mosquitto import Mosquitto, MosquittoConfig, start_mosquitto

DYNSEC_LIB = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"
ADMIN = ("admin", "admin-secret-pw")
PLUGIN = "deny_test"


def start_dynsec_broker(workdir: Path, extra_lines: tuple[str, ...] = ()) -> Mosquitto:
    """mosquitto 2.0 with the dynamic-security plugin and an admin client; no anonymous."""
    workdir.mkdir(parents=True, exist_ok=True)
    dynsec_file = workdir / "dynamic-security.json"
    if not dynsec_file.exists():
        subprocess.run(["mosquitto_ctrl", "dynsec", "init", str(dynsec_file), *ADMIN],
                       check=True, capture_output=True, timeout=30)
    return start_mosquitto(workdir, MosquittoConfig(allow_anonymous=False, extra_lines=(
        f"plugin {DYNSEC_LIB}", f"plugin_opt_config_file {dynsec_file}", *extra_lines)))


def adapter_options(broker: Mosquitto) -> dict[str, str]:
    return {"host": broker.host, "port": str(broker.port), "conf_dir": str(broker.include_dir),
            "config_path": str(broker.conf_path), "dynsec_username": ADMIN[0],
            "dynsec_password": ADMIN[1], "restart_timeout": "20"}


class CountingAdapter:
    """The real adapter, with every call counted at the boundary (not a fake)."""

    MUTATING = ("install_plugin", "enable", "disable", "apply_config", "restart")

    def __init__(self, real: MosquittoAdapter) -> None:
        self.real = real
        self.name = real.name
        self.calls: collections.Counter[str] = collections.Counter()
        self.on_admin_call: Callable[[str], None] | None = None

    def _count(self, what: str) -> None:
        self.calls[what] += 1

    def mutating_calls(self) -> int:
        return sum(self.calls[m] for m in self.MUTATING)

    def observe(self) -> Observed:
        self._count("observe")
        return self.real.observe()

    def validate_config(self, config: Mapping[str, str]) -> list[ConfigProblem]:
        return self.real.validate_config(config)

    def classify(self, key: str) -> ChangeClass:
        return self.real.classify(key)

    def plugin_change_class(self) -> ChangeClass:
        return self.real.plugin_change_class()

    def write_only(self, key: str) -> bool:
        return self.real.write_only(key)

    def normalize(self, key: str, value: str) -> str:
        return self.real.normalize(key, value)

    def install_plugin(self, name: str, digest: str, image_tree: Path) -> Path:
        self._count("install_plugin")
        return self.real.install_plugin(name, digest, image_tree)

    def enable(self, name: str, digest: str, settings: Mapping[str, str]) -> None:
        self._count("enable")
        self.real.enable(name, digest, settings)

    def disable(self, name: str) -> None:
        self._count("disable")
        self.real.disable(name)

    def apply_config(self, changes: Mapping[str, str | None]) -> None:
        self._count("apply_config")
        self.real.apply_config(changes)
        if self.on_admin_call is not None:
            self.on_admin_call("apply_config")

    def restart(self) -> None:
        self._count("restart")
        self.real.restart()

    def health(self) -> bool:
        return self.real.health()

    def close(self) -> None:
        self.real.close()


@dataclass(frozen=True)
class PluginImages:
    v1: str  # repository@digest: denies "mallory" by default
    v2: str  # rebuilt from changed code: denies "eve" by default
    repository: str


def build_plugin_images(root: Path, registry_host: str, ca: Path) -> PluginImages:
    """Scaffold the mosquitto-c template, build it twice (v2 denies eve by default), push both."""
    repo = root / "deny-test"
    assert plugforge_main(["new", "--broker", "mosquitto", "deny-test", "--dir", str(repo)]) == 0
    refs = []
    for version, default in (("0.1.0", "mallory"), ("0.2.0", "eve")):
        source = repo / "src" / f"{PLUGIN}.c"
        text = source.read_text()
        source.write_text(text.replace('#define DEFAULT_DENY_USERS "mallory"',
                                       f'#define DEFAULT_DENY_USERS "{default}"'))
        work = root / f"work-{version}"
        assert plugforge_main(["build", "--local", str(repo), "--work-dir", str(work),
                               "--quiet"]) == 0
        image = pack_image(work / "artifact", ImageMetadata(
            "https://git.test/deny-test.git", f"rev-{version}", "mosquitto", PLUGIN, version))
        ref = parse_reference(f"{registry_host}/plugins/deny-test:{version}")
        with RegistryClient(registry_host, ca_bundle=ca) as client:
            pinned = client.push_image(ref, image)
        refs.append(f"{registry_host}/plugins/deny-test@{pinned.digest}")
    return PluginImages(refs[0], refs[1], f"{registry_host}/plugins/deny-test")


def broker_yaml(config: Mapping[str, str]) -> str:
    return yaml.safe_dump({"apiVersion": API_VERSION, "kind": "BrokerConfig",
                           "broker": "mosquitto", "config": dict(config)})


def plugin_yaml(image: str, *, enabled: bool = True, settings: Mapping[str, str] | None = None,
                probes: tuple[Probe, ...] = ()) -> str:
    return render_plugin_release(PluginRelease(PLUGIN, image, enabled, dict(settings or {}),
                                               probes))


def make_sidecar(broker: Mosquitto, dirs: list[Path], workdir: Path, ca: Path | None, *,
                 allow_restart: bool = False, debounce: float = 0.05,
                 resync: float = 3600.0,
                 sinks: Sequence[Callable[[ApplyEvent], None]] = (),
                 **overrides: Any) -> tuple[Sidecar, CountingAdapter]:
    settings = Settings(
        broker="mosquitto", config_dirs=tuple(dirs), source=overrides.pop("source", "files"),
        adapter_options=adapter_options(broker), plugin_dir=workdir / "plugins",
        cache_dir=workdir / "cache", allow_broker_restart=allow_restart, debounce=debounce,
        resync_interval=resync, http_address="127.0.0.1:0", registry_ca=ca,
        probe_host=broker.host, probe_port=broker.port, **overrides)
    real = MosquittoAdapter(MosquittoSettings.from_options(settings.adapter_options,
                                                           settings.plugin_dir))
    counting = CountingAdapter(real)
    return Sidecar(settings, adapter=counting, event_sinks=sinks), counting


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
