"""A real Kubernetes node for the tests: containerd + runc, kubelet, kube-controller-manager and
kube-scheduler (tests/kube-node) next to a kube-apiserver of the same version.

Everything lives in what this module creates and removes: the directory ``NODE_DIR`` (state,
sockets, the kubelet's root, the pods' network namespaces), the bridge ``BRIDGE`` that carries
the node's address and the pods' network (no default route: nothing leaves the machine), the
cgroup ``/plugforge-node`` in every hierarchy, and the processes it starts. ``teardown`` removes
all of it, also what a crashed session left behind; ``start_node`` runs it first. The machine's
firewall rules are not touched (no kube-proxy, no portmap, the kubelet's iptables chains off).
The facts behind the settings: ../shared/notes/real-kubernetes-node.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from testbed.certs import make_ca
from testbed.kube import ControlPlane, Identity, start_control_plane
from testbed.procs import ServerFailed, ServerProcess, free_port
from testbed.registry import Registry

NODE_BINARY_ENV = "PLUGFORGE_KUBE_NODE"
NODE_DIR = Path(os.environ.get("PLUGFORGE_NODE_DIR", "/var/lib/plugforge-node"))
NODE_NAME = "plugforge-node"
BRIDGE = "pfnode0"
NODE_IP = "10.217.0.1"
BRIDGE_MAC = "02:70:66:00:00:01"  # locally administered
POD_SUBNET = "10.217.0.0/24"
CGROUP = "plugforge-node"
CGROUPS = Path("/sys/fs/cgroup")
LOCK_PATH = "/run/lock/plugforge-node.lock"
CNI_BIN = Path("/usr/lib/cni")
RUNC = "/usr/sbin/runc"
# Kernel settings the kubelet sets when it starts; put back as they were on teardown.
KERNEL_TUNABLES = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic",
                   "kernel/panic_on_oops", "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes")


def node_binary() -> Path:
    """``$PLUGFORGE_KUBE_NODE``, else the binary scripts/ensure.d/kube-node.sh cached."""
    value = os.environ.get(NODE_BINARY_ENV)
    if value:
        path = Path(value)
    else:
        src = Path(__file__).resolve().parent.parent / "tests" / "kube-node"
        digest = hashlib.sha256(b"".join(
            (src / name).read_bytes() for name in ("go.mod", "go.sum", "main.go"))).hexdigest()
        cache = Path(os.environ.get("PLUGFORGE_CACHE") or Path(
            os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "plugforge")
        path = cache / "kube-node" / digest[:12] / "kube-node"
    if not os.access(path, os.X_OK):
        raise ServerFailed(
            f"no kubelet/controller-manager/scheduler binary at {path}: run scripts/test (or, in "
            "a shell, 'source scripts/lib.sh && ensure_all'), which builds tests/kube-node")
    return path


@dataclass
class Node:
    control_plane: ControlPlane
    registry: Registry
    servers: list[ServerProcess] = field(default_factory=list)
    tunables: dict[str, str] = field(default_factory=dict)
    name: str = NODE_NAME
    ip: str = NODE_IP

    @property
    def server(self) -> ServerProcess:
        """The kubelet (for the tests' log attachment)."""
        return next(s for s in self.servers if s.name == "kubelet")

    def stop(self) -> None:
        teardown(self.servers, self.tunables)


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if check and result.returncode != 0:
        raise ServerFailed(f"{' '.join(argv)}: {result.stderr.strip() or result.stdout.strip()}")
    return result


# --- teardown: processes, mounts, cgroups, bridge, directory ---------------------------------

def teardown(servers: list[ServerProcess] | None = None,
             tunables: dict[str, str] | None = None) -> None:
    """Remove everything a node made, running or crashed; safe to call when nothing is there."""
    for server in reversed(servers or []):
        if server.name != "containerd":
            server.stop(grace=5)
    _kill_cgroup_processes()
    _kill_recorded_processes()
    for pid in _shim_pids():
        _kill(pid)
    for server in servers or []:
        if server.name == "containerd":
            server.stop(grace=5)
    _unmount_under(NODE_DIR)
    _remove_cgroups()
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        _sh("ip", "link", "del", BRIDGE, check=False)
    _sh("rm", "-rf", "--one-file-system", str(NODE_DIR), check=False)
    for name, value in (tunables or {}).items():
        with contextlib.suppress(OSError):
            Path("/proc/sys", name).write_text(value)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _cgroup_dirs() -> Iterator[Path]:
    if CGROUPS.is_dir():
        for hierarchy in sorted(CGROUPS.iterdir()):
            top = hierarchy / CGROUP
            if top.is_dir():
                # Children before parents, so a walk that removes directories can use the same
                # order; os.walk skips a directory the kubelet removes under it (rglob raised).
                for directory, _, _ in os.walk(top, topdown=False):
                    yield Path(directory)


def _kill_cgroup_processes() -> None:
    """SIGKILL every process in the node's cgroups (the pods' containers), until none is left."""
    for _ in range(50):
        pids: set[int] = set()
        for directory in _cgroup_dirs():
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in (directory / "cgroup.procs").read_text().split())
        if not pids:
            return
        for pid in pids:
            _kill(pid)
        time.sleep(0.1)


