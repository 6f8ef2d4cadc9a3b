"""Pure parts of the builder: queue and backoff (injected clock), lease planning, validation,
conditions, content keys, settings. No servers needed."""

from __future__ import annotations

import ast
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from builder.build.pipeline import content_key
from builder.build.source import (
    credentials_from_secret,
    normalize_url,
    validate_path,
    validate_ref,
    validate_url,
)
from builder.controller import build_name
from builder.errors import InvalidSpec, SecretInvalid
from builder.leader import micro_time, plan_lease
from builder.planning import QueuePlan, needs_request, plan_prune, plan_queue
from builder.queue import Backoff, WorkQueue
from builder.resources import BuildView, parse_plugin, set_condition
from builder.settings import SettingsError, parse_settings


class ManualClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# --- work queue ------------------------------------------------------------------------------


def test_queue_coalesces_a_key_added_twice() -> None:
    q = WorkQueue()
    q.add("ns/a")
    q.add("ns/a")
    q.add("ns/b")
    assert len(q) == 2
    assert q.get(0) == "ns/a"
    assert q.get(0) == "ns/b"
    assert q.get(0) is None


def test_key_being_processed_is_not_handed_out_twice_and_reruns_after_done() -> None:
    q = WorkQueue()
    q.add("ns/a")
    assert q.get(0) == "ns/a"
    q.add("ns/a")  # a newer request while building
    assert q.get(0) is None  # not to a second worker
    q.done("ns/a")
    assert q.get(0) == "ns/a"  # runs again afterwards
    q.done("ns/a")
    assert q.get(0) is None


def test_add_after_waits_for_the_injected_clock() -> None:
    clock = ManualClock()
    q = WorkQueue(clock)
    q.add_after("ns/a", 30)
    assert q.get(0) is None
    clock.t += 29.9
    assert q.get(0) is None
    clock.t += 0.2
    assert q.get(0) == "ns/a"


def test_shutdown_releases_waiting_workers() -> None:
    q = WorkQueue()
    got: list[str | None] = []
    worker = threading.Thread(target=lambda: got.append(q.get()))
    worker.start()
    q.shutdown()
    worker.join(5)
    assert got == [None]


def test_backoff_doubles_caps_and_forgets() -> None:
    b = Backoff(base=5, maximum=60)
    assert [b.next_delay("k") for _ in range(6)] == [5, 10, 20, 40, 60, 60]
    assert b.next_delay("other") == 5
    b.forget("k")
    assert b.next_delay("k") == 5
    assert [b.delay_for(n) for n in (1, 2, 3, 10)] == [5, 10, 20, 60]


# --- leader election planning ----------------------------------------------------------------

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def _lease(holder: str, renewed: datetime, transitions: int = 0) -> dict[str, object]:
    return {"metadata": {"name": "l", "namespace": "n", "resourceVersion": "7"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                     "renewTime": micro_time(renewed), "acquireTime": micro_time(renewed),
                     "leaseTransitions": transitions}}


def test_no_lease_is_created_for_us() -> None:
    lease = plan_lease(None, "me", NOW, 15, "n", "l")
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == "me"


def test_valid_lease_of_another_is_respected() -> None:
    assert plan_lease(_lease("other", NOW - timedelta(seconds=10)), "me", NOW, 15, "n",
                      "l") is None


def test_expired_lease_is_taken_over_keeping_resource_version() -> None:
    lease = plan_lease(_lease("other", NOW - timedelta(seconds=16), 3), "me", NOW, 15, "n", "l",
                       observed_for=16)
    assert lease is not None
    spec = lease["spec"]
    assert spec["holderIdentity"] == "me"
    assert spec["leaseTransitions"] == 4
    assert spec["acquireTime"] == micro_time(NOW)
    assert lease["metadata"]["resourceVersion"] == "7"  # optimistic: a racing peer gets 409


def test_a_peer_with_a_skewed_clock_keeps_its_live_lease() -> None:
    """Issue 16: its renewTime looks 20 s old to our clock (it runs 15 s behind), but we saw it
    renewed 2 s ago: expiry is judged by what we observed, not by comparing clocks."""
    skewed = _lease("other", NOW - timedelta(seconds=20))
    assert plan_lease(skewed, "me", NOW, 15, "n", "l", observed_for=2) is None
    assert plan_lease(skewed, "me", NOW, 15, "n", "l", observed_for=15.5) is not None


