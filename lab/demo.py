"""The foundation demo: one cluster exports Cilium records into its etcd, another reads them.

Everything is real: two etcd processes on loopback with mTLS and etcd auth (the exporting
cluster's writer is ``admin-cluster1``; the reading cluster connects as the read-only user
``remote-cluster2`` taken from its client certificate), sync stores writing Cilium's exact keys and
JSON under leases with synced canaries, the heartbeat and cluster-config writers, and on the
reading side canary-gated watch stores that validate every entry strictly. Midway, the exporting
etcd is SIGKILLed while the exporter keeps changing its state; after the restart the reader
converges without re-announcing anything that survived.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from clustermesh_apiserver.etcdinit import etcd_init
from lab.etcd import EtcdProcess
from lab.wait import poll_until
from meshcore.errors import KVStoreAuthError, KVStoreUnavailableError, WireError
from meshcore.kvstore.client import EtcdClient
from meshcore.kvstore.leases import LeaseManager
from meshcore.store.clusterconfig import ClusterConfigWriter
from meshcore.store.heartbeat import HeartbeatWriter
from meshcore.store.syncstore import SyncStore
from meshcore.store.watchstore import WatchStore
from meshcore.store.watchstoremgr import WatchStoreManager
from meshcore.wire import (
    CIDR,
    ClusterConfig,
    ClusterConfigCapabilities,
    ClusterService,
    IPIdentityPair,
    L4Addr,
    LabelSet,
    Node,
    NodeAddress,
    check_key,
    decode_cluster_config,
    decode_identity,
    decode_ip_identity,
    decode_node,
    decode_service,
    encode_cluster_config,
)
from meshcore.wire import keys as wk
from meshcore.wire.clusterinfo import identity_range

EXPORTER, EXPORTER_ID = "cluster1", 1
READER = "cluster2"


@dataclass
class View:
    """What the reading cluster holds of one prefix, plus the events it received."""

    entries: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str]] = field(default_factory=list)

    def on_upsert(self, name: str, value: Any) -> None:
        self.entries[name] = value
        self.events.append(("upsert", name))

    def on_delete(self, name: str) -> None:
        self.entries.pop(name, None)
        self.events.append(("delete", name))


# --- the exporting cluster's state, as Cilium records ------------------------------------------


def demo_node(index: int) -> Node:
    name = f"{EXPORTER}-node-{index}"
    return Node(
        name=name,
        cluster=EXPORTER,
        ip_addresses=[
            NodeAddress(type="InternalIP", ip=f"172.18.{EXPORTER_ID}.{10 + index}"),
            NodeAddress(type="CiliumInternalIP", ip=f"10.{EXPORTER_ID}.{index}.1"),
        ],
        ipv4_alloc_cidr=CIDR(ip=f"10.{EXPORTER_ID}.{index}.0", mask=bytes([255, 255, 255, 0])),
        ipv4_health_ip=f"10.{EXPORTER_ID}.{index}.2",
        cluster_id=EXPORTER_ID,
        source="custom-resource",
        labels={"kubernetes.io/hostname": name},
        annotations={},
        boot_id=f"00000000-0000-4000-8000-00000000000{index}",
    )


def demo_identity(app: str, namespace: str) -> LabelSet:
    return LabelSet.from_strings(
        [
            f"k8s:app={app}",
            f"k8s:io.cilium.k8s.policy.cluster={EXPORTER}",
            f"k8s:io.kubernetes.pod.namespace={namespace}",
        ]
    )


def demo_endpoint(node: int, pod: int, identity: int, app: str) -> IPIdentityPair:
    return IPIdentityPair(
        ip=f"10.{EXPORTER_ID}.{node}.{100 + pod}",
        host_ip=f"172.18.{EXPORTER_ID}.{10 + node}",
        id=identity,
        k8s_namespace="shop",
        k8s_pod_name=f"{app}-{node}{pod}",
        k8s_service_account="default",
    )


def demo_service(backends: list[str]) -> ClusterService:
    port: dict[str, L4Addr | None] = {"http": L4Addr(protocol="TCP", port=8080)}
    return ClusterService(
        cluster=EXPORTER,
        namespace="shop",
        name="frontend",
        frontends={"10.96.0.20": {"http": L4Addr(protocol="TCP", port=80)}},
        backends={ip: port for ip in backends},
        labels={},
        selector={"app": "frontend"},
        include_external=True,
        shared=True,
        cluster_id=EXPORTER_ID,
    )


# --- the reading side's strict decoders -----------------------------------------------------------


def checked(decode: Callable[..., Any], prefix: str) -> Callable[[str, bytes], Any]:
    """A watch-store decoder: strict decode, then the key must match the record."""

    def run(name: str, raw: bytes) -> Any:
        key = prefix + name
        record = decode(raw, key=key)
        check_key(key, record)
        if isinstance(record, Node | ClusterService) and record.cluster != EXPORTER:
            raise WireError(f"cluster {record.cluster!r} is not {EXPORTER!r}", key=key, field="Cluster")
        return record

    return run


def checked_identity(name: str, raw: bytes) -> LabelSet:
    key = wk.IDENTITIES_ID + "/" + name
    first, last = identity_range(EXPORTER_ID)
    if not name.isdigit() or not first <= int(name) <= last:
        raise WireError(f"identity {name} is outside {EXPORTER}'s range {first}..{last}", key=key)
    labels = decode_identity(raw, key=key)
    if labels.cluster() != EXPORTER:
        raise WireError(f"identity does not carry the label of cluster {EXPORTER!r}", key=key)
    return labels


# --- the demo -------------------------------------------------------------------------------------


class Demo:
    def __init__(self, console: Console, workdir: Path) -> None:
        self.console = console
        self.workdir = workdir
        self.started = time.monotonic()

    def say(self, text: str) -> None:
        self.console.print(f"[dim]{time.monotonic() - self.started:6.2f}s[/dim]  {text}")

    async def run(self) -> None:
        etcd1 = EtcdProcess(self.workdir / EXPORTER, name=EXPORTER, tls=True)
        etcd2 = EtcdProcess(self.workdir / READER, name=READER, tls=True)
        try:
            for etcd in (etcd1, etcd2):
                await etcd.start_async()
            self.say(f"started etcd {etcd1.endpoint} ({EXPORTER}) and {etcd2.endpoint} ({READER}), mTLS")
            async with EtcdClient(etcd1.client_config("root")) as root:
                await etcd_init(root, EXPORTER, peers=[READER])
            self.say(f"etcdinit on {EXPORTER}: users root, admin-{EXPORTER}, local-{EXPORTER}, remote-{READER}")
            await self.exchange(etcd1)
        finally:
            etcd1.close()
            etcd2.close()

    async def exchange(self, etcd1: EtcdProcess) -> None:
        views = {kind: View() for kind in ("nodes", "identities", "ip", "services")}
        async with AsyncExitStack() as stack:
            writer = await stack.enter_async_context(EtcdClient(etcd1.client_config(f"admin-{EXPORTER}")))
            reader = await stack.enter_async_context(EtcdClient(etcd1.client_config(f"remote-{READER}")))
            self.say(f"reader connected as etcd user [bold]{reader.user}[/bold] (from its client certificate)")
            tasks = await stack.enter_async_context(asyncio.TaskGroup())
            stack.callback(lambda: [t.cancel() for t in asyncio.all_tasks() if t.get_name().startswith("demo:")])

            # Exporter: one sync store per prefix, all keys leased, canaries after the first batch.
            leases = LeaseManager(writer, ttl=30)
            stores = {
                "nodes": SyncStore(writer, wk.NODES, cluster=EXPORTER, leases=leases),
                "identities": SyncStore(
                    writer, wk.IDENTITIES_ID, cluster=EXPORTER, leases=leases, canary_prefix=wk.IDENTITIES
                ),
                "ip": SyncStore(writer, wk.IP_DEFAULT, cluster=EXPORTER, leases=leases, canary_prefix=wk.IP),
                "services": SyncStore(writer, wk.SERVICES, cluster=EXPORTER, leases=leases),
            }
            config = ClusterConfig(
                id=EXPORTER_ID,
                capabilities=ClusterConfigCapabilities(
                    synced_canaries=True, max_connected_clusters=255, service_exports_enabled=False
                ),
            )
            config_writer = ClusterConfigWriter(writer, leases, EXPORTER, encode_cluster_config(config))
            heartbeat = HeartbeatWriter(writer, leases, interval=1.0)
            jobs = {"leases": leases.run(), "config": config_writer.run(), "heartbeat": heartbeat.run()}
            for name, job in jobs.items():
                tasks.create_task(job, name=f"demo:{name}")
            for kind, store in stores.items():
                tasks.create_task(store.run(), name=f"demo:sync-{kind}")

            first_id = identity_range(EXPORTER_ID)[0] + 300
            identities = {first_id: demo_identity("frontend", "shop"), first_id + 1: demo_identity("cart", "shop")}
            for ident, labels in identities.items():
                stores["identities"].upsert(str(ident), labels.encode())
            endpoints = []
            for node in range(3):
                stores["nodes"].upsert(demo_node(node).key_name(), demo_node(node).encode())
                for pod, (ident, app) in enumerate([(first_id, "frontend"), (first_id + 1, "cart")]):
                    endpoints.append(demo_endpoint(node, pod, ident, app))
            for ep in endpoints:
                stores["ip"].upsert(ep.prefix_string(), ep.encode())
            frontends = [ep.ip for ep in endpoints if ep.id == first_id]
            stores["services"].upsert(demo_service(frontends).key_name(), demo_service(frontends).encode())
            for store in stores.values():
                store.synced()
            await asyncio.wait_for(asyncio.gather(*(s.wait_idle() for s in stores.values())), 20)
            await asyncio.wait_for(config_writer.written.wait(), 10)
            self.say(f"{EXPORTER} exported {sum(s.status().desired for s in stores.values())} keys and 4 canaries")

            # Reader: the remote's cluster config first (required), then canary-gated watchers.
            raw_config = await reader.get(wk.cluster_config_key(EXPORTER))
            if raw_config is None:
                raise RuntimeError(f"{EXPORTER} has no cluster config")
            remote_config = decode_cluster_config(raw_config.value, key=raw_config.key)
            self.say(
                f"{READER} read {raw_config.key}: id={remote_config.id}, "
                f"syncedCanaries={remote_config.capabilities.synced_canaries}"
            )
            manager = WatchStoreManager(reader, wk.synced_key(EXPORTER, ""), gated=True)
            watchers: dict[str, WatchStore[Any]] = {
                "nodes": WatchStore(
                    reader, f"{wk.NODES}/{EXPORTER}/", checked(decode_node, f"{wk.NODES}/{EXPORTER}/"), views["nodes"]
                ),
                "identities": WatchStore(reader, wk.IDENTITIES_ID + "/", checked_identity, views["identities"]),
                "ip": WatchStore(
                    reader, wk.IP_DEFAULT + "/", checked(decode_ip_identity, wk.IP_DEFAULT + "/"), views["ip"]
                ),
                "services": WatchStore(
                    reader,
                    f"{wk.SERVICES}/{EXPORTER}/",
                    checked(decode_service, f"{wk.SERVICES}/{EXPORTER}/"),
                    views["services"],
                ),
            }
            canaries = {"nodes": wk.NODES, "identities": wk.IDENTITIES, "ip": wk.IP, "services": wk.SERVICES}
            for kind, watcher in watchers.items():
                manager.register(canaries[kind], watcher.run)
            tasks.create_task(manager.run(), name="demo:watch-manager")
            await asyncio.wait_for(asyncio.gather(*(w.synced.wait() for w in watchers.values())), 20)
            self.say(f"{READER} synced all four prefixes after their canaries appeared")
            self.show(views, watchers, "what cluster2 sees of cluster1")
            sample = await reader.get(wk.node_key(EXPORTER, demo_node(0).name))
            assert sample is not None
            self.console.print(f"[dim]{sample.key}[/dim]\n{sample.value.decode()}\n")

            try:
                await reader.put(wk.node_key(EXPORTER, "intruder"), b"{}")
            except KVStoreAuthError as err:
                self.say(f"write as remote-{READER} refused by etcd: [italic]{err}[/italic]")

            # Fault: kill cluster1's etcd while the exporter keeps changing its state.
            for view in views.values():
                view.events.clear()
            etcd1.kill()
            self.say(f"[bold red]SIGKILLed {EXPORTER}'s etcd[/bold red]; the exporter keeps changing state")
            gone = endpoints[-1]
            stores["ip"].delete(gone.prefix_string())
            new_ep = demo_endpoint(2, 5, first_id, "frontend")
            stores["ip"].upsert(new_ep.prefix_string(), new_ep.encode())
            moved = demo_service([*frontends[:-1], new_ep.ip])
            stores["services"].upsert(moved.key_name(), moved.encode())
            if not await poll_until(lambda: not any(w.connected for w in watchers.values()), within=10):
                raise RuntimeError(f"{READER} did not notice the outage within 10 s")
            self.say(f"{READER} notices: connected={[w.connected for w in watchers.values()]}, entries kept")
            await asyncio.sleep(1.0)
            await etcd1.restart_async()
            self.say(f"restarted {EXPORTER}'s etcd (same data)")
            await asyncio.wait_for(asyncio.gather(*(s.wait_idle() for s in stores.values())), 30)

            async def converged() -> bool:
                for kind, watcher in watchers.items():
                    try:
                        listing = await reader.list_prefix(watcher.prefix)
                    except KVStoreUnavailableError:
                        return False  # the demo's own check may race the restarted etcd's first moments

                    in_etcd = {i.key[len(watcher.prefix) :]: i.value for i in listing.items}
                    seen = {name: record.encode() for name, record in views[kind].entries.items()}
                    if in_etcd != seen:
                        return False
                return True

            if not await poll_until(converged, within=20):
                raise RuntimeError("reader did not converge within 20 s after the restart")
            events = [f"{kind}: {op} {name}" for kind, v in views.items() for op, name in v.events]
            self.say(f"{READER} converged; events after the outage: {events}")

            # Bad data: a node claiming another cluster is rejected and counted, never delivered.
            root = await stack.enter_async_context(EtcdClient(etcd1.client_config("root")))
            bogus = Node(name="bogus", cluster="cluster9", cluster_id=9)
            await root.put(wk.node_key(EXPORTER, "bogus"), bogus.encode())
            await root.put(wk.node_key(EXPORTER, "broken"), b'{"Name": 42')
            if not await poll_until(lambda: watchers["nodes"].invalid_total >= 2, within=10):
                raise RuntimeError("the bad entries were not rejected within 10 s")
            self.say(
                f"bad remote entries rejected: {watchers['nodes'].invalid_total}; "
                f"last: [italic]{watchers['nodes'].last_error}[/italic]"
            )
            self.show(views, watchers, "after the outage")

    def show(self, views: dict[str, View], watchers: dict[str, WatchStore[Any]], title: str) -> None:
        summary = Table(title=title)
        for column in ("prefix", "entries", "synced", "connected", "rejected"):
            summary.add_column(column)
        for watcher in watchers.values():
            status = watcher.status()
            summary.add_row(
                status.prefix, str(status.entries), str(status.synced), str(status.connected), str(status.invalid)
            )
        self.console.print(summary)
        nodes = Table(title="nodes")
        for column in ("name", "cluster", "internal IP", "pod CIDR", "health IP"):
            nodes.add_column(column)
        for node in sorted(views["nodes"].entries.values(), key=lambda n: n.name):
            internal = next((a.ip for a in node.ip_addresses or [] if a.type == "InternalIP"), "")
            nodes.add_row(node.name, node.cluster, internal, str(node.ipv4_alloc_cidr), node.ipv4_health_ip)
        self.console.print(nodes)
        ips = Table(title="ipcache entries")
        for column in ("IP", "identity", "labels", "tunnel endpoint", "pod"):
            ips.add_column(column)
        for pair in sorted(views["ip"].entries.values(), key=lambda p: p.ip):
            labels = views["identities"].entries.get(str(pair.id))
            app = labels.get("app") if labels is not None else None
            ips.add_row(
                pair.ip, str(pair.id), f"app={app.value}" if app else "?", pair.host_ip,
                f"{pair.k8s_namespace}/{pair.k8s_pod_name}",
            )
        self.console.print(ips)
        services = Table(title="global services")
        for column in ("service", "frontends", "backends"):
            services.add_column(column)
        for svc in views["services"].entries.values():
            services.add_row(
                f"{svc.namespace}/{svc.name}", ", ".join(svc.frontends or {}), ", ".join(sorted(svc.backends or {}))
            )
        self.console.print(services)


def run_demo(console: Console | None = None) -> None:
    """Run the demo in a temporary directory; raises if any step does not hold."""
    console = console or Console()
    with tempfile.TemporaryDirectory(prefix="clustermesh-demo-") as workdir:
        asyncio.run(Demo(console, Path(workdir)).run())
