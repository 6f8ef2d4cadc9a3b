"""What a VerneMQ plugin directory holds, checked before the node is asked to enable it.

VerneMQ 2.0.1's ``plugin enable`` loads the ``.app`` spec, then checks each hook's module and
export; when that check fails it answers ``Can't enable plugin`` but leaves the new spec loaded,
so enabling any version of that app fails until it is unloaded (seen on a live node). And it
accepts an ``.app`` whose ``modules`` names a beam that does not exist. So the sidecar reads the
``.app`` term and the beams' export tables itself and refuses such a directory before any call.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.adapters.base import AdapterError

_TOKEN = re.compile(r"""
    \s+|%[^\n]*                                  # space, comments
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<qatom>'(?:[^'\\]|\\.)*')
  | (?P<number>-?[0-9]+(?:\.[0-9]+)?)
  | (?P<atom>[a-z][A-Za-z0-9_@]*)
  | (?P<punct><<|>>|[{}\[\],.|])
""", re.VERBOSE)


class Atom(str):
    """An Erlang atom (a string that is not an Erlang string)."""


@dataclass(frozen=True)
class Hook:
    name: str
    module: str
    function: str
    arity: int


@dataclass(frozen=True)
class AppSpec:
    name: str
    modules: tuple[str, ...]
    hooks: tuple[Hook, ...]
    env_keys: tuple[str, ...] = ()  # application env the .app declares (its settings)


def parse_term(text: str) -> Any:
    """The first term of an Erlang consult file (atoms, strings, numbers, lists, tuples)."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ValueError(f"unexpected {text[pos:pos + 20]!r}")
        pos = match.end()
        if match.lastgroup:
            tokens.append((match.lastgroup, match.group(match.lastgroup)))
    try:
        term, rest = _term(tokens, 0)
    except IndexError:
        raise ValueError("the term ends early") from None
    if rest >= len(tokens) or tokens[rest] != ("punct", "."):
        raise ValueError("the term does not end with a dot")
    return term


def _term(tokens: list[tuple[str, str]], i: int) -> tuple[Any, int]:
    if i >= len(tokens):
        raise ValueError("unexpected end")
    kind, text = tokens[i]
    if kind == "string":
        return bytes(text[1:-1], "utf-8").decode("unicode_escape"), i + 1
    if kind == "qatom":
        return Atom(text[1:-1]), i + 1
    if kind == "atom":
        return Atom(text), i + 1
    if kind == "number":
        return (float(text) if "." in text else int(text)), i + 1
    closing = {"{": "}", "[": "]", "<<": ">>"}.get(text)
    if closing is None:
        raise ValueError(f"unexpected {text!r}")
    items: list[Any] = []
    i += 1
    while tokens[i] != ("punct", closing):
        item, i = _term(tokens, i)
        items.append(item)
        if tokens[i] == ("punct", ","):
            i += 1
        elif tokens[i] != ("punct", closing):
            raise ValueError(f"expected , or {closing}")
    if text == "{":
        return tuple(items), i + 1
    return items, i + 1


def _proplist(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, list):
        return {}
    return {t[0]: t[1] for t in value if isinstance(t, tuple) and len(t) == 2
            and isinstance(t[0], Atom)}


def _hook(entry: Any) -> Hook | None:
    """``{M, F, A}``, ``{M, F, A, Opts}``, ``{Name, M, F, A}`` or ``{Name, M, F, A, Opts}``."""
    if not isinstance(entry, tuple) or not all(isinstance(x, Atom) for x in entry[:2]):
        return None
    if len(entry) in (3, 4) and isinstance(entry[2], int) and isinstance(entry[1], Atom):
        return Hook(entry[1], entry[0], entry[1], entry[2])
    if len(entry) in (4, 5) and isinstance(entry[2], Atom) and isinstance(entry[3], int):
        return Hook(entry[0], entry[1], entry[2], entry[3])
    return None


