"""A build's network is exactly what its recipe needs (issue 21): with the ``container``
executor a build without caches has loopback only; a build with caches reaches its dependency
registries' port 443 through the builder's allowlisting proxy, which listens on the build
container's own loopback, and nothing else: not the host's addresses or ports, not another
host or port through the proxy, not any address directly, not DNS.

The decision is pure and tested as such; the proxy's limits with plain sockets; the rest
through real builds (real podman and runc, the toolchain images, Maven Central through this
machine's TLS-intercepting egress, whose CA podman's containers.conf gives every container).
"""

from __future__ import annotations

import io
import json
import secrets
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import evil_repos
import pytest

from builder.build import repo_recipe
from builder.build.executors import BuildJob, BuildStep, egress
from builder.build.executors.container import ContainerExecutor, Limits, cache_env, run_argv
from builder.build.recipe import BuildResult, run_recipe, template_dir
from builder.build.recipe_errors import BuildError, BuildFailed
from builder.build.scaffold import scaffold
from builder.build.toolchains import cache_dir
from testbed import images, toolchains

MAVEN = frozenset(egress.REGISTRIES["maven"])
TENANT, OTHER_TENANT = "egress-a", "egress-b"


@pytest.mark.parametrize(("head", "allowed", "words"), [
    (b"CONNECT repo.maven.apache.org:443 HTTP/1.1\r\nHost: x", True, "dependency registry"),
    (b"CONNECT Repo1.Maven.ORG:443 HTTP/1.0", True, "dependency registry"),
    (b"CONNECT example.org:443 HTTP/1.1", False,
     "example.org is not a dependency registry of this recipe's caches (allowed: "
     "repo.maven.apache.org, repo1.maven.org)"),
    (b"CONNECT repo.maven.apache.org:22 HTTP/1.1", False, "only port 443"),
    (b"CONNECT repo.maven.apache.org.:443 HTTP/1.1", False, "names only"),
    (b"CONNECT 203.0.113.80:443 HTTP/1.1", False, "203.0.113.80 is not a dependency registry"),
    (b"CONNECT [::1]:443 HTTP/1.1", False, "names only"),
    (b"CONNECT repo.maven.apache.org HTTP/1.1", False, "names only"),
    (b"GET http://repo.maven.apache.org/maven2/ HTTP/1.1", False, "not plain HTTP"),
    (b"\x16\x03\x01\x02\x00", False, "not an HTTP/1.x request"),
])
def test_the_allowlist_decision(head: bytes, allowed: bool, words: str) -> None:
    decision = egress.decide(head, MAVEN)
    assert decision.allowed is allowed
    assert words in decision.reason


def test_hosts_per_cache_and_what_the_tools_are_told() -> None:
    assert egress.allowed_hosts(()) == frozenset()
    assert egress.allowed_hosts(("rebar3",)) == {"repo.hex.pm", "hex.pm", "builds.hex.pm"}
    assert not egress.decide(b"CONNECT repo.hex.pm:443 HTTP/1.1", MAVEN).allowed
    assert cache_env(()) == {}
    maven = cache_env(("maven",))
    assert maven["MAVEN_OPTS"].split() == [
        "-Dmaven.repo.local=/var/cache/plugforge/maven", "-Dhttps.proxyHost=127.0.0.1",
        "-Dhttps.proxyPort=3128", "-Dhttp.proxyHost=127.0.0.1", "-Dhttp.proxyPort=3128"]
    assert cache_env(("rebar3",))["HTTPS_PROXY"] == "http://127.0.0.1:3128"
    assert cache_env(("rebar3",))["https_proxy"] == "http://127.0.0.1:3128"
    for caches in ((), ("maven",)):
        job = BuildJob(name="n", tenant="t", toolchain_image="i", steps=(), caches=caches,
                       timeout=1)
        networks = [a for a in run_argv(job, "c", {}, Limits(), "1:1") if "--network" in a]
        assert networks == ["--network=none"]
    assert not egress.usable_address("127.0.0.53") and not egress.usable_address("::1")
    assert not egress.usable_address("169.254.169.254") and egress.usable_address("203.0.113.80")


