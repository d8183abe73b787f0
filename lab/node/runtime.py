"""The node runtime: registers the Node, watches the pods bound to it (``fieldSelector
spec.nodeName=<node>``) and runs one :class:`~lab.node.worker.PodWorker` per pod, watches the
Secrets and ConfigMaps those pods read (:class:`~lab.node.objectwatch.ObjectWatches`), feeds the
cluster's Nodes to the routes, and publishes its state in ``<state_dir>/node.json``.

``node.json`` (rewritten atomically when something changed; read by the lab's ``status``, ``exec``
and ``logs``)::

    {"version": 1, "lab": "lab", "cluster": "c1", "node": "c1-n0", "pid": <runtime pid>,
     "running": true,                    # false once the runtime stopped (its pods keep running)
     "started_at": "...Z", "updated_at": "...Z",
     "api": {"registered": bool, "pods_synced": bool, "error": "<last heartbeat error or empty>"},
     "pods": [<pod record>, ...]}        # sorted by namespace/name; each is the pod's pod.json
                                         # (lab.node.worker): uid, namespace, name, netns, ip,
                                         # cgroup, phase, dir, containers{name: {pid, restart_count,
                                         # state, log, ...}}

On SIGTERM the runtime stops watching and exits; containers are left running (as a kubelet leaves
them) and the next runtime adopts them. :func:`lab.node.cleanup.stop_all_pods` removes them for good.
"""

from __future__ import annotations

import asyncio
import datetime
import os
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from typing import Any, Protocol

import aiohttp
from kubernetes.aio import client as kclient
from kubernetes.aio import config as kconfig
from pyroute2 import config as pyroute2_config

from lab.kube.controllers.client import KubeClient
from lab.node import layout
from lab.node.cgroups import PodCgroup, pod_cgroup_uids
from lab.node.config import NodeConfig
from lab.node.nodeobject import NodeRegistration, host_memory_bytes
from lab.node.objectwatch import ObjectWatches
from lab.node.worker import NetnsClaims, NetnsNamer, Network, NodeContext, PodWorker
from meshcore.backoff import Backoff
from meshcore.errors import ConfigError, MeshError
from meshcore.k8s.client import K8sApi
from meshcore.k8s.resource import Delete, ResourceRef, ResourceWatch, Synced, Upsert
from meshcore.log import get_logger

Obj = dict[str, Any]
PODS = ResourceRef("", "v1", "pods", namespaced=True)
NODES = ResourceRef("", "v1", "nodes", namespaced=False)
ENV_MARKER = "CLUSTERMESH_LAB"
_STATUS_PERIOD = 1.0
_ROUTES_RESYNC = 30.0
_FORGET_AFTER = 4096

_log = get_logger(__name__)


class Routes(Protocol):
    """Routes to the other nodes' podCIDRs (:class:`lab.node.routes.NodeRoutes`)."""

    def sync(self, nodes: list[dict[str, Any]]) -> None: ...


class NodeRuntimeError(MeshError):
    """The node runtime cannot start (its network helpers or the API client cannot be set up)."""


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _default_network(cfg: NodeConfig) -> tuple[Network, Routes, NetnsNamer]:
    try:
        from lab.node.podnet import PodNetwork, pod_netns_name
        from lab.node.routes import NodeRoutes
    except ImportError as err:
        raise NodeRuntimeError(f"the pod network module is missing: {err}") from err
    try:
        network = PodNetwork(lab=cfg.lab, cluster=cfg.cluster, node_index=cfg.node_index, pod_cidr=cfg.pod_network,
                             state_dir=cfg.state_path, mtu=cfg.pod_mtu)
    except Exception as err:  # e.g. not started inside the node's namespace: say so and stop
        raise NodeRuntimeError(f"cannot set up the pod network: {err}") from err
    return network, NodeRoutes(cfg.node_name, service_ip=cfg.api_service_host), pod_netns_name


async def api_client_from_kubeconfig(path: str) -> kclient.ApiClient:
    configuration = kclient.Configuration()
    try:
        await kconfig.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=path, client_configuration=configuration)
    except (kconfig.ConfigException, OSError, ValueError) as err:
        raise ConfigError(f"cannot load kubeconfig {path}: {err}") from err
    return kclient.ApiClient(configuration)


