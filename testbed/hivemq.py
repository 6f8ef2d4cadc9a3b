"""A real HiveMQ Community Edition broker (the embedded artifact from Maven Central).

The class path of ``com.hivemq:hivemq-community-edition-embedded`` is resolved once with Maven
into the plugforge cache and a tiny launcher (``hivemq-launcher/Launcher.java``) is compiled
against it; both are keyed by the hash of the launcher's pom and source, so a warm run starts
HiveMQ in about two seconds without touching the network.

Facts about extension loading that tests (and the HiveMQ sidecar adapter) rely on, verified
against CE 2025.5: HiveMQ CE reads its extensions folder only at start. An extension folder
copied in while the broker runs is ignored, and a ``DISABLED`` marker only matters at the next
start (the extension is then skipped); runtime enable/disable is an Enterprise feature. So
installing an extension into CE means: copy the folder, then ``restart()``.

Run ``python -m testbed.hivemq`` to pre-fetch the runtime (scripts/ensure.d/hivemq.sh does).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from testbed.procs import ServerFailed, ServerProcess, start_with_port

HIVEMQ_VERSION = "2025.5"
"""Also pinned in ``hivemq-launcher/pom.xml``; CE 2025.5 is built with extension SDK 4.46.1."""

LAUNCHER_DIR = Path(__file__).resolve().parent / "hivemq-launcher"
LOADER_DIR = Path(__file__).resolve().parents[1] / "plugin-templates" / "hivemq-java" / "loader"
LOADER_ID = "plugforge-loader"
PID_FILE = "hivemq.pid"
STARTED_MARKER = "PLUGFORGE-HIVEMQ-STARTED"
# Small heap and a single-threaded collector: tests share two cores with other brokers.
JVM_OPTIONS = ("-Xmx256m", "-Xss512k", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
               "-Djava.net.preferIPv4Stack=true")


def cache_root() -> Path:
    env = os.environ.get("PLUGFORGE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "plugforge"


def maven_repo(cache: Path | None = None) -> Path:
    """The Maven repository shared with template builds (the recipe runner's ``maven`` cache)."""
    return (cache or cache_root()) / "build-caches" / "maven"


@dataclass(frozen=True)
class HiveMQRuntime:
    lib_dir: Path
    classes_dir: Path

    @property
    def classpath(self) -> str:
        return f"{self.classes_dir}{os.pathsep}{self.lib_dir}/*"


def _runtime_key() -> str:
    digest = hashlib.sha256()
    for name in ("pom.xml", "Launcher.java"):
        digest.update((LAUNCHER_DIR / name).read_bytes())
    return digest.hexdigest()[:12]


def ensure_runtime(cache: Path | None = None, *, verbose: bool = False) -> HiveMQRuntime:
    """Resolve HiveMQ CE's jars and compile the launcher, unless the cache already has them."""
    cache = cache or cache_root()
    home = cache / "hivemq" / f"ce-{HIVEMQ_VERSION}-{_runtime_key()}"
    runtime = HiveMQRuntime(home / "lib", home / "classes")
    if (home / "complete").is_file():
        return runtime
    for tool in ("mvn", "javac", "java"):
        if shutil.which(tool) is None:
            raise ServerFailed(f"{tool} is not on PATH; HiveMQ CE needs Maven and a JDK >= 11 "
                               "(Debian: maven, default-jdk-headless; scripts/test installs them)")
    staging = home.with_name(f"{home.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    started = time.monotonic()
    _run(["mvn", "-B", "--no-transfer-progress", "-Dstyle.color=never",
          f"-Dmaven.repo.local={maven_repo(cache)}", "-f", str(LAUNCHER_DIR / "pom.xml"),
          "dependency:copy-dependencies", "-DincludeScope=runtime",
          f"-DoutputDirectory={staging / 'lib'}"], "resolving HiveMQ CE from Maven Central",
         verbose)
    _run(["javac", "-d", str(staging / "classes"), "-cp", f"{staging / 'lib'}/*",
          str(LAUNCHER_DIR / "Launcher.java")], "compiling the HiveMQ launcher", verbose)
    (staging / "complete").write_text(f"{time.monotonic() - started:.1f}s\n")
    try:
        staging.rename(home)
    except OSError:
        # Another process finished first; its copy is as good as ours.
        shutil.rmtree(staging, ignore_errors=True)
        if not (home / "complete").is_file():
            raise
    return runtime


def ensure_loader(cache: Path | None = None, *, verbose: bool = False) -> Path:
    """Build the plugforge loader extension (``plugin-templates/hivemq-java/loader``) once per
    source hash; returns its extension folder (jar, ``hivemq-extension.xml``, ``conf/``)."""
    cache = cache or cache_root()
    digest = hashlib.sha256()
    for path in sorted(LOADER_DIR.rglob("*")):
        if path.is_file() and "target" not in path.relative_to(LOADER_DIR).parts:
            digest.update(path.relative_to(LOADER_DIR).as_posix().encode() + b"\0")
            digest.update(path.read_bytes())
    home = cache / "hivemq" / f"loader-{digest.hexdigest()[:12]}"
    if (home / LOADER_ID).is_dir():
        return home / LOADER_ID
    staging = home.with_name(f"{home.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(LOADER_DIR, staging / "src", ignore=shutil.ignore_patterns("target"))
    _run(["mvn", "-B", "--no-transfer-progress", "-Dstyle.color=never",
          f"-Dmaven.repo.local={maven_repo(cache)}", "-f", str(staging / "src" / "pom.xml"),
          "package"], "building the plugforge loader extension", verbose)
    shutil.copytree(staging / "src" / "target" / LOADER_ID, staging / LOADER_ID)
    shutil.rmtree(staging / "src")
    try:
        staging.rename(home)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (home / LOADER_ID).is_dir():
            raise
    return home / LOADER_ID


def install_loader(extensions_dir: Path, plugin_dir: Path, poll_interval_ms: int = 100) -> Path:
    """What the Kubernetes init step does: put the loader extension, configured to read
    ``plugin_dir``, into ``extensions_dir`` (before HiveMQ starts: CE loads extensions only
    then)."""
    extensions_dir.mkdir(parents=True, exist_ok=True)
    staging = extensions_dir.parent / f".staging-{LOADER_ID}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(ensure_loader(), staging)
    (staging / "conf" / "config.properties").write_text(
        f"plugin_dir={plugin_dir}\npoll_interval_ms={poll_interval_ms}\n")
    dest = extensions_dir / LOADER_ID
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
    return dest


def _run(argv: list[str], what: str, verbose: bool) -> None:
    if verbose:
        print(f"    {what} ...", flush=True)
    result = subprocess.run(argv, capture_output=not verbose, text=True, check=False,
                            timeout=1200)
    if result.returncode != 0:
        output = (result.stdout or "") + (result.stderr or "")
        tail = "\n".join(output.splitlines()[-40:])
        raise ServerFailed(f"{what} failed (exit {result.returncode}): {' '.join(argv)}\n{tail}")


def config_xml(port: int) -> str:
    """HiveMQ's config.xml: one MQTT listener on 127.0.0.1, nothing phoning home."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<hivemq>
  <listeners>
    <tcp-listener>
      <port>{port}</port>
      <bind-address>127.0.0.1</bind-address>
    </tcp-listener>
  </listeners>
  <persistence>
    <mode>in-memory</mode>
  </persistence>
  <anonymous-usage-statistics>
    <enabled>false</enabled>
  </anonymous-usage-statistics>
</hivemq>
"""


@dataclass
class HiveMQ:
    """A running HiveMQ CE; ``extensions_dir`` is the folder it loads extensions from at start."""

    server: ServerProcess
    port: int
    workdir: Path
    runtime: HiveMQRuntime

    @property
    def extensions_dir(self) -> Path:
        return self.workdir / "extensions"

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def pid(self) -> int:
        return self.server.pid

    def install_extension(self, folder: Path, extension_id: str) -> Path:
        """Copy an extension folder to ``extensions/<id>/`` (replacing it); takes effect on restart.

        Copied next to the extensions folder and renamed into it, so HiveMQ never sees half a
        folder or a staging folder.
        """
        dest = self.extensions_dir / extension_id
        staging = self.workdir / f"staging-{extension_id}"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(folder, staging)
        shutil.rmtree(dest, ignore_errors=True)
        staging.rename(dest)
        return dest

    @property
    def pid_file(self) -> Path:
        """Holds the broker's pid, rewritten at every start (what a sidecar would read)."""
        return self.workdir / PID_FILE

    def install_loader(self, plugin_dir: Path, poll_interval_ms: int = 100) -> Path:
        """Install the plugforge loader (effective on restart); see ``install_loader``."""
        return install_loader(self.extensions_dir, plugin_dir, poll_interval_ms)

    def restart(self) -> None:
        """Stop and start again on the same port with the same folders."""
        self.server.stop(grace=30)
        self.server, offset = _launch(self.workdir, self.port, self.runtime)
        _wait_started(self.server, offset)

    def stop(self) -> None:
        self.server.stop(grace=30)


def _launch(workdir: Path, port: int, runtime: HiveMQRuntime) -> tuple[ServerProcess, int]:
    """Start the JVM; returns the process and the log offset where this start's output begins."""
    java = shutil.which("java")
    if java is None:
        raise ServerFailed("java is not on PATH; HiveMQ CE needs a JRE >= 11")
    conf = workdir / "conf"
    (conf / "config.xml").write_text(config_xml(port))
    log = workdir / "hivemq.log"
    offset = log.stat().st_size if log.exists() else 0
    server = ServerProcess("hivemq", [java, *JVM_OPTIONS, "-cp", runtime.classpath, "Launcher",
                                      str(conf), str(workdir / "data"),
                                      str(workdir / "extensions")],
                           log, cwd=workdir)
    (workdir / PID_FILE).write_text(f"{server.pid}\n")
    return server, offset


def _wait_started(server: ServerProcess, offset: int) -> None:
    """Wait for the launcher's marker, printed once the listener accepts connections."""

    def probe() -> bool:
        with open(server.log_path, "rb") as f:
            f.seek(offset)
            return STARTED_MARKER.encode() in f.read()

    server.wait_ready(probe, timeout=90)


def start_hivemq(workdir: Path, runtime: HiveMQRuntime | None = None) -> HiveMQ:
    """Start HiveMQ CE on 127.0.0.1 and a free port; ``workdir`` holds conf, data, extensions."""
    runtime = runtime or ensure_runtime()
    for sub in ("conf", "data", "extensions"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    # Everything on the console (the fixture's log file), INFO and above.
    (workdir / "conf" / "logback.xml").write_text(_LOGBACK)
    offsets: dict[int, int] = {}

    def start(port: int) -> ServerProcess:
        server, offsets[port] = _launch(workdir, port, runtime)
        return server

    def ready(server: ServerProcess, port: int) -> None:
        _wait_started(server, offsets[port])

    server, port = start_with_port(start, ready)
    return HiveMQ(server, port, workdir, runtime)


_LOGBACK = f"""<?xml version="1.0" encoding="UTF-8"?>
<configuration>
  <appender name="CONSOLE" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>{escape("%d %-5level [%thread] %logger{0} - %msg%n%ex")}</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="CONSOLE"/></root>
</configuration>
"""


def main() -> int:
    """Pre-fetch the runtime and build the plugforge loader into the cache (used by
    scripts/ensure.d/hivemq.sh)."""
    cache = cache_root()
    started = time.monotonic()
    runtime = ensure_runtime(cache, verbose=True)
    print(f"    HiveMQ CE {HIVEMQ_VERSION} ready in {time.monotonic() - started:.1f}s "
          f"({runtime.lib_dir.parent})")
    started = time.monotonic()
    loader = ensure_loader(cache, verbose=True)
    print(f"    plugforge loader extension ready in {time.monotonic() - started:.1f}s ({loader})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
