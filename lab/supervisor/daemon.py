"""The lab supervisor: builds a lab from its spec, owns its processes, and serves their status.

One detached process per lab (``python -m lab.supervisor --name L``, started by ``lab up``). It
builds, in order and with a progress line per step: the underlay and node namespaces, one etcd
(mTLS) per cluster, the Kubernetes API emulator on it (on an internal port, behind a watch-resuming
front on the cluster's API port: :mod:`lab.kube.front`), the API forwarders into the nodes, the
controllers, and one node runtime per node; then waits until every Node is Ready. Afterwards it
serves ``GET /status`` and ``POST /components/<name>/<kill|start|pause|resume>`` on
``<state dir>/supervisor.sock``, until SIGTERM, when it stops what it started (``lab down`` then
sweeps whatever is left, pods included: see :mod:`lab.supervisor.cleanup`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from lab.etcd import EtcdProcess, free_port
from lab.kube.api.server import ensure_tls_files
from lab.kube.front import ApiFront
from lab.net import Topology, names, nsutil
from lab.net.forward import Forwarder
from lab.supervisor import apiclient, kubeconfig
from lab.supervisor.processes import ManagedProcess, process_state
from lab.supervisor.progress import FAILED, READY, ProgressWriter
from lab.supervisor.spec import API_SERVICE_PORT, ENV_MARKER, ClusterSpec, LabSpec, NodeSpec

PYTHON = sys.executable
VENV_BIN = str(Path(sys.executable).parent)
NODE_READY_WITHIN = 60.0
API_READY_WITHIN = 30.0
ACTIONS = ("kill", "start", "pause", "resume")


class SupervisorError(RuntimeError):
    """The lab could not be built; the message says which step failed and why."""


def _write_json(path: Path, doc: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True))
    tmp.replace(path)


class Supervisor:
    """Everything one lab runs (see module docstring)."""

    def __init__(self, spec: LabSpec) -> None:
        self.spec = spec
        self.root = spec.state_dir
        self.progress = ProgressWriter(self.root / "progress.log")
        self.topology: Topology | None = None
        self.etcds: dict[str, EtcdProcess] = {}
        self.procs: dict[str, ManagedProcess] = {}
        self.fronts: dict[str, ApiFront] = {}
        self.forwarder = Forwarder()
        self.ready = False
        self.started_at = time.time()

    # ----- bring-up -----

    async def bring_up(self) -> None:
        """Build the whole lab; raises :class:`SupervisorError` naming the failed step."""
        spec = self.spec
        n_nodes = len(spec.nodes)
        self.progress.step(f"creating the underlay and {n_nodes} node namespaces")
        await asyncio.to_thread(self._build_namespaces)
        for cluster in spec.clusters:
            self.progress.step(f"{cluster.name}: starting etcd (mTLS)")
            await self._start_etcd(cluster)
            self.progress.step(f"{cluster.name}: starting the Kubernetes API on 127.0.0.1:{cluster.api_port}")
            await self._start_api(cluster)
        self._write_kubeconfigs()
        self.progress.step("forwarding each cluster's API into its nodes")
        for node in spec.nodes:
            cluster = spec.cluster(node.cluster)
            await self.forwarder.add(node.netns, cluster.api_service_ip, API_SERVICE_PORT, cluster.api_port)
            await self.forwarder.add(node.netns, "127.0.0.1", cluster.api_port, cluster.api_port)
        for cluster in spec.clusters:
            self.progress.step(f"{cluster.name}: starting the scheduler and controllers")
            self._start(self._controllers(cluster))
        self.progress.step(f"starting {n_nodes} node runtimes and node proxies")
        for node in spec.nodes:
            self._start(self._node_runtime(node))
            self._start(self._node_proxy(node))
        for cluster in spec.clusters:
            await self._wait_nodes_ready(cluster)
            self.progress.step(f"{cluster.name}: {len(cluster.nodes)} nodes Ready")
        self.ready = True
        self._save_state()

    def _build_namespaces(self) -> None:
        topo = self.topology = Topology(self.spec.name)
        for cluster in self.spec.clusters:
            topo.add_cluster(cluster.name, cluster.cluster_id, cluster.pod_cidr)
            for node in cluster.nodes:
                made = topo.add_node(cluster.name, node.short)
                if made.ns != node.netns or str(made.underlay_ip) != node.internal_ip:
                    raise SupervisorError(f"node {node.name}: topology and lab plan disagree ({made})")
                with nsutil.iproute(node.netns) as ipr:
                    ipr.addr("add", index=1, address=cluster.api_service_ip, prefixlen=32)

    async def _start_etcd(self, cluster: ClusterSpec) -> None:
        etcd = EtcdProcess(self.spec.cluster_dir(cluster.name) / "etcd", name=f"{cluster.name}-etcd", tls=True)
        self.etcds[cluster.name] = etcd
        try:
            await etcd.start_async()
        except Exception as err:
            raise SupervisorError(f"{cluster.name}: etcd did not start: {err}") from err
        self._etcd_config(cluster).parent.mkdir(parents=True, exist_ok=True)
        etcd.write_config_yaml(self._etcd_config(cluster))
        self._save_state()

    def _etcd_config(self, cluster: ClusterSpec) -> Path:
        return self.spec.cluster_dir(cluster.name) / "api" / "etcd.yaml"

    def _cluster_kubeconfig(self, cluster: ClusterSpec) -> Path:
        return self.spec.cluster_dir(cluster.name) / "kubeconfig"

    async def _start_api(self, cluster: ClusterSpec) -> None:
        """The API process on the internal port and, on the cluster's API port, the front that keeps
        clients' watches going across restarts of that process (both serve the same certificate)."""
        d = self.spec.cluster_dir(cluster.name) / "api"
        sans = [cluster.api_service_ip, "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local", "localhost"]
        internal_port = cluster.api_internal_port or free_port()  # 0: a spec from before the front
        await asyncio.to_thread(ensure_tls_files, d / "tls", sans)  # made here so the front can serve them too
        argv = [
            PYTHON, "-m", "lab.kube.api", "--port", str(internal_port), "--etcd-config",
            str(self._etcd_config(cluster)), "--tls-dir", str(d / "tls"), "--service-cidr", cluster.service_cidr,
            "--pod-log-root", str(self.root / "nodes"),
            *[arg for san in sans for arg in ("--tls-san", san)],
        ]  # fmt: skip
        proc = self._start(ManagedProcess(f"api/{cluster.name}", "api", cluster.name, argv, d / "api.log",
                                          env=self._env()))
        front = self.fronts[cluster.name] = ApiFront(cluster.api_port, internal_port, d / "tls")
        try:
            await front.start()
        except OSError as err:
            raise SupervisorError(f"{cluster.name}: cannot serve the Kubernetes API on 127.0.0.1:"
                                  f"{cluster.api_port}: {err}") from err
        deadline = time.monotonic() + API_READY_WITHIN
        while time.monotonic() < deadline:
            if not proc.running:
                raise SupervisorError(f"{cluster.name}: the Kubernetes API exited:\n{proc.log_tail()}")
            if await asyncio.to_thread(apiclient.api_ready, self.spec, cluster):
                return
            await asyncio.sleep(0.1)
        raise SupervisorError(f"{cluster.name}: the Kubernetes API was not ready within {API_READY_WITHIN:.0f} s:\n"
                              f"{proc.log_tail()}")

    def _write_kubeconfigs(self) -> None:
        lab_doc: dict[str, Any] | None = None
        for cluster in self.spec.clusters:
            ca = apiclient.api_ca_file(self.spec, cluster).read_bytes()
            entry = kubeconfig.context_entry(cluster.context, apiclient.api_url(cluster), ca)
            kubeconfig.write(self._cluster_kubeconfig(cluster), kubeconfig.merge(None, entry))
            lab_doc = kubeconfig.merge(lab_doc, entry)
            if self.spec.kubeconfig_merged:
                kubeconfig.merge_into(Path(self.spec.kubeconfig_merged), entry)
        if lab_doc is not None:
            kubeconfig.write(self.spec.kubeconfig, lab_doc)

    def _env(self) -> dict[str, str]:
        return {ENV_MARKER: self.spec.name, "PYTHONUNBUFFERED": "1",
                "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"}

    def _controllers(self, cluster: ClusterSpec) -> ManagedProcess:
        d = self.spec.cluster_dir(cluster.name) / "controllers"
        argv = [PYTHON, "-m", "lab.kube.controllers", "--kubeconfig", str(self._cluster_kubeconfig(cluster)),
                "--cluster-name", cluster.name]
        return ManagedProcess(f"controllers/{cluster.name}", "controllers", cluster.name, argv,
                              d / "controllers.log", env=self._env())

    def _node_runtime(self, node: NodeSpec) -> ManagedProcess:
        cluster = self.spec.cluster(node.cluster)
        d = self.spec.node_dir(node.name)
        d.mkdir(parents=True, exist_ok=True)
        config = {
            "lab": self.spec.name, "cluster": node.cluster, "cluster_id": node.cluster_id,
            "node_name": node.name, "node_index": node.index, "pod_cidr": node.pod_cidr,
            "internal_ip": node.internal_ip, "kubeconfig": str(self._cluster_kubeconfig(cluster)),
            "state_dir": str(d), "cgroup_root": str(self.spec.node_cgroup(node)),
            "api_service_host": cluster.api_service_ip, "api_service_port": API_SERVICE_PORT,
            "api_ca_file": str(apiclient.api_ca_file(self.spec, cluster)),
            "pod_mtu": names.ENCRYPTED_POD_MTU if self.spec.encryption == "wireguard" else names.POD_MTU,
        }  # fmt: skip
        _write_json(d / "node-config.json", config)
        argv = ["nsenter", f"--net=/run/netns/{node.netns}", "--", PYTHON, "-m", "lab.node", "--config",
                str(d / "node-config.json")]
        return ManagedProcess(f"runtime/{node.name}", "runtime", node.cluster, argv, d / "runtime.log",
                              node=node.name, env=self._env())

    def _node_proxy(self, node: NodeSpec) -> ManagedProcess:
        d = self.spec.node_dir(node.name)
        argv = ["nsenter", f"--net=/run/netns/{node.netns}", "--", PYTHON, "-m", "lab.node.proxy", "--config",
                str(d / "node-config.json")]
        return ManagedProcess(f"proxy/{node.name}", "proxy", node.cluster, argv, d / "proxy.log", node=node.name,
                              env=self._env())

    def _start(self, proc: ManagedProcess) -> ManagedProcess:
        self.procs[proc.name] = proc
        proc.start()
        self._save_state()
        return proc

    async def _wait_nodes_ready(self, cluster: ClusterSpec) -> None:
        want = {n.name for n in cluster.nodes}
        deadline = time.monotonic() + NODE_READY_WITHIN
        ready: set[str] = set()
        while time.monotonic() < deadline:
            for node in cluster.nodes:
                proc = self.procs[f"runtime/{node.name}"]
                if not proc.running:
                    raise SupervisorError(f"node runtime of {node.name} exited:\n{proc.log_tail()}")
            with contextlib.suppress(OSError, ValueError):
                ready = await asyncio.to_thread(apiclient.ready_nodes, self.spec, cluster)
            if want <= ready:
                return
            await asyncio.sleep(0.2)
        raise SupervisorError(f"{cluster.name}: nodes {sorted(want - ready)} not Ready within "
                              f"{NODE_READY_WITHIN:.0f} s")

    # ----- state and control -----

    def components(self) -> list[dict[str, Any]]:
        """Every lab process: name, role, cluster, node, pid, state, log."""
        out = []
        for name, etcd in self.etcds.items():
            pid = etcd.pid
            state = "exited" if pid is None else ("paused" if process_state(pid) == "T" else "running")
            out.append({"name": f"etcd/{name}", "role": "etcd", "cluster": name, "node": None, "pid": pid,
                        "state": state, "endpoint": etcd.endpoint, "log": str(etcd.log_file)})
        for proc in self.procs.values():
            out.append({"name": proc.name, "role": proc.role, "cluster": proc.cluster, "node": proc.node,
                        "pid": proc.pid, "state": proc.state, "starts": proc.starts, "log": str(proc.log)})
        return out

    def _save_state(self) -> None:
        _write_json(self.root / "state.json", {
            "supervisor_pid": os.getpid(), "ready": self.ready, "started_at": self.started_at,
            "components": self.components(),
        })

    async def act(self, name: str, action: str) -> dict[str, Any]:
        """Apply a fault (``kill``, ``pause``) or its counterpart (``start``, ``resume``) to a component."""
        if action not in ACTIONS:
            raise web.HTTPBadRequest(text=f"unknown action {action!r}; use one of {', '.join(ACTIONS)}")
        if name.startswith("etcd/"):
            etcd = self.etcds.get(name.split("/", 1)[1])
            if etcd is None:
                raise web.HTTPNotFound(text=f"no component {name!r}")
            if action == "kill":
                await asyncio.to_thread(etcd.kill)
            elif action == "start":
                if not etcd.running:
                    await etcd.start_async()
            elif action == "pause":
                etcd.pause()
            else:
                etcd.resume()
        else:
            proc = self.procs.get(name)
            if proc is None:
                raise web.HTTPNotFound(text=f"no component {name!r}; see `clustermesh lab status`")
            if action == "kill":
                await asyncio.to_thread(proc.signal, signal.SIGKILL)
            elif action == "start":
                proc.start()
            elif action == "pause":
                proc.signal(signal.SIGSTOP)
            else:
                proc.signal(signal.SIGCONT)
        self._save_state()
        return next(c for c in self.components() if c["name"] == name)

    def app(self) -> web.Application:
        routes = web.RouteTableDef()

        @routes.get("/status")
        async def status(_: web.Request) -> web.Response:
            return web.json_response({"ready": self.ready, "components": self.components(),
                                      "forwards": self.forwarder.routes})

        @routes.post("/components/{kind}/{name}/{action}")
        async def component(request: web.Request) -> web.Response:
            name = f"{request.match_info['kind']}/{request.match_info['name']}"
            return web.json_response(await self.act(name, request.match_info["action"]))

        app = web.Application()
        app.add_routes(routes)
        return app

    # ----- teardown -----

    async def shut_down(self) -> None:
        """Stop what the supervisor started, in reverse order (pods are left to the sweep)."""
        runtimes = [p for p in self.procs.values() if p.role == "runtime"]
        others = [p for p in self.procs.values() if p.role != "runtime"]
        for group in (runtimes, others):
            await asyncio.gather(*(asyncio.to_thread(p.stop) for p in group))
        for front in self.fronts.values():
            await front.stop()
        for etcd in self.etcds.values():
            await asyncio.to_thread(etcd.stop)
        await self.forwarder.close()
        self._save_state()


