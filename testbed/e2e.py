"""The three user flows end to end on real components, shared by tests/test_e2e_flows.py and
the demo (``python -m testbed.demo``).

One ``Stage`` holds what a cluster would: the apiserver with plugforge's manifests applied, the
builder and its webhook endpoint (in-process, as the ``builder`` ServiceAccount with exactly
the RBAC in manifests/), the registry and the git server. A ``BrokerRig`` is one broker "pod":
a real broker process and a real sidecar (as the ``sidecar`` ServiceAccount), fed either by a
kubelet-style projection of the ConfigMap into an atomic-writer directory (file mode) or by its
own watch on the apiserver (API mode). Flows act only through the product's interfaces: Git
pushes, signed webhooks, BrokerPlugin and ConfigMap writes through the apiserver, MQTT clients.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from builder.build.recipe import template_dir
from builder.build.scaffold import scaffold
from plugforge.contract import API_VERSION
from plugforge.oci import RegistryClient, parse_reference, sha256_digest
from plugforge.oci.manifest import OCI_MANIFEST, canonical_json
from sidecar.state import Phase
from testbed.e2e_cluster import (
    NAMESPACE,
    WEBHOOK_SECRET_NAME,
    Api,
    Say,
    Stage,
    check,
    quiet,
    wait_for,
)
from testbed.e2e_mqtt import Watcher, big_message_delivered
from testbed.e2e_rigs import PROBE_SECRET, RIGS, BrokerRig
from testbed.gitserver import run_git

__all__ = ["RIGS", "BrokerRig", "Plugin", "Results", "Stage", "run_all"]

# --- the flows ---------------------------------------------------------------------------------


@dataclass
class Results:
    """What the demo's summary table and the tests' assertions read."""

    broker: str
    rows: list[tuple[str, str, str]] = field(default_factory=list)   # flow, measurement, value
    facts: dict[str, Any] = field(default_factory=dict)

    def add(self, flow: str, what: str, value: str) -> None:
        self.rows.append((flow, what, value))


@dataclass
class Plugin:
    """The BrokerPlugin the flows drive, and the Git repository behind it."""

    name: str
    repo_path: Path
    repo: str          # owner/name on the git server
    url: str
    key_name: str = ""  # the plugin's name in the ConfigMap (plugin.<key_name>.yaml)
    digest: str = ""


def _commit_and_push(plugin: Plugin, message: str) -> tuple[str, str]:
    before = run_git(plugin.repo_path, "rev-parse", "HEAD")
    run_git(plugin.repo_path, "commit", "-qam", message)
    run_git(plugin.repo_path, "push", "-q", plugin.url, "HEAD:main")
    return before, run_git(plugin.repo_path, "rev-parse", "HEAD")


def _wait_build(api: Api, plugin: str, commit: str, say: Say) -> dict[str, Any]:
    try:
        return wait_for(lambda: _build_for(api, plugin, commit), f"the build of {commit[:8]}",
                        timeout=300, say=say)
    except AssertionError as e:
        seen = [(b["metadata"]["name"], b["spec"].get("commit"), b.get("status"))
                for b in api.builds(plugin)]
        raise AssertionError(f"{e}; builds of {plugin}: {seen}") from None


def _build_for(api: Api, plugin: str, commit: str) -> dict[str, Any] | None:
    for b in api.builds(plugin):
        st = b.get("status") or {}
        # A webhook's request names no commit (issue 16): the pushed one is its trigger's record.
        built = st.get("commit") or b["spec"].get("commit") or \
            (b["spec"].get("trigger") or {}).get("commit")
        if built == commit and st.get("phase") in ("Succeeded", "Failed"):
            return b
    return None


def _rollout_settled(api: Api, name: str) -> bool:
    """The BrokerPlugin's current generation is built and its rollout finished (Complete)."""
    bp = api.plugin(name)
    status = bp.get("status") or {}
    return (status.get("observedGeneration") == bp["metadata"].get("generation")
            and (status.get("latestBuild") or {}).get("phase") == "Succeeded"
            and (status.get("rollout") or {}).get("phase") in (None, "Complete"))


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    conds = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conds if c["type"] == type_), {})


