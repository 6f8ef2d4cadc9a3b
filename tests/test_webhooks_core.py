"""The webhook core as pure functions: signatures, parsing, matching, dedupe, coalescing.

No servers here; time is an injected clock. The live endpoint is in test_webhooks_server.py,
the real builder in test_webhooks_e2e.py.
"""

from __future__ import annotations

import itertools
import json
import urllib.parse
from typing import Any

import pytest
from hypothesis import given, settings
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

from builder.webhooks.dedupe import BuildRequest, Coalescer, DeliveryCache, Offer, Trigger
from builder.webhooks.events import Ignored, PayloadError, Ping, PushEvent, parse
from builder.webhooks.matching import (
    PluginSource,
    RepoId,
    decide,
    normalize_url,
    path_touched,
    plan,
    ref_matches,
)
from builder.webhooks.signatures import Forge, github_header, hmac_hex, verify

SECRET = b"It's a Secret to Everybody"
A, B, C, D, E, F = (c * 40 for c in "abcdef")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def push(**kw: Any) -> Push:
    defaults: dict[str, Any] = dict(host="github.com", owner="Acme", repo="MQTT-Auth",
                                    ref="refs/heads/main", before=A, after=B,
                                    commits=[Commit(B, modified=["plugin/src/acl.c"])])
    return Push(**{**defaults, **kw})


# --- signatures -------------------------------------------------------------------------------


def test_github_signature_is_hmac_sha256_of_the_raw_body() -> None:
    body = b"Hello, World!"
    # The value GitHub documents for this secret and body.
    assert github_header(SECRET, body) == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")
    assert verify(Forge.GITHUB, {"X-Hub-Signature-256": github_header(SECRET, body)}, body,
                  SECRET)


@pytest.mark.parametrize("header", [
    None, "", "sha256=", "sha256", "sha1=" + "0" * 40, "sha256=" + "0" * 64,
    "sha256=zz", "sha256=" + "a" * 10_000, "sha256=ünïcode", "md5=abc",
])
def test_github_bad_signatures_do_not_verify_and_never_raise(header: str | None) -> None:
    headers = {} if header is None else {"X-Hub-Signature-256": header}
    assert not verify(Forge.GITHUB, headers, b"{}", SECRET)


def test_signature_over_another_body_or_with_another_secret_fails() -> None:
    body = encode(github_push(push()))
    good = github_header(SECRET, body)
    assert not verify(Forge.GITHUB, {"X-Hub-Signature-256": good}, body + b" ", SECRET)
    assert not verify(Forge.GITHUB, {"X-Hub-Signature-256": good}, body, b"other")
    # Header names are case-insensitive; hex case does not matter.
    assert verify(Forge.GITHUB, {"x-hub-signature-256": good.upper().replace("SHA", "sha")},
                  body, SECRET)


def test_empty_secret_never_verifies() -> None:
    assert not verify(Forge.GITHUB, {"X-Hub-Signature-256": github_header(b"", b"x")}, b"x",
                      b"")
    assert not verify(Forge.GITLAB, {"X-Gitlab-Token": ""}, b"x", b"")


def test_gitea_and_forgejo_signatures() -> None:
    body = b'{"ref": "refs/heads/main"}'
    assert verify(Forge.GITEA, {"X-Gitea-Signature": hmac_hex(SECRET, body)}, body, SECRET)
    assert verify(Forge.GITEA, {"X-Forgejo-Signature": hmac_hex(SECRET, body)}, body, SECRET)
    assert verify(Forge.GITEA, {"X-Hub-Signature-256": github_header(SECRET, body)}, body,
                  SECRET)
    assert not verify(Forge.GITEA, {"X-Gitea-Signature": "sha256=" + hmac_hex(SECRET, body)},
                      body, SECRET)
    # A wrong Gitea signature is not rescued by a right GitHub-style one next to it.
    assert not verify(Forge.GITEA, {"X-Gitea-Signature": "00",
                                    "X-Hub-Signature-256": github_header(SECRET, body)},
                      body, SECRET)


def test_gitlab_token() -> None:
    assert verify(Forge.GITLAB, {"X-Gitlab-Token": SECRET.decode()}, b"", SECRET)
    assert not verify(Forge.GITLAB, {"X-Gitlab-Token": SECRET.decode()[:-1]}, b"", SECRET)
    assert not verify(Forge.GITLAB, {}, b"", SECRET)
    assert not verify(Forge.GITLAB, {"X-Gitlab-Token": "\udcff"}, b"", SECRET)