def _kill_recorded_processes() -> None:
    """Process groups recorded by an earlier session (a crashed run leaves them running)."""
    for pidfile in (NODE_DIR / "pids").glob("*.pid"):
        try:
            pid = int(pidfile.read_text())
            os.killpg(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass


def _shim_pids() -> list[int]:
    """containerd-shim processes of this node's containerd (found by its socket path)."""
    socket = str(NODE_DIR / "containerd" / "containerd.sock")
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and b"containerd-shim" in cmdline[0] and socket.encode() in cmdline:
            pids.append(int(proc.name))
    return pids


def _unmount_under(directory: Path) -> None:
    prefix = str(directory) + "/"
    for _ in range(5):
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        ours = sorted({m for m in mounts if m.startswith(prefix) or m == str(directory)},
                      key=lambda m: -m.count("/"))
        if not ours:
            return
        for mount in ours:
            _sh("umount", "-l", mount, check=False)


def _remove_cgroups() -> None:
    for _ in range(20):
        left = False
        for directory in _cgroup_dirs():
            try:
                directory.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                left = True
        if not left:
            return
        time.sleep(0.2)


# --- start -----------------------------------------------------------------------------------

def record(server: ServerProcess) -> ServerProcess:
    pids = NODE_DIR / "pids"
    pids.mkdir(parents=True, exist_ok=True)
    (pids / f"{server.name}.pid").write_text(str(server.pid))
    return server


def _make_bridge() -> None:
    # A fixed MAC: otherwise the bridge takes the lowest MAC of its ports and changes it when
    # that pod's veth goes away, and every pod's ARP entry for NODE_IP points nowhere for
    # ~30 s (connections from pods to the node's address time out meanwhile).
    _sh("ip", "link", "add", BRIDGE, "address", BRIDGE_MAC, "type", "bridge")
    _sh("ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE)
    _sh("ip", "link", "set", BRIDGE, "up")


def _make_cgroup_root() -> None:
    """``/plugforge-node`` in every hierarchy (the kubelet's cgroupRoot must exist)."""
    for hierarchy in sorted(CGROUPS.iterdir()):
        if not (hierarchy / "cgroup.procs").exists():
            continue
        top = hierarchy / CGROUP
        top.mkdir(exist_ok=True)
        for name in ("cpuset.cpus", "cpuset.mems"):  # cgroup v1 cpuset starts empty
            if (top / name).exists() and not (top / name).read_text().strip():
                (top / name).write_text((hierarchy / name).read_text())


def _write_containerd_config(directory: Path, registry: Registry, pause_image: str) -> Path:
    cni = directory / "cni"
    (cni / "conf").mkdir(parents=True, exist_ok=True)
    # host-local IPAM, routes only to the pod subnet: pods reach each other and the node's
    # address on the bridge, nothing else.
    (cni / "conf" / "10-plugforge.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "plugforge-node",
        "plugins": [{"type": "bridge", "bridge": BRIDGE, "isGateway": False, "ipMasq": False,
                     "hairpinMode": True,
                     "ipam": {"type": "host-local", "dataDir": str(cni / "ipam"),
                              "ranges": [[{"subnet": POD_SUBNET, "rangeStart": "10.217.0.10"}]],
                              "routes": []}}],
    }))
    config = directory / "config.toml"
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    config.write_text(f"""version = 2
root = "{directory / 'root'}"
state = "{directory / 'state'}"
disabled_plugins = ["io.containerd.internal.v1.tracing", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{directory / 'containerd.sock'}"
[ttrpc]
  address = "{directory / 'containerd.sock.ttrpc'}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{directory / 'opt'}"
[{cri}]
  sandbox_image = "{pause_image}"
  # root here lacks CAP_SYS_RESOURCE: runc must not try to lower oom_score_adj
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  enable_unprivileged_ports = true
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  BinaryName = "{RUNC}"
[{cri}.cni]
  bin_dir = "{CNI_BIN}"
  conf_dir = "{cni / 'conf'}"
[{cri}.registry.configs."{registry.host}".tls]
  ca_file = "{registry.ca.cert}"
""")
    return config