def flow1_point_a_cr_at_git(stage: Stage, rig: BrokerRig, results: Results,
                            say: Say = quiet) -> Plugin:
    """A BrokerPlugin pointing at a repo scaffolded from the broker's template becomes a running,
    enforced plugin in the broker."""
    api = stage.api
    name = f"{rig.broker}-acl"
    repo = f"flows/{name}-{uuid.uuid4().hex[:6]}"
    url = stage.git.create_repo(f"{repo}.git")
    path = rig.workdir / "src" / name
    shutil.rmtree(path, ignore_errors=True)
    scaffold(template_dir(rig.template), rig.template, rig.broker, name, path)
    run_git(path, "push", "-q", url, "HEAD:main")
    plugin = Plugin(name, path, repo, url)
    commit = run_git(path, "rev-parse", "HEAD")
    say(f"  scaffolded {rig.template} into {url} (commit {commit[:8]})")

    started = time.monotonic()
    api.ok("POST", f"/apis/plugforge.dev/v1alpha1/namespaces/{NAMESPACE}/brokerplugins", {
        "apiVersion": API_VERSION, "kind": "BrokerPlugin", "metadata": {"name": name},
        "spec": {"broker": rig.broker, "source": {"git": {"url": url, "ref": "main"}},
                 "image": {"repository": f"{stage.registry.host}/plugins/{name}"},
                 "target": {"configMap": rig.configmap, "rollout": "Automatic",
                            "selector": {"matchLabels": {"app": rig.broker}},
                            "sidecarPort": rig.grpc.bound_port},
                 "probes": [{"name": "mallory-refused", "action": "connect",
                             "username": "mallory", "expect": "refused"},
                            {"name": "alice-accepted", "action": "connect",
                             "username": "alice", "expect": "accepted",
                             "passwordFrom": {"secret": PROBE_SECRET, "key": "alice"}}],
                 "webhook": {"secretRef": {"name": WEBHOOK_SECRET_NAME}}}})
    say(f"  applied BrokerPlugin {NAMESPACE}/{name}; the builder is building it")
    build = _wait_build(api, name, commit, say)
    built = time.monotonic()
    check(build["status"]["phase"] == "Succeeded", build["status"])
    plugin.digest = build["status"]["digest"]
    say(f"  built and pushed {stage.registry.host}/plugins/{name}@{plugin.digest[:19]}... "
        f"in {built - started:.1f}s")
    bp = wait_for(lambda: (p := api.plugin(name))["status"].get("currentImage") and p,
                  "the BrokerPlugin's currentImage", say=say)
    plugin.key_name = bp["status"].get("currentPluginName") or name
    key = f"plugin.{plugin.key_name}.yaml"
    release = api.configmap(rig.configmap)["data"][key]
    check(plugin.digest in release, f"{key} lacks the digest")
    # The probe's password travels as a Secret key only (issue 16, hole 8).
    check(f"secret: {PROBE_SECRET}" in release and "any-password" not in release,
          f"{key}: the probe's passwordFrom reference, and no password, expected")
    say(f"  ConfigMap {rig.configmap}: {key} -> image@digest")
    wait_for(lambda: rig.running_digest(plugin.key_name) == plugin.digest,
             "the sidecar to run the new digest", timeout=180, say=say)
    wait_for(rig.applied, "the sidecar to report Applied and ready", timeout=60, say=say)
    rolled = time.monotonic()
    say(f"  sidecar ({rig.mode} mode) pulled, verified and loaded it in {rolled - built:.1f}s"
        + ("" if rig.hot_plugins else " (plugins load at start: the broker was restarted)"))

    checks = {"mallory connect": rig.outcome("connect", "mallory"),
              "alice connect": rig.outcome("connect", "alice"),
              "alice publish forbidden/x": rig.outcome("publish", "alice", "forbidden/x"),
              "alice publish sensors/x": rig.outcome("publish", "alice", "sensors/x")}
    for what, got in checks.items():
        say(f"  MQTT: {what:<28} {got}")
    results.facts["flow1_checks"] = checks
    bp = wait_for(lambda: (p := api.plugin(name))["status"].get("podsReady") == 1 and p,
                  "the BrokerPlugin to count the pod running it", timeout=30, say=say)
    ready = _condition(bp, "Ready")
    st = bp["status"]
    results.facts.update(flow1_ready=ready, flow1_pods=(st.get("podsReady"), st.get("podsTotal")))
    say(f"  BrokerPlugin Ready={ready.get('status')} ({ready.get('reason')}), "
        f"digest {plugin.digest[:19]}..., pods running it: {st.get('podsReady')}/"
        f"{st.get('podsTotal')}")
    results.add("1 CR -> broker", "build (CR applied -> image pushed)", f"{built - started:.1f} s")
    results.add("1 CR -> broker", "rollout (pushed -> loaded, probes pass)",
                f"{rolled - built:.1f} s")
    return plugin