# --- parsing ----------------------------------------------------------------------------------


def _parse_github(payload: Any, **header_kw: Any) -> Any:
    body = encode(payload)
    return parse(Forge.GITHUB, github_headers(body, SECRET, **header_kw), body)


def test_github_push_is_parsed() -> None:
    event = _parse_github(github_push(push(commits=[
        Commit(C, added=["plugin/new.c"], removed=["old.txt"]),
        Commit(B, modified=["plugin/src/acl.c"])])), delivery="d-1")
    assert isinstance(event, PushEvent)
    assert (event.forge, event.event, event.delivery) == (Forge.GITHUB, "push", "d-1")
    assert (event.ref, event.before, event.after, event.branch) == ("refs/heads/main", A, B,
                                                                     "main")
    assert event.pusher == "octocat"
    assert event.compare_url.startswith("https://github.com/Acme/MQTT-Auth/compare/")
    assert event.changed_files == frozenset({"plugin/new.c", "old.txt", "plugin/src/acl.c"})
    assert "git@github.com:Acme/MQTT-Auth.git" in event.repository_urls
    assert "https://github.com/Acme/MQTT-Auth.git" in event.repository_urls


def test_form_encoded_delivery_is_parsed_like_json() -> None:
    payload = github_push(push())
    body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
    headers = github_headers(body, SECRET, content_type="application/x-www-form-urlencoded")
    event = parse(Forge.GITHUB, headers, body)
    assert event == _parse_github(payload, delivery=headers["X-GitHub-Delivery"])


@pytest.mark.parametrize(("body", "complaint"), [
    (b"payload=%7B", "malformed JSON"),
    (b"payload=1&payload=2", "exactly one 'payload'"),
    (b"payload=%7B%7D&extra=1", "unexpected field(s) 'extra'"),
    (b"nothing", "undecodable form"),
    (b"payload=%FF", "undecodable form"),
])
def test_bad_form_bodies(body: bytes, complaint: str) -> None:
    headers = github_headers(body, SECRET, content_type="application/x-www-form-urlencoded")
    with pytest.raises(PayloadError, match=complaint.replace("(", r"\(").replace(")", r"\)")):
        parse(Forge.GITHUB, headers, body)


def test_ping_and_other_events() -> None:
    assert isinstance(_parse_github({"zen": "Keep it logically awesome.", "hook_id": 1},
                                    event="ping"), Ping)
    ignored = _parse_github({"action": "opened"}, event="pull_request")
    assert isinstance(ignored, Ignored) and "not a push" in ignored.reason


def test_deleted_branch_is_ignored() -> None:
    for payload in (github_push(push(after=ZERO, commits=[])),
                    github_push(push(), deleted=True)):
        event = _parse_github(payload)
        assert isinstance(event, Ignored) and "deleted" in event.reason


def test_non_branch_refs_are_ignored() -> None:
    event = _parse_github(github_push(push(ref="refs/pull/12/head")))
    assert isinstance(event, Ignored) and "neither a branch" in event.reason


def test_unknown_or_truncated_file_lists_mean_unknown() -> None:
    many = [Commit(c * 40, modified=["docs/x.md"]) for c in "0123456789abcdef0123"]
    assert _parse_github(github_push(push(commits=many))).changed_files is None
    assert _parse_github(github_push(push(commits=[]))).changed_files is None
    gitlab = gitlab_push(push(), total=25)
    body = encode(gitlab)
    event = parse(Forge.GITLAB, gitlab_headers("t"), body)
    assert isinstance(event, PushEvent) and event.changed_files is None