def _wait(what: str, check: Callable[[], bool], servers: list[ServerProcess],
          timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for server in servers:
            if server.proc.poll() is not None:
                raise ServerFailed(f"{server.name} exited with code {server.proc.returncode} "
                                   f"while waiting for {what}.\n--- last lines of "
                                   f"{server.log_path} ---\n{server.log_tail()}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    tails = "\n".join(f"--- {s.log_path} ---\n{s.log_tail(25)}" for s in servers)
    raise ServerFailed(f"timed out after {timeout:.0f}s waiting for {what}\n{tails}")


def node_identities() -> tuple[Identity, ...]:
    return (Identity("node", f"system:node:{NODE_NAME}", ("system:nodes",)),
            Identity("controller-manager", "system:kube-controller-manager", ()),
            Identity("scheduler", "system:kube-scheduler", ()))


def start_control_plane_for_node() -> ControlPlane:
    """The node's kube-apiserver: on the node's address (pods reach it there), Node + RBAC
    authorization, and a client certificate for the kubelet's API (logs, exec)."""
    directory = NODE_DIR / "apiserver"
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca(directory / "pki")  # the one start_control_plane uses (same directory)
    client = ca.issue("kube-apiserver-kubelet-client", sans=("127.0.0.1",), client=True)
    cp = start_control_plane(directory, node_identities(), host=NODE_IP,
                             authorization="Node,RBAC", extra_args=(
                                 f"--kubelet-client-certificate={client.cert}",
                                 f"--kubelet-client-key={client.key}",
                                 "--kubelet-preferred-address-types=InternalIP"))
    record(cp.server)
    return cp


_lock: list[int] = []  # the open lock file while this process owns the node


def _acquire(timeout: float) -> None:
    """One node per machine: wait for another session's node to go away (a crashed session's
    lock is released by the kernel, so its leftovers are then cleaned up, not a live node)."""
    if _lock:
        return
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                os.close(fd)
                raise ServerFailed(f"the real node is in use by another test session (pid "
                                   f"{holder or '?'}, lock {LOCK_PATH}) for over {timeout:.0f}s"
                                   ) from None
            time.sleep(1)
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _lock.append(fd)


def release() -> None:
    """Let the next session have the node (after ``teardown``)."""
    while _lock:
        os.close(_lock.pop())


def prepare(wait: float = 1800) -> dict[str, str]:
    """Take the machine's node lock, clean up what an earlier (crashed) session left, then make
    the bridge and cgroup root; returns the kernel tunables to put back."""
    _acquire(wait)
    teardown()
    NODE_DIR.mkdir(parents=True)
    tunables = {}
    for name in KERNEL_TUNABLES:
        with contextlib.suppress(OSError):
            tunables[name] = Path("/proc/sys", name).read_text()
    _make_bridge()
    _make_cgroup_root()
    return tunables


def start_node(cp: ControlPlane, registry: Registry, pause_image: str,
               tunables: dict[str, str], timeout: float = 180) -> Node:
    """containerd, kubelet, controller-manager and scheduler; returns when the node is Ready
    and the ``default`` ServiceAccount and ``kube-root-ca.crt`` exist (pods need both)."""
    binary = node_binary()
    node = Node(cp, registry, tunables=tunables)
    try:
        _start(node, binary, pause_image, timeout)
    except BaseException:
        node.stop()
        raise
    return node


def _start(node: Node, binary: Path, pause_image: str, timeout: float) -> None:
    cp = node.control_plane
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(NODE_DIR)}
    ctrd = NODE_DIR / "containerd"
    config = _write_containerd_config(ctrd, node.registry, pause_image)
    containerd = record(ServerProcess("containerd", ["containerd", "--config", str(config)],
                                       NODE_DIR / "containerd.log", env=env))
    node.servers.append(containerd)
    _wait("containerd's socket", (ctrd / "containerd.sock").exists, [containerd], 30)

    pki = cp.ca
    serving = pki.issue("kubelet-serving", sans=(NODE_IP,))
    kubelet_dir = NODE_DIR / "kubelet"
    kubelet_dir.mkdir()
    kubelet_config = NODE_DIR / "kubelet-config.yaml"
    kubelet_config.write_text(yaml.safe_dump({
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "address": NODE_IP, "port": free_port(), "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": free_port(),
        "tlsCertFile": str(serving.cert), "tlsPrivateKeyFile": str(serving.key),
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                           "x509": {"clientCAFile": str(pki.cert)}},
        "authorization": {"mode": "AlwaysAllow"},
        "containerRuntimeEndpoint": f"unix://{ctrd / 'containerd.sock'}",
        "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{CGROUP}", "cgroupsPerQOS": True,
        "enforceNodeAllocatable": [], "failSwapOn": False,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                         "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        # Off: it would add KUBE-FIREWALL rules to the machine's chains.
        "makeIPTablesUtilChains": False,
        # The kubelet refreshes projected ConfigMaps on its pod sync: 1 s instead of 1 min.
        "syncFrequency": "1s",
        "podLogsDir": str(NODE_DIR / "pod-logs"),
        "serializeImagePulls": False,
        # At most 1024 processes per pod (the pod's pids cgroup): a fork bomb in a build Job
        # (tests/evil_repos.py) fails its forks there instead of taking this machine's 32768
        # pids from everything else on it. Builds run far fewer; brokers a few hundred threads.
        "podPidsLimit": 1024,
        "resolvConf": "/etc/resolv.conf",
    }))
    kubelet = record(ServerProcess("kubelet", [
        str(binary), "kubelet", f"--config={kubelet_config}",
        f"--kubeconfig={cp.kubeconfig('node')}", f"--root-dir={kubelet_dir}",
        f"--hostname-override={NODE_NAME}", f"--node-ip={NODE_IP}", "--v=1",
    ], NODE_DIR / "kubelet.log", env=env))
    node.servers.append(kubelet)
    sa_key = cp.workdir / "pki" / "service-accounts.key"
    manager = record(ServerProcess("kube-controller-manager", [
        str(binary), "controller-manager", f"--kubeconfig={cp.kubeconfig('controller-manager')}",
        f"--service-account-private-key-file={sa_key}", f"--root-ca-file={pki.cert}",
        "--use-service-account-credentials", "--leader-elect=false", "--secure-port=0",
        "--controllers=*,-bootstrapsigner,-tokencleaner,-nodeipam,-service-lb-controller",
    ], NODE_DIR / "kube-controller-manager.log", env=env))
    node.servers.append(manager)
    scheduler = record(ServerProcess("kube-scheduler", [
        str(binary), "scheduler", f"--kubeconfig={cp.kubeconfig('scheduler')}",
        "--leader-elect=false", "--secure-port=0",
    ], NODE_DIR / "kube-scheduler.log", env=env))
    node.servers.append(scheduler)

    def ready() -> bool:
        status, body = cp.request("GET", f"/api/v1/nodes/{NODE_NAME}")
        node: Any = body
        conditions = node.get("status", {}).get("conditions", []) if status == 200 else []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def exists(path: str) -> Callable[[], bool]:
        return lambda: cp.request("GET", path)[0] == 200

    running = [cp.server, *node.servers]
    _wait(f"node {NODE_NAME} Ready", ready, running, timeout)
    _wait("the default ServiceAccount",
          exists("/api/v1/namespaces/default/serviceaccounts/default"), running, timeout)
    _wait("the kube-root-ca.crt ConfigMap",
          exists("/api/v1/namespaces/default/configmaps/kube-root-ca.crt"), running, timeout)