def flow2_push_triggers_rebuild(stage: Stage, rig: BrokerRig, plugin: Plugin, results: Results,
                                say: Say = quiet, watchers: int = 3) -> None:
    """A signed GitHub push webhook rebuilds the plugin with a changed policy and rolls it out
    while clients stay connected (on brokers that hot-load)."""
    api = stage.api
    clients = [Watcher(rig.port, f"alice-{i}", rig.mqtt_version) for i in range(watchers)]
    pid_before = rig.pid()
    say(f"  {watchers} clients connected (broker pid {pid_before})")
    changed = rig.change_policy(plugin.repo_path)
    before, after = _commit_and_push(plugin, "also deny eve")
    say(f"  pushed {after[:8]} (also deny eve) to main")
    started = time.monotonic()
    status = stage.send_push(plugin.repo, before, after, changed)
    say(f"  signed GitHub push webhook -> HTTP {status}")
    build = _wait_build(api, plugin.name, after, say)
    built = time.monotonic()
    check(build["status"]["phase"] == "Succeeded", build["status"])
    old, plugin.digest = plugin.digest, build["status"]["digest"]
    check(plugin.digest != old, "the policy change gave the same digest")
    say(f"  new digest {plugin.digest[:19]}... built in {built - started:.1f}s "
        f"(trigger {build['spec']['trigger'].get('type')})")
    wait_for(lambda: rig.running_digest(plugin.key_name) == plugin.digest,
             "the sidecar to run the new digest", timeout=180, say=say)
    wait_for(rig.applied, "the sidecar to report Applied", timeout=60, say=say)
    rolled = time.monotonic()
    say(f"  rolled out in {rolled - built:.1f}s")
    checks = {"eve connect": rig.outcome("connect", "eve"),
              "mallory connect": rig.outcome("connect", "mallory"),
              "alice connect": rig.outcome("connect", "alice")}
    for what, got in checks.items():
        say(f"  MQTT: {what:<28} {got}")
    disconnects = sum(c.disconnects for c in clients)
    still = sum(c.still_connected() for c in clients)
    for c in clients:
        c.close()
    pid_after = rig.pid()
    say(f"  clients connected before the change: {still}/{watchers} still connected, "
        f"{disconnects} disconnects; broker pid {pid_before} -> {pid_after}")
    results.facts.update(flow2_checks=checks, flow2_disconnects=disconnects,
                         flow2_still_connected=still, flow2_pids=(pid_before, pid_after),
                         flow2_trigger=build["spec"]["trigger"])
    results.add("2 push -> rebuild", "build (webhook -> image pushed)", f"{built - started:.1f} s")
    results.add("2 push -> rebuild", "rollout (pushed -> loaded, probes pass)",
                f"{rolled - built:.1f} s")
    results.add("2 push -> rebuild", "disconnects of connected clients",
                f"{disconnects} of {watchers}" + ("" if rig.hot_plugins else
                                                   " (restart-only broker)"))


def unhappy_broken_push(stage: Stage, rig: BrokerRig, plugin: Plugin, results: Results,
                        say: Say = quiet) -> None:
    """A push that does not compile: the build fails with the reason on the CR, and the old
    plugin keeps running."""
    api = stage.api
    changed = rig.break_build(plugin.repo_path)
    before, after = _commit_and_push(plugin, "oops: does not compile")
    say(f"  pushed {after[:8]}, which does not compile; webhook sent")
    stage.send_push(plugin.repo, before, after, changed)
    build = _wait_build(api, plugin.name, after, say)
    def built_false() -> dict[str, Any] | None:
        cond = _condition(api.plugin(plugin.name), "Built")
        return cond if cond.get("status") == "False" else None

    built = wait_for(built_false, "Built=False on the BrokerPlugin", say=say)
    bp = api.plugin(plugin.name)
    say(f"  PluginBuild {build['metadata']['name']}: {build['status']['phase']} "
        f"({build['status'].get('reason')})")
    say(f"  BrokerPlugin Built=False {built.get('reason')}: {built.get('message', '')[:90]}")
    running = rig.running_digest(plugin.key_name)
    still_refused = rig.outcome("connect", "eve")
    say(f"  broker still runs {str(running)[:19]}... (the last good digest); eve {still_refused}")
    results.facts.update(broken_build=build, broken_condition=built,
                         broken_current_image=bp["status"].get("currentImage"),
                         broken_running=running, broken_eve=still_refused)
    results.add("unhappy", "broken push", f"{build['status'].get('reason')}; old plugin kept")
    # Put the source back so later flows start from a building tree.
    run_git(plugin.repo_path, "revert", "--no-edit", "HEAD")
    run_git(plugin.repo_path, "push", "-q", plugin.url, "HEAD:main")