@pytest.mark.parametrize(("mutate", "complaint"), [
    (lambda p: p.pop("ref"), "ref: required field is missing"),
    (lambda p: p.update(ref=5), "ref: expected a string, found integer"),
    (lambda p: p.update(after="HEAD"), "after: expected a 40-character hex commit id"),
    (lambda p: p.update(before=None), "before: expected a string, found null"),
    (lambda p: p.update(repository=[]), "repository: expected an object, found array"),
    (lambda p: p.update(repository={"name": "x"}), "expected at least one of clone_url"),
    (lambda p: p["repository"].update(clone_url=7), "repository.clone_url: expected a string"),
    (lambda p: p.update(commits={}), "commits: expected an array, found object"),
    (lambda p: p.update(commits=[1]), r"commits\[0\]: expected an object, found integer"),
    (lambda p: p["commits"][0].update(added="a.c"), r"commits\[0\].added: expected an array"),
    (lambda p: p["commits"][0].update(modified=[None]),
     r"commits\[0\].modified\[0\]: expected a file path string, found null"),
    (lambda p: p.update(deleted="no"), "deleted: expected a boolean, found string"),
    (lambda p: p.update(pusher="octocat"), "pusher: expected an object, found string"),
    (lambda p: p.update(compare=["x"]), "compare: expected a string, found array"),
])
def test_wrong_types_and_missing_fields_are_precise_errors(mutate: Any, complaint: str) -> None:
    payload = github_push(push())
    mutate(payload)
    with pytest.raises(PayloadError, match=complaint):
        _parse_github(payload)


@pytest.mark.parametrize(("body", "complaint"), [
    (b"{", "malformed JSON at line 1 column 2"),
    (b"[]", "payload: expected a JSON object, found array"),
    (b"\xff\xfe", "expected UTF-8 JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply|payload: expected"),
])
def test_malformed_bodies(body: bytes, complaint: str) -> None:
    with pytest.raises(PayloadError, match=complaint):
        parse(Forge.GITHUB, github_headers(body, SECRET), body)


def test_headers_are_checked() -> None:
    body = encode(github_push(push()))
    with pytest.raises(PayloadError, match="missing event header: expected X-GitHub-Event"):
        parse(Forge.GITHUB, {"Content-Type": "application/json"}, body)
    with pytest.raises(PayloadError, match="X-GitHub-Delivery: expected a delivery id"):
        parse(Forge.GITHUB, github_headers(body, SECRET, delivery="a b"), body)
    with pytest.raises(PayloadError, match="Content-Type: expected application/json") as e:
        parse(Forge.GITHUB, github_headers(body, SECRET, content_type="text/plain"), body)
    assert e.value.status == 415


def test_gitea_push() -> None:
    body = encode(gitea_push(push(host="gitea.example:3000", scheme="http")))
    event = parse(Forge.GITEA, gitea_headers(body, SECRET, delivery="g-1"), body)
    assert isinstance(event, PushEvent)
    assert event.delivery == "g-1" and event.pusher == "octocat"
    assert event.compare_url == f"http://gitea.example:3000/Acme/MQTT-Auth/compare/{A}...{B}"
    assert event.changed_files == frozenset({"plugin/src/acl.c"})
    forgejo = parse(Forge.GITEA, gitea_headers(body, SECRET, delivery="f-1", forgejo=True), body)
    assert isinstance(forgejo, PushEvent) and forgejo.delivery == "f-1"


def test_gitea_without_file_lists_means_unknown() -> None:
    payload = gitea_push(push())
    for c in payload["commits"]:
        del c["added"], c["modified"], c["removed"]
    body = encode(payload)
    event = parse(Forge.GITEA, gitea_headers(body, SECRET), body)
    assert isinstance(event, PushEvent) and event.changed_files is None


def test_gitlab_push_and_tag_push() -> None:
    body = encode(gitlab_push(push(host="gitlab.example")))
    event = parse(Forge.GITLAB, gitlab_headers("t", delivery="u-1"), body)
    assert isinstance(event, PushEvent)
    assert event.pusher == "octocat" and event.delivery == "u-1"
    assert event.compare_url == f"https://gitlab.example/Acme/MQTT-Auth/-/compare/{A}...{B}"
    assert "git@gitlab.example:Acme/MQTT-Auth.git" in event.repository_urls
    tag = encode(gitlab_push(push(ref="refs/tags/v1.0")))
    event = parse(Forge.GITLAB, gitlab_headers("t", event="Tag Push Hook"), tag)
    assert isinstance(event, PushEvent) and event.tag == "v1.0"
    deleted = encode(gitlab_push(push(after=ZERO, commits=[])))
    assert isinstance(parse(Forge.GITLAB, gitlab_headers("t"), deleted), Ignored)
    other = parse(Forge.GITLAB, gitlab_headers("t", event="Merge Request Hook"), b"{}")
    assert isinstance(other, Ignored)
    # Idempotency-Key (stable across GitLab's retries) wins over the event UUID.
    headers = {**gitlab_headers("t", delivery="u-2"), "Idempotency-Key": "k-2"}
    assert parse(Forge.GITLAB, headers, body).delivery == "k-2"


