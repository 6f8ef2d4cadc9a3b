"""Realistic push deliveries for the webhook tests and the benchmark.

Shapes follow each forge's documented push payload (GitHub's ``push`` event, Gitea's push
payload, GitLab's "Push Hook"), nested the way the forges nest them; the values are ours.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from builder.webhooks.signatures import github_header, hmac_hex

ZERO = "0" * 40


@dataclass
class Commit:
    id: str
    added: Sequence[str] = ()
    modified: Sequence[str] = ()
    removed: Sequence[str] = ()
    message: str = "change things"


@dataclass
class Push:
    host: str  # "127.0.0.1:8080" or "github.com"
    owner: str
    repo: str
    ref: str
    before: str
    after: str
    commits: list[Commit] = field(default_factory=list)
    pusher: str = "octocat"
    scheme: str = "https"


def _user(login: str) -> dict[str, Any]:
    return {"name": login.title(), "email": f"{login}@users.noreply.example", "username": login}


def _commit(push: Push, c: Commit, base: str) -> dict[str, Any]:
    return {
        "id": c.id, "tree_id": c.id[::-1], "distinct": True, "message": c.message,
        "timestamp": "2026-11-21T19:50:00+00:00", "url": f"{base}/commit/{c.id}",
        "author": _user(push.pusher), "committer": _user(push.pusher),
        "added": list(c.added), "removed": list(c.removed), "modified": list(c.modified),
    }


def github_push(push: Push, **overrides: Any) -> dict[str, Any]:
    base = f"{push.scheme}://{push.host}/{push.owner}/{push.repo}"
    bare_host = push.host.split(":")[0]
    commits = [_commit(push, c, base) for c in push.commits]
    payload: dict[str, Any] = {
        "ref": push.ref, "before": push.before, "after": push.after,
        "repository": {
            "id": 186853002, "node_id": "MDEwOlJlcG9zaXRvcnkxODY4NTMwMDI=",
            "name": push.repo, "full_name": f"{push.owner}/{push.repo}", "private": False,
            "owner": {"name": push.owner, "email": None, "login": push.owner, "id": 21031067,
                      "type": "Organization", "site_admin": False,
                      "html_url": f"{push.scheme}://{push.host}/{push.owner}"},
            "html_url": base, "description": "an MQTT auth plugin", "fork": False,
            "url": base, "git_url": f"git://{bare_host}/{push.owner}/{push.repo}.git",
            "ssh_url": f"git@{bare_host}:{push.owner}/{push.repo}.git",
            "clone_url": f"{base}.git", "svn_url": base, "homepage": None,
            "size": 12, "stargazers_count": 0, "language": "C", "has_issues": True,
            "archived": False, "disabled": False, "open_issues_count": 0, "topics": [],
            "visibility": "public", "default_branch": "main", "master_branch": "main",
            "created_at": 1557933565, "pushed_at": 1763754600, "updated_at":
            "2026-11-21T19:50:00Z",
        },
        "pusher": {"name": push.pusher, "email": f"{push.pusher}@users.noreply.example"},
        "sender": {"login": push.pusher, "id": 583231, "type": "User", "site_admin": False},
        "created": push.before == ZERO, "deleted": push.after == ZERO, "forced": False,
        "base_ref": None, "compare": f"{base}/compare/{push.before[:12]}...{push.after[:12]}",
        "commits": commits, "head_commit": commits[-1] if commits else None,
    }
    payload.update(overrides)
    return payload


def gitea_push(push: Push) -> dict[str, Any]:
    base = f"{push.scheme}://{push.host}/{push.owner}/{push.repo}"
    bare_host = push.host.split(":")[0]
    commits = [_commit(push, c, base) for c in push.commits]
    return {
        "ref": push.ref, "before": push.before, "after": push.after,
        "compare_url": f"{base}/compare/{push.before}...{push.after}",
        "commits": commits, "total_commits": len(commits),
        "head_commit": commits[-1] if commits else None,
        "repository": {
            "id": 140, "owner": {"id": 1, "login": push.owner, "full_name": "",
                                 "email": "", "username": push.owner},
            "name": push.repo, "full_name": f"{push.owner}/{push.repo}", "private": False,
            "fork": False, "html_url": base,
            "ssh_url": f"git@{bare_host}:{push.owner}/{push.repo}.git",
            "clone_url": f"{base}.git", "default_branch": "main",
        },
        "pusher": {"id": 1, "login": push.pusher, "full_name": push.pusher.title(),
                   "email": f"{push.pusher}@example", "username": push.pusher},
        "sender": {"id": 1, "login": push.pusher, "username": push.pusher},
    }


def gitlab_push(push: Push, total: int | None = None) -> dict[str, Any]:
    base = f"{push.scheme}://{push.host}/{push.owner}/{push.repo}"
    bare_host = push.host.split(":")[0]
    commits = [{"id": c.id, "message": c.message, "title": c.message,
                "timestamp": "2026-11-21T19:50:00+00:00", "url": f"{base}/-/commit/{c.id}",
                "author": {"name": push.pusher.title(), "email": f"{push.pusher}@example"},
                "added": list(c.added), "modified": list(c.modified),
                "removed": list(c.removed)} for c in push.commits]
    tag = push.ref.startswith("refs/tags/")
    project = {"id": 15, "name": push.repo, "description": "", "web_url": base,
               "avatar_url": None, "git_ssh_url": f"git@{bare_host}:{push.owner}/{push.repo}.git",
               "git_http_url": f"{base}.git", "namespace": push.owner, "visibility_level": 0,
               "path_with_namespace": f"{push.owner}/{push.repo}", "default_branch": "main",
               "homepage": base, "url": f"git@{bare_host}:{push.owner}/{push.repo}.git",
               "ssh_url": f"git@{bare_host}:{push.owner}/{push.repo}.git",
               "http_url": f"{base}.git"}
    return {
        "object_kind": "tag_push" if tag else "push", "event_name": "tag_push" if tag else "push",
        "before": push.before, "after": push.after, "ref": push.ref,
        "ref_protected": True, "checkout_sha": None if push.after == ZERO else push.after,
        "user_id": 4, "user_name": push.pusher.title(), "user_username": push.pusher,
        "user_email": "", "user_avatar": None, "project_id": 15, "project": project,
        "repository": {"name": push.repo, "url": project["url"], "description": "",
                       "homepage": base, "git_http_url": f"{base}.git",
                       "git_ssh_url": project["git_ssh_url"], "visibility_level": 0},
        "commits": commits,
        "total_commits_count": len(commits) if total is None else total,
    }


def encode(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def github_headers(body: bytes, secret: bytes | None, event: str = "push",
                   delivery: str | None = None, content_type: str = "application/json"
                   ) -> dict[str, str]:
    headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
               "Content-Type": content_type, "User-Agent": "GitHub-Hookshot/abc1234",
               "X-GitHub-Hook-ID": "292430182"}
    if secret is not None:
        headers["X-Hub-Signature-256"] = github_header(secret, body)
        headers["X-Hub-Signature"] = "sha1=ignored-legacy"
    return headers


def gitea_headers(body: bytes, secret: bytes | None, event: str = "push",
                  delivery: str | None = None, forgejo: bool = False) -> dict[str, str]:
    d = delivery or str(uuid.uuid4())
    prefix = "X-Forgejo" if forgejo else "X-Gitea"
    headers = {f"{prefix}-Event": event, f"{prefix}-Delivery": d, "X-Gogs-Event": event,
               "Content-Type": "application/json"}
    if secret is not None:
        headers[f"{prefix}-Signature"] = hmac_hex(secret, body)
    return headers


def gitlab_headers(token: str | None, event: str = "Push Hook",
                   delivery: str | None = None) -> dict[str, str]:
    headers = {"X-Gitlab-Event": event, "X-Gitlab-Event-UUID": delivery or str(uuid.uuid4()),
               "X-Gitlab-Instance": "https://gitlab.example", "Content-Type": "application/json"}
    if token is not None:
        headers["X-Gitlab-Token"] = token
    return headers
