"""Build times: plugforge's pipeline against doing the same steps by hand.

For the mosquitto-c and vernemq-erlang templates, on a real git server and registry:
- cold: empty mirror cache and a repository with no content-key tag (the compiler runs);
- warm: mirror warm, a new commit (the compiler runs);
- cache hit: the same tree again (the compiler must not run).
Baseline, same run: ``git clone`` + the recipe's own build commands run directly +
``skopeo copy`` of the same one-layer image from an OCI layout to the same registry.
Repetitions: 3 per figure (``--quick``: 1) after one untimed warm-up build; medians reported.
Goals: cold <= 1.5 x baseline; cache hit < 1 s.

kubernetes: the mosquitto-c starter's recipe through the ``kubernetes`` executor (a Job on the
real node, testbed/node.py; the toolchain image pushed to its registry) against the ``process``
executor, images already on the node. Goal: the Job's overhead (pod start + transfers) <= 3 s.
And the hivemq-java starter as a Job with its tenant's Maven cache warm (~220 MB, seeded from
this machine's and sent into every build pod with the source) against the ``process``
executor on the machine's cache, plus the fetch container's time (source + cache in). A cold
cache (Maven downloads the SDK and plugins) cannot be measured here: the node's pods have no
route off the machine; on the machine itself that first download took the ensure hook's run.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import NoReturn

from bench.report import Metric
from builder.build import recipe as recipes
from builder.build import toolchains as build_toolchains
from builder.build.executors.kubernetes import JobSettings, KubernetesExecutor
from builder.build.executors.process import ProcessExecutor
from builder.build.executors.transfer import TransferServer
from builder.build.pipeline import Pipeline
from builder.build.scaffold import scaffold
from builder.build.source import SourceCache
from builder.kube import Kube, apply_documents, load_documents
from builder.resources import GitSource, PluginSpec
from plugforge.oci import ImageMetadata, pack_image
from testbed import images, node, node_cluster, toolchains
from testbed.certs import make_ca
from testbed.gitserver import run_git, start_git_server
from testbed.registry import Registry, start_registry

TEMPLATES = (("mosquitto-c", "mosquitto"), ("vernemq-erlang", "vernemq"))


def measure(workdir: Path, quick: bool) -> list[Metric]:
    reps = 1 if quick else 3
    ca = make_ca(workdir / "ca")
    registry = start_registry(workdir / "registry", ca)
    git = start_git_server(workdir / "git")
    metrics: list[Metric] = []
    try:
        for template, broker in TEMPLATES:
            metrics += _measure_template(workdir / template, template, broker, registry,
                                         git.create_repo(f"bench/{template}.git"), ca.cert, reps)
    finally:
        git.stop()
        registry.stop()
    return metrics + _measure_kubernetes(workdir / "kubernetes", reps)


def _measure_template(work: Path, template: str, broker: str, registry: Registry, url: str,
                      ca_cert: Path, reps: int) -> list[Metric]:
    repo = scaffold(recipes.template_dir(template), template, broker, "bench_plugin",
                    work / "repo")
    run_git(repo, "push", "-q", url, "main")

    def spec(repository: str) -> PluginSpec:
        return PluginSpec(namespace="bench", name="bench-plugin", uid="bench", generation=1,
                          broker=broker, source=GitSource(url=url, ref="main", path="."),
                          repository=f"{registry.host}/{repository}", template=template)

    def pipeline(mirrors: Path) -> Pipeline:
        # Unsigned, like the by-hand baseline; signing's own cost is bench/signing.py.
        return Pipeline(SourceCache(mirrors), _no_secret, work / "builds", 900,
                        registry_ca=ca_cert)

    def build(p: Pipeline, s: PluginSpec, n: int) -> tuple[float, bool]:
        started = time.perf_counter()
        outcome = p.run(s, None, f"b{n}", io.StringIO())
        return time.perf_counter() - started, outcome.cache_hit

    build(pipeline(work / "mirrors-warmup"), spec("bench/warmup"), 0)  # page cache, toolchain

    cold = []
    for i in range(reps):
        seconds, hit = build(pipeline(work / f"mirrors-cold-{i}"), spec(f"bench/cold{i}"), i)
        assert not hit, "a cold build found a cached image"
        cold.append(seconds)

    warm_pipeline = pipeline(work / "mirrors-warm")
    build(warm_pipeline, spec("bench/warm"), 100)
    warm = []
    for i in range(reps):
        (repo / "BENCH").write_text(f"commit {i}\n")
        run_git(repo, "add", "BENCH")
        run_git(repo, "commit", "-q", "-m", f"bench {i}")
        run_git(repo, "push", "-q", url, "main")
        seconds, hit = build(warm_pipeline, spec("bench/warm"), 101 + i)
        assert not hit, "a new commit was served from the cache"
        warm.append(seconds)

    hits = []
    for i in range(reps):
        seconds, hit = build(warm_pipeline, spec("bench/warm"), 200 + i)
        assert hit, "the same tree was built again"
        hits.append(seconds)

    baseline = [_by_hand(work / f"by-hand-{i}", url, template, broker, registry, ca_cert, i)
                for i in range(reps)]
    base = statistics.median(baseline)
    name = f"builds/{template}"
    return [
        Metric(name, "cold build", "s", statistics.median(cold), base, "clone+compile+skopeo",
               max_ratio=1.5),
        Metric(name, "warm build (new commit)", "s", statistics.median(warm), base,
               "clone+compile+skopeo"),
        Metric(name, "cache hit (compiler not run)", "s", statistics.median(hits),
               max_value=1.0),
    ]


def _no_secret(namespace: str, name: str) -> NoReturn:
    raise AssertionError(f"the benchmark's builds read no Secret, asked for {namespace}/{name}")


def _by_hand(work: Path, url: str, template: str, broker: str, registry: Registry,
             ca_cert: Path, n: int) -> float:
    """The same work without plugforge: clone, run the recipe's commands, copy the image."""
    recipe = recipes.load_recipe(recipes.template_dir(template))
    started = time.perf_counter()
    subprocess.run(["git", "clone", "-q", "--depth", "1", url, str(work / "src")], check=True)
    for step in recipe.build:
        argv = [a.replace("{name}", "bench_plugin") for a in step.argv]
        subprocess.run(argv, cwd=work / "src", check=True, capture_output=True)
    compiled = time.perf_counter()

    # The image copied is the same one-layer image plugforge packs, prepared outside the timing.
    artifact = work / "artifact"
    artifact.mkdir()
    for item in recipe.artifacts:
        src = work / "src" / item.path.replace("{name}", "bench_plugin")
        subprocess.run(["cp", "-r", str(src), str(artifact / src.name)], check=True)
    image = pack_image(artifact, ImageMetadata(url, "by-hand", broker, "bench_plugin", "0"))
    layout = work / "oci"
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for blob in image.blobs:
        (blobs / blob.digest.split(":")[1]).write_bytes(blob.data)
    (blobs / image.digest.split(":")[1]).write_bytes(image.manifest)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": image.media_type, "digest": image.digest, "size": len(image.manifest),
        "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}))
    certs = work / "certs"
    certs.mkdir()
    (certs / "ca.crt").write_bytes(ca_cert.read_bytes())
    copy_started = time.perf_counter()
    subprocess.run(["skopeo", "copy", "-q", "--dest-cert-dir", str(certs), f"oci:{layout}:latest",
                    f"docker://{registry.host}/bench/by-hand-{n}:latest"], check=True)
    return compiled - started + time.perf_counter() - copy_started