# --- matching ---------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "https://github.com/Acme/MQTT-Auth", "https://github.com/acme/mqtt-auth.git",
    "https://github.com/Acme/MQTT-Auth/", "https://user:tok@GitHub.com/Acme/MQTT-Auth.git",
    "https://github.com:443/Acme/MQTT-Auth", "http://github.com:80/acme/mqtt-auth",
    "git@github.com:Acme/MQTT-Auth.git", "git@github.com:acme/mqtt-auth",
    "ssh://git@github.com/Acme/MQTT-Auth.git", "ssh://git@github.com:22/acme/mqtt-auth/",
    "git://github.com/Acme/MQTT-Auth.git", "  https://github.com//Acme//MQTT-Auth.git  ",
])
def test_url_forms_normalize_to_one_identity(url: str) -> None:
    assert normalize_url(url) == RepoId("github.com", "acme/mqtt-auth")


@pytest.mark.parametrize(("url", "expected"), [
    ("http://127.0.0.1:8080/o/r.git", RepoId("127.0.0.1:8080", "o/r")),
    ("https://gitlab.example/group/sub/repo.git", RepoId("gitlab.example", "group/sub/repo")),
    ("ssh://git@host:2222/o/r", RepoId("host", "o/r")),
    ("file:///etc/passwd", None), ("ext::sh -c x", None), ("", None), ("https://", None),
    ("https://host/", None), ("https://host/../x", None), ("not a url", None),
    ("https://host:notaport/o/r", None), ("git@host:/abs/path", None),
])
def test_url_edge_cases(url: str, expected: RepoId | None) -> None:
    assert normalize_url(url) == expected


def test_different_web_ports_are_different_forges() -> None:
    assert normalize_url("http://h:1/o/r") != normalize_url("http://h:2/o/r")


@pytest.mark.parametrize(("followed", "pushed", "matches"), [
    ("main", "refs/heads/main", True), ("main", "refs/heads/main2", False),
    ("main", "refs/tags/main", True), ("refs/heads/main", "refs/heads/main", True),
    ("refs/heads/main", "refs/tags/main", False), ("v1.2", "refs/tags/v1.2", True),
    ("refs/tags/v1.2", "refs/tags/v1.2", True), ("refs/tags/v1.2", "refs/tags/v1.3", False),
    ("refs/tags/v1.2", "refs/heads/v1.2", False), ("release/1.x", "refs/heads/release/1.x", True),
    ("release", "refs/heads/release/1.x", False),
])
def test_ref_matching(followed: str, pushed: str, matches: bool) -> None:
    assert ref_matches(followed, pushed) is matches


@pytest.mark.parametrize(("path", "changed", "touched"), [
    (".", frozenset({"README.md"}), True),
    ("plugin", frozenset({"README.md"}), False),
    ("plugin", frozenset({"plugin/acl.c"}), True),
    ("plugin", frozenset({"plugin"}), True),
    ("plugin", frozenset({"plugin2/acl.c", "plugins/x"}), False),
    ("plugin/", frozenset({"plugin/a/b/c.c"}), True),
    ("a/b", frozenset({"a/c.c", "a/bc/d"}), False),
    ("plugin", frozenset(), False),
    ("plugin", None, True),
])
def test_path_filter(path: str, changed: frozenset[str] | None, touched: bool) -> None:
    assert path_touched(path, changed) is touched


def plugin(name: str, url: str = "git@github.com:acme/mqtt-auth.git", ref: str = "main",
           path: str = ".", **kw: Any) -> PluginSource:
    fields: dict[str, Any] = dict(namespace="ns", name=name, uid="u", url=url, ref=ref, path=path,
                                  revision=None, enabled=True, secret=None)
    return PluginSource(**{**fields, **kw})


def _event(**kw: Any) -> PushEvent:
    event = _parse_github(github_push(push(**kw)))
    assert isinstance(event, PushEvent)
    return event


