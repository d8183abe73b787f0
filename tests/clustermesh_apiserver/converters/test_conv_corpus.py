"""Drive the pure converters through the Cilium conformance corpus.

Each clustermesh-apiserver ``*.txtar`` (and the operator's ``servicesync.txtar``) is run by the
script helpers of ``clustermesh_apiserver.converters._scenario_text`` against an in-memory model
of the apiserver: a dict of Kubernetes objects, a dict standing in for etcd, and, per resource
kind, the reconciliation Cilium performs (namespace filtering, ipcache ownership, service and
service-export sync, cluster config enforcement). Everything the model writes comes from the
converters and :mod:`meshcore.wire` encoders; every ``cmp`` against an ``*.expected`` section is
byte for byte.

Not run: the [dev-only] EndpointSlice export files (their values are a display form of a
zstd+protobuf record no converter of this package produces). Version-skewed files run with the one
skewed detail normalised and a warning naming it.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from clustermesh_apiserver.converters import (
    cilium_endpoint_owner,
    cilium_endpoint_slice_namespace,
    cilium_endpoint_slice_owner,
    cilium_endpoint_slice_to_pairs,
    cilium_endpoint_to_pairs,
    cilium_identity_to_labels,
    cilium_node_to_node,
    identity_namespace,
    ipcache_tracker,
    namespace_is_global,
    service_export_to_spec,
    service_to_cluster_service,
)
from clustermesh_apiserver.converters._scenario_text import (
    ScriptError,
    Workspace,
    format_listing,
    parse_kvstore_list_args,
    parse_script,
    run_script,
)
from clustermesh_apiserver.converters.ownership import Changes
from clustermesh_apiserver.converters.service import endpoint_slice_service_name
from meshcore import txtar
from meshcore.wire import ClusterConfig, ClusterConfigCapabilities, IPIdentityPair
from meshcore.wire import keys as K

CORPUS = Path(os.environ.get("CILIUM_CONFORMANCE_DIR", "/work/shared/conformance/cilium"))
APISERVER = "clustermesh-apiserver/clustermesh/testdata"

SKIPPED = {
    f"{APISERVER}/endpointslices.txtar": "[dev-only] EndpointSlice export (cilium/state/endpointslices/v1, "
    "zstd+protobuf on the wire, shown as JSON by kvstore/list): no converter here produces it",
    f"{APISERVER}/globalnamespace-endpointslices.txtar": "[dev-only] EndpointSlice export with global "
    "namespaces (cilium/state/endpointslices/v1): no converter here produces it",
}


class VersionSkew(UserWarning):
    """A corpus file ran with one detail normalised (see SOURCES.md, 'How to treat version skew')."""


@dataclass(frozen=True)
class Skew:
    what: str
    strip_expected: str | None = None  # regex removed from every *.expected file
    accept_v1alpha1_crd: bool = False


VERSION_SKEWED = {
    f"{APISERVER}/globalnamespace.txtar": Skew(
        'ipcache "Mask": null (older writer; the newest Cilium omits a nil Mask)', strip_expected=r'\n *"Mask": null,'
    ),
    f"{APISERVER}/globalnamespace-serviceexports.txtar": Skew(
        "ServiceExport CRD/objects are multicluster.x-k8s.io/v1alpha1; the newest Cilium requires v1beta1 "
        "(serviceexports-crd-upgrade.txtar), so the CRD check accepts v1alpha1 here",
        accept_v1alpha1_crd=True,
    ),
}

SERVICE_EXPORT_CRD = "serviceexports.multicluster.x-k8s.io"
SERVICE_EXPORT_JOB = "job-serviceexport-sync"

ObjKey = tuple[str, str, str]  # kind, namespace, name


def _obj_key(obj: dict[str, Any]) -> ObjKey:
    meta = obj.get("metadata") or {}
    return (str(obj.get("kind", "")), str(meta.get("namespace") or ""), str(meta.get("name", "")))


@dataclass
class SyncStore:
    """A SyncStore on one prefix: writes only changed values, deletes only keys it wrote."""

    kv: dict[str, bytes]
    prefix: str
    written: set[str] = field(default_factory=set)

    def upsert(self, name: str, value: bytes) -> None:
        key = f"{self.prefix}/{name}"
        self.written.add(key)
        if self.kv.get(key) != value:
            self.kv[key] = value

    def delete(self, name: str) -> None:
        key = f"{self.prefix}/{name}"
        if key in self.written:
            self.written.discard(key)
            self.kv.pop(key, None)


class Model:
    """The clustermesh-apiserver (or the operator's service sync) reduced to synchronous,
    in-memory reconciliation around the pure converters."""

    def __init__(self, flags: dict[str, str], skew: Skew | None) -> None:
        self.flags = flags
        self.skew = skew
        self.cluster = flags["cluster-name"]
        self.cluster_id = int(flags["cluster-id"])
        self.mcs = flags.get("clustermesh-enable-mcs-api", "false") == "true"
        self.ces = flags.get("enable-cilium-endpoint-slice", "false") == "true"
        self.default_global = flags.get("clustermesh-default-global-namespace", "true") == "true"
        self.objects: dict[ObjKey, dict[str, Any]] = {}
        self.kv: dict[str, bytes] = {}
        self.health: dict[str, str] = {}
        self.running = False
        self.exports_running = False
        self.env: dict[str, str] = {}
        self.tracker = ipcache_tracker()
        self.stores: dict[str, SyncStore] = {}

    # --- helpers -------------------------------------------------------------------------

    def of_kind(self, kind: str) -> Iterator[dict[str, Any]]:
        return (o for (k, _, _), o in list(self.objects.items()) if k == kind)

    def namespace(self, name: str) -> dict[str, Any] | None:
        return self.objects.get(("Namespace", "", name))

    def store(self, prefix: str) -> SyncStore:
        return self.stores[prefix]

    def synced(self, prefix: str) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ").encode()
        self.kv[K.synced_key(self.cluster, prefix)] = now

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self.running = True
        self.tracker = ipcache_tracker()
        self.stores = {p: SyncStore(self.kv, p) for p in (K.NODES + "/" + self.cluster, K.IDENTITIES_ID, K.IP_DEFAULT)}
        self.stores["services"] = SyncStore(self.kv, f"{K.SERVICES}/{self.cluster}")
        self.stores["exports"] = SyncStore(self.kv, f"{K.SERVICE_EXPORTS}/{self.cluster}")
        if "CLUSTERMESH_DEFAULT_GLOBAL_NAMESPACE" in self.env:
            self.default_global = self.env["CLUSTERMESH_DEFAULT_GLOBAL_NAMESPACE"] == "true"
        self.enforce_cluster_config()
        for obj in self.of_kind("CiliumNode"):
            self.on_node(obj, deleted=False)
        self.synced(K.NODES)
        for obj in self.of_kind("CiliumIdentity"):
            self.on_namespaced("CiliumIdentity", obj, deleted=False)
        self.synced(K.IDENTITIES)
        for obj in self.of_kind("CiliumEndpointSlice" if self.ces else "CiliumEndpoint"):
            self.on_namespaced(obj["kind"], obj, deleted=False)
        self.synced(K.IP)
        for obj in self.of_kind("Service"):
            self.sync_service(obj)
        self.synced(K.SERVICES)
        self.try_start_exports()

    def stop(self) -> None:
        self.running = False
        self.exports_running = False

    def cluster_config(self) -> bytes:
        mode = {"only-endpointslice": "endpointslices-only", "prefer-endpointslice": "services-and-endpointslices"}
        caps = ClusterConfigCapabilities(
            synced_canaries=True,
            max_connected_clusters=255,
            service_exports_enabled=self.mcs,
            endpoint_slices_export_mode=mode.get(self.flags.get("clustermesh-service-v2", ""), ""),
        )
        return ClusterConfig(id=self.cluster_id, capabilities=caps).encode()

    def enforce_cluster_config(self) -> None:
        if self.running:
            self.kv[K.cluster_config_key(self.cluster)] = self.cluster_config()

    # --- service exports ----------------------------------------------------------------

    def crd_ready(self) -> bool:
        crd = self.objects.get(("CustomResourceDefinition", "", SERVICE_EXPORT_CRD))
        if crd is None:
            return False
        versions = {str(v.get("name")) for v in (crd.get("spec") or {}).get("versions") or []}
        return "v1beta1" in versions or (self.skew is not None and self.skew.accept_v1alpha1_crd and bool(versions))

    def try_start_exports(self) -> None:
        if not self.running or self.exports_running:
            return
        if not self.mcs:
            self.synced(K.SERVICE_EXPORTS)  # written even when MCS-API is disabled
            self.exports_running = True
            return
        if not self.crd_ready():
            self.health[SERVICE_EXPORT_JOB] = "degraded"
            return
        self.exports_running = True
        self.health[SERVICE_EXPORT_JOB] = "ok"
        for obj in self.of_kind("ServiceExport"):
            self.sync_export(obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        self.synced(K.SERVICE_EXPORTS)

    def sync_export(self, namespace: str, name: str) -> None:
        """Cilium's ``syncMCSAPIServiceSpec``."""
        if not (self.mcs and self.exports_running):
            return
        store = self.store("exports")
        ns = self.namespace(namespace)
        if ns is None:
            return  # IsGlobalNamespaceByName fails: retried once the namespace exists
        service = self.objects.get(("Service", namespace, name))
        export = self.objects.get(("ServiceExport", namespace, name))
        spec = None
        if namespace_is_global(ns, default_global=self.default_global) and service and export:
            spec = service_export_to_spec(export, service, cluster=self.cluster)
        if spec is None:
            store.delete(f"{namespace}/{name}")
        else:
            store.upsert(f"{namespace}/{name}", spec.encode())

    # --- services -----------------------------------------------------------------------

    def sync_service(self, service: dict[str, Any]) -> None:
        """The operator's service sync for one Service upsert (``Convert``)."""
        namespace, name = service["metadata"].get("namespace", ""), service["metadata"]["name"]
        slices = [s for s in self.of_kind("EndpointSlice") if s["metadata"].get("namespace") == namespace]
        cs = service_to_cluster_service(service, slices, cluster=self.cluster, cluster_id=self.cluster_id)
        store = self.store("services")
        if cs is None:
            store.delete(f"{namespace}/{name}")
            return
        ns = self.namespace(namespace)
        if ns is None:
            return  # retried once the namespace exists
        if not namespace_is_global(ns, default_global=self.default_global):
            store.delete(f"{namespace}/{name}")
            return
        store.upsert(cs.namespaced_name(), cs.encode())

    # --- generic namespaced synchronizers -----------------------------------------------

    def object_namespace(self, kind: str, obj: dict[str, Any]) -> str:
        if kind == "CiliumIdentity":
            return identity_namespace(obj)
        if kind == "CiliumEndpointSlice":
            return cilium_endpoint_slice_namespace(obj)
        return str(obj["metadata"].get("namespace", ""))

    def on_namespaced(self, kind: str, obj: dict[str, Any], *, deleted: bool) -> None:
        """Cilium's ``RegisterSynchronizer`` event loop for one resource event."""
        if not deleted:
            ns_name = self.object_namespace(kind, obj)
            if not ns_name:
                return  # logged and skipped by Cilium
            ns = self.namespace(ns_name)
            if ns is None:
                return  # retried once the namespace exists
            deleted = not namespace_is_global(ns, default_global=self.default_global)
        self.convert(kind, obj, deleted=deleted)

    def convert(self, kind: str, obj: dict[str, Any], *, deleted: bool) -> None:
        if kind == "CiliumIdentity":
            store = self.store(K.IDENTITIES_ID)
            name = str(obj["metadata"]["name"])
            if deleted:
                store.delete(name)
            elif (converted := cilium_identity_to_labels(obj)) is not None:
                store.upsert(str(converted[0]), converted[1].encode())
            return
        owner = cilium_endpoint_slice_owner(obj) if kind == "CiliumEndpointSlice" else cilium_endpoint_owner(obj)
        changes: Changes[IPIdentityPair]
        if deleted:
            changes = self.tracker.delete(owner)
        elif kind == "CiliumEndpointSlice":
            changes = self.tracker.upsert(owner, cilium_endpoint_slice_to_pairs(obj))
        else:
            changes = self.tracker.upsert(owner, cilium_endpoint_to_pairs(obj))
        store = self.store(K.IP_DEFAULT)
        for pair in changes.upserts:
            store.upsert(pair.prefix_string(), pair.encode())
        for name in changes.deletes:
            store.delete(name)

    def on_node(self, obj: dict[str, Any], *, deleted: bool) -> None:
        store = self.store(f"{K.NODES}/{self.cluster}")
        if deleted:
            store.delete(obj["metadata"]["name"])
        else:
            node = cilium_node_to_node(obj, cluster=self.cluster, cluster_id=self.cluster_id)
            store.upsert(node.name, node.encode())

    # --- Kubernetes events --------------------------------------------------------------

    def event(self, obj: dict[str, Any], *, deleted: bool) -> None:
        if not self.running:
            return
        kind = obj["kind"]
        namespace, name = obj["metadata"].get("namespace", ""), obj["metadata"].get("name", "")
        ip_kind = "CiliumEndpointSlice" if self.ces else "CiliumEndpoint"
        if kind == "Namespace":
            global_ = not deleted and namespace_is_global(obj, default_global=self.default_global)
            for res_kind in ("CiliumIdentity", ip_kind):
                for res in self.of_kind(res_kind):
                    if self.object_namespace(res_kind, res) == name:
                        self.convert(res_kind, res, deleted=not global_)
            for svc in self.of_kind("Service"):
                if svc["metadata"].get("namespace") == name:
                    self.sync_service(svc)
            for export in self.of_kind("ServiceExport"):
                if export["metadata"].get("namespace") == name:
                    self.sync_export(name, export["metadata"]["name"])
        elif kind == "CiliumNode":
            self.on_node(obj, deleted=deleted)
        elif kind in ("CiliumIdentity", ip_kind):
            self.on_namespaced(kind, obj, deleted=deleted)
        elif kind == "Service":
            if deleted:
                self.store("services").delete(f"{namespace}/{name}")
            else:
                self.sync_service(obj)
            self.sync_export(namespace, name)
        elif kind == "EndpointSlice":
            service = self.objects.get(("Service", namespace, endpoint_slice_service_name(obj)))
            if service is not None:
                slices = [s for s in self.of_kind("EndpointSlice") if s["metadata"].get("namespace") == namespace]
                cs = service_to_cluster_service(service, slices, cluster=self.cluster, cluster_id=self.cluster_id)
                ns = self.namespace(namespace)
                if cs is not None and ns is not None and namespace_is_global(ns, default_global=self.default_global):
                    self.store("services").upsert(cs.namespaced_name(), cs.encode())
        elif kind == "ServiceExport":
            self.sync_export(namespace, name)
        elif kind == "CustomResourceDefinition":
            self.try_start_exports()

    # --- script commands ----------------------------------------------------------------

    def __call__(self, name: str, args: list[str], ws: Workspace) -> None:
        self.env = ws.env
        if name == "hive/start":
            self.start()
        elif name == "hive/stop":
            self.stop()
        elif name in ("k8s/add", "k8s/update", "k8s/delete"):
            for file_name in args:
                for obj in yaml.safe_load_all(ws.read(file_name).decode()):
                    if obj:
                        self.k8s(name.split("/")[1], obj)
        elif name == "kvstore/list":
            largs = parse_kvstore_list_args(args)
            out = format_listing(self.kv, largs)
            if largs.outfile is None:
                ws.stdout = out
            else:
                ws.write(largs.outfile, out)
        elif name == "kvstore/update":
            key, file_name = args
            self.kv[key] = ws.read(file_name).strip()
            if key == K.cluster_config_key(self.cluster):
                self.enforce_cluster_config()
        elif name == "kvstore/delete":
            (key,) = args
            self.kv.pop(key, None)
            if key == K.cluster_config_key(self.cluster):
                self.enforce_cluster_config()
        elif name in ("health", "health/ok"):
            self.check_health(name, args)
        else:
            raise ScriptError(f"unknown command {name!r}")

    def k8s(self, op: str, obj: dict[str, Any]) -> None:
        key = _obj_key(obj)
        exists = key in self.objects
        if op == "add" and exists:
            raise ScriptError(f"{key} already exists")
        if op in ("update", "delete") and not exists:
            raise ScriptError(f"{key} not found")
        if op == "delete":
            old = self.objects.pop(key)
            self.event(old, deleted=True)
        else:
            self.objects[key] = obj
            self.event(obj, deleted=False)

    def check_health(self, name: str, args: list[str]) -> None:
        opts = dict(a.lstrip("-").split("=", 1) for a in args if "=" in a)
        levels = {"ok"} if name == "health/ok" else set(opts.get("levels", "ok").split(","))
        pattern = re.compile(opts.get("match", ""))
        if not any(pattern.search(c) and lvl in levels for c, lvl in self.health.items()):
            raise ScriptError(f"no component matching {pattern.pattern!r} at level {sorted(levels)}: {self.health}")


def _corpus_files() -> list[str]:
    files = sorted(str(p.relative_to(CORPUS)) for p in (CORPUS / APISERVER).glob("*.txtar"))
    return [*files, "operator/watchers/testdata/servicesync.txtar"]


@pytest.mark.parametrize("rel", _corpus_files())
def test_corpus_file(rel: str) -> None:
    if rel in SKIPPED:
        pytest.skip(SKIPPED[rel])
    archive = txtar.parse_file(CORPUS / rel)
    script = parse_script(archive)
    ws = Workspace.from_archive(archive)
    skew = VERSION_SKEWED.get(rel)
    if skew is not None:
        warnings.warn(f"{rel}: version-skewed, normalised: {skew.what}", VersionSkew, stacklevel=1)
        if skew.strip_expected:
            for name, data in list(ws.files.items()):
                if name.endswith(".expected"):
                    ws.files[name] = re.sub(skew.strip_expected, "", data.decode()).encode()
    model = Model(script.flags, skew)
    run_script(script, ws, model)


def test_corpus_is_complete() -> None:
    """Every apiserver corpus file is either run or skipped for a stated reason."""
    files = _corpus_files()
    assert len(files) == 17
    assert set(SKIPPED) <= set(files)
    assert set(VERSION_SKEWED) <= set(files)