def _measure_kubernetes(work: Path, reps: int) -> list[Metric]:
    tdir = recipes.template_dir("mosquitto-c")
    recipe = recipes.load_recipe(tdir)
    source = scaffold(tdir, "mosquitto-c", "mosquitto", "bench_plugin", work / "repo")
    manifest = Path(__file__).resolve().parent.parent / "manifests" / "builder" / "50-builds.yaml"
    session = node_cluster.start_session()
    try:
        admin = Kube.from_kubeconfig(session.cp.kubeconfig("admin"))
        apply_documents(admin.api, load_documents([manifest]))
        admin.close()
        toolchain = toolchains.push_toolchain(session.podman, "mosquitto-c",
                                              session.registry.host, session.cp.ca, session.log)
        kube = Kube.from_kubeconfig(session.cp.kubeconfig("builder"))
        transfers = TransferServer((node.NODE_IP, 0), node.NODE_IP, 64 * 1024 * 1024)
        executor = KubernetesExecutor(kube, transfers, JobSettings(
            transfer_image=session.busybox, identity="bench", cpu="1", memory="512Mi",
            cpu_request="50m", memory_request="64Mi"))
        try:
            def run(kind: str, n: int) -> float:
                started = time.perf_counter()
                recipes.run_recipe(
                    recipe, source, work / f"{kind}-{n}", build_name=f"bench-{n}",
                    toolchain_image=toolchain,
                    executor=executor if kind == "job" else ProcessExecutor(work / "cache"))
                return time.perf_counter() - started

            run("job", 0)  # pulls the images onto the node
            jobs = [run("job", i + 1) for i in range(reps)]
            local = [run("process", i) for i in range(reps)]
            hivemq = _measure_hivemq_job(session, kube, transfers, work / "hivemq", reps)
        finally:
            transfers.close()
            kube.close()
    finally:
        session.stop()
    job, base = statistics.median(jobs), statistics.median(local)
    return [
        Metric("builds/kubernetes", "mosquitto-c recipe as a Job (images on the node)", "s",
               job, base, "process executor"),
        Metric("builds/kubernetes", "Job overhead: pod start + transfers", "s", job - base,
               max_value=3.0),
        *hivemq,
    ]


