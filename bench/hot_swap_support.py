"""For the hot-swap benchmark: two versions of a real RabbitMQ auth plugin built from the
rabbitmq-erlang template, and one-shot MQTT logins that prove which version runs."""

from __future__ import annotations

import socket
from pathlib import Path

from bench.mqtt_load_support import connect_packet
from plugforge.cli import main as plugforge_main

PLUGIN = "deny_test"


def build_rabbitmq_plugins(root: Path) -> tuple[Path, Path]:
    """``deny_test`` 0.1.0 (denies mallory by default) and 0.2.0 (changed code: denies eve),
    each built with ``plugforge build --local`` from a ``plugforge new`` repository."""
    repo = root / "deny-test"
    if plugforge_main(["new", "--broker", "rabbitmq", "deny-test", "--dir", str(repo)]) != 0:
        raise RuntimeError("plugforge new --broker rabbitmq failed")
    built = []
    for version, denied in (("0.1.0", "mallory"), ("0.2.0", "eve")):
        app_src = repo / "src" / f"{PLUGIN}.app.src"
        app_src.write_text(app_src.read_text()
                           .replace('{vsn, "0.1.0"}', f'{{vsn, "{version}"}}')
                           .replace('{deny_users, "mallory"}', f'{{deny_users, "{denied}"}}'))
        erl = repo / "src" / f"{PLUGIN}.erl"
        erl.write_text(erl.read_text().replace('deny_users, "mallory")',
                                               f'deny_users, "{denied}")'))
        work = root / f"work-{version}"
        if plugforge_main(["build", "--local", str(repo), "--work-dir", str(work),
                           "--quiet"]) != 0:
            raise RuntimeError(f"plugforge build --local of {PLUGIN} {version} failed")
        built.append(work / "artifact" / f"{PLUGIN}-{version}.ez")
    return built[0], built[1]


def mqtt_accepts(host: str, port: int, username: str, password: str = "any") -> bool:  # noqa: S107
    """One MQTT 3.1.1 login: True on CONNACK 0, False on a refusal or a closed connection."""
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(connect_packet(f"probe-{username}", username, password, 30))
        reply = b""
        while len(reply) < 4:
            chunk = s.recv(4 - len(reply))
            if not chunk:
                return False
            reply += chunk
        accepted = reply[0] == 0x20 and reply[3] == 0
        if accepted:
            s.sendall(b"\xe0\x00")
        return accepted


def count_in_file(path: Path, needle: bytes) -> int:
    return path.read_bytes().count(needle) if path.exists() else 0