def read_app(ebin: Path, expected: str) -> AppSpec:
    """The ``.app`` in ``ebin``; AdapterError unless it is one well-formed ``expected`` app."""
    apps = sorted(ebin.glob("*.app"))
    if len(apps) != 1:
        raise AdapterError(f"plugin {expected!r}: expected exactly one OTP .app file in {ebin}, "
                           f"found {[p.name for p in apps]}")
    try:
        term = parse_term(apps[0].read_text(errors="replace"))
    except ValueError as e:
        raise AdapterError(f"plugin {expected!r}: {apps[0].name} is not an Erlang term: "
                           f"{e}") from e
    if not (isinstance(term, tuple) and len(term) == 3 and term[0] == "application"
            and isinstance(term[1], Atom)):
        raise AdapterError(f"plugin {expected!r}: {apps[0]} does not start with "
                           "{application, Name, ...}")
    found = str(term[1])
    if found != expected or apps[0].stem != expected:
        raise AdapterError(
            f"plugin {expected!r}: the OTP application in {apps[0].name} is {found!r}; VerneMQ "
            "needs --name to equal it (a mismatch crashes its plugin manager), so name the "
            f"plugin {found!r} in the release, or rename the app")
    props = _proplist(term[2])
    modules = props.get("modules", [])
    env = _proplist(props.get("env", []))
    hooks = [_hook(e) for e in env.get("vmq_plugin_hooks", [])]
    if any(h is None for h in hooks):
        raise AdapterError(f"plugin {expected!r}: vmq_plugin_hooks in {apps[0].name} holds an "
                           "entry that is not {Module, Function, Arity[, Opts]}")
    return AppSpec(found, tuple(str(m) for m in modules if isinstance(m, Atom)),
                   tuple(h for h in hooks if h is not None),
                   tuple(str(k) for k in env if k != "vmq_plugin_hooks"))


def beam_exports(path: Path) -> set[tuple[str, int]]:
    """``{(function, arity)}`` from a beam's export table (chunks ``AtU8``/``Atom``, ``ExpT``);
    ValueError for anything that is not a readable beam (the file comes from an image)."""
    try:
        return _exports(path.read_bytes())
    except (IndexError, zlib.error) as e:
        raise ValueError(f"a truncated or corrupt BEAM file ({e})") from e


def _exports(data: bytes) -> set[tuple[str, int]]:
    if data[:2] == b"\x1f\x8b":
        data = zlib.decompress(data, 16 + zlib.MAX_WBITS)
    if data[:4] != b"FOR1" or data[8:12] != b"BEAM":
        raise ValueError("not a BEAM file")
    chunks: dict[bytes, bytes] = {}
    pos = 12
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos + 4:pos + 8], "big")
        if pos + 8 + size > len(data):
            raise ValueError("a chunk runs past the end of the file")
        chunks[data[pos:pos + 4]] = data[pos + 8:pos + 8 + size]
        pos += 8 + (size + 3) // 4 * 4
    atoms_chunk = chunks.get(b"AtU8") or chunks.get(b"Atom")
    exports = chunks.get(b"ExpT")
    if atoms_chunk is None or exports is None:
        raise ValueError("no atom or export table")
    count = int.from_bytes(atoms_chunk[:4], "big", signed=True)
    if count < 0:
        raise ValueError("compact atom table (OTP 26+) not read")
    atoms, pos = [], 4
    for _ in range(count):
        length = atoms_chunk[pos]
        atoms.append(atoms_chunk[pos + 1:pos + 1 + length].decode("utf-8"))
        pos += 1 + length
    found = set()
    count = int.from_bytes(exports[:4], "big")
    if 4 + 12 * count > len(exports):
        raise ValueError("the export table is shorter than its count")
    for i in range(count):
        entry = exports[4 + 12 * i:16 + 12 * i]
        found.add((atoms[int.from_bytes(entry[:4], "big") - 1],
                   int.from_bytes(entry[4:8], "big")))
    return found


def check_plugin(plugin_path: Path, expected: str) -> AppSpec:
    """The app in ``plugin_path/ebin``, with every module it lists present and every hook
    exported; AdapterError saying what is missing otherwise."""
    ebin = plugin_path / "ebin"
    spec = read_app(ebin, expected)
    missing = [m for m in spec.modules if not (ebin / f"{m}.beam").is_file()]
    if missing:
        raise AdapterError(f"plugin {expected!r}: {expected}.app lists module(s) "
                           f"{', '.join(missing)} without a .beam in ebin/; VerneMQ would "
                           "enable it and fail on the first call")
    for hook in spec.hooks:
        beam = ebin / f"{hook.module}.beam"
        if not beam.is_file():
            raise AdapterError(f"plugin {expected!r}: hook {hook.name} names module "
                               f"{hook.module}, which is not in ebin/ (VerneMQ refuses it as "
                               "unknown_module and keeps the app half-loaded)")
        try:
            exports = beam_exports(beam)
        except (OSError, ValueError) as e:
            raise AdapterError(f"plugin {expected!r}: cannot read {beam.name}: {e}") from e
        if (hook.function, hook.arity) not in exports:
            raise AdapterError(f"plugin {expected!r}: hook {hook.name} needs "
                               f"{hook.module}:{hook.function}/{hook.arity}, which "
                               f"{beam.name} does not export")
    return spec
