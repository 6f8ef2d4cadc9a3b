"""Which BrokerPlugins does a push concern? Pure functions over plain values.

A repository is identified by ``(host, path)``: the forms a forge reports for one repository
(``https://host/Owner/Repo.git``, ``git@host:owner/repo``, ``ssh://git@host:22/owner/repo``,
``git://host/owner/repo``) all normalize to the same identity. Owner and repository names are
case-insensitive on every forge we serve. An http(s) port other than the default stays part
of the host (two web servers on one machine are two forges); ssh ports do not (the ssh port of
a forge is never its web port, and the push event lists its web and ssh URLs side by side).
"""

from __future__ import annotations

import functools
import re
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from builder.build import refs
from builder.webhooks.events import PushEvent

_SCP = re.compile(r"^(?:[^@/:\s]+@)?(?P<host>[^@:/\s]+):(?P<path>(?!/)[^\s]+)$")
# Owner, group and repository names on GitHub, Gitea and GitLab use these characters only.
_SEGMENT = re.compile(r"^[A-Za-z0-9._~+-]+$")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_SCHEMES = {"http", "https", "ssh", "git", "git+ssh", "ssh+git"}


@dataclass(frozen=True, order=True)
class RepoId:
    host: str
    path: str

    def __str__(self) -> str:
        return f"{self.host}/{self.path}"


@functools.lru_cache(maxsize=4096)
def normalize_url(url: str) -> RepoId | None:
    """The identity of the repository at ``url``, or None if it is not a repository URL.

    Credentials embedded in the URL are dropped, so a RepoId is safe to log. Cached: every
    delivery compares its URLs with every plugin's, and a burst repeats the same few URLs.
    """
    url = url.strip()
    if not url or any(c.isspace() for c in url):
        return None
    if "://" in url:
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError:
            return None
        scheme = parts.scheme.lower()
        host = (parts.hostname or "").lower()
        if scheme not in _SCHEMES or not host:
            return None
        if port is not None and scheme in _DEFAULT_PORTS and port != _DEFAULT_PORTS[scheme]:
            host = f"{host}:{port}"
        path = parts.path
    else:
        match = _SCP.match(url)
        if not match:
            return None
        host, path = match["host"].lower(), match["path"]
    segments = [s for s in urllib.parse.unquote(path).split("/") if s]
    if segments:
        segments[-1] = segments[-1].removesuffix(".git")
    segments = [s for s in segments if s]
    if not segments or any(s in (".", "..") or not _SEGMENT.match(s) for s in segments):
        return None
    return RepoId(host, "/".join(segments).lower())


def repo_ids(urls: Iterable[str]) -> frozenset[RepoId]:
    return frozenset(r for r in map(normalize_url, urls) if r is not None)


def ref_matches(followed: str, pushed: str) -> bool:
    """Does a push to ``pushed`` (a full ref) move the ref a plugin follows? The rule of
    ``builder.build.refs``: a full ref matches itself; a short name its branch and its tag (a new
    tag of the same name makes the ref ambiguous, which the build then reports)."""
    return refs.moves(followed, pushed)


def path_touched(plugin_path: str, changed: frozenset[str] | None) -> bool:
    """Did a change touch the plugin's subdirectory? Unknown changes (None) count as touched."""
    if changed is None:
        return True
    root = plugin_path.strip("/")
    if root in ("", "."):
        return True
    prefix = root + "/"
    return any(f == root or f.startswith(prefix) for f in (c.lstrip("/") for c in changed))


@dataclass(frozen=True)
class SecretRef:
    namespace: str
    name: str
    key: str


@dataclass(frozen=True)
class PluginSource:
    """What the webhook path needs of a BrokerPlugin."""

    namespace: str
    name: str
    uid: str
    url: str
    ref: str
    path: str
    revision: str | None
    enabled: bool
    secret: SecretRef | None
    generation: int | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Decision:
    plugin: PluginSource
    build: bool
    reason: str


def decide(event: PushEvent, plugin: PluginSource) -> Decision | None:
    """Whether ``event`` should rebuild ``plugin``; None when the push is about something else."""
    return _decide(event, repo_ids(event.repository_urls), plugin)