async def run(spec: LabSpec) -> int:
    """Bring the lab up and serve it until SIGTERM/SIGINT; the exit status of the supervisor."""
    os.environ[ENV_MARKER] = spec.name
    sup = Supervisor(spec)
    (spec.state_dir / "supervisor.pid").write_text(str(os.getpid()))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    me = os.getpid()

    def on_signal(signum: int, frame: object) -> None:
        # Not loop.add_signal_handler: its wakeup fd is inherited by the children pyroute2 forks to
        # work inside namespaces, and a signal to such a child would read here as one to us.
        if os.getpid() == me:
            loop.call_soon_threadsafe(stop.set)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    runner = web.AppRunner(sup.app())
    await runner.setup()
    sock = spec.state_dir / "supervisor.sock"
    sock.unlink(missing_ok=True)
    await web.UnixSite(runner, str(sock)).start()
    os.chmod(sock, 0o600)
    status = 0
    try:
        bring_up = asyncio.create_task(sup.bring_up())
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({bring_up, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if bring_up in done:
            exc = bring_up.exception()
            if exc is not None:
                sup.progress.final(FAILED, str(exc))
                status = 1
            else:
                sup.progress.final(READY, f"lab {spec.name} is up")
                await stop.wait()
        else:
            bring_up.cancel()
            with contextlib.suppress(BaseException):
                await bring_up
            sup.progress.final(FAILED, "stopped by a signal during bring-up")
        stopped.cancel()
    finally:
        await sup.shut_down()
        await runner.cleanup()
        sup.progress.close()
        if sup.topology is not None:
            await asyncio.to_thread(sup.topology.close)  # pyroute2 cannot run on a running loop's thread
    return status