def test_plan_matches_repo_ref_and_path() -> None:
    plugins = [
        plugin("follows-main"), plugin("other-branch", ref="dev"),
        plugin("other-repo", url="https://github.com/acme/other"),
        plugin("in-path", path="plugin"), plugin("outside-path", path="docs"),
        plugin("pinned", revision="abcdef1"), plugin("disabled", enabled=False),
        plugin("full-ref", ref="refs/heads/main", url="https://GITHUB.com/Acme/MQTT-Auth"),
    ]
    decisions = {d.plugin.name: d for d in plan(_event(), plugins)}
    assert set(decisions) == {"follows-main", "in-path", "outside-path", "pinned", "disabled",
                              "full-ref"}
    assert {n for n, d in decisions.items() if d.build} == {"follows-main", "in-path",
                                                            "full-ref"}
    assert "no changed file under 'docs'" in decisions["outside-path"].reason
    assert "pinned" in decisions["pinned"].reason
    assert "disabled" in decisions["disabled"].reason


def test_tag_push_matches_the_tag_following_plugin_only() -> None:
    event = _event(ref="refs/tags/v2.0", before=ZERO, commits=[])
    plugins = [plugin("main"), plugin("v2", ref="refs/tags/v2.0"), plugin("v1", ref="v1.0"),
               plugin("short-v2", ref="v2.0", path="plugin")]
    built = {d.plugin.name for d in plan(event, plugins) if d.build}
    # A new tag carries no commit list: the file list is unknown, so the path filter passes.
    assert built == {"v2", "short-v2"}


def test_push_with_unknown_files_rebuilds_path_plugins() -> None:
    many = [Commit(f"{i:040x}", modified=["docs/x.md"]) for i in range(25)]
    decision = decide(_event(commits=many), plugin("p", path="plugin"))
    assert decision is not None and decision.build


# --- dedupe and coalescing --------------------------------------------------------------------


def test_delivery_cache_ttl_capacity_and_release() -> None:
    clock = Clock()
    cache = DeliveryCache(clock, ttl=60, capacity=3)
    assert cache.reserve("a") and not cache.reserve("a")
    clock.t += 61
    assert cache.reserve("a")
    for key in "bcd":
        assert cache.reserve(key)
    assert len(cache) == 3 and cache.reserve("a")  # "a" was evicted as the oldest
    cache.release("d")
    assert cache.reserve("d")


def _request(commit: str, before: str, key: str = "ns/p") -> BuildRequest:
    return BuildRequest(key, commit, before, Trigger("push", f"d-{commit[0]}", "octocat", commit,
                                                     "", "github"))


def test_burst_leaves_one_request_for_the_newest_commit() -> None:
    clock = Clock()
    co = Coalescer(clock, quiet=1.0)
    assert co.offer(_request(B, A)) is Offer.QUEUED
    clock.t += 0.5
    assert co.offer(_request(C, B)) is Offer.COALESCED
    assert co.offer(_request(D, C)) is Offer.COALESCED
    clock.t += 0.9
    due, next_in = co.take_due()
    assert due == [] and next_in == pytest.approx(0.1)
    clock.t += 0.1
    due, _ = co.take_due()
    assert [r.commit for r in due] == [D]
    assert co.take_due() == ([], None)


def test_out_of_order_deliveries_keep_the_newest_commit() -> None:
    clock = Clock()
    co = Coalescer(clock, quiet=1.0)
    # Pushes A->B, B->C, C->D delivered as C->D, A->B, B->C.
    assert co.offer(_request(D, C)) is Offer.QUEUED
    assert co.offer(_request(B, A)) is Offer.COALESCED  # unknown yet: B could be newer
    assert co.offer(_request(C, B)) is Offer.STALE  # D's push moved away from C
    assert co.pending() == {"ns/p": D}  # B is stale too now (C's push moved away from it)
    assert co.offer(_request(B, A)) is Offer.STALE  # a redelivery of an old push
    clock.t += 1
    assert [r.commit for r in co.take_due()[0]] == [D]


def test_plugins_coalesce_independently() -> None:
    clock = Clock()
    co = Coalescer(clock, quiet=1.0)
    co.offer(_request(B, A, "ns/one"))
    co.offer(_request(C, A, "ns/two"))
    clock.t += 1
    assert sorted((r.plugin_key, r.commit) for r in co.take_due()[0]) == [("ns/one", B),
                                                                          ("ns/two", C)]


