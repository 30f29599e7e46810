"""A 3-node RabbitMQ cluster on this machine, with Debian's rabbitmq-server: `gongji cluster up|down|status`.

Each node is its own Erlang VM: its own name (gongji-c1@localhost …), AMQP port (5681 …) and distribution port
(25681 …), all on 127.0.0.1, its own mnesia, log and config under one directory (GONGJI_CLUSTER_DIR, default
.gongji/cluster), no plugins, and one Erlang cookie for the three nodes and the rabbitmqctl calls (HOME is that
directory). `up` starts the three at once, joins c2 and c3 to c1 (join_cluster), and returns once every node
accepts AMQP connections; `down` stops them and removes the directory. The main node (rabbit@localhost on
5672) is never touched: the scripts of /usr/lib/rabbitmq/bin are called directly (the /usr/sbin wrappers would
switch to the rabbitmq user and its environment), with an environment file of our own.

Every queue gongji declares is a quorum queue; declared once the three nodes are clustered, each has a member
on every node (the default initial group size is the cluster size), so with one node down the other two are a
majority and go on. The workers and the simulator take the three URLs (`AMQP_URL=$(gongji cluster urls)`) and
fail over (services.shared.failover). The tests (tests/test_cluster.py) use this very class.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RABBIT_BIN = Path(os.environ.get("GONGJI_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))
DEFAULT_PORT = 5681  # the first node's AMQP port; the others follow (5682, 5683); distribution: + 20000
SIZE = 3


def default_dir() -> Path:
    return Path(os.environ.get("GONGJI_CLUSTER_DIR") or Path.cwd() / ".gongji" / "cluster").resolve()


@dataclass(frozen=True)
class Node:
    index: int  # 1-based
    name: str  # gongji-c1@localhost
    amqp_port: int
    dist_port: int

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"


class ClusterError(RuntimeError):
    pass


class Cluster:
    """The nodes of one cluster directory; every command that acts on them (start, join, stop, the fault's
    stop_app/start_app) goes through here."""

    def __init__(self, directory: Path | None = None, *, first_port: int | None = None, prefix: str = "gongji-c",
                 size: int = SIZE):
        self.dir = Path(directory) if directory is not None else default_dir()
        saved = self._saved()
        port = first_port or int(saved.get("first_port") or os.environ.get("GONGJI_CLUSTER_PORT") or DEFAULT_PORT)
        prefix = saved.get("prefix", prefix)
        self.first_port = port
        self.prefix = prefix
        self.nodes = [Node(i, f"{prefix}{i}@localhost", port + i - 1, port + i - 1 + 20000)
                      for i in range(1, size + 1)]

    # ---- where things are -------------------------------------------------------------------------------
    @property
    def urls(self) -> str:
        """AMQP_URL for the workers and the simulator: every node, comma-separated."""
        return ",".join(n.url for n in self.nodes)

    def _saved(self) -> dict[str, Any]:
        try:
            return json.loads((self.dir / "cluster.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def node_for_port(self, port: int) -> Node | None:
        return next((n for n in self.nodes if n.amqp_port == port), None)

    def node_dir(self, node: Node) -> Path:
        return self.dir / node.name.split("@")[0]

    def env(self, node: Node | None = None) -> dict[str, str]:
        """The environment of a node's server (node given) or of the CLI tools: our cookie (HOME), our env file."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update({"HOME": str(self.dir), "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
                    "ERL_EPMD_ADDRESS": "127.0.0.1", "LC_ALL": "C.UTF-8"})
        if node is not None:
            d = self.node_dir(node)
            env.update({
                "RABBITMQ_NODENAME": node.name, "RABBITMQ_USE_LONGNAME": "false",
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1", "RABBITMQ_NODE_PORT": str(node.amqp_port),
                "RABBITMQ_DIST_PORT": str(node.dist_port),
                "RABBITMQ_MNESIA_BASE": str(d / "mnesia"), "RABBITMQ_LOG_BASE": str(d / "log"),
                "RABBITMQ_PID_FILE": str(d / "pid"), "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            })
        return env

    # ---- commands ---------------------------------------------------------------------------------------
    def ctl(self, node: Node, *args: str, timeout: float = 120, tool: str = "rabbitmqctl") -> str:
        done = subprocess.run([str(RABBIT_BIN / tool), "-n", node.name, *args], capture_output=True, text=True,
                              timeout=timeout, env=self.env(), cwd=self.dir)
        if done.returncode != 0:
            raise ClusterError(f"{tool} -n {node.name} {' '.join(args)} failed: "
                               f"{(done.stderr or done.stdout).strip()[-600:]}")
        return done.stdout

    def pid(self, node: Node) -> int | None:
        try:
            pid = int((self.node_dir(node) / "pid").read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except OSError:
            return None
        return pid

    def accepts_amqp(self, node: Node) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", node.amqp_port), timeout=1.0):
                return True
        except OSError:
            return False

    def _prepare(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        cookie = self.dir / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(20).upper())
        cookie.chmod(0o400)
        (self.dir / "rabbitmq-env.conf").write_text("# gongji cluster: settings come from the environment\n")
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "cluster.json").write_text(json.dumps(
            {"first_port": self.first_port, "prefix": self.prefix, "urls": self.urls,
             "nodes": [n.name for n in self.nodes]}, indent=2))
        for node in self.nodes:
            d = self.node_dir(node)
            (d / "log").mkdir(parents=True, exist_ok=True)
            (d / "rabbitmq.conf").write_text(
                f"listeners.tcp.1 = 127.0.0.1:{node.amqp_port}\n"
                "log.console = false\nlog.file.level = info\n"
                # A node cut off from the other two pauses rather than going on alone.
                "cluster_partition_handling = pause_minority\n")

    def start_node(self, node: Node) -> None:
        """Start one node's VM in the background (its own session: it outlives `gongji cluster up`)."""
        for other in (node.amqp_port, node.dist_port):
            if _port_taken(other) and self.pid(node) is None:
                raise ClusterError(f"port {other} is taken by another process: choose other ports "
                                   f"(--port, GONGJI_CLUSTER_PORT)")
        d = self.node_dir(node)
        out = open(d / "stdout.log", "ab")
        proc = subprocess.Popen([str(RABBIT_BIN / "rabbitmq-server")], env=self.env(node), cwd=d, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        (d / "launcher.pid").write_text(str(proc.pid))  # its process group: what `down` ends if all else fails

    def await_node(self, node: Node, timeout: float = 120) -> None:
        """Until the node's RabbitMQ application runs and its AMQP listener accepts connections."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.ctl(node, "await_startup", "--timeout", "30", timeout=40)
                if self.accepts_amqp(node):
                    return
            except (ClusterError, subprocess.TimeoutExpired) as exc:
                if time.monotonic() > deadline:
                    raise ClusterError(f"{node.name} did not start within {timeout:.0f} s ({exc}); see "
                                       f"{self.node_dir(node)}/log") from None
            if time.monotonic() > deadline:
                raise ClusterError(f"{node.name} does not accept AMQP on {node.amqp_port}")
            time.sleep(0.3)

    def running_nodes(self, node: Node) -> list[str]:
        out = self.ctl(node, "cluster_status", "--formatter", "json", timeout=30)
        return sorted(json.loads(out).get("running_nodes", []))

    def up(self, timeout: float = 180) -> None:
        """Start the three nodes in parallel, cluster them, wait until each accepts AMQP connections."""
        if not (RABBIT_BIN / "rabbitmq-server").exists():
            raise ClusterError(f"no {RABBIT_BIN}/rabbitmq-server: install Debian's rabbitmq-server "
                               f"(apt-get install rabbitmq-server), or set GONGJI_RABBITMQ_BIN")
        self._prepare()
        todo = [n for n in self.nodes if self.pid(n) is None]
        for node in todo:
            self.start_node(node)
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda n: self.await_node(n, timeout), self.nodes))
        seed = self.nodes[0]
        for node in self.nodes[1:]:
            if seed.name in self.running_nodes(node):
                continue
            self.ctl(node, "stop_app")
            self.ctl(node, "reset")
            self.ctl(node, "join_cluster", seed.name)
            self.ctl(node, "start_app")
        for node in self.nodes:
            self.await_node(node, timeout)
        members = self.running_nodes(seed)
        if members != sorted(n.name for n in self.nodes):
            raise ClusterError(f"the cluster has {members}, not the {len(self.nodes)} nodes")

    def down(self, timeout: float = 60) -> None:
        """Stop every node (rabbitmqctl stop, then SIGKILL if it lingers) and remove the directory."""
        def stop(node: Node) -> None:
            pid = self.pid(node)
            if pid is not None:
                try:
                    self.ctl(node, "stop", timeout=timeout)
                except (ClusterError, subprocess.TimeoutExpired):
                    pass
                deadline = time.monotonic() + timeout
                while self.pid(node) is not None and time.monotonic() < deadline:
                    time.sleep(0.2)
                if self.pid(node) is not None:
                    os.kill(pid, signal.SIGKILL)
            try:  # a node that never finished booting (no pid file yet) or a launcher left behind
                launcher = int((self.node_dir(node) / "launcher.pid").read_text())
                if b"rabbitmq-server" in Path(f"/proc/{launcher}/cmdline").read_bytes():  # still ours
                    os.killpg(launcher, signal.SIGKILL)
            except (OSError, ValueError):
                pass
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(stop, self.nodes))
        if (self.dir / "cluster.json").exists():
            shutil.rmtree(self.dir, ignore_errors=True)

    def stop_app(self, node: Node) -> None:
        """RabbitMQ on this node stops (its connections close, its queue members go down); the VM stays."""
        self.ctl(node, "stop_app")

    def start_app(self, node: Node, timeout: float = 120) -> None:
        self.ctl(node, "start_app", timeout=timeout)
        self.await_node(node, timeout)

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dir": str(self.dir), "urls": self.urls, "nodes": []}
        for node in self.nodes:
            row: dict[str, Any] = {"name": node.name, "amqp_port": node.amqp_port, "dist_port": node.dist_port,
                                   "pid": self.pid(node), "amqp": self.accepts_amqp(node)}
            if row["pid"] is not None:
                try:
                    row["running_nodes"] = self.running_nodes(node)
                except (ClusterError, subprocess.TimeoutExpired) as exc:
                    row["error"] = str(exc)
            out["nodes"].append(row)
        return out


def _port_taken(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# ---- the command ------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("up", "down", "status", "urls"),
                   help="up: start and join three nodes; down: stop them and remove their directory; status: "
                        "each node and whom it sees; urls: the AMQP_URL for the workers")
    p.add_argument("--dir", default=None, help="where the nodes keep their data, logs and cookie "
                                               "(env GONGJI_CLUSTER_DIR; default .gongji/cluster)")
    p.add_argument("--port", type=int, default=None,
                   help=f"the first node's AMQP port (env GONGJI_CLUSTER_PORT; default {DEFAULT_PORT}); the "
                        f"others follow, distribution ports are + 20000")


def main(args: argparse.Namespace) -> int:
    cluster = Cluster(Path(args.dir) if args.dir else None, first_port=args.port)
    try:
        if args.action == "up":
            t0 = time.monotonic()
            cluster.up()
            print(f"cluster up in {time.monotonic() - t0:.0f} s: {', '.join(n.name for n in cluster.nodes)}\n"
                  f"AMQP_URL={cluster.urls}")
        elif args.action == "down":
            cluster.down()
            print("cluster down")
        elif args.action == "urls":
            print(cluster.urls)
        else:
            print(json.dumps(cluster.status(), indent=2))
    except ClusterError as exc:
        print(f"gongji cluster {args.action}: {exc}", file=sys.stderr)
        return 3
    return 0