def _ask(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        return data


def test_proxy_refusals_limits_and_idle_timeout(tmp_path: Path) -> None:
    """Refusals answer 403 naming host and reason and are logged; a name resolving to this
    machine is never connected; at most ``connections`` at once; idle connections close."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    log = tmp_path / "build.log"
    proxy = egress.BuildProxy("b", listener, MAVEN, log,
                              egress.Limits(connections=2, idle_seconds=1.0),
                              resolver=lambda host, port: ["127.0.0.1"])
    try:
        answer = _ask(port, b"CONNECT evil.example:443 HTTP/1.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 403 Forbidden (plugforge egress: refused "
                                 b"evil.example:443: evil.example is not a dependency registry")
        answer = _ask(port, b"CONNECT repo.maven.apache.org:443 HTTP/1.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 502 Bad Gateway (plugforge egress: failed "
                                 b"repo.maven.apache.org:443: repo.maven.apache.org resolves "
                                 b"to no usable address (127.0.0.1)"), answer
        assert proxy.tunnels == []
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        time.sleep(0.2)
        assert _ask(port, b"CONNECT x:443 HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 503")
        started = time.monotonic()
        for s in idle:
            s.settimeout(5)
            assert s.recv(100) == b""  # closed by the proxy: no request head in time
            s.close()
        assert time.monotonic() - started < 3
        time.sleep(0.2)
        assert _ask(port, b"GET / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 403")
    finally:
        proxy.close()
    lines = log.read_text().splitlines()
    assert lines[0].startswith("[egress] refused evil.example:443: evil.example is not")
    assert "[egress] refused ?: more than 2 connections at once" in lines
    assert lines[-1] == ("[egress] refused GET / HTTP/1.1: only HTTPS tunnels (CONNECT) to the "
                         "dependency registries are allowed, not plain HTTP")
    assert len(proxy.refused) == 4


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return toolchains.executor_env(images.Podman.in_cache(), tmp_path_factory.mktemp("podman-conf"))


@pytest.fixture(scope="module")
def pins(env: dict[str, str]) -> dict[str, str]:
    found = toolchains.local_pins(images.Podman.in_cache(),
                                  ("mosquitto-c", "hivemq-java", "vernemq-erlang"))
    return {name: pin.image for name, pin in found.items()}


def _host_addresses() -> list[str]:
    """This machine's own IPv4 addresses other than loopback (its LAN, bridges, ...)."""
    listed = json.loads(subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True,
                                       text=True, check=True).stdout)
    return [a["local"] for link in listed for a in link.get("addr_info", [])
            if not a["local"].startswith("127.")]


@pytest.fixture(scope="module")
def leaky() -> Iterator[evil_repos.LeakyApi]:
    api = evil_repos.LeakyApi("pf-secret-" + secrets.token_hex(16), "0.0.0.0")  # noqa: S104
    yield api
    api.sock.close()


