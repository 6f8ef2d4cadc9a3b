"""Fetch plugin sources with gitpython: one bare mirror per repository, fetch only what is needed.

Everything user-supplied (URL, ref, revision, path) is validated before it reaches git, so it can
never be read as an option or reach a dangerous transport. Credentials travel only through the
environment of the git process (``http.<url>.extraHeader`` via ``GIT_CONFIG_*``, or an SSH key
file that exists for one call) — never in a URL, the mirror's config, logs or status.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import git

from builder.build import refs
from builder.errors import (
    InvalidSpec,
    RepositoryNotFound,
    SecretInvalid,
    SourceAuthFailed,
    SourcePathMissing,
    SourceUnavailable,
    UnknownRef,
)
from builder.resources import GitSource

_HTTP_URL = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]+)?(/[^\s]*)?$")
_SSH_URL = re.compile(r"^ssh://([A-Za-z0-9._-]+@)?[A-Za-z0-9.-]+(:[0-9]+)?/[^\s]*$")
_SCP_URL = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[A-Za-z0-9._~][^\s]*$")
_REF_CHAR_BAD = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
_REVISION = re.compile(r"^[0-9a-f]{7,40}$")
_SHA = re.compile(r"^[0-9a-f]{40}$")
_NOT_FOUND = re.compile(r"repository '[^']*' not found|repository not found|does not appear to "
                        r"be a git repository|the requested url returned error: 404| 404\b")
GIT_TIMEOUT = 300.0


# --- validation (pure) ------------------------------------------------------------------------


def validate_url(url: str) -> str:
    """Accept https/http/ssh URLs and ``user@host:path``; refuse options and other transports."""
    if not isinstance(url, str) or not url or len(url) > 2048:
        raise InvalidSpec(f"source.git.url: expected a clone URL, found {url!r}")
    if url.startswith("-") or "::" in url.split("/")[0] or any(ord(c) < 0x21 for c in url):
        raise InvalidSpec(
            f"source.git.url: {url!r} is not allowed (options, 'transport::' forms and control "
            "characters are refused); use https://, http://, ssh:// or git@host:owner/repo")
    if url.startswith(("http://", "https://")) and "@" in url.split("/")[2]:
        raise InvalidSpec(
            "source.git.url: credentials in the URL are refused (they would be stored and "
            "logged); put them in a Secret and reference it with source.git.secretRef")
    if not (_HTTP_URL.match(url) or _SSH_URL.match(url) or _SCP_URL.match(url)):
        raise InvalidSpec(
            f"source.git.url: {url!r} is not an https://, http://, ssh:// or user@host:path URL")
    return url


def validate_ref(ref: str) -> str:
    """git check-ref-format rules, plus: no leading '-', at most 255 characters."""
    problem = _ref_problem(ref)
    if problem:
        raise InvalidSpec(f"source.git.ref: {ref!r} is not a valid branch or tag name: {problem}")
    return ref


def _ref_problem(ref: str) -> str | None:
    if not isinstance(ref, str) or not ref:
        return "it is empty"
    if len(ref) > 255:
        return "it is longer than 255 characters"
    if ref.startswith("-"):
        return "it starts with '-' (it would be read as an option)"
    if ".." in ref or "@{" in ref or "//" in ref or ref == "@":
        return "it contains '..', '@{', '//' or is '@'"
    if _REF_CHAR_BAD.search(ref):
        return "it contains a space, control character or one of ~ ^ : ? * [ \\"
    if ref.startswith("/") or ref.endswith(("/", ".", ".lock")):
        return "it starts with '/' or ends with '/', '.' or '.lock'"
    if any(part.startswith(".") or part.endswith(".lock") for part in ref.split("/")):
        return "a path component starts with '.' or ends with '.lock'"
    return None


def validate_revision(revision: str) -> str:
    if not _REVISION.match(revision):
        raise InvalidSpec(f"source.git.revision: expected 7-40 lowercase hex digits, found "
                          f"{revision!r}")
    return revision


def validate_path(path: str) -> str:
    """A relative POSIX path inside the repository ('.' for the root)."""
    if not isinstance(path, str) or not path or "\\" in path or "\x00" in path:
        raise InvalidSpec(f"source.git.path: expected a relative directory, found {path!r}")
    p = PurePosixPath(path)
    if p.is_absolute() or ".." in p.parts or path.startswith("-"):
        raise InvalidSpec(f"source.git.path: {path!r} must be relative and stay inside the "
                          "repository (no '..', not absolute)")
    return path


def normalize_url(url: str) -> str:
    """One spelling per repository (case of host, trailing .git and slash), for cache keys."""
    text = url.strip()
    scp = _SCP_URL.match(text)
    if scp and "://" not in text:
        user_host, _, path = text.partition(":")
        text = f"ssh://{user_host}/{path}"
    scheme, _, rest = text.partition("://")
    host, _, path = rest.partition("/")
    host = host.rsplit("@", 1)[-1].lower()
    path = path.rstrip("/").removesuffix(".git")
    return f"{scheme.lower()}://{host}/{path}"


def validate_source(source: GitSource) -> GitSource:
    validate_url(source.url)
    validate_ref(source.ref)
    validate_path(source.path)
    if source.revision:
        validate_revision(source.revision)
    return source


# --- credentials ------------------------------------------------------------------------------


@dataclass(frozen=True)
class GitCredentials:
    """From a Secret: ``token``, or ``username`` + ``password``, or ``ssh-privatekey`` with
    ``known_hosts``."""

    username: str = ""
    password: str = field(default="", repr=False)
    ssh_key: bytes = field(default=b"", repr=False)
    known_hosts: bytes = b""


def credentials_from_secret(data: Mapping[str, bytes], where: str) -> GitCredentials:
    def text(key: str) -> str:
        try:
            return data[key].decode().strip()
        except UnicodeDecodeError:
            raise SecretInvalid(f"{where}: key {key!r} is not UTF-8 text") from None

    if "ssh-privatekey" in data:
        known_hosts = data.get("known_hosts", b"")
        if not known_hosts.strip():
            # Without it every build would trust whatever answers: a fresh, empty
            # known_hosts per build makes "accept new" accept anyone.
            raise SecretInvalid(
                f"{where}: 'ssh-privatekey' needs 'known_hosts' beside it (the Git host's key, "
                "e.g. the output of `ssh-keyscan HOST`), so the host can be verified")
        return GitCredentials(ssh_key=data["ssh-privatekey"], known_hosts=known_hosts)
    if "token" in data:
        return GitCredentials(username=text("username") if "username" in data
                              else "x-access-token", password=text("token"))
    if "password" in data:  # a kubernetes.io/basic-auth Secret; a token needs no username
        return GitCredentials(username=text("username") if "username" in data
                              else "x-access-token", password=text("password"))
    raise SecretInvalid(
        f"{where}: expected key 'token' (HTTPS token), 'username' and 'password' (HTTPS basic) "
        f"or 'ssh-privatekey' (SSH); found keys {sorted(data)}")


# --- the mirror cache -------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkout:
    commit: str
    tree: str
    """The git tree hash of ``path`` at ``commit``: the source half of the content key."""
    directory: Path


class SourceCache:
    """Bare mirrors under ``root``: per repository (normalized URL), one per tenant — the
    BrokerPlugin's namespace and the credential it fetches with. A commit one tenant fetched
    with its own credential is never in another tenant's mirror, so pinning a revision (or a
    short SHA) can only build what that tenant's own fetch can reach. Safe to share between
    threads."""

    def __init__(self, root: Path, timeout: float = GIT_TIMEOUT) -> None:
        self.root = root
        self.timeout = timeout
        self._locks: dict[Path, threading.Lock] = {}
        self._guard = threading.Lock()
        root.mkdir(parents=True, exist_ok=True)

    def mirror_dir(self, url: str) -> Path:
        """The directory holding every tenant's mirror of the repository at ``url``."""
        # Salted apart from the single shared mirrors of earlier versions, which prune
        # removes once idle: they are never read again.
        key = hashlib.sha256(b"per-tenant/" + normalize_url(url).encode()).hexdigest()[:24]
        return self.root / key

    def tenant_mirror(self, url: str, namespace: str, creds: GitCredentials | None) -> Path:
        return self.mirror_dir(url) / _tenant_key(namespace, creds)

    def prune(self, in_use: Iterable[str], idle_seconds: float,
              now: float | None = None) -> list[Path]:
        """Remove the mirrors of repositories no plugin names any more (``in_use``: the URLs
        plugins name) once every tenant's mirror of it has been idle ``idle_seconds``; returns
        what was removed. (A rotated credential's mirror goes with its repository's.)"""
        keep = {self.mirror_dir(url).name for url in in_use}
        cutoff = (time.time() if now is None else now) - idle_seconds
        removed = []
        for repo in sorted(self.root.iterdir()):
            if repo.name in keep or not repo.is_dir():
                continue
            tenants = [t for t in repo.iterdir() if t.is_dir()]
            if max((_last_used(t) for t in tenants), default=_last_used(repo)) < cutoff:
                remove_tree(repo)
                removed.append(repo)
        return removed

    def resolve(self, source: GitSource, creds: GitCredentials | None, *,
                namespace: str) -> str:
        """The commit ``source`` points at now: ``revision`` if pinned, else the ref's tip."""
        return self.fetch(source, creds, namespace=namespace)

    def fetch_ref(self, source: GitSource, creds: GitCredentials | None, *,
                  namespace: str) -> tuple[str, str]:
        """The full ref ``source.git.ref`` names (``builder.build.refs``) and its tip, fetched into
        the tenant's mirror."""
        validate_source(source)
        path = self.tenant_mirror(source.url, namespace, creds)
        with self._lock(path), self._git_env(source.url, creds) as env:
            repo = self._mirror(path)
            full = self._full_ref(repo, env, source)
            self._run(repo, env, "fetch", "--no-tags", "--prune", "--depth=1",
                      "--", source.url, f"+{full}:{_local(full)}",
                      what=f"fetch {full} from {source.url}", ref=source.ref)
            return full, str(repo.git.rev_parse(f"{_local(full)}^{{commit}}"))

    def fetch(self, source: GitSource, creds: GitCredentials | None,
              commit: str | None = None, *, namespace: str) -> str:
        """Bring ``commit`` (or the ref's tip, or the pinned revision) into the tenant's mirror
        (``namespace`` with ``creds``)."""
        validate_source(source)
        wanted = commit or source.revision
        if not wanted:
            return self.fetch_ref(source, creds, namespace=namespace)[1]
        validate_revision(wanted)
        path = self.tenant_mirror(source.url, namespace, creds)
        with self._lock(path), self._git_env(source.url, creds) as env:
            repo = self._mirror(path)
            if not _has_commit(repo, wanted):
                # Servers speaking protocol v2 serve any reachable commit by id; older ones
                # only serve ref tips, so fall back to fetching the ref's full history.
                try:
                    self._run(repo, env, "fetch", "--no-tags", "--depth=1", "--",
                              source.url, wanted, what=f"fetch commit {wanted} from "
                              f"{source.url}", ref=wanted)
                except (UnknownRef, SourceUnavailable):
                    full = self._full_ref(repo, env, source)
                    self._run(repo, env, "fetch", "--no-tags", "--", source.url,
                              f"+{full}:{_local(full)}",
                              what=f"fetch {full} from {source.url}", ref=source.ref)
            found = _has_commit(repo, wanted)
            if not found:
                raise UnknownRef(f"commit {wanted} is not in {source.url} (fetched "
                                 f"{source.ref!r}); check source.git.revision")
            return found

    def checkout(self, source: GitSource, commit: str, dest: Path, *, namespace: str,
                 creds: GitCredentials | None) -> Checkout:
        """Write ``source.path`` at ``commit`` into ``dest`` (fresh); nothing else of the repo.
        Only from the tenant's own mirror (what ``fetch`` brought in for the same tenant)."""
        validate_path(source.path)
        validate_revision(commit)
        path = self.tenant_mirror(source.url, namespace, creds)
        with self._lock(path):
            repo = self._mirror(path)
            spec = f"{commit}:{'' if source.path == '.' else source.path.strip('/')}"
            try:
                tree = str(repo.git.rev_parse("--verify", "--end-of-options", spec))
                if str(repo.git.cat_file("-t", tree)) != "tree":
                    raise git.GitCommandError(["cat-file"], 1, b"not a tree")
            except git.GitCommandError as e:
                raise SourcePathMissing(
                    f"source.git.path {source.path!r} is not a directory in commit "
                    f"{commit[:12]} of {source.url}; fix the path or push it") from e
            dest.mkdir(parents=True, exist_ok=False)
            with tempfile.TemporaryDirectory(prefix="index-") as tmp:
                env = {"GIT_INDEX_FILE": str(Path(tmp) / "index"), "GIT_WORK_TREE": str(dest)}
                try:
                    repo.git.read_tree(tree, env=env)
                    repo.git.checkout_index("--all", f"--prefix={dest}/", env=env)
                except git.GitCommandError as e:
                    raise SourcePathMissing(f"cannot check out {spec}: {_stderr(e)}") from e
        return Checkout(commit=commit, tree=tree, directory=dest)

    # --- internals ----------------------------------------------------------------------------

    def _lock(self, path: Path) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(path, threading.Lock())

    def _mirror(self, path: Path) -> git.Repo:
        if not (path / "HEAD").exists():
            path.mkdir(parents=True, exist_ok=True)
            git.Repo.init(path, bare=True)
        return git.Repo(path)

    @contextmanager
    def _git_env(self, url: str, creds: GitCredentials | None) -> Iterator[dict[str, str]]:
        with tempfile.TemporaryDirectory(prefix="git-home-") as home:
            env = {
                "HOME": home, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false",
                "SSH_ASKPASS": "/bin/false", "GIT_CONFIG_NOSYSTEM": "1",
                "GIT_CONFIG_GLOBAL": os.devnull,
            }
            # Defence in depth behind validate_url: only these transports, ever.
            config = [("protocol.allow", "never"), ("protocol.https.allow", "always"),
                      ("protocol.http.allow", "always"), ("protocol.ssh.allow", "always")]
            if creds is not None and creds.password:
                token = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
                config.append((f"http.{url}.extraHeader", f"Authorization: Basic {token}"))
            if creds is not None and creds.ssh_key:
                key = Path(home) / "id"
                key.write_bytes(creds.ssh_key.rstrip(b"\n") + b"\n")
                key.chmod(0o600)
                known = Path(home) / "known_hosts"
                known.write_bytes(creds.known_hosts)
                env["GIT_SSH_COMMAND"] = (
                    f"ssh -i {key} -o IdentitiesOnly=yes -o BatchMode=yes "
                    f"-o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes")
            env["GIT_CONFIG_COUNT"] = str(len(config))
            for i, (k, v) in enumerate(config):
                env[f"GIT_CONFIG_KEY_{i}"], env[f"GIT_CONFIG_VALUE_{i}"] = k, v
            yield env

    def _full_ref(self, repo: git.Repo, env: dict[str, str], source: GitSource) -> str:
        """``source.ref`` as a full ref, by the one rule of ``builder.build.refs`` (a short name:
        ask the server which of its candidates exist)."""
        if source.ref.startswith("refs/"):
            return source.ref
        listed = self._run(repo, env, "ls-remote", "--refs", "--", source.url,
                           *refs.candidates(source.ref),
                           what=f"list the refs of {source.url}", ref=source.ref)
        advertised = [line.split("\t", 1)[1] for line in listed.splitlines() if "\t" in line]
        return refs.qualify(source.ref, advertised, source.url)

    def _run(self, repo: git.Repo, env: dict[str, str], *args: str, what: str,
             ref: str) -> str:
        try:
            return str(repo.git.execute(["git", *args], env=env,
                                        kill_after_timeout=self.timeout,
                                        with_extended_output=False))
        except git.GitCommandError as e:
            raise _classify(e, what, ref) from None


