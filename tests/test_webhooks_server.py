"""The live webhook endpoint over real sockets: verification, parsing, limits, abuse.

Plugins come from a fixed list and build requests land in a list: both are this project's own
interfaces (``PluginProvider``, ``BuildSink``), not stand-ins for an external component. The
apiserver-backed provider and PluginBuild sink are exercised in test_webhooks_e2e.py.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from webhooks_support import (
    ZERO,
    Commit,
    Push,
    encode,
    gitea_headers,
    gitea_push,
    github_headers,
    github_push,
    gitlab_headers,
    gitlab_push,
)

from builder.webhooks import service
from builder.webhooks.dedupe import BuildRequest
from builder.webhooks.matching import PluginSource, SecretRef
from builder.webhooks.server import ServerSettings
from builder.webhooks.signatures import github_header

SECRET = b"s3cr3t-webhook-value-for-acme"
OTHER_SECRET = b"another-tenant-secret-value"
A, B, C, D = (c * 40 for c in "abcd")
HOST = "git.example"
LIMIT = 64 * 1024


class StaticPlugins:
    def __init__(self, plugins: Sequence[PluginSource], secrets: dict[str, bytes]) -> None:
        self._plugins = list(plugins)
        self._secrets = secrets

    def plugins(self) -> Sequence[PluginSource]:
        return self._plugins

    def secret(self, ref: SecretRef) -> bytes | None:
        return self._secrets.get(ref.name)


class Collector:
    def __init__(self) -> None:
        self.requests: list[BuildRequest] = []
        self.lock = threading.Lock()

    def __call__(self, request: BuildRequest) -> None:
        with self.lock:
            self.requests.append(request)

    def for_plugin(self, key: str) -> list[BuildRequest]:
        with self.lock:
            return [r for r in self.requests if r.plugin_key == key]


def plugin(name: str, secret: str | None = "acme-hook",  # noqa: S107 - a Secret's name
           ref: str = "main", path: str = ".",
           url: str = f"https://{HOST}/acme/auth.git") -> PluginSource:
    return PluginSource(namespace="acme", name=name, uid=f"uid-{name}", url=url, ref=ref,
                        path=path, revision=None, enabled=True,
                        secret=SecretRef("acme", secret, "secret") if secret else None)


PLUGINS = [
    plugin("main"), plugin("in-path", path="plugin"), plugin("docs-only", path="docs"),
    plugin("tagged", ref="refs/tags/v1.0"), plugin("unsigned", secret=None),
    plugin("other-tenant", secret="other-hook"),
    plugin("burst", url=f"git@{HOST}:acme/burst.git"),
]


@pytest.fixture(scope="module")
def collector() -> Collector:
    return Collector()


@pytest.fixture(scope="module")
def hooks(collector: Collector) -> Iterator[service.Webhooks]:
    provider = StaticPlugins(PLUGINS, {"acme-hook": SECRET, "other-hook": OTHER_SECRET})
    running = service.start(provider, collector, service.WebhookSettings(
        server=ServerSettings(max_body=LIMIT, memory_budget=8 * LIMIT, read_timeout=5),
        quiet_seconds=0.3))
    yield running
    running.stop()


def post(hooks: service.Webhooks, path: str, body: bytes,
         headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", hooks.server.port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, json.loads(data) if data else {}
    finally:
        conn.close()


def a_push(**kw: Any) -> Push:
    fields: dict[str, Any] = dict(host=HOST, owner="Acme", repo="auth", ref="refs/heads/main",
                                  before=A, after=B, commits=[Commit(B, modified=["plugin/x.c"])])
    return Push(**{**fields, **kw})


def send_github(hooks: service.Webhooks, payload: Any, secret: bytes | None = SECRET,
                **kw: Any) -> tuple[int, dict[str, Any]]:
    body = encode(payload)
    return post(hooks, "/webhooks/github", body, github_headers(body, secret, **kw))


def queued(body: dict[str, Any]) -> set[str]:
    return {q["plugin"].split("/", 1)[1] for q in body.get("queued", [])}


def wait_requests(collector: Collector, key: str, count: int) -> list[BuildRequest]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = collector.for_plugin(key)
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"expected {count} build requests for {key}, got "
                         f"{collector.for_plugin(key)}")


# --- the happy paths --------------------------------------------------------------------------


def test_signed_push_queues_matching_plugins_with_the_trigger(
        hooks: service.Webhooks, collector: Collector, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    status, body = send_github(hooks, github_push(a_push(commits=[
        Commit(C, modified=["plugin/acl.c"])], after=C)), delivery="gh-happy-1")
    assert status == 202, body
    # Not "docs-only" (path filter), not "unsigned" (no secret), not "other-tenant" (its
    # secret did not sign this), not "tagged" (follows a tag).
    assert queued(body) == {"main", "in-path"}
    assert body["skipped"] == [{"plugin": "acme/docs-only",
                                "reason": "no changed file under 'docs' (spec.source.git.path)"}]
    assert "other-tenant" not in json.dumps(body)
    [request] = [r for r in wait_requests(collector, "acme/main", 1) if r.commit == C]
    t = request.trigger
    assert (t.event, t.delivery, t.user, t.commit, t.forge) == ("push", "gh-happy-1", "octocat",
                                                                C, "github")
    assert t.compare_url == f"https://{HOST}/Acme/auth/compare/{A[:12]}...{C[:12]}"
    assert SECRET.decode() not in caplog.text


def test_form_encoded_delivery(hooks: service.Webhooks) -> None:
    form = urllib.parse.urlencode({"payload": json.dumps(github_push(a_push()))}).encode()
    status, body = post(hooks, "/webhooks/github", form, github_headers(
        form, SECRET, content_type="application/x-www-form-urlencoded"))
    assert status == 202 and queued(body) == {"main", "in-path"}, body


def test_ping(hooks: service.Webhooks) -> None:
    status, body = send_github(hooks, {"zen": "Design for failure.", "hook_id": 7,
                                       "hook": {"type": "Repository", "active": True}},
                               event="ping")
    assert (status, body) == (200, {"status": "pong"})


def test_tag_push_builds_the_tag_following_plugin(hooks: service.Webhooks) -> None:
    status, body = send_github(hooks, github_push(a_push(ref="refs/tags/v1.0", before=ZERO,
                                                         commits=[])))
    assert status == 202 and queued(body) == {"tagged"}, body
    status, body = send_github(hooks, github_push(a_push(ref="refs/tags/v0.9", before=ZERO,
                                                         commits=[])))
    assert status == 202 and queued(body) == set() and body["status"] == "ignored", body


def test_each_plugin_is_checked_against_its_own_secret(hooks: service.Webhooks) -> None:
    status, body = send_github(hooks, github_push(a_push()), secret=OTHER_SECRET)
    assert status == 202 and queued(body) == {"other-tenant"}, body


def test_gitea_and_forgejo(hooks: service.Webhooks) -> None:
    body = encode(gitea_push(a_push(scheme="https")))
    for forgejo in (False, True):
        status, out = post(hooks, "/webhooks/gitea", body,
                           gitea_headers(body, SECRET, forgejo=forgejo))
        assert status == 202 and queued(out) == {"main", "in-path"}, out
    status, out = post(hooks, "/webhooks/gitea", body, gitea_headers(body, OTHER_SECRET[:-1]))
    assert status == 401, out


def test_gitlab(hooks: service.Webhooks) -> None:
    body = encode(gitlab_push(a_push()))
    status, out = post(hooks, "/webhooks/gitlab", body, gitlab_headers(SECRET.decode()))
    assert status == 202 and queued(out) == {"main", "in-path"}, out
    status, out = post(hooks, "/webhooks/gitlab", body, gitlab_headers("wrong"))
    assert status == 401, out
    status, out = post(hooks, "/webhooks/gitlab", body, gitlab_headers(None))
    assert status == 401, out
    # A GitHub signature on the GitLab endpoint is not a token.
    status, out = post(hooks, "/webhooks/gitlab", body,
                       {**gitlab_headers(None), "X-Hub-Signature-256": github_header(SECRET, body)})
    assert status == 401, out


# --- refusals ---------------------------------------------------------------------------------


def _nothing_new(collector: Collector, action: Any) -> Any:
    time.sleep(0.5)  # let earlier tests' requests drain out of the coalescer
    before = len(collector.requests)
    result = action()
    time.sleep(0.5)
    assert len(collector.requests) == before, "a refused delivery queued a build"
    return result


@pytest.mark.parametrize("variant", ["none", "wrong", "other-body", "sha1-only"])
def test_unsigned_or_badly_signed_deliveries_are_refused(
        hooks: service.Webhooks, collector: Collector, caplog: pytest.LogCaptureFixture,
        variant: str) -> None:
    caplog.set_level(logging.DEBUG)
    body = encode(github_push(a_push(after=D)))
    headers = github_headers(body, SECRET)
    if variant == "none":
        del headers["X-Hub-Signature-256"]
    elif variant == "wrong":
        headers["X-Hub-Signature-256"] = github_header(b"guess", body)
    elif variant == "other-body":
        headers["X-Hub-Signature-256"] = github_header(SECRET, body.replace(b"main", b"dev"))
    else:
        del headers["X-Hub-Signature-256"]  # the legacy SHA-1 header alone is not enough
    status, out = _nothing_new(collector, lambda: post(hooks, "/webhooks/github", body,
                                                       headers))
    assert status == 401
    assert out["error"].startswith("signature verification failed")
    text = json.dumps(out) + caplog.text
    for secret in (SECRET, OTHER_SECRET):
        assert secret.decode() not in text
        assert secret.hex() not in text


def test_redelivery_is_dropped_but_an_unsigned_copy_cannot_burn_the_id(
        hooks: service.Webhooks, collector: Collector) -> None:
    payload = github_push(a_push(repo="burst", before=C, after=D,
                                 commits=[Commit(D, modified=["x"])]))
    status, _ = send_github(hooks, payload, secret=None, delivery="replay-1")
    assert status == 401
    status, first = send_github(hooks, payload, delivery="replay-1")
    assert status == 202 and queued(first) == {"burst"}, first
    status, again = send_github(hooks, payload, delivery="replay-1")
    assert (status, again["status"], again["queued"]) == (200, "duplicate", [])
    requests = wait_requests(collector, "acme/burst", 1)
    time.sleep(0.6)
    assert [r.commit for r in collector.for_plugin("acme/burst")].count(D) == 1, requests


def test_deleted_branch_is_ignored(hooks: service.Webhooks, collector: Collector) -> None:
    status, out = _nothing_new(collector, lambda: send_github(
        hooks, github_push(a_push(after=ZERO, commits=[]))))
    assert status == 202 and out["status"] == "ignored" and "deleted" in out["reason"]


@pytest.mark.parametrize(("body", "content_type", "status", "complaint"), [
    (b'{"ref": ', "application/json", 400, "malformed JSON"),
    (b"[1, 2]", "application/json", 400, "expected a JSON object, found array"),
    (encode({**github_push(a_push()), "ref": ["refs/heads/main"]}), "application/json", 400,
     "ref: expected a string, found array"),
    (encode({**github_push(a_push()), "commits": "all of them"}), "application/json", 400,
     "commits: expected an array, found string"),
    (b"payload=%7B%7D&token=x", "application/x-www-form-urlencoded", 400,
     "unexpected field(s) 'token'"),
    (b"<xml/>", "application/xml", 415, "Content-Type: expected application/json"),
])
def test_bad_payloads_are_4xx_with_a_clear_message(
        hooks: service.Webhooks, body: bytes, content_type: str, status: int,
        complaint: str) -> None:
    got, out = post(hooks, "/webhooks/github", body,
                    github_headers(body, SECRET, content_type=content_type))
    assert got == status, out
    assert complaint in out["error"]


def test_routing_and_methods(hooks: service.Webhooks) -> None:
    status, _ = post(hooks, "/webhooks/bitbucket", b"{}", {"Content-Type": "application/json"})
    assert status == 404
    conn = http.client.HTTPConnection("127.0.0.1", hooks.server.port, timeout=5)
    for method in ("GET", "PUT", "DELETE", "OPTIONS"):
        conn.request(method, "/webhooks/github")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 405, method
        conn.close()
    conn.request("GET", "/healthz")
    assert conn.getresponse().status == 200
    conn.close()


# --- size limits, raw sockets -----------------------------------------------------------------


def raw(hooks: service.Webhooks, data: bytes, read_timeout: float = 5.0) -> bytes:
    """Send ``data`` as-is and return everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", hooks.server.port), timeout=read_timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def test_oversized_content_length_is_refused_before_the_body_is_sent(
        hooks: service.Webhooks) -> None:
    # The announced body is never sent: a 413 that arrives (and a connection that closes)
    # proves the server did not wait to read it.
    start = time.monotonic()
    answer = raw(hooks, b"POST /webhooks/github HTTP/1.1\r\nHost: x\r\n"
                        b"Content-Type: application/json\r\n"
                        b"Content-Length: " + str(LIMIT + 1).encode() + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"body too large" in answer and b"Connection: close" in answer
    assert time.monotonic() - start < 2


def test_expect_100_continue_gets_413_instead_of_100(hooks: service.Webhooks) -> None:
    answer = raw(hooks, b"POST /webhooks/github HTTP/1.1\r\nHost: x\r\n"
                        b"Expect: 100-continue\r\n"
                        b"Content-Length: 30000000\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_chunked_bodies_are_counted_and_cut_at_the_limit(hooks: service.Webhooks) -> None:
    chunk = b"x" * 8192
    pieces = b"".join(b"2000\r\n" + chunk + b"\r\n" for _ in range(LIMIT // 8192 + 2))
    answer = raw(hooks, b"POST /webhooks/github HTTP/1.1\r\nHost: x\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n" + pieces)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_small_chunked_body_is_accepted(hooks: service.Webhooks) -> None:
    body = encode(github_push(a_push()))
    headers = github_headers(body, SECRET)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
    mid = len(body) // 2
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:mid], body[mid:]))
    answer = raw(hooks, b"POST /webhooks/github HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                 + head + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 202"), answer[:300]


@pytest.mark.parametrize(("head", "status"), [
    (b"Content-Length: -1\r\n", b"400"),
    (b"Content-Length: 1e3\r\n", b"400"),
    (b"Content-Length: 5\r\nContent-Length: 6\r\n", b"400"),
    (b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n", b"400"),
    (b"Transfer-Encoding: gzip\r\n", b"400"),
    (b"", b"411"),
])
def test_malformed_framing(hooks: service.Webhooks, head: bytes, status: bytes) -> None:
    answer = raw(hooks, b"POST /webhooks/github HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n{}")
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:200]


def test_a_silent_client_is_dropped_and_others_are_served(hooks: service.Webhooks) -> None:
    slow = socket.create_connection(("127.0.0.1", hooks.server.port))
    slow.sendall(b"POST /webhooks/github HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
    try:
        test_ping(hooks)  # served while the slow one waits
    finally:
        slow.close()


# --- fuzzing ----------------------------------------------------------------------------------

_TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_",
                 min_size=1, max_size=30)
_VALUE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF,
                                        blacklist_characters="\x7f"), max_size=80)
