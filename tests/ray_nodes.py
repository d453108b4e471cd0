"""Real Ray clusters on this machine for the tests: a head and worker nodes started with
`ray start`, each a separate raylet with its own CPUs, ports and temp dir.

Every node has its own temp dir, which names all of its processes: a node is killed (its
raylet, its workers and its agents) by finding the processes that name it and their
children, and the cluster is stopped the same way. `ray stop` would also stop the test
session's own Ray and any other Ray on the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import psutil

from conftest import ROOT, free_port

RAY = os.path.join(os.path.dirname(sys.executable), "ray")


class RayNodes:
    """A cluster of `ray start` nodes; node 0 is the head.

    Token authentication is on, with a token of its own in a file (``token_path``).
    ``driver_env`` is what a user's shell would have: the token file named by
    RAY_AUTH_TOKEN_PATH and nothing else about authentication. The nodes also have the
    test environment's `headrace` on PATH, for Ray Jobs entrypoints.
    """

    def __init__(self) -> None:
        self.ports: set[int] = set()  # every port this cluster's nodes were given: never one twice
        self.port = self._port()
        self.dashboard_port: int | None = None
        self.client_port: int | None = None
        self.temp_dirs: list[str] = []
        self.killed: set[int] = set()
        self.home = tempfile.mkdtemp(prefix="hr-cluster-", dir="/tmp")
        self.token_path = os.path.join(self.home, "auth_token")
        with open(self.token_path, "w") as handle:
            handle.write(uuid.uuid4().hex)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_TOKEN_PATH=self.token_path, PYTHONPATH=ROOT,
                   PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""))
        self.driver_env = env
        self.env = {**env, "RAY_AUTH_MODE": "token"}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start_head(self, cpus: int, dashboard: bool = False, client: bool = False) -> None:
        args = [f"--head", f"--port={self.port}", "--include-dashboard=" + ("true" if dashboard else "false")]
        if dashboard:
            self.dashboard_port = self._port()
            args += ["--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}"]
        self.client_port = self._port() if client else None
        args.append(f"--ray-client-server-port={self.client_port or self._port()}")
        self._start(args, cpus, None)

    def add_worker(self, cpus: int, resources: dict[str, float] | None = None) -> None:
        """Join one more node, and wait until the head counts it (nodes join one at a time)."""
        self._start([f"--address={self.address}"], cpus, resources)
        self.wait_for_nodes(len(self.temp_dirs) - len(self.killed))

    def _port(self) -> int:
        """A free port not given to this cluster before: the OS may offer a port it just
        offered again once the probe is closed, and `ray start` refuses one port for two
        components (it happened: node manager and dashboard agent both on 40961)."""
        while (port := free_port()) in self.ports:
            pass
        self.ports.add(port)
        return port

    def _start(self, args: list[str], cpus: int, resources) -> None:
        temp_dir = tempfile.mkdtemp(prefix="hr-node-", dir="/tmp")
        self.temp_dirs.append(temp_dir)
        ports = [f"--{name}={self._port()}" for name in (
            "node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port",
        )]
        command = [RAY, "start", *args, "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}", "--num-gpus=0",
                   "--disable-usage-stats", f"--temp-dir={temp_dir}", *ports]
        if resources:
            import json

            command.append(f"--resources={json.dumps(resources)}")
        started = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=120,
                                 cwd=temp_dir)
        if started.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed:\n{started.stdout[-2000:]}\n{started.stderr[-3000:]}")

    def alive_nodes(self) -> int:
        script = (
            "import ray; ray.init(address=%r, logging_level='ERROR'); "
            "print(sum(1 for n in ray.nodes() if n['Alive']))" % self.address
        )
        out = subprocess.run([sys.executable, "-c", script], env=self.env, capture_output=True, text=True, timeout=120)
        return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else -1

    def wait_for_nodes(self, count: int, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while self.alive_nodes() != count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not reach {count} alive nodes")
            time.sleep(1)

    def processes(self, index: int) -> list[psutil.Process]:
        """Every process of node ``index``: those naming its temp dir, and their children."""
        mine: dict[int, psutil.Process] = {}
        for process in psutil.process_iter(["cmdline"]):
            if any(self.temp_dirs[index] in part for part in process.info["cmdline"] or ()):
                mine[process.pid] = process
                try:
                    for child in process.children(recursive=True):
                        mine[child.pid] = child
                except psutil.NoSuchProcess:
                    pass
        return list(mine.values())

    def actor_cpu_seconds(self, index: int) -> float:
        """CPU seconds used so far by the Ray Data actors (map workers) of node ``index``."""
        total = 0.0
        for process in self.processes(index):
            try:
                if "MapWorker" in " ".join(process.cmdline()):
                    times = process.cpu_times()
                    total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total

    def kill(self, index: int) -> int:
        """SIGKILL node ``index`` whole, as a machine that goes away; returns how many processes died."""
        self.killed.add(index)
        processes = self.processes(index)
        for process in processes:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(processes, timeout=30)
        return len(processes)

    def stop(self) -> None:
        for index in reversed(range(len(self.temp_dirs))):
            self.kill(index)
        for temp_dir in [*self.temp_dirs, self.home]:
            shutil.rmtree(temp_dir, ignore_errors=True)
