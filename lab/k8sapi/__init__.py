"""A Kubernetes API emulator for tests and the lab.

The product talks to Kubernetes only through the official ``kubernetes`` client; tests and the lab point
that client (and ``kubectl``) at this emulator. It serves discovery, list/get/create/update/patch/delete,
the status subresource and watch (resourceVersions, bookmarks, 410 Gone) for core, discovery.k8s.io,
coordination.k8s.io, cilium.io, multicluster.x-k8s.io and apiextensions.k8s.io kinds, and CRDs created at
runtime. Modules, one job each:

- :mod:`~lab.k8sapi.kinds` the kind table (data) and CRD <-> kind conversion;
- :mod:`~lab.k8sapi.registry` which kinds are served right now;
- :mod:`~lab.k8sapi.store` objects, resourceVersions, history, watchers;
- :mod:`~lab.k8sapi.selectors`, :mod:`~lab.k8sapi.patch`, :mod:`~lab.k8sapi.defaults` pure helpers;
- :mod:`~lab.k8sapi.discovery`, :mod:`~lab.k8sapi.app`, :mod:`~lab.k8sapi.watchstream` the HTTP surface;
- :mod:`~lab.k8sapi.server` lifecycle and kubeconfig; ``python -m lab.k8sapi`` runs one.
"""

from lab.k8sapi.errors import ApiError
from lab.k8sapi.kinds import BUILTIN_KINDS, DEFAULT_CRD_KINDS, KindInfo, crd_manifests
from lab.k8sapi.registry import KindRegistry
from lab.k8sapi.server import K8sApiServer
from lab.k8sapi.store import ObjectStore, StoreEvent, Watcher

__all__ = [
    "BUILTIN_KINDS",
    "DEFAULT_CRD_KINDS",
    "ApiError",
    "K8sApiServer",
    "KindInfo",
    "KindRegistry",
    "ObjectStore",
    "StoreEvent",
    "Watcher",
    "crd_manifests",
]
