"""What every exporter shares: the key-store intent interface, settings, and the namespace index.

Exporters are stateful and I/O-free: they take Kubernetes events (plain objects) and turn them
into intents on a :class:`KeyStore` (``upsert``/``delete`` of one key name under the store's
prefix). :class:`meshcore.store.syncstore.SyncStore` is the real store; an in-memory dict with the
same two methods is enough for model tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from clustermesh_apiserver.converters import namespace_is_global

KubeObject = dict[str, Any]
ObjKey = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects


class KeyStore(Protocol):
    """The intent side of a sync store on one prefix."""

    def upsert(self, name: str, value: bytes) -> None: ...

    def delete(self, name: str) -> None: ...


@dataclass(frozen=True)
class ExportSettings:
    """What the exporters need from the configuration.

    ``serviceexport_versions``: the ServiceExport versions the MCS-API export may read, in order
    of preference; the newest Cilium requires ``v1beta1`` (older ones read ``v1alpha1``).
    """

    cluster: str
    cluster_id: int
    default_global: bool = True
    mcs_api: bool = False
    cilium_endpoint_slice: bool = False
    max_connected_clusters: int = 255
    serviceexport_versions: tuple[str, ...] = ("v1beta1",)


def obj_key(obj: KubeObject) -> ObjKey:
    """``(namespace, name)`` of a Kubernetes object."""
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


class Namespaces:
    """The Namespace objects seen so far, and which are global (reference §2.3).

    Subscribers registered with :meth:`subscribe` are told the name of every namespace that was
    added, changed or deleted, so they can re-evaluate the objects living in it.
    """

    def __init__(self, *, default_global: bool) -> None:
        self.default_global = default_global
        self._objects: dict[str, KubeObject] = {}
        self._subscribers: list[Callable[[str], None]] = []

    def subscribe(self, callback: Callable[[str], None]) -> None:
        self._subscribers.append(callback)

    def upsert(self, obj: KubeObject) -> None:
        name = obj_key(obj)[1]
        self._objects[name] = obj
        self._changed(name)

    def delete(self, obj: KubeObject) -> None:
        name = obj_key(obj)[1]
        if self._objects.pop(name, None) is not None:
            self._changed(name)

    def get(self, name: str) -> KubeObject | None:
        return self._objects.get(name)

    def is_global(self, name: str) -> bool | None:
        """True/False for a known namespace; ``None`` when it does not exist (yet): pending."""
        obj = self._objects.get(name)
        if obj is None:
            return None
        return namespace_is_global(obj, default_global=self.default_global)

    def _changed(self, name: str) -> None:
        for callback in self._subscribers:
            callback(name)