def test_own_lease_is_renewed_without_a_transition() -> None:
    lease = plan_lease(_lease("me", NOW - timedelta(seconds=5), 2), "me", NOW, 15, "n", "l")
    assert lease is not None
    assert lease["spec"]["leaseTransitions"] == 2
    assert lease["spec"]["renewTime"] == micro_time(NOW)


# --- input validation ------------------------------------------------------------------------


@pytest.mark.parametrize("ref", ["main", "v1.2.3", "release/2.x", "refs/tags/v1", "feat_x+y"])
def test_good_refs(ref: str) -> None:
    assert validate_ref(ref) == ref


@pytest.mark.parametrize("ref", ["-x", "--upload-pack=evil", "a..b", "a b", "a~1", "x^", "a:b",
                                 "x.lock", "a//b", ".hidden", "a/.b", "end/", "end.", "@",
                                 "a@{1}", "a\x00b", "a\nb", "x" * 256, ""])
def test_bad_refs(ref: str) -> None:
    with pytest.raises(InvalidSpec, match=r"source\.git\.ref"):
        validate_ref(ref)


@pytest.mark.parametrize("url", ["https://git.example/acme/x.git", "http://127.0.0.1:8080/a/b",
                                 "ssh://git@git.example:2222/acme/x.git",
                                 "git@github.example:acme/x.git"])
def test_good_urls(url: str) -> None:
    assert validate_url(url) == url


@pytest.mark.parametrize("url", ["-uhttps://x", "--upload-pack=touch /tmp/x", "ext::sh -c id",
                                 "file:///etc/passwd", "/srv/git/x.git", "fd::3",
                                 "https://user:pw@git.example/x.git", "https://x y/z",
                                 "ftp://git.example/x.git", ""])
def test_bad_urls(url: str) -> None:
    with pytest.raises(InvalidSpec, match=r"source\.git\.url"):
        validate_url(url)


@pytest.mark.parametrize("path", [".", "plugins/acl", "a/b/c"])
def test_good_paths(path: str) -> None:
    assert validate_path(path) == path


@pytest.mark.parametrize("path", ["../x", "a/../../b", "/etc", "-x", "", "a\\b"])
def test_bad_paths(path: str) -> None:
    with pytest.raises(InvalidSpec, match=r"source\.git\.path"):
        validate_path(path)


def test_url_spellings_of_one_repository_share_a_mirror() -> None:
    forms = ["https://Git.Example/acme/x.git", "https://git.example/acme/x",
             "https://git.example/acme/x/"]
    assert len({normalize_url(u) for u in forms}) == 1
    assert normalize_url("git@git.example:acme/x.git") == normalize_url(
        "ssh://git@git.example/acme/x")


def test_git_credentials_from_secret_and_no_leak_in_repr() -> None:
    token = credentials_from_secret({"token": b"s3cret\n"}, "Secret ns/x")
    assert (token.username, token.password) == ("x-access-token", "s3cret")
    basic = credentials_from_secret({"username": b"bob", "password": b"pw"}, "Secret ns/x")
    assert (basic.username, basic.password) == ("bob", "pw")
    ssh = credentials_from_secret({"ssh-privatekey": b"KEY", "known_hosts": b"h ssh-ed25519 A"},
                                  "Secret ns/x")
    assert ssh.ssh_key == b"KEY"
    with pytest.raises(SecretInvalid, match="'ssh-privatekey' needs 'known_hosts'"):
        credentials_from_secret({"ssh-privatekey": b"KEY"}, "Secret ns/x")
    assert "s3cret" not in repr(token) and "KEY" not in repr(ssh)
    with pytest.raises(SecretInvalid, match="expected key 'token'"):
        credentials_from_secret({"nothing": b""}, "Secret ns/x")