def unsigned_copy(image: str, ca_bundle: Path) -> str:
    """``image`` pushed again with one annotation added: same layers, a digest nobody signed."""
    current = parse_reference(image)
    with RegistryClient(current.registry, ca_bundle=ca_bundle) as client:
        raw, _ = client.pull_manifest(current)
        doc = json.loads(raw)
        doc.setdefault("annotations", {})["org.example.note"] = "not built by plugforge"
        data = canonical_json(doc)
        digest = client.push_manifest(current.repository, sha256_digest(data), data,
                                      OCI_MANIFEST)
    return f"{current.name}@{digest}"


def unhappy_unsigned_image(stage: Stage, rig: BrokerRig, plugin: Plugin, results: Results,
                           say: Say = quiet) -> None:
    """Someone who can push to the registry and write the ConfigMap, but has not the builder's
    key, points the broker at an image of theirs: refused before anything is pulled."""
    api = stage.api
    key = f"plugin.{plugin.key_name}.yaml"
    good = api.configmap(rig.configmap)["data"][key]
    release = yaml.safe_load(good)
    unsigned = unsigned_copy(release["image"], stage.registry.ca.cert)
    before = rig.running_digest(plugin.key_name)
    say(f"  pushed {unsigned[-71:-52]}... (same layers, nobody signed it) and put it in the "
        "ConfigMap")
    release["image"] = unsigned
    _edit_configmap(api, rig.configmap, lambda d: d.__setitem__(
        key, yaml.safe_dump(release, sort_keys=False)))
    wait_for(lambda: "SignatureMissing" in rig.sidecar.state.last_error,
             "the unsigned image to be refused", timeout=30, say=say)
    state = rig.sidecar.state
    say(f"  sidecar {state.phase.value}: {state.last_error[:120]}")
    events = wait_for(lambda: [e for e in api.events(rig.pod)
                               if "SignatureMissing" in e.get("message", "")],
                      "a Warning Event naming the reason", timeout=30, say=say)
    running = rig.running_digest(plugin.key_name)
    say(f"  Event on pod {rig.pod}: {events[-1]['type']} {events[-1]['reason']}; broker still "
        f"runs {str(running)[:19]}... (the last good digest)")
    results.facts.update(unsigned_image=unsigned, unsigned_error=state.last_error,
                         unsigned_running=running, unsigned_running_before=before,
                         unsigned_events=events)
    results.add("unhappy", "unsigned image in the ConfigMap",
                "SignatureMissing, refused before pull; old plugin kept, Event posted")
    _edit_configmap(api, rig.configmap, lambda d: d.__setitem__(key, good))
    wait_for(rig.applied, "the sidecar to be Applied again", timeout=60, say=say)


def _edit_configmap(api: Api, name: str, edit: Callable[[dict[str, str]], None]) -> float:
    cm = api.configmap(name)
    edit(cm.setdefault("data", {}))
    started = time.monotonic()
    api.put_configmap(cm)
    return started