def test_an_evil_build_with_caches_reaches_nothing_but_its_registries(
        env: dict[str, str], pins: dict[str, str], leaky: evil_repos.LeakyApi,
        tmp_path: Path) -> None:
    registry_address = egress.resolve(evil_repos.EGRESS_REGISTRY, 443)[0]
    ports = (*((address, leaky.port) for address in _host_addresses()),
             (registry_address, 443))
    targets = evil_repos.Targets(
        secret=leaky._secret.decode(), token_file=tmp_path / "none", secret_dir=tmp_path,
        other_tenant_files=(), other_cache=tmp_path, builder_pid=0, ports=tuple(ports),
        marker="unused")
    repo = evil_repos.write_egress_repo(tmp_path / "repo", targets)
    out = io.StringIO()
    executor = ContainerExecutor(tmp_path / "caches", podman_env=env)
    started = time.monotonic()
    try:
        result: BuildResult | BuildError = run_recipe(
            repo_recipe.resolve(repo).recipe, repo, tmp_path / "work", log=out, timeout=120,
            executor=executor, toolchain_image=pins["mosquitto-c"],
            build_name=f"egress-{uuid.uuid4().hex[:6]}", tenant=TENANT)
    except BuildError as e:
        result = e
    log = (tmp_path / "work" / "build.log").read_text()
    print(f"\nevil egress build: {type(result).__name__} in {time.monotonic() - started:.1f}s")
    assert isinstance(result, BuildResult), f"{result}\n{log}"
    attack = [line for line in log.splitlines() if line.startswith("ATTACK egress:")]
    print("\n".join(attack))
    assert not [line for line in attack if "SUCCEEDED" in line], log
    blocked = [line for line in attack if ": blocked:" in line]
    assert len(blocked) == 1 + 2 * len(ports) + 3, log  # DNS, direct, tunnels, 3 others
    assert "blocked: no DNS" in blocked[0]
    assert (f"ATTACK egress: allowed: CONNECT {evil_repos.EGRESS_REGISTRY}:443 -> "
            "HTTP/1.1 200 Connection established") in attack, log
    refused = [line for line in log.splitlines() if line.startswith("[egress] refused")]
    for host, port in ports:
        assert (f"[egress] refused {host}:{port}: {host} is not a dependency registry of this "
                "recipe's caches (allowed: repo.maven.apache.org, repo1.maven.org)") in refused
    assert f"[egress] refused {evil_repos.EGRESS_REGISTRY}:22: only port 443 is allowed" in refused
    assert any("example.org is not a dependency registry" in line for line in refused)
    assert any("not plain HTTP" in line for line in refused)
    assert leaky.connections == 0
    assert targets.secret not in log
    for f in result.artifact_dir.rglob("*"):
        assert not f.is_file() or targets.secret.encode() not in f.read_bytes(), f