def _tenant_key(namespace: str, creds: GitCredentials | None) -> str:
    """Names a tenant's mirror: the namespace and the credential (hashed, never stored)."""
    h = hashlib.sha256(b"plugforge-mirror/1\0" + namespace.encode() + b"\0")
    if creds is not None:
        for part in (creds.username.encode(), creds.password.encode(), creds.ssh_key):
            h.update(len(part).to_bytes(8, "big") + part)
    return h.hexdigest()[:24]


def _last_used(mirror: Path) -> float:
    """A fetch rewrites FETCH_HEAD; a mirror made by init alone has only its own mtime."""
    return max((p.stat().st_mtime for p in (mirror, mirror / "FETCH_HEAD") if p.exists()),
               default=0.0)


def _local(remote_ref: str) -> str:
    return "refs/plugforge/" + remote_ref.removeprefix("refs/")


def _has_commit(repo: git.Repo, wanted: str) -> str | None:
    try:
        sha = str(repo.git.rev_parse("--verify", "--quiet", "--end-of-options",
                                     f"{wanted}^{{commit}}"))
    except git.GitCommandError:
        return None
    return sha if _SHA.match(sha) else None


def _stderr(e: git.GitCommandError) -> str:
    text = str(e.stderr or "").strip().removeprefix("stderr:").strip().strip("'")
    return " ".join(text.split())[:500]