def flow3_configmap_edits(stage: Stage, rig: BrokerRig, plugin: Plugin, results: Results,
                          say: Say = quiet) -> None:
    """Broker config edited in the ConfigMap and plugin settings edited in the BrokerPlugin
    reach the running broker; a broken ConfigMap edit is refused with the reason in the
    sidecar's state (and Events in API mode)."""
    api = stage.api
    pid0 = rig.pid()
    if rig.live_config is not None:
        option, value = rig.live_config
        say(f"  broker config: a 6000-byte message is delivered: "
            f"{big_message_delivered(rig.port, 'alice')}")
        started = _edit_configmap(api, rig.configmap, lambda d: d.__setitem__(
            "broker.yaml", rig.broker_yaml({option: value})))
        wait_for(lambda: not big_message_delivered(rig.port, "alice"),
                 f"{option}={value} to take effect", timeout=30, say=say)
        latency = time.monotonic() - started
        same = rig.pid() == pid0
        say(f"  set {option}={value} in broker.yaml -> 6000-byte messages dropped after "
            f"{latency * 1000:.0f} ms ({rig.mode} mode); broker pid unchanged: {same}")
        results.facts.update(flow3_config_latency=latency, flow3_config_same_pid=same)
        results.add("3 ConfigMap edits", "apply latency: broker config",
                    f"{latency * 1000:.0f} ms ({option}), same pid")
    else:
        say(f"  broker config: {rig.no_live_config}")
        results.add("3 ConfigMap edits", "apply latency: broker config", "not shown (see log)")

    # A plugin's settings are edited in its BrokerPlugin: the builder owns the plugin's key in
    # the ConfigMap and keeps it in step with the spec (no build needed), so a direct edit of
    # that key would be undone at its next reconcile.
    pid1 = rig.pid()
    say(f"  plugin setting: trent {rig.outcome('connect', 'trent')} before")
    started = time.monotonic()
    api.ok("PATCH", f"/apis/plugforge.dev/v1alpha1/namespaces/{NAMESPACE}/brokerplugins/"
           f"{plugin.name}", {"spec": {"settings": {"deny_users": "mallory,eve,trent"}}},
           content_type="application/merge-patch+json")
    wait_for(lambda: rig.outcome("connect", "trent") == "refused",
             "deny_users=mallory,eve,trent to take effect", timeout=120, say=say)
    latency = time.monotonic() - started
    wait_for(rig.applied, "the sidecar to report Applied", timeout=60, say=say)
    # One change at a time, as a user would: the settings reach the pods through a build (a
    # content-key hit) and its canary; the next edit waits until that rollout is complete.
    wait_for(lambda: _rollout_settled(api, plugin.name), "the settings' rollout to complete",
             timeout=120, say=say)
    same = rig.pid() == pid1
    say(f"  set deny_users=mallory,eve,trent in the BrokerPlugin -> trent refused after "
        f"{latency * 1000:.0f} ms; "
        f"broker pid unchanged: {same}"
        + ("" if rig.hot_plugins else " (plugin options load at broker start: restarted)"))
    results.facts.update(flow3_settings_latency=latency, flow3_settings_same_pid=same,
                         flow3_alice=rig.outcome("connect", "alice"))
    results.add("3 ConfigMap edits", "apply latency: plugin setting deny_users",
                f"{latency * 1000:.0f} ms" + (", same pid" if same else ", broker restarted"))

    # The broken edit: refused whole, the last good state kept, the reason visible.
    good = api.configmap(rig.configmap)["data"]["broker.yaml"]
    rejections = _count_rejections(rig)
    _edit_configmap(api, rig.configmap, lambda d: d.__setitem__(
        "broker.yaml", rig.broker_yaml(rig.bad_config)))
    wait_for(lambda: rig.sidecar.state.phase is Phase.REJECTED, "the edit to be rejected",
             timeout=30, say=say)
    state = rig.sidecar.state
    say(f"  broken edit {rig.bad_config} -> {state.phase.value}: {state.last_error[:110]}")
    bad_key = next(iter(rig.bad_config))  # a refused image is a Rejected Event too
    events = wait_for(lambda: [e for e in api.events(rig.pod) if e["reason"] == "Rejected"
                               and bad_key in e.get("message", "")],
                      "a Rejected Event on the pod", timeout=30, say=say)
    say(f"  Event on pod {rig.pod}: {events[-1]['type']} {events[-1]['reason']}")
    results.facts.update(broken_edit_error=state.last_error, broken_edit_events=events,
                         broken_edit_rejections=_count_rejections(rig) - rejections,
                         broken_edit_trent=rig.outcome("connect", "trent"))
    results.add("unhappy", "broken ConfigMap edit",
                "Rejected, last good state kept" + (", Event posted" if events else ""))
    _edit_configmap(api, rig.configmap, lambda d: d.__setitem__("broker.yaml", good))
    wait_for(rig.applied, "the sidecar to be Applied again", timeout=60, say=say)


def _count_rejections(rig: BrokerRig) -> int:
    return rig.sidecar.metrics.rejections


def run_all(stage: Stage, rig: BrokerRig, say: Say = quiet) -> Results:
    """Flows 1, 2, 3 and the unhappy paths on one broker, in order."""
    results = Results(rig.broker)
    say(f"Flow 1 on {rig.broker}: point a BrokerPlugin at a Git repo")
    plugin = flow1_point_a_cr_at_git(stage, rig, results, say)
    say(f"Flow 2 on {rig.broker}: a GitHub push triggers a rebuild")
    flow2_push_triggers_rebuild(stage, rig, plugin, results, say)
    say(f"Unhappy path on {rig.broker}: a push that breaks the build")
    unhappy_broken_push(stage, rig, plugin, results, say)
    say(f"Unhappy path on {rig.broker}: an unsigned image in the ConfigMap")
    unhappy_unsigned_image(stage, rig, plugin, results, say)
    say(f"Flow 3 on {rig.broker}: ConfigMap edits applied live")
    flow3_configmap_edits(stage, rig, plugin, results, say)
    results.facts["plugin"] = plugin
    return results
