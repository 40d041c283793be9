"""A real multi-node Ray cluster on this machine, for the cluster tests.

Each node is its own ``ray start --block`` session (raylet, object store, workers) with
its own temp folder; the head also runs the GCS. ``kill`` SIGKILLs one node's raylet, which is
what losing a machine looks like to the rest of the cluster; ``stop`` ends a node and everything
it started. A worker node can be started in a private mount namespace (``hide``) in which given
folders are covered by empty tmpfs mounts: it cannot read them, whatever it tries.

Ray clusters listen on the machine's address (Ray's design; a laptop search uses 127.0.0.1).
The head's health checks are tightened so that a killed node is declared dead in ~2 s.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from helpers import free_port

RAY = str(Path(sys.executable).with_name("ray"))
#: A local-only switch (set for laptop searches) that makes Ray refuse to join several nodes.
LOCAL_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def cluster_env(**extra: str) -> dict[str, str]:
    """The environment of a cluster process or of a driver connecting to a cluster."""
    env = {k: v for k, v in os.environ.items() if k != LOCAL_ONLY}
    return {**env, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", **extra}

HEALTH = json.dumps({"health_check_period_ms": 500, "health_check_failure_threshold": 4})
START_S = 120.0


def nodes(address: str) -> list[dict]:
    """The cluster's nodes as Ray reports them (id, alive, resources), asked from a fresh driver."""
    code = ("import json, ray; ray.init(address=%r, log_to_driver=False); "
            "print('NODES', json.dumps([{'id': n['NodeID'], 'alive': n['Alive'], 'resources': n['Resources']} "
            "for n in ray.nodes()]))" % address)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=START_S,
                         env=cluster_env())
    if out.returncode:
        raise RuntimeError(f"cannot list the nodes of {address}: {out.stderr[-2000:]}")
    # Ray may print its own lines to stdout too: ours is the one marked NODES.
    line = next((x for x in out.stdout.splitlines() if x.startswith("NODES ")), None)
    if line is None:
        raise RuntimeError(f"no node list from {address}: {out.stdout[-2000:]}")
    return json.loads(line[len("NODES "):])


def session_processes(sid: int) -> dict[int, str]:
    """pid -> command name of every process in session ``sid`` (a node and its Ray workers, which
    make process groups of their own)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid:
            out[int(entry.name)] = name
    return out


@dataclass
class Node:
    name: str
    process: subprocess.Popen
    resource: str           # a custom resource only this node has, to find it among the nodes

    @property
    def pids(self) -> set[int]:
        return set(session_processes(self.process.pid))

    def kill_raylet(self) -> int:
        """SIGKILL this node's raylet (its workers die with it); returns the raylet's pid."""
        raylets = [pid for pid, name in session_processes(self.process.pid).items() if name == "raylet"]
        assert raylets, f"node {self.name} has no raylet"
        os.kill(raylets[0], signal.SIGKILL)
        return raylets[0]

    def stop(self) -> None:
        """SIGKILL the node's whole session: ``ray start``, raylet, object store and Ray workers."""
        for pid in session_processes(self.process.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=30)


@dataclass
class RayCluster:
    root: Path
    port: int = field(default_factory=free_port)
    nodes: dict[str, Node] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, name: str, cpus: float, *, head: bool = False, gpus: int = 0, hide: tuple[Path, ...] = (),
              env: dict[str, str] | None = None) -> Node:
        """Start a node and wait until the cluster lists it alive."""
        temp = Path(f"/tmp/spr-{self.port}-{name}")   # short: Ray's socket paths must stay under 108 bytes
        resource = f"node_{name}"
        args = [RAY, "start", "--block", "--num-cpus", f"{cpus:g}", "--resources", json.dumps({resource: 1}),
                "--temp-dir", str(temp), "--disable-usage-stats"]
        if gpus:
            args += ["--num-gpus", str(gpus)]
        if head:
            args += ["--head", "--port", str(self.port), "--node-ip-address", "127.0.0.1", "--include-dashboard",
                     "false", "--system-config", HEALTH]
        else:
            args += ["--address", self.address]
        if hide:   # a private mount namespace in which the hidden folders are empty
            mounts = " && ".join(f"mount -t tmpfs tmpfs {shlex.quote(str(p))}" for p in hide)
            args = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                    f"{mounts} && exec {shlex.join(args)}"]
        log = open(self.root / f"{name}.log", "w")
        process = subprocess.Popen(args, env=cluster_env(**(env or {})), cwd="/", stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        node = Node(name, process, resource)
        try:
            self._wait_alive(node, head)
        except BaseException:
            node.stop()   # a node that failed to join must not linger in the cluster
            raise
        self.nodes[name] = node
        return node

    def _wait_alive(self, node: Node, head: bool) -> None:
        deadline = time.monotonic() + START_S
        while True:
            if node.process.poll() is not None:
                log = (self.root / f"{node.name}.log").read_text()[-3000:]
                raise RuntimeError(f"ray start of node {node.name} exited: {log}")
            try:
                if any(n["alive"] and node.resource in n["resources"] for n in nodes(self.address)):
                    return
            except RuntimeError:
                if not head:
                    raise
            assert time.monotonic() < deadline, f"node {node.name} did not join within {START_S:g} s"
            time.sleep(1.0)

    def node_id(self, name: str) -> str:
        return next(n["id"] for n in nodes(self.address) if self.nodes[name].resource in n["resources"])

    def stop(self) -> None:
        for node in reversed(list(self.nodes.values())):
            node.stop()