def test_parse_plugin_applies_defaults_and_names_bad_fields() -> None:
    obj = {"metadata": {"namespace": "ns", "name": "p", "generation": 3, "uid": "u"},
           "spec": {"broker": "mosquitto", "source": {"git": {"url": "https://g/x"}},
                    "image": {"repository": "r.example/p"}}}
    spec = parse_plugin(obj)
    assert (spec.source.ref, spec.source.path, spec.enabled, spec.history_limit) == \
        ("main", ".", True, 5)
    assert spec.configmap is None and spec.rollout == "Automatic"
    with pytest.raises(InvalidSpec, match=r"spec\.image"):
        parse_plugin({**obj, "spec": {**obj["spec"], "image": "nope"}})  # type: ignore[dict-item]


# --- conditions, content keys, names, settings -----------------------------------------------


def test_condition_transition_time_moves_only_when_status_changes() -> None:
    conds = set_condition([], "Built", "True", "BuildSucceeded", "ok", "t1", 1)
    conds = set_condition(conds, "Built", "True", "BuildSucceeded", "ok again", "t2", 2)
    assert conds[0]["lastTransitionTime"] == "t1"
    assert conds[0]["message"] == "ok again" and conds[0]["observedGeneration"] == 2
    conds = set_condition(conds, "Built", "False", "BuildFailed", "broken", "t3", 2)
    assert conds[0]["lastTransitionTime"] == "t3"
    conds = set_condition(conds, "Ready", "False", "BuildFailed", "broken", "t3", 2)
    assert [c["type"] for c in conds] == ["Built", "Ready"]


def test_content_key_covers_every_input() -> None:
    base = {"tree": "a" * 40, "recipe_bytes": b"recipe", "template": "mosquitto-c",
            "broker": "mosquitto", "url": "https://g/x.git"}
    key = content_key(**base)  # type: ignore[arg-type]
    assert key == content_key(**{**base, "url": "https://G/x"})  # type: ignore[arg-type]
    for field, other in [("tree", "b" * 40), ("recipe_bytes", b"recipe2"),
                         ("template", "slow-c"), ("broker", "vernemq"),
                         ("url", "https://g/y.git")]:
        assert content_key(**{**base, field: other}) != key  # type: ignore[arg-type]


def test_build_names_are_deterministic_and_valid() -> None:
    a = build_name("deny-mallory", 2, "abc")
    assert a == build_name("deny-mallory", 2, "abc")
    assert a != build_name("deny-mallory", 3, "abc")
    assert len(build_name("x" * 253, 1, None)) <= 253


def test_settings_flags_over_env_over_defaults() -> None:
    s = parse_settings(["--workers", "3"], {"PLUGFORGE_BUILDER_WORKERS": "5",
                                            "PLUGFORGE_BUILDER_MAX_ATTEMPTS": "7"})
    assert (s.workers, s.max_attempts, s.namespace) == (3, 7, "plugforge-system")
    with pytest.raises(SettingsError, match="--workers"):
        parse_settings(["--workers", "0"], {})
    with pytest.raises(SettingsError, match="lease-renew"):
        parse_settings(["--lease-renew-seconds", "20"], {})
    assert parse_settings(["--watch-namespace", "team-a"], {}).watch_namespace == "team-a"
    for bad in ("Team-A", "a/b", "-x", "x" * 64, ""):
        with pytest.raises(SettingsError, match="--watch-namespace: expected a namespace name"):
            parse_settings([f"--watch-namespace={bad}"], {})
    with pytest.raises(SettingsError, match="--namespace: expected a namespace name"):
        parse_settings([], {"PLUGFORGE_BUILDER_NAMESPACE": "../kube-system"})


# --- controller planning -----------------------------------------------------------------------

def _view(name: str, phase: str, generation: int | None = 1, commit: str | None = "c1",
          next_attempt_at: str | None = None) -> BuildView:
    return BuildView(namespace="ns", name=name, plugin="p", phase=phase, created=name,
                     commit=commit, generation=generation, trigger="ResourceChange",
                     holder=None, attempts=0, next_attempt_at=next_attempt_at)