def _decide(event: PushEvent, pushed: frozenset[RepoId], plugin: PluginSource
            ) -> Decision | None:
    wanted = normalize_url(plugin.url)
    if wanted is None or wanted not in pushed:
        return None
    if not ref_matches(plugin.ref, event.ref):
        return None
    if not plugin.enabled:
        return Decision(plugin, False, "plugin is disabled (spec.enabled: false)")
    if plugin.revision:
        return Decision(plugin, False, f"plugin is pinned to revision {plugin.revision} "
                        "(spec.source.git.revision); a push does not change what it builds")
    if not path_touched(plugin.path, event.changed_files):
        return Decision(plugin, False, f"no changed file under {plugin.path!r} "
                        "(spec.source.git.path)")
    return Decision(plugin, True, f"push to {event.ref}")


def plan(event: PushEvent, plugins: Sequence[PluginSource]) -> list[Decision]:
    """A decision for every plugin that follows the pushed repository and ref."""
    pushed = repo_ids(event.repository_urls)
    return [d for d in (_decide(event, pushed, p) for p in plugins) if d is not None]


# --- an index, so a push reads only the plugins it can concern -----------------------------------

LISTED_UNTOUCHED = 10
"""Plugins skipped because the push changed nothing under their path are listed one by one up
to this many (a monorepo push would otherwise list every other plugin of the repository); more
are only counted."""


@dataclass(frozen=True)
class PathIndex:
    """Positions (in the indexed plugin sequence) of the plugins that follow one repository
    at one ref, by the root of their ``spec.source.git.path``."""

    everywhere: tuple[int, ...]
    """Always concerned: the whole repository (``.``), or decided without the changed files
    (disabled, pinned to a revision)."""
    by_root: dict[str, tuple[int, ...]]
    every: frozenset[int]

    def touched(self, changed: frozenset[str] | None) -> set[int]:
        """The positions a push changing ``changed`` may rebuild (the rule of
        ``path_touched``: a file under the root, or the root itself), plus ``everywhere``;
        the cost grows with the changed paths' lengths, not with the plugins."""
        if changed is None:
            return set(self.every)
        out = set(self.everywhere)
        for name in changed:
            name = name.lstrip("/")
            end = name.find("/")
            while end != -1:
                out.update(self.by_root.get(name[:end], ()))
                end = name.find("/", end + 1)
            out.update(self.by_root.get(name, ()))
        return out


PushIndex = dict[RepoId, dict[str, PathIndex]]
"""Repository → followed ref (as written in the spec) → paths."""


def index_plugins(plugins: Sequence[PluginSource]) -> PushIndex:
    groups: dict[RepoId, dict[str, tuple[list[int], dict[str, list[int]], list[int]]]] = {}
    for i, p in enumerate(plugins):
        repo = normalize_url(p.url)
        if repo is None:
            continue  # never matches a push
        everywhere, by_root, every = groups.setdefault(repo, {}).setdefault(
            p.ref, ([], {}, []))
        every.append(i)
        root = p.path.strip("/")
        if root in ("", ".") or not p.enabled or p.revision:
            everywhere.append(i)
        else:
            by_root.setdefault(root, []).append(i)
    return {repo: {ref: PathIndex(tuple(e), {k: tuple(v) for k, v in r.items()},
                                  frozenset(a))
                   for ref, (e, r, a) in refs_.items()}
            for repo, refs_ in groups.items()}


@dataclass(frozen=True)
class PushPlan:
    decisions: list[Decision]
    """As ``plan``, except plugins the push left untouched beyond ``LISTED_UNTOUCHED``."""
    untouched: int
    """Plugins of the repository and ref not rebuilt because no changed file is under their
    path (listed in ``decisions`` only while at most ``LISTED_UNTOUCHED``)."""


def plan_indexed(event: PushEvent, plugins: Sequence[PluginSource], index: PushIndex,
                 allowed: frozenset[int] | set[int]) -> PushPlan:
    """``plan`` over the plugins at ``allowed`` positions, reading through ``index`` only the
    ones the push can concern: its cost does not grow with the plugins of the repository."""
    pushed = repo_ids(event.repository_urls)
    chosen: set[int] = set()
    untouched: set[int] = set()
    count = 0
    for repo in sorted(pushed):
        for ref, paths in index.get(repo, {}).items():
            if not ref_matches(ref, event.ref):
                continue
            hit = paths.touched(event.changed_files) & allowed
            chosen |= hit
            missed = len(paths.every & allowed) - len(hit)
            count += missed
            if missed and count <= LISTED_UNTOUCHED:
                untouched |= (paths.every & allowed) - hit
    listed = untouched if count <= LISTED_UNTOUCHED else set()
    decisions = [d for d in (_decide(event, pushed, plugins[i]) for i in sorted(chosen | listed))
                 if d is not None]
    return PushPlan(decisions, count if count > LISTED_UNTOUCHED else 0)