def test_force_push_back_to_an_earlier_commit_is_built() -> None:
    clock = Clock()
    co = Coalescer(clock, quiet=1.0)
    co.offer(_request(B, A))
    clock.t += 1
    co.take_due()
    clock.t += 10
    assert co.offer(_request(E, B)) is Offer.QUEUED
    clock.t += 0.1
    # Force push from E back to F, an unrelated commit: newest arrival wins.
    assert co.offer(_request(F, E)) is Offer.COALESCED
    clock.t += 1
    assert [r.commit for r in co.take_due()[0]] == [F]


# --- BrokerPlugin view and PluginBuild request (pure halves of the I/O modules) ---------------


def test_plugin_source_reads_the_webhook_relevant_fields() -> None:
    from builder.webhooks.matching import SecretRef
    from builder.webhooks.plugins import plugin_source

    obj = {"metadata": {"namespace": "t", "name": "acl", "uid": "u-1", "generation": 3},
           "spec": {"source": {"git": {"url": "git@h:o/r.git", "ref": "refs/tags/v1",
                                       "path": "plugin", "revision": "abcdef1"}},
                    "enabled": False, "webhook": {"secretRef": {"name": "hook"}}}}
    source = plugin_source(obj)
    assert source == PluginSource("t", "acl", "u-1", "git@h:o/r.git", "refs/tags/v1", "plugin",
                                  "abcdef1", False, SecretRef("t", "hook", "secret"), 3)
    # Defaults the CRD would fill in; no webhook secret means never triggered by a webhook.
    bare = plugin_source({"metadata": {"namespace": "t", "name": "x"},
                          "spec": {"source": {"git": {"url": "https://h/o/r"}}}})
    assert bare is not None
    assert (bare.ref, bare.path, bare.enabled, bare.secret) == ("main", ".", True, None)
    assert plugin_source({"metadata": {"name": "x"}, "spec": {}}) is None
    keyed = plugin_source({**obj, "spec": {**obj["spec"], "webhook": {
        "secretRef": {"name": "hook", "key": "token"}}}})
    assert keyed is not None and keyed.secret == SecretRef("t", "hook", "token")


def test_plugin_build_records_the_trigger() -> None:
    from builder.webhooks.enqueue import build_name, plugin_build

    source = plugin("acl", generation=4)
    request = BuildRequest("ns/acl", B, A, Trigger("push", "d-1", "octo\x00cat", B,
                                                   "https://h/compare/a...b", "github"))
    body = plugin_build(source, request)
    assert body["spec"] == {"plugin": "acl", "pluginGeneration": 4, "trigger": {
        "type": "Webhook", "event": "github:push", "delivery": "d-1", "user": "octo?cat",
        "compareURL": "https://h/compare/a...b", "commit": B}}
    meta = body["metadata"]
    assert meta["name"] == build_name("acl", B, "github/d-1")  # same delivery, same name
    assert meta["name"].startswith(f"acl-{B[:7]}-")
    assert meta["labels"] == {"plugforge.dev/plugin": "acl", "plugforge.dev/trigger": "webhook"}
    assert meta["ownerReferences"][0]["uid"] == "u"
    assert build_name("acl", B, "") != build_name("acl", B, "")  # no delivery id: unique


def test_server_settings_are_validated() -> None:
    from builder.webhooks.server import ServerSettings

    with pytest.raises(ValueError, match="memory_budget"):
        ServerSettings(max_body=100, memory_budget=10)


# --- properties -------------------------------------------------------------------------------

@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=60),
                 st.from_regex(r"(https?|ssh|git)://[^/]{0,12}(:[0-9a-z]{0,6})?/.{0,30}"),
                 st.from_regex(r"[a-z]{0,5}@[^:]{0,10}:.{0,30}")))
def test_normalize_url_never_raises_and_is_stable(url: str) -> None:
    repo = normalize_url(url)
    if repo is not None:
        again = normalize_url(f"https://{repo.host}/{repo.path}")
        assert again is None or again == repo


@settings(max_examples=300, deadline=None)
@given(length=st.integers(1, 12), data=st.data())
def test_any_arrival_order_of_a_push_chain_leaves_only_the_newest_commit(
        length: int, data: st.DataObject) -> None:
    commits = [f"{i:040x}" for i in range(1, length + 2)]
    pushes = [_request(after, before) for before, after in itertools.pairwise(commits)]
    clock = Clock()
    co = Coalescer(clock, quiet=1.0)
    for request in data.draw(st.permutations(pushes)):
        co.offer(request)
        clock.t += 0.01
    clock.t += 1
    assert [r.commit for r in co.take_due()[0]] == [commits[-1]]
