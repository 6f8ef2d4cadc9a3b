"""Session-wide real servers. Each starts once per test session on 127.0.0.1 and a free port.

When a test fails, the tail of every server log it touched is attached to its report.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Protocol

import pytest

from testbed.certs import CertificateAuthority, make_ca
from testbed.emqx import Emqx, start_emqx
from testbed.gitserver import GitServer, start_git_server
from testbed.kube import ControlPlane, start_control_plane
from testbed.podman import PodmanService, start_podman_service
from testbed.procs import ServerProcess
from testbed.rabbitmq import RabbitMQ, start_rabbitmq
from testbed.registry import Registry, start_registry
from testbed.vernemq import VerneMQ, start_vernemq

REGISTRY_CREDENTIALS = ("pusher", "correct-horse-battery")
GIT_CREDENTIALS = ("git-reader", "s3cret-git-token")


class _HasServer(Protocol):
    server: ServerProcess


_servers: list[ServerProcess] = []


def _track(handle: _HasServer) -> None:
    _servers.append(handle.server)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        # Only the servers this test used, directly or through other fixtures.
        used = {id(getattr(v, "server", None)) for v in getattr(item, "funcargs", {}).values()}
        for server in _servers:
            if id(server) in used:
                report.sections.append(
                    (f"{server.name} log ({server.log_path})", server.log_tail()))
    return report


@pytest.fixture(scope="session")
def testbed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("testbed")


@pytest.fixture(scope="session")
def testbed_ca(testbed_dir: Path) -> CertificateAuthority:
    """The CA every embedded TLS server's certificate chains to."""
    return make_ca(testbed_dir / "ca")


@pytest.fixture(scope="session")
def control_plane(testbed_dir: Path) -> Iterator[ControlPlane]:
    """A real kube-apiserver + etcd. Identities: ``admin``, ``builder``, ``sidecar``."""
    cp = start_control_plane(testbed_dir / "kube")
    _track(cp)
    yield cp
    cp.stop()


@pytest.fixture(scope="session")
def registry(testbed_dir: Path, testbed_ca: CertificateAuthority) -> Iterator[Registry]:
    """A real registry over TLS, no authentication."""
    reg = start_registry(testbed_dir / "registry", testbed_ca)
    _track(reg)
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def registry_auth(testbed_dir: Path, testbed_ca: CertificateAuthority) -> Iterator[Registry]:
    """A real registry over TLS that demands basic auth with ``REGISTRY_CREDENTIALS``."""
    reg = start_registry(testbed_dir / "registry-auth", testbed_ca, REGISTRY_CREDENTIALS)
    _track(reg)
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def git_server(testbed_dir: Path) -> Iterator[GitServer]:
    """A real Git smart-HTTP server; ``create_repo('owner/name.git')`` returns a clone URL."""
    gs = start_git_server(testbed_dir / "git")
    _track(gs)
    yield gs
    gs.stop()


@pytest.fixture(scope="session")
def git_server_auth(testbed_dir: Path) -> Iterator[GitServer]:
    """A real Git server that demands basic auth with ``GIT_CREDENTIALS``."""
    gs = start_git_server(testbed_dir / "git-auth", GIT_CREDENTIALS)
    _track(gs)
    yield gs
    gs.stop()


@pytest.fixture(scope="session")
def podman_service(testbed_dir: Path) -> Iterator[PodmanService]:
    """A real Docker-API engine (``podman system service``); ``.url`` for the docker SDK."""
    service = start_podman_service(testbed_dir / "podman")
    _track(service)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def rabbitmq(testbed_dir: Path) -> Iterator[RabbitMQ]:
    """A real RabbitMQ 3.10 node with rabbitmq_mqtt (MQTT 3.1.1 on ``.mqtt_port``).

    Plugins copied into ``.shared_plugins_dir`` can be enabled online. Tests that change the
    node (plugins, ``auth_backends``, users) put it back as they found it.
    """
    node = start_rabbitmq(testbed_dir / "rabbitmq")
    _track(node)
    yield node
    node.stop()


@pytest.fixture(scope="session")
def emqx(testbed_dir: Path) -> Iterator[Emqx]:
    """A real EMQX 5.8.9 node (built once per machine into the plugforge cache: 4-5 minutes
    cold) on free ports, with its bootstrap API key. Tests remove the plugins they install."""
    node = start_emqx(testbed_dir / "emqx")
    _track(node)
    yield node
    node.stop()


@pytest.fixture(scope="session")
def vernemq(testbed_dir: Path) -> Iterator[VerneMQ]:
    """A real VerneMQ 2.0.1 node (built once per machine into the cache), set up as a user
    would: ``allow_anonymous = off``, the stock vmq_passwd (users in ``.passwords``) and vmq_acl
    (``topic #``). Tests leave it with only those two plugins (``vernemq_support.reset``)."""
    node = start_vernemq(testbed_dir / "vernemq")
    _track(node)
    yield node
    node.stop()


# The real node's fixtures live with their helpers; importing them here shares them session-wide.
from node_support import plugforge_images, real_node  # noqa: E402, F401