class NodeRuntime:
    """Everything one node runs (see the module docstring). ``network`` (with ``routes`` and
    ``netns_name``) defaults to :mod:`lab.node.podnet` and :mod:`lab.node.routes`."""

    def __init__(self, cfg: NodeConfig, *, network: Network | None = None, routes: Routes | None = None,
                 netns_name: NetnsNamer | None = None) -> None:
        self.cfg = cfg
        self._network = network
        self._routes = routes
        self._netns_name = netns_name
        self.workers: dict[str, PodWorker] = {}
        self._done: OrderedDict[str, None] = OrderedDict()
        self._nodes: dict[str, Obj] = {}
        self._nodes_synced = False
        self.pods_synced = False
        self._routes_dirty = asyncio.Event()
        self._status_dirty = asyncio.Event()
        self._registration: NodeRegistration | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._ctx: NodeContext | None = None
        self._started_at = now_rfc3339()
        self._last_status: Obj | None = None

    # ----- lifecycle -----

    async def run(self) -> None:
        """Run until cancelled (SIGTERM); pods are left running."""
        cfg = self.cfg
        # pyroute2 forks helpers for namespace work (netns.create, IPRoute(netns=...)) and stops them with
        # SIGTERM; a forked copy of this process still has asyncio's signal wakeup fd, so its SIGTERM
        # handler would write to *our* loop's self-pipe and stop this runtime. Make the helpers reset
        # SIGTERM to its default first.
        pyroute2_config.disable_mp_signal = True
        cfg.cgroup_path.mkdir(parents=True, exist_ok=True)
        layout.pods_root(cfg.state_path).mkdir(parents=True, exist_ok=True)
        executor = ThreadPoolExecutor(1, thread_name_prefix="podnet")
        loop = asyncio.get_running_loop()

        def run_net(fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
            return loop.run_in_executor(executor, fn, *args)

        try:
            if self._network is None:
                self._network, self._routes, self._netns_name = await run_net(_default_network, cfg)
            assert self._netns_name is not None
            api_client = await api_client_from_kubeconfig(cfg.kubeconfig)
            client = KubeClient(api_client)
            objects = ObjectWatches(K8sApi(api_client))
            try:
                async with aiohttp.ClientSession() as http:
                    self._ctx = NodeContext(
                        cfg=cfg, client=client, network=self._network, netns_name=self._netns_name, run_net=run_net,
                        claims=NetnsClaims(), http=http, env_marker={ENV_MARKER: cfg.lab},
                        node_memory=host_memory_bytes(), objects=objects, changed=self._status_dirty.set,
                        ca=await asyncio.to_thread(_read_bytes, cfg.api_ca_file),
                    )  # fmt: skip
                    self._registration = NodeRegistration(cfg, client)
                    _log.info("node runtime starting", node=cfg.node_name, pod_cidr=cfg.pod_cidr)
                    async with asyncio.TaskGroup() as tg:
                        self._tg = tg
                        tg.create_task(objects.run(), name="object-watches")
                        self._adopt_pod_dirs()
                        tg.create_task(self._registration.run(), name="node-registration")
                        tg.create_task(self._watch_pods(api_client), name="pod-watch")
                        tg.create_task(self._watch_nodes(api_client), name="node-watch")
                        tg.create_task(self._routes_loop(), name="routes")
                        tg.create_task(self._status_loop(), name="node-status")
            finally:
                await client.close()
        finally:
            self._write_status(running=False)
            executor.shutdown(wait=False, cancel_futures=True)

    # ----- pods -----

    def _spawn(self, worker: PodWorker) -> None:
        assert self._tg is not None
        self.workers[worker.uid] = worker
        self._tg.create_task(self._run_worker(worker), name=f"pod-{worker.key}")
        self._status_dirty.set()

    async def _run_worker(self, worker: PodWorker) -> None:
        uid = worker.uid
        while True:
            try:
                await worker.run()
                break
            except Exception:  # a worker bug: log it and start the pod's worker over
                _log.exception("pod worker failed; starting it again", pod=worker.key)
                await asyncio.sleep(5.0)
                assert self._ctx is not None
                fresh = PodWorker(self._ctx, uid, worker.namespace, worker.name, worker.pod)
                fresh.gone = worker.gone
                worker = self.workers[uid] = fresh
        if self.workers.get(uid) is worker:
            del self.workers[uid]
        self._done[uid] = None
        while len(self._done) > _FORGET_AFTER:
            self._done.popitem(last=False)
        self._status_dirty.set()

    def _adopt_pod_dirs(self) -> None:
        """Workers for the pod directories an earlier runtime left; they wait for the pod watch."""
        assert self._ctx is not None
        root = layout.pods_root(self.cfg.state_path)
        for d in sorted(root.iterdir()) if root.is_dir() else []:
            parsed = layout.parse_pod_dir_name(d.name)
            if parsed is None or not d.is_dir():
                continue
            namespace, name, uid = parsed
            if uid not in self.workers:
                _log.info("found pod directory from an earlier run", pod=f"{namespace}/{name}", uid=uid)
                self._spawn(PodWorker(self._ctx, uid, namespace, name))

    def _on_pod(self, pod: Obj) -> None:
        assert self._ctx is not None
        md = pod.get("metadata") or {}
        uid, namespace, name = str(md.get("uid", "")), str(md.get("namespace") or "default"), str(md.get("name", ""))
        if not uid or (pod.get("spec") or {}).get("nodeName") != self.cfg.node_name or uid in self._done:
            return
        for other in self.workers.values():
            if other.key == f"{namespace}/{name}" and other.uid != uid:
                other.mark_gone()  # replaced by a new pod of the same name
        worker = self.workers.get(uid)
        if worker is not None:
            worker.update(pod)
        else:
            self._spawn(PodWorker(self._ctx, uid, namespace, name, pod))

    def _on_pod_deleted(self, pod: Obj) -> None:
        worker = self.workers.get(str((pod.get("metadata") or {}).get("uid", "")))
        if worker is not None:
            worker.mark_gone()

    async def _after_first_sync(self) -> None:
        """The API's view is complete: pods we know from disk only are gone; remove orphans."""
        for worker in list(self.workers.values()):
            if worker.pod is None:
                worker.mark_gone()
        assert self._ctx is not None and self._network is not None
        try:
            attached = await self._ctx.run_net(self._network.attached)
        except Exception as err:
            _log.warning("cannot list attached pods", error=str(err))
            attached = {}
        for uid, (netns, _) in attached.items():
            if uid not in self.workers:
                _log.info("detaching the network of an unknown pod", uid=uid, netns=netns)
                try:
                    await self._ctx.run_net(self._network.detach, uid, netns)
                except Exception as err:
                    _log.warning("cannot detach", uid=uid, error=str(err))
        for uid in pod_cgroup_uids(self.cfg.cgroup_path):
            if uid not in self.workers:
                _log.info("removing the cgroup of an unknown pod", uid=uid)
                await asyncio.to_thread(PodCgroup(self.cfg.cgroup_path, uid).remove)

    async def _watch_pods(self, api_client: kclient.ApiClient) -> None:
        watch = ResourceWatch(K8sApi(api_client), PODS, field_selector=f"spec.nodeName={self.cfg.node_name}",
                              backoff=Backoff(initial=0.2, maximum=5.0))
        async with aclosing(watch.events()) as events:
            async for event in events:
                if isinstance(event, Synced):
                    self.pods_synced = True
                    _log.info("pods synced", pods=len(watch.objects()))
                    await self._after_first_sync()
                elif isinstance(event, Upsert):
                    self._on_pod(event.obj)
                elif isinstance(event, Delete):
                    self._on_pod_deleted(event.obj)
                self._status_dirty.set()

    # ----- nodes and routes -----

    async def _watch_nodes(self, api_client: kclient.ApiClient) -> None:
        watch = ResourceWatch(K8sApi(api_client), NODES, backoff=Backoff(initial=0.2, maximum=5.0))
        async with aclosing(watch.events()) as events:
            async for event in events:
                if isinstance(event, Synced):
                    self._nodes_synced = True
                elif isinstance(event, Upsert):
                    self._nodes[str(event.obj["metadata"]["name"])] = event.obj
                elif isinstance(event, Delete):
                    self._nodes.pop(str(event.obj["metadata"]["name"]), None)
                if self._nodes_synced:
                    self._routes_dirty.set()

    async def _routes_loop(self) -> None:
        assert self._ctx is not None
        while True:
            with_timeout = asyncio.timeout(_ROUTES_RESYNC)
            try:
                async with with_timeout:
                    await self._routes_dirty.wait()
            except TimeoutError:
                pass
            self._routes_dirty.clear()
            if not self._nodes_synced or self._routes is None:
                continue
            try:
                await self._ctx.run_net(self._routes.sync, list(self._nodes.values()))
            except Exception as err:
                _log.warning("route sync failed, retrying", error=str(err))
                await asyncio.sleep(2.0)
                self._routes_dirty.set()

    # ----- node.json -----

    def status(self, *, running: bool = True) -> Obj:
        """The document written to ``node.json`` (see the module docstring)."""
        reg = self._registration
        pods = sorted((w.record() for w in self.workers.values() if w.pod is not None or w.dir.root.exists()),
                      key=lambda r: (r["namespace"], r["name"], r["uid"]))
        return {
            "version": 1, "lab": self.cfg.lab, "cluster": self.cfg.cluster, "node": self.cfg.node_name,
            "pid": os.getpid(), "running": running, "started_at": self._started_at,
            "api": {"registered": bool(reg and reg.registered.is_set()), "pods_synced": self.pods_synced,
                    "error": reg.error if reg else ""},
            "pods": pods,
        }  # fmt: skip

    def _write_status(self, *, running: bool = True) -> None:
        doc = self.status(running=running)
        if doc == self._last_status:
            return
        self._last_status = doc
        try:
            layout.write_json(layout.node_status_file(self.cfg.state_path), {**doc, "updated_at": now_rfc3339()})
        except OSError as err:
            _log.warning("cannot write node.json", error=str(err))

    async def _status_loop(self) -> None:
        while True:
            self._status_dirty.clear()
            self._write_status()
            try:
                async with asyncio.timeout(10.0):
                    await self._status_dirty.wait()
            except TimeoutError:
                pass
            await asyncio.sleep(_STATUS_PERIOD / 4)  # coalesce bursts of changes


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise NodeRuntimeError(f"cannot read the API's CA file {path}: {err.strerror or err}") from err