def _classify(e: git.GitCommandError, what: str, ref: str) -> Exception:
    """Map git's stderr to our errors; the message never includes credentials (none in argv)."""
    err = _stderr(e)
    low = err.lower()
    if "couldn't find remote ref" in low or "not our ref" in low or \
            "no such remote ref" in low or "unadvertised object" in low:
        return UnknownRef(f"{what}: {ref!r} does not exist in the repository ({err}); check "
                          "source.git.ref / revision")
    if "host key verification failed" in low or "remote host identification has changed" in low:
        return SourceAuthFailed(f"{what}: the Git host's SSH key is not the one in the Secret's "
                                f"known_hosts ({err}); if the host's key really changed, update "
                                "known_hosts (ssh-keyscan HOST), else someone is in between")
    if "authentication failed" in low or "could not read username" in low or \
            "permission denied (publickey" in low or " 401" in low or " 403" in low or \
            "terminal prompts disabled" in low:
        return SourceAuthFailed(f"{what}: the server refused our credentials ({err}); check the "
                                "Secret named by source.git.secretRef")
    if _NOT_FOUND.search(low):
        # git's own words for the protocol's answer (HTTP 404, or an SSH server that has no
        # such path), not one forge's: permanent, like an unknown ref.
        return RepositoryNotFound(f"{what}: the server says there is no such repository "
                                  f"({err}); check source.git.url (not retried until the "
                                  "spec changes)")
    if e.status is None or "timed out" in low or "timeout" in low:
        return SourceUnavailable(f"{what}: timed out or was killed ({err}); will retry")
    return SourceUnavailable(f"{what}: {err or 'git exited with status ' + str(e.status)}; "
                             "will retry")


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
