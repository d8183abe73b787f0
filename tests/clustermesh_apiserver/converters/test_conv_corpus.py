"""Drive the pure converters through the Cilium conformance corpus.

Each clustermesh-apiserver ``*.txtar`` (and the operator's ``servicesync.txtar``) is run by the
script helpers of ``lab.scenario_text`` against an in-memory model
of the apiserver: a dict of Kubernetes objects, a dict standing in for etcd, and the product's
:class:`clustermesh_apiserver.exporters.Exporters` (namespace filtering, ipcache ownership, service
and service-export sync) fed in the server's start-up order, with its canaries and cluster config
enforcement. Everything the model writes comes from the exporters, the converters and
:mod:`meshcore.wire` encoders; every ``cmp`` against an ``*.expected`` section is byte for byte.

Not run: the [dev-only] EndpointSlice export files (their values are a display form of a
zstd+protobuf record no converter of this package produces). Version-skewed files run with the one
skewed detail normalised and a warning naming it.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from clustermesh_apiserver.exporters import Exporters, ExportSettings, ExportStores
from lab.conformance import SKIPPED, VERSION_SKEWED, Skew, corpus_files
from lab.scenario_text import (
    ScriptError,
    Workspace,
    format_listing,
    parse_kvstore_list_args,
    parse_script,
    run_script,
)
from lab.shared import CONFORMANCE_DIR
from meshcore import txtar
from meshcore.wire import ClusterConfig, ClusterConfigCapabilities
from meshcore.wire import keys as K

CORPUS = CONFORMANCE_DIR


class VersionSkew(UserWarning):
    """A corpus file ran with one detail normalised (see SOURCES.md, 'How to treat version skew')."""


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
    in-memory reconciliation: the product :class:`~clustermesh_apiserver.exporters.Exporters`
    over dict-backed stores, plus the start-up order and canaries of the real server."""

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
        self.exporters: Exporters | None = None

    # --- helpers -------------------------------------------------------------------------

    def of_kind(self, kind: str) -> Iterator[dict[str, Any]]:
        return (o for (k, _, _), o in list(self.objects.items()) if k == kind)

    def synced(self, prefix: str) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ").encode()
        self.kv[K.synced_key(self.cluster, prefix)] = now

    def replay(self, exporters: Exporters, kind: str) -> None:
        for obj in self.of_kind(kind):
            exporters.handle(kind, obj, deleted=False)

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Like the server: namespaces first, then each resource followed by its canary."""
        self.running = True
        if "CLUSTERMESH_DEFAULT_GLOBAL_NAMESPACE" in self.env:
            self.default_global = self.env["CLUSTERMESH_DEFAULT_GLOBAL_NAMESPACE"] == "true"
        settings = ExportSettings(
            cluster=self.cluster,
            cluster_id=self.cluster_id,
            default_global=self.default_global,
            mcs_api=self.mcs,
            cilium_endpoint_slice=self.ces,
            serviceexport_versions=("v1beta1", "v1alpha1")
            if self.skew is not None and self.skew.accept_v1alpha1_crd
            else ("v1beta1",),
        )
        stores = ExportStores(
            nodes=SyncStore(self.kv, f"{K.NODES}/{self.cluster}"),
            identities=SyncStore(self.kv, K.IDENTITIES_ID),
            ip=SyncStore(self.kv, K.IP_DEFAULT),
            services=SyncStore(self.kv, f"{K.SERVICES}/{self.cluster}"),
            serviceexports=SyncStore(self.kv, f"{K.SERVICE_EXPORTS}/{self.cluster}"),
        )
        self.exporters = exporters = Exporters(stores, settings)
        self.enforce_cluster_config()
        for kind in ("Namespace", "CustomResourceDefinition"):
            self.replay(exporters, kind)
        self.replay(exporters, "CiliumNode")
        self.synced(K.NODES)
        self.replay(exporters, "CiliumIdentity")
        self.synced(K.IDENTITIES)
        self.replay(exporters, exporters.endpoint_kind)
        self.synced(K.IP)
        self.replay(exporters, "EndpointSlice")
        self.replay(exporters, "Service")
        self.synced(K.SERVICES)
        self.replay(exporters, "ServiceExport")
        self.try_start_exports()

    def stop(self) -> None:
        self.running = False
        self.exports_running = False
        self.exporters = None

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

    def try_start_exports(self) -> None:
        if not self.running or self.exports_running or self.exporters is None:
            return
        if not self.mcs:
            self.synced(K.SERVICE_EXPORTS)  # written even when MCS-API is disabled
            self.exports_running = True
            return
        exports = self.exporters.service_exports
        if not exports.crd_ready:
            self.health[SERVICE_EXPORT_JOB] = "degraded"
            return
        self.exports_running = True
        self.health[SERVICE_EXPORT_JOB] = "ok"
        exports.activate()
        self.synced(K.SERVICE_EXPORTS)

    # --- Kubernetes events --------------------------------------------------------------

    def event(self, obj: dict[str, Any], *, deleted: bool) -> None:
        if not self.running or self.exporters is None:
            return
        self.exporters.handle(obj["kind"], obj, deleted=deleted)
        if obj["kind"] == "CustomResourceDefinition":
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
    return corpus_files(CORPUS)


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
