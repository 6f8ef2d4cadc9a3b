"""A real Git server: ``git http-backend`` behind a small HTTP server (smart HTTP protocol).

Run as ``python -m testbed.gitserver --root DIR``; it prints ``listening on HOST:PORT``.
Clones, fetches and pushes go over the network exactly as they would against any Git host.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hmac
import os
import re
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from testbed.procs import ServerProcess

_REPO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*\.git$")


class GitServer:
    """Handle on a running git server process."""

    def __init__(self, server: ServerProcess, port: int, root: Path,
                 credentials: tuple[str, str] | None, host: str = "127.0.0.1") -> None:
        self.server = server
        self.port = port
        self.root = root
        self.credentials = credentials
        self.host = host

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def create_repo(self, name: str) -> str:
        """Create an empty bare repository ``name`` (``owner/repo.git``) and return its URL."""
        if not _REPO_NAME.match(name):
            raise ValueError(f"repository name {name!r} must look like 'owner/repo.git'")
        path = self.root / name
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(path)], check=True)
        subprocess.run(["git", "-C", str(path), "config", "http.receivepack", "true"], check=True)
        return f"{self.url}/{name}"

    def authed_url(self, url: str) -> str:
        """``url`` with the server's credentials embedded, for test-side clones and pushes."""
        if self.credentials is None:
            return url
        user, password = self.credentials
        return url.replace("http://", f"http://{user}:{password}@", 1)

    def stop(self) -> None:
        self.server.stop()


def run_git(cwd: Path, *args: str) -> str:
    """Run git in ``cwd`` with a fixed identity and no prompts; return its stdout."""
    who = {"NAME": "plugforge test", "EMAIL": "test@plugforge.dev"}
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0",
           **{f"GIT_{role}_{k}": v for role in ("AUTHOR", "COMMITTER") for k, v in who.items()}}
    result = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {cwd}: {result.stderr.strip()}")
    return result.stdout.strip()


def start_git_server(workdir: Path, credentials: tuple[str, str] | None = None,
                     host: str = "127.0.0.1") -> GitServer:
    root = workdir / "repos"
    root.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "testbed.gitserver", "--root", str(root), "--host", host]
    env = dict(os.environ)
    if credentials is not None:
        env["GITSERVER_USER"], env["GITSERVER_PASSWORD"] = credentials
    server = ServerProcess("git-server", argv, workdir / "gitserver.log", env=env,
                           cwd=Path(__file__).resolve().parent.parent)
    port: list[int] = []

    def probe() -> bool:
        match = re.search(rf"listening on {re.escape(host)}:(\d+)", server.log_tail(5))
        if match:
            port.append(int(match.group(1)))
        return bool(port)

    server.wait_ready(probe, timeout=20)
    return GitServer(server, port[0], root, credentials, host)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root: Path
    credentials: tuple[str, str] | None = None

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _authorized(self) -> bool:
        if self.credentials is None:
            return True
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            given = base64.b64decode(header[6:]).decode()
        except ValueError:
            return False
        expected = "{}:{}".format(*self.credentials)
        return hmac.compare_digest(given.encode(), expected.encode())

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _serve(self) -> None:
        body = self._read_body()
        if not self._authorized():
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="plugforge-testbed"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            "REMOTE_USER": "testbed",  # lets http-backend accept pushes
            "REMOTE_ADDR": self.client_address[0],
        }
        result = subprocess.run(["git", "http-backend"], input=body, capture_output=True,
                                env=env)
        head, _, payload = result.stdout.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.decode(errors="replace").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        if result.returncode != 0 and status == 200:
            status = 500
            sys.stderr.write(result.stderr.decode(errors="replace"))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    _Handler.root = args.root
    user, password = os.environ.get("GITSERVER_USER"), os.environ.get("GITSERVER_PASSWORD")
    if user and password:
        _Handler.credentials = (user, password)
    httpd = ThreadingHTTPServer((args.host, args.port), _Handler)
    print(f"listening on {args.host}:{httpd.server_address[1]}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        httpd.serve_forever()


if __name__ == "__main__":
    main()