def _measure_hivemq_job(session: node_cluster.NodeSession, kube: Kube, transfers: TransferServer,
                        work: Path, reps: int) -> list[Metric]:
    tdir = recipes.template_dir("hivemq-java")
    recipe = recipes.load_recipe(tdir)
    source = scaffold(tdir, "hivemq-java", "hivemq", "bench-ext", work / "repo")
    image = toolchains.push_toolchain(session.podman, "hivemq-java", session.registry.host,
                                      session.cp.ca, session.log)
    machine = images.cache_dir()
    root = work / "builder-cache"
    # The tenant's warm cache: this machine's Maven repository (hard links: never written).
    shutil.copytree(machine / "build-caches" / "maven",
                    build_toolchains.cache_dir(root, "bench", image, "maven"), symlinks=True,
                    copy_function=os.link)
    executor = KubernetesExecutor(kube, transfers, JobSettings(
        transfer_image=session.busybox, identity="bench", cpu="1", memory="1536Mi",
        cpu_request="50m", memory_request="64Mi"), root)
    fetches: list[float] = []

    def run(kind: str, n: int) -> float:
        started = time.perf_counter()
        recipes.run_recipe(
            recipe, source, work / f"{kind}-{n}", build_name=f"bench-hivemq-{n}",
            tenant="bench", toolchain_image=image,
            executor=executor if kind == "job" else ProcessExecutor(machine))
        if kind == "job":
            fetches.extend(end - seen for c, seen, end in executor.timings if c == "fetch")
        return time.perf_counter() - started

    run("job", 0)  # pulls the toolchain image onto the node
    fetches.clear()
    jobs = [run("job", i + 1) for i in range(reps)]
    local = [run("process", i) for i in range(reps)]
    job, base = statistics.median(jobs), statistics.median(local)
    return [
        Metric("builds/kubernetes", "hivemq-java recipe as a Job, tenant Maven cache warm", "s",
               job, base, "process executor, machine cache"),
        Metric("builds/kubernetes", "hivemq-java: fetch container (source + ~220 MB cache in)",
               "s", statistics.median(fetches)),
    ]