_HEADER_NAMES = st.one_of(_TOKEN, st.sampled_from([
    "X-GitHub-Event", "X-GitHub-Delivery", "X-Hub-Signature-256", "Content-Type",
    "X-Gitea-Event", "X-Gitea-Signature", "X-Gitlab-Event", "X-Gitlab-Token",
    "Idempotency-Key", "Expect", "Transfer-Encoding"]))
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=20)
_KEYS = ["ref", "before", "after", "repository", "commits", "pusher", "deleted", "compare",
         "project", "object_kind", "total_commits_count"]


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    path = draw(st.sampled_from(["/webhooks/github", "/webhooks/gitea", "/webhooks/gitlab",
                                 "/webhooks/github?x=1", "/elsewhere"]))
    kind = draw(st.sampled_from(["bytes", "json", "mutated"]))
    if kind == "bytes":
        body = draw(st.binary(max_size=512))
    elif kind == "json":
        body = json.dumps(draw(_JSON)).encode()
    else:
        payload: dict[str, Any] = draw(st.sampled_from([
            github_push(a_push()), gitea_push(a_push()), gitlab_push(a_push())]))
        payload = json.loads(json.dumps(payload))
        for key in draw(st.lists(st.sampled_from(_KEYS), max_size=3)):
            payload[key] = draw(_JSON)
        body = json.dumps(payload).encode()
    headers = draw(st.dictionaries(_HEADER_NAMES, _VALUE, max_size=6))
    headers.pop("Expect", None)
    headers.pop("Transfer-Encoding", None)
    if draw(st.booleans()):
        # Signed for real, so the parser (not only the signature check) meets the input.
        headers.update({"X-Hub-Signature-256": github_header(SECRET, body),
                        "X-Gitlab-Token": SECRET.decode(),
                        "X-Gitea-Signature": github_header(SECRET, body)[7:]})
        headers.setdefault("X-GitHub-Event", draw(st.sampled_from(["push", "ping", "issues"])))
        headers.setdefault("X-Gitea-Event", "push")
        headers.setdefault("X-Gitlab-Event", draw(st.sampled_from(["Push Hook", "Note Hook"])))
        headers.setdefault("Content-Type", draw(st.sampled_from([
            "application/json", "application/json; charset=utf-8",
            "application/x-www-form-urlencoded", "text/plain"])))
    return path, body, headers


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(delivery=deliveries())
def test_fuzzed_deliveries_get_only_2xx_or_4xx(hooks: service.Webhooks,
                                              delivery: tuple[str, bytes, dict[str, str]]
                                              ) -> None:
    path, body, headers = delivery
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items()
                   if k.lower() != "content-length").encode("latin-1")
    answer = raw(hooks, b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                 b"Connection: close\r\n" + head
                 + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    status = answer[9:12]
    assert status[:1] in (b"2", b"4"), answer[:300]


def test_server_is_still_up_after_the_fuzzing(hooks: service.Webhooks) -> None:
    test_ping(hooks)
    stats = json.loads(raw(hooks, b"GET /webhooks/stats HTTP/1.1\r\nHost: x\r\n"
                                  b"Connection: close\r\n\r\n").split(b"\r\n\r\n", 1)[1])
    assert stats["deliveries"] > 100


# --- full-size deliveries and the memory budget (servers of their own) ------------------------


def test_a_delivery_near_githubs_25_mb_cap_is_acknowledged_fast(collector: Collector) -> None:
    provider = StaticPlugins(PLUGINS, {"acme-hook": SECRET})
    running = service.start(provider, collector, service.WebhookSettings(quiet_seconds=0.3))
    try:
        files = [f"plugin/generated/{i:06d}/{'x' * 60}.c" for i in range(2048)]
        commits = [Commit(f"{i:040x}", modified=files) for i in range(1, 126)]
        body = encode(github_push(a_push(after=commits[-1].id, commits=commits)))
        assert 20_000_000 < len(body) < 25 * 1024 * 1024, len(body)
        start = time.monotonic()
        status, out = post(running, "/webhooks/github", body, github_headers(body, SECRET))
        elapsed = time.monotonic() - start
        # 125 commits: GitHub may have truncated the list, so even docs-only rebuilds.
        assert status == 202 and queued(out) == {"main", "in-path", "docs-only"}, out
        assert elapsed < 10, f"acknowledged after {elapsed:.1f}s: over GitHub's 10 s limit"
        answer = raw(running, b"POST /webhooks/github HTTP/1.1\r\nHost: x\r\n"
                              b"Content-Length: " + str(25 * 1024 * 1024 + 1).encode()
                              + b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
    finally:
        running.stop()


def test_deliveries_beyond_the_memory_budget_wait_then_get_429(collector: Collector) -> None:
    provider = StaticPlugins(PLUGINS, {"acme-hook": SECRET})
    running = service.start(provider, collector, service.WebhookSettings(
        server=ServerSettings(max_body=LIMIT, memory_budget=LIMIT, admission_timeout=0.5)))
    hog = socket.create_connection(("127.0.0.1", running.server.port))
    try:
        # Announces a body as large as the whole budget and never sends it.
        hog.sendall(b"POST /webhooks/github HTTP/1.1\r\nContent-Length: "
                    + str(LIMIT).encode() + b"\r\n\r\n")
        time.sleep(0.3)
        body = encode(github_push(a_push()))
        status, out = post(running, "/webhooks/github", body, github_headers(body, SECRET))
        assert status == 429 and "retry" in out["error"], out
    finally:
        hog.close()
    time.sleep(0.3)  # the hog's reservation is returned when its connection ends
    try:
        test_ping(running)
    finally:
        running.stop()