def test_control_a_container_with_a_route_reaches_the_builders_port(
        env: dict[str, str], pins: dict[str, str]) -> None:
    """What the test above would see if builds with caches ran on podman's default network
    (as they did before the proxy): the stand-in on the host's address answers."""
    api = evil_repos.LeakyApi("pf-secret-" + secrets.token_hex(16), "0.0.0.0")  # noqa: S104
    try:
        address = _host_addresses()[0]
        probe = f"timeout 5 bash -c 'exec 3<>/dev/tcp/{address}/{api.port}; head -1 <&3'"
        out = subprocess.run(["podman", "run", "--rm", "--entrypoint", "bash", pins["mosquitto-c"],
                              "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    finally:
        api.sock.close()
    assert out.stdout.strip() == api._secret.decode(), out
    assert api.connections == 1


def test_a_refused_connection_is_named_in_the_failed_build(
        env: dict[str, str], pins: dict[str, str], tmp_path: Path) -> None:
    """A step that fails after the proxy refused it: the error says what was refused and why;
    a build without caches has no proxy at all (loopback only, nothing listening)."""
    ask = ("exec 3<>/dev/tcp/127.0.0.1/3128 || exit 7; printf 'CONNECT github.com:443 "
           "HTTP/1.1\\r\\n\\r\\n' >&3; head -1 <&3; exit 3")
    executor = ContainerExecutor(tmp_path / "caches", podman_env=env)
    outcomes = {}
    for caches in (("maven",), ()):
        job = BuildJob(name=f"refused-{uuid.uuid4().hex[:6]}", tenant=TENANT,
                       toolchain_image=pins["mosquitto-c"], caches=caches, timeout=60,
                       steps=(BuildStep(("bash", "-c", ask)),))
        (tmp_path / job.name).mkdir()
        with pytest.raises(BuildFailed) as failed:
            executor.run(job, tmp_path / job.name, tmp_path / f"{job.name}.log")
        outcomes[caches] = (failed.value, (tmp_path / f"{job.name}.log").read_text())
    error, log = outcomes[("maven",)]
    assert error.exit_code == 3, log
    assert ("the egress proxy turned down 1 request(s), first: refused github.com:443: github.com "
            "is not a dependency registry of this recipe's caches") in str(error), error
    assert "[egress] refused github.com:443: github.com is not a dependency registry" in log
    assert "HTTP/1.1 403 Forbidden (plugforge egress: refused github.com:443" in log
    error, log = outcomes[()]
    assert error.exit_code == 7, log
    assert "Connection refused" in log and "[egress]" not in log, log
    assert "egress" not in str(error)


def test_maven_downloads_through_the_proxy_into_the_tenants_cache(
        env: dict[str, str], pins: dict[str, str], tmp_path: Path) -> None:
    """The hivemq-java starter with an empty cache: Maven fetches the SDK and its plugins from
    Maven Central through the proxy, into this tenant's cache only."""
    repo = scaffold(template_dir("hivemq-java"), "hivemq-java", "hivemq", "egress-maven",
                    tmp_path / "repo")
    executor = ContainerExecutor(tmp_path / "caches", podman_env=env)
    started = time.monotonic()
    result = run_recipe(repo_recipe.resolve(repo).recipe, repo, tmp_path / "work",
                        log=io.StringIO(), timeout=600, executor=executor,
                        toolchain_image=pins["hivemq-java"],
                        build_name=f"maven-{uuid.uuid4().hex[:6]}", tenant=TENANT)
    took = time.monotonic() - started
    log = result.log_path.read_text()
    cache = cache_dir(tmp_path / "caches", TENANT, pins["hivemq-java"], "maven")
    jars = list(cache.rglob("*.jar"))
    print(f"\nhivemq-java, empty cache: {took:.1f}s, {len(jars)} jars through the proxy")
    assert "[egress] network: only HTTPS to repo.maven.apache.org, repo1.maven.org" in log
    assert "[egress] refused" not in log, log
    assert list(cache.glob("com/hivemq/hivemq-extension-sdk/*/*.jar")), log
    assert len(jars) > 20
    assert not cache_dir(tmp_path / "caches", OTHER_TENANT, pins["hivemq-java"], "maven").exists()
    assert list(result.artifact_dir.rglob("egress-maven-0.1.0.jar"))


def test_rebar3_asks_the_proxy_for_hex(env: dict[str, str], pins: dict[str, str],
                                       tmp_path: Path) -> None:
    """The vernemq-erlang starter given a Hex dependency: rebar3 finds the proxy by
    ``https_proxy`` and asks it for repo.hex.pm:443 (allowed). This machine's egress does not
    resolve hex.pm, so here the tunnel fails and the build says so; where hex.pm resolves the
    tunnel opens."""
    repo = scaffold(template_dir("vernemq-erlang"), "vernemq-erlang", "vernemq", "egress_hex",
                    tmp_path / "repo")
    config = repo / "rebar.config"
    config.write_text(config.read_text().replace("{deps, []}.", '{deps, [{jsx, "3.1.0"}]}.'))
    executor = ContainerExecutor(tmp_path / "caches", podman_env=env)
    try:
        run_recipe(repo_recipe.resolve(repo).recipe, repo, tmp_path / "work", log=io.StringIO(),
                   timeout=300, executor=executor, toolchain_image=pins["vernemq-erlang"],
                   build_name=f"hex-{uuid.uuid4().hex[:6]}", tenant=TENANT)
    except BuildFailed as e:
        assert "repo.hex.pm:443" in str(e), e
    log = (tmp_path / "work" / "build.log").read_text()
    asked = [line for line in log.splitlines()
             if line.startswith(("[egress] tunnel to repo.hex.pm:443",
                                 "[egress] failed repo.hex.pm:443: the builder cannot resolve"))]
    assert asked, log
    assert "[egress] refused" not in log, log