def test_a_new_generation_or_commit_is_requested_once() -> None:
    assert needs_request(1, "c1", [], {})
    assert not needs_request(1, "c1", [], {"generation": 1, "commit": "c1"})
    assert not needs_request(1, "c1", [_view("a", "Failed")], {})  # permanent: not again
    assert needs_request(2, "c1", [_view("a", "Failed")], {"generation": 1, "commit": "c1"})
    assert needs_request(1, "c2", [_view("a", "Succeeded")], {"generation": 1, "commit": "c1"})


def test_nothing_is_requested_while_a_build_is_queued_or_running() -> None:
    assert not needs_request(2, "c2", [_view("a", "Pending")], {})
    assert not needs_request(2, "c2", [_view("a", "Running")], {})


def test_an_unreachable_source_is_recorded_once_per_generation() -> None:
    assert needs_request(1, None, [], {})
    assert not needs_request(1, None, [_view("a", "Failed", commit=None)], {})
    assert needs_request(2, None, [_view("a", "Failed", commit=None)], {})


def test_newest_pending_runs_and_older_ones_are_superseded() -> None:
    builds = [_view("a", "Succeeded"), _view("b", "Pending"), _view("c", "Pending")]
    assert plan_queue(builds, NOW, enabled=True) == QueuePlan(supersede=("b",), run="c")


def test_one_build_at_a_time_and_none_when_disabled() -> None:
    builds = [_view("a", "Running"), _view("b", "Pending")]
    assert plan_queue(builds, NOW, enabled=True).run is None
    assert plan_queue([_view("b", "Pending")], NOW, enabled=False).run is None


def test_a_build_in_backoff_waits_for_its_time() -> None:
    later = micro_time(NOW + timedelta(seconds=30))
    plan = plan_queue([_view("a", "Pending", next_attempt_at=later)], NOW, enabled=True)
    assert plan.run is None and plan.wait_seconds == pytest.approx(30)
    earlier = micro_time(NOW - timedelta(seconds=1))
    assert plan_queue([_view("a", "Pending", next_attempt_at=earlier)], NOW, True).run == "a"


def test_prune_keeps_the_newest_finished_and_every_request() -> None:
    builds = [_view("a", "Succeeded"), _view("b", "Failed"), _view("c", "Pending"),
              _view("d", "Succeeded")]
    assert plan_prune(builds, 2) == ("a",)
    assert plan_prune(builds, 5) == ()


def test_settings_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(SettingsError, match=r"\$PLUGFORGE_BUILDER_WORKERS: expected an integer"):
        parse_settings([], {"PLUGFORGE_BUILDER_WORKERS": "many"})


# --- layering: third-party clients stay in their adapters ------------------------------------

BUILDER = Path(__file__).resolve().parent.parent / "builder"
ADAPTERS = {"kubernetes": {"kube.py"}, "git": {"build/source.py"}, "docker": set(),
            "urllib3": {"kube.py"}}
MODULES = sorted(str(p.relative_to(BUILDER)) for p in BUILDER.rglob("*.py"))
# Subsystems the controller uses; none of them reaches back up. A build knows nothing of
# rollouts (a rollout takes a build's outcome, so that direction is allowed).
FORBIDDEN = {"build/": ("builder.controller", "builder.app", "builder.rollout", "builder.api"),
             "rollout/": ("builder.controller", "builder.app", "builder.api"),
             "api/": ("builder.app",),
             "webhooks/": ("builder.controller", "builder.app")}


def _imports(path: Path) -> set[str]:
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module)
    return imported


@pytest.mark.parametrize("module", MODULES)
def test_only_adapters_import_third_party_clients(module: str) -> None:
    imported = {name.split(".")[0] for name in _imports(BUILDER / module)}
    for package, allowed in ADAPTERS.items():
        assert package not in imported or module in allowed, \
            f"builder/{module} imports {package}; only {sorted(allowed)} may"


@pytest.mark.parametrize("module", MODULES)
def test_builder_imports_point_down(module: str) -> None:
    for room, forbidden in FORBIDDEN.items():
        if module.startswith(room):
            bad = sorted(name for name in _imports(BUILDER / module)
                         if name.startswith(forbidden))
            assert not bad, f"builder/{module} imports {bad}: {room} must not reach there"
