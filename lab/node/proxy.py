"""The lab's node proxy: NodePort Services, as kube-proxy gives them, in userspace.

``python -m lab.node.proxy --config NODE.json`` runs in a node's network namespace (started by the
lab supervisor like the node runtime) and, for every TCP port of every Service of type NodePort or
LoadBalancer, listens on ``0.0.0.0:<nodePort>`` there and relays each connection to a ready
endpoint of the Service (from its EndpointSlices; round robin). Other nodes and other clusters reach
it over the lab's underlay, as they would reach a node port of a real cluster: this is how one
cluster's agents reach another's clustermesh-apiserver. The lab documents it as its NodePort
equivalent; ClusterIP traffic is not proxied (nothing in the lab needs it).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
from collections.abc import Awaitable, Callable, Iterable
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.net.forward import pump
from meshcore.cliopts import run_until_signalled
from meshcore.k8s.client import K8sApi
from meshcore.k8s.resource import Delete, ResourceRef, ResourceWatch, Upsert, object_key
from meshcore.log import configure as configure_logging
from meshcore.log import get_logger

SERVICES = ResourceRef("", "v1", "services", True)
ENDPOINT_SLICES = ResourceRef("discovery.k8s.io", "v1", "endpointslices", True)
_CONNECT_TIMEOUT = 3.0
_log = get_logger(__name__)

Obj = dict[str, Any]


@dataclass(frozen=True, order=True)
class Backend:
    """One ready endpoint of a Service port."""

    ip: str
    port: int


def desired_node_ports(services: Iterable[Obj], slices: Iterable[Obj]) -> dict[int, list[Backend]]:
    """nodePort -> ready backends (sorted), for TCP ports of NodePort and LoadBalancer Services (pure)."""
    by_service: dict[tuple[str, str], list[Obj]] = {}
    for s in slices:
        md = s.get("metadata") or {}
        name = (md.get("labels") or {}).get("kubernetes.io/service-name")
        if name:
            by_service.setdefault((md.get("namespace", ""), name), []).append(s)
    out: dict[int, list[Backend]] = {}
    for svc in services:
        spec = svc.get("spec") or {}
        if spec.get("type") not in ("NodePort", "LoadBalancer"):
            continue
        md = svc.get("metadata") or {}
        for port in spec.get("ports") or []:
            node_port = port.get("nodePort")
            if not node_port or port.get("protocol", "TCP") != "TCP":
                continue
            backends: set[Backend] = set()
            for sl in by_service.get((md.get("namespace", ""), md.get("name", "")), []):
                target = next((p.get("port") for p in sl.get("ports") or []
                               if p.get("name", "") == port.get("name", "") and p.get("protocol", "TCP") == "TCP"),
                              None)
                if not target:
                    continue
                for ep in sl.get("endpoints") or []:
                    if (ep.get("conditions") or {}).get("ready") is False:
                        continue
                    backends.update(Backend(ip, int(target)) for ip in ep.get("addresses") or [])
            out[int(node_port)] = sorted(backends)
    return out


class NodePortProxy:
    """Listeners for the node ports in :meth:`update`'s table, relaying to its backends."""

    def __init__(self, host: str = "0.0.0.0") -> None:
        self.host = host
        self.table: dict[int, list[Backend]] = {}
        self._servers: dict[int, asyncio.Server] = {}
        self._turn = itertools.count()

    async def update(self, table: dict[int, list[Backend]]) -> None:
        """Open listeners for new ports, close those of ports that went away, swap in backends."""
        self.table = table
        for port in set(self._servers) - set(table):
            self._servers.pop(port).close()
            _log.info("node port closed", port=port)
        for port in set(table) - set(self._servers):
            try:
                self._servers[port] = await asyncio.start_server(self._handler(port), self.host, port,
                                                                 reuse_address=True)
                _log.info("node port open", port=port, backends=len(table[port]))
            except OSError as err:
                _log.warning("cannot open node port", port=port, error=str(err))

    def _handler(self, port: int) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._relay(port, reader, writer)

        return handle

    async def _relay(self, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        backends = self.table.get(port) or []
        up_writer = None
        try:
            if not backends:
                return  # no ready endpoint: the client sees the connection close, like a REJECT
            backend = backends[next(self._turn) % len(backends)]
            async with asyncio.timeout(_CONNECT_TIMEOUT):
                up_reader, up_writer = await asyncio.open_connection(backend.ip, backend.port)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(pump(reader, up_writer))
                tg.create_task(pump(up_reader, writer))
        except (OSError, TimeoutError):
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    w.close()

    async def close(self) -> None:
        for server in self._servers.values():
            server.close()
        self._servers.clear()


async def run(kubeconfig: str) -> None:
    """Keep the node ports in line with the cluster's Services and EndpointSlices until cancelled."""
    api = await K8sApi.from_kubeconfig(kubeconfig)
    proxy = NodePortProxy()
    state: dict[str, dict[str, Obj]] = {"services": {}, "endpointslices": {}}
    changed = asyncio.Event()

    async def follow(ref: ResourceRef) -> None:
        watch = ResourceWatch(api, ref)
        async with aclosing(watch.events()) as events:
            async for event in events:
                if isinstance(event, Upsert):
                    state[ref.plural][object_key(event.obj)] = event.obj
                elif isinstance(event, Delete):
                    state[ref.plural].pop(object_key(event.obj), None)
                changed.set()

    async def apply() -> None:
        while True:
            await changed.wait()
            changed.clear()
            await proxy.update(desired_node_ports(state["services"].values(), state["endpointslices"].values()))
            await asyncio.sleep(0.05)  # coalesce bursts of events

    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(follow(SERVICES))
            tg.create_task(follow(ENDPOINT_SLICES))
            tg.create_task(apply())
    finally:
        await proxy.close()
        await api.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m lab.node.proxy --config NODE.json``."""
    p = argparse.ArgumentParser(prog="python -m lab.node.proxy", description="the lab's NodePort proxy")
    p.add_argument("--config", required=True, help="the node's NODE.json (its kubeconfig is used)")
    args = p.parse_args(argv)
    try:
        config = json.loads(Path(args.config).read_text())
        kubeconfig = str(config["kubeconfig"])
    except (OSError, ValueError, KeyError) as err:
        print(f"error: cannot read {args.config}: {err}", file=sys.stderr)
        return 1
    configure_logging(level="info")
    run_until_signalled(lambda: run(kubeconfig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
