"""A Kubernetes API emulator for tests and the lab.

The product talks to Kubernetes only through the official ``kubernetes`` client; tests and the lab point
that client (and ``kubectl``) at this emulator. It serves discovery, list/get/create/update/patch/delete,
the status subresource and watch (resourceVersions, bookmarks, 410 Gone) for core, apps, rbac, policy,
discovery.k8s.io, coordination.k8s.io, networking.k8s.io, cilium.io, multicluster.x-k8s.io and
apiextensions.k8s.io kinds and CRDs created at runtime, plus ``scale``, ``pods/binding``, ``pods/log``,
``pods/exec`` (WebSocket) and graceful Pod deletion; ``kubectl get`` gets kube-apiserver's table columns.
Objects live in memory, or in etcd at kube-apiserver's ``/registry/...`` keys with resourceVersion = etcd
revision (``--etcd-config``), surviving restarts. Modules, one job each:

- :mod:`~lab.kube.api.kinds` the kind table (data) and CRD <-> kind conversion;
- :mod:`~lab.kube.api.registry` which kinds are served right now;
- :mod:`~lab.kube.api.store` objects, resourceVersions, history, watchers;
- :mod:`~lab.kube.api.etcdkeys` (pure) and :mod:`~lab.kube.api.etcdbacking` (I/O) the etcd persistence;
- :mod:`~lab.kube.api.selectors`, :mod:`~lab.kube.api.patch`, :mod:`~lab.kube.api.defaults`,
  :mod:`~lab.kube.api.printers` (+ :mod:`~lab.kube.api.jsonpath`), :mod:`~lab.kube.api.protobody` pure helpers;
- :mod:`~lab.kube.api.discovery`, :mod:`~lab.kube.api.app`, :mod:`~lab.kube.api.watchstream`,
  :mod:`~lab.kube.api.podlogs`, :mod:`~lab.kube.api.podexec` the HTTP surface;
- :mod:`~lab.kube.api.server` lifecycle and kubeconfig; ``python -m lab.kube.api`` runs one.
"""

from lab.kube.api.errors import ApiError
from lab.kube.api.etcdbacking import EtcdBacking
from lab.kube.api.kinds import BUILTIN_KINDS, DEFAULT_CRD_KINDS, KindInfo, crd_manifests
from lab.kube.api.registry import KindRegistry
from lab.kube.api.server import K8sApiServer
from lab.kube.api.store import ObjectStore, StoreEvent, Watcher

__all__ = [
    "BUILTIN_KINDS",
    "DEFAULT_CRD_KINDS",
    "ApiError",
    "EtcdBacking",
    "K8sApiServer",
    "KindInfo",
    "KindRegistry",
    "ObjectStore",
    "StoreEvent",
    "Watcher",
    "crd_manifests",
]
