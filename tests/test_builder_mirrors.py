"""Git mirrors of repositories no plugin names any more are removed once idle (real git server)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from builder.build.source import SourceCache
from builder.resources import GitSource
from testbed.gitserver import GitServer, run_git


def _repo_with_a_commit(git_server: GitServer, work: Path, name: str) -> str:
    url = git_server.create_repo(f"mirrors-{uuid.uuid4().hex[:6]}/{name}.git")
    work.mkdir(parents=True)
    run_git(work, "init", "-q", "-b", "main")
    (work / "README").write_text(name)
    run_git(work, "add", "README")
    run_git(work, "commit", "-q", "-m", name)
    run_git(work, "push", "-q", url, "main")
    return url


def test_unused_idle_mirrors_are_pruned(git_server: GitServer, tmp_path: Path) -> None:
    kept_url = _repo_with_a_commit(git_server, tmp_path / "kept", "kept")
    gone_url = _repo_with_a_commit(git_server, tmp_path / "gone", "gone")
    cache = SourceCache(tmp_path / "mirrors")
    for url in (kept_url, gone_url):
        cache.fetch(GitSource(url, "main"), None, namespace="ns")
    kept, gone = cache.mirror_dir(kept_url), cache.mirror_dir(gone_url)

    # Unused but fetched just now: kept (a deleted plugin's build may still be running).
    assert cache.prune([kept_url], idle_seconds=3600) == []
    # Idle past the limit: removed; the one a plugin names stays whatever its age.
    later = time.time() + 7200
    assert cache.prune([kept_url.removesuffix(".git") + "/"], 3600, now=later) == [gone]
    assert kept.is_dir() and not gone.exists()
    # The removed mirror comes back on the next fetch.
    cache.fetch(GitSource(gone_url, "main"), None, namespace="ns")
    assert [p.parent.parent for p in gone.glob("*/HEAD")] == [gone]
