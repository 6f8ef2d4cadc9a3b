"""The builder fetching plugin sources over SSH from a real sshd (Debian's OpenSSH), with the
key and known_hosts of a Secret: a fetch and checkout work, an unknown host key and a key the
server refuses fail permanently with the reason, and nothing waits on a prompt."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import _track

from builder.build.source import SourceCache, credentials_from_secret
from builder.errors import SourceAuthFailed
from builder.resources import GitSource
from testbed.gitserver import GitServer, run_git
from testbed.sshgit import SshGitServer, start_ssh_git_server


@pytest.fixture(scope="module")
def ssh_git(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshGitServer]:
    server = start_ssh_git_server(tmp_path_factory.mktemp("sshd"))
    _track(server)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pushed(git_server: GitServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A repository with one commit (pushed over HTTP): its path on the server and commit."""
    name = f"ssh-{uuid.uuid4().hex[:6]}/plugin.git"
    url = git_server.create_repo(name)
    work = tmp_path_factory.mktemp("work")
    run_git(work, "init", "-q", "-b", "main")
    (work / "src").mkdir()
    (work / "src" / "plugin.c").write_text("int plugin;\n")
    run_git(work, "add", "src")
    run_git(work, "commit", "-q", "-m", "plugin")
    run_git(work, "push", "-q", url, "main")
    return git_server.root / name, run_git(work, "rev-parse", "HEAD").strip()


def _other_key(tmp_path: Path) -> bytes:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")],
                   check=True)
    return (tmp_path / "k").read_bytes()


def test_fetch_and_checkout_over_ssh(ssh_git: SshGitServer, pushed: tuple[Path, str],
                                     tmp_path: Path) -> None:
    path, commit = pushed
    creds = credentials_from_secret({"ssh-privatekey": ssh_git.client_key,
                                     "known_hosts": ssh_git.known_hosts}, "Secret ns/git-ssh")
    cache = SourceCache(tmp_path / "mirrors", timeout=30)
    source = GitSource(ssh_git.url(path), "main")
    assert cache.fetch(source, creds, namespace="ns") == commit
    out = cache.checkout(source, commit, tmp_path / "checkout", namespace="ns", creds=creds)
    assert (out.directory / "src" / "plugin.c").read_text() == "int plugin;\n"


def test_an_unknown_host_key_is_refused(ssh_git: SshGitServer, pushed: tuple[Path, str],
                                        tmp_path: Path) -> None:
    """known_hosts naming another key for this host: a man in the middle, as far as we know."""
    path, _ = pushed
    _other_key(tmp_path)
    public = subprocess.run(["ssh-keygen", "-y", "-f", str(tmp_path / "k")], check=True,
                            capture_output=True, text=True).stdout.split()
    wrong = f"[127.0.0.1]:{ssh_git.port} {public[0]} {public[1]}\n".encode()
    creds = credentials_from_secret({"ssh-privatekey": ssh_git.client_key,
                                     "known_hosts": wrong}, "Secret ns/git-ssh")
    with pytest.raises(SourceAuthFailed, match="SSH key is not the one in the Secret's "
                                               "known_hosts"):
        SourceCache(tmp_path / "mirrors", timeout=30).fetch(
            GitSource(ssh_git.url(path), "main"), creds, namespace="ns")


def test_a_key_the_server_refuses(ssh_git: SshGitServer, pushed: tuple[Path, str],
                                  tmp_path: Path) -> None:
    path, _ = pushed
    creds = credentials_from_secret({"ssh-privatekey": _other_key(tmp_path),
                                     "known_hosts": ssh_git.known_hosts}, "Secret ns/git-ssh")
    with pytest.raises(SourceAuthFailed, match="the server refused our credentials"):
        SourceCache(tmp_path / "mirrors", timeout=30).fetch(
            GitSource(ssh_git.url(path), "main"), creds, namespace="ns")
