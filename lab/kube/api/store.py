"""The object store: every resource's objects, one global resourceVersion, bounded history, watchers.

This is the emulator's etcd plus registry layer. All writes take one lock, bump one global counter (so
resourceVersions are string integers that only grow, across all kinds, as with an etcd-backed
apiserver), record an event in the resource's bounded history and hand it to the resource's watchers
under that same lock. That ordering is what makes the watch contract hold: a watch started from a list's
resourceVersion sees exactly the writes after it; a bookmark's resourceVersion never runs ahead of an
event still queued for that watcher; a watch from a resourceVersion older than the retained history gets
410 Gone. :meth:`ObjectStore.compact` drops history on demand so tests can force that.

Objects are stored per (group, plural), shared by all served versions; reads relabel ``apiVersion`` with
the version asked for (CRD conversion strategy ``None``). Stored dicts are never mutated after commit: a
write builds a new dict. Public methods return private copies unless called with ``copy=False`` (the
HTTP layer does that, and only serializes what it gets).

The store is thread-safe: tests may write through it from their own thread while the HTTP server runs
on another loop; watchers are woken on their own loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from lab.kube.api.defaults import Defaulter, now_rfc3339, validate_name
from lab.kube.api.errors import ApiError, already_exists, bad_request, conflict, gone, invalid, not_found
from lab.kube.api.kinds import CRD_KIND, NAMESPACE_KIND, KindInfo, crd_manifests, kinds_from_crd
from lab.kube.api.patch import json_patch, merge_patch, strategic_merge_patch
from lab.kube.api.registry import KindRegistry
from lab.kube.api.selectors import Predicate, selector_predicate

Obj = dict[str, Any]
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
PROTECTED_NAMESPACES = frozenset({"default", "kube-system", "kube-public"})
_GENERATE_CHARS = "bcdfghjklmnpqrstvwxz2456789"
_ObjList = list[Obj]  # aliases: ObjectStore.list shadows the builtin inside the class body
_KindList = list[KindInfo]


def clone(obj: Any) -> Any:
    """A deep copy of a JSON document (faster than ``copy.deepcopy`` for these)."""
    return json.loads(json.dumps(obj))


@dataclass(frozen=True, slots=True)
class StoreEvent:
    """One committed change: ``ADDED``, ``MODIFIED`` or ``DELETED`` at resourceVersion ``rv``."""

    type: str
    rv: int
    obj: Obj
    old: Obj | None = None


_EventList = list[StoreEvent]


class Watcher:
    """One watch on one resource: events are queued under the store lock, read by one async consumer.

    Create with :meth:`ObjectStore.watch`; read with :meth:`next_batch`; always :meth:`close`.
    """

    def __init__(self, store: ObjectStore, info: KindInfo, namespace: str | None, predicate: Predicate,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.info = info
        self.closed = False
        self.start_resource_version = "0"  # the store's resourceVersion when the watch was registered
        self._store = store
        self._namespace = namespace
        self._predicate = predicate
        self._loop = loop
        self._thread = threading.get_ident()
        self._events: deque[tuple[str, Obj]] = deque()
        self._wake = asyncio.Event()

    def _matches(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        if self._namespace is not None and obj.get("metadata", {}).get("namespace") != self._namespace:
            return False
        return self._predicate(obj)

    def _relabel(self, obj: Obj) -> Obj:
        if obj.get("apiVersion") == self.info.api_version:
            return obj
        return {**obj, "apiVersion": self.info.api_version}

    def _push(self, type_: str, obj: Obj) -> None:
        self._events.append((type_, self._relabel(obj)))

    def _offer(self, ev: StoreEvent) -> bool:
        """Queue ``ev`` as this watcher sees it (selector transitions become ADDED/DELETED). Lock held."""
        now, before = self._matches(ev.obj), self._matches(ev.old)
        if ev.type == "MODIFIED":
            if now and before:
                self._push("MODIFIED", ev.obj)
            elif now:
                self._push("ADDED", ev.obj)
            elif before:
                self._push("DELETED", ev.obj)
            else:
                return False
        elif now:
            self._push(ev.type, ev.obj)
        else:
            return False
        return True

    def _notify(self) -> None:
        if threading.get_ident() == self._thread:
            self._wake.set()
            return
        try:
            self._loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:  # loop closed: the consumer is gone
            pass

    def _close(self) -> None:
        self.closed = True
        self._notify()

    async def next_batch(self, within: float) -> list[tuple[str, Obj]]:
        """Wait up to ``within`` seconds for events; return all queued ``(type, object)`` pairs."""
        if not self._events and not self.closed:
            self._wake.clear()
            if not self._events:
                try:
                    await asyncio.wait_for(self._wake.wait(), within)
                except TimeoutError:
                    pass
        out = list(self._events)
        self._events.clear()
        return out

    def bookmark_resource_version(self) -> str | None:
        """The resourceVersion a BOOKMARK may carry now, or None while events are still queued."""
        with self._store._lock:
            if self._events:
                return None
            return str(self._store._rv)

    def close(self) -> None:
        """Unregister from the store."""
        self._store._unwatch(self)
        self.closed = True


@dataclass
class _Resource:
    objects: dict[tuple[str, str], Obj] = field(default_factory=dict)
    history: deque[StoreEvent] = field(default_factory=deque)
    compacted_rv: int = 0
    watchers: set[Watcher] = field(default_factory=set)


class ObjectStore:
    """In-memory objects for every served kind, with resourceVersions, history and watches.

    ``resource`` arguments accept a :class:`KindInfo` or a kubectl-style name (``pods``, ``svc``,
    ``ciliumnodes.cilium.io``); namespaced kinds default to namespace ``default``.
    """

    def __init__(self, registry: KindRegistry | None = None, *, history_limit: int = 10_000,
                 require_namespaces: bool = True, default_namespaces: Iterable[str] = DEFAULT_NAMESPACES,
                 server_defaults: bool = True) -> None:
        """``server_defaults=False`` stores objects as given, like client-go's fake clientset that
        Cilium's script tests use: no defaulted fields, and a given ``creationTimestamp`` is kept."""
        self.registry = registry or KindRegistry()
        self.server_defaults = server_defaults
        self.history_limit = history_limit
        self.require_namespaces = require_namespaces
        self._lock = threading.RLock()
        self._rv = 0
        self._data: dict[tuple[str, str], _Resource] = {}
        self._defaulter = Defaulter()
        for ns in default_namespaces:
            self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}, copy=False)

    # ----- lookups -----

    @property
    def resource_version(self) -> str:
        """The latest committed resourceVersion (global across kinds)."""
        return str(self._rv)

    def kind(self, resource: KindInfo | str) -> KindInfo:
        """Resolve a resource reference; raises 404 if nothing by that name is served."""
        if isinstance(resource, KindInfo):
            return resource
        info = self.registry.resolve(resource)
        if info is None:
            raise ApiError(404, "NotFound", f'the server doesn\'t have a resource type "{resource}"')
        return info

    def _res(self, info: KindInfo) -> _Resource:
        res = self._data.get(info.storage_key)
        if res is None:
            res = self._data[info.storage_key] = _Resource()
        return res

    def _key(self, info: KindInfo, namespace: str | None, name: str) -> tuple[str, str]:
        return ((namespace or "default") if info.namespaced else "", name)

    @staticmethod
    def _out(info: KindInfo, obj: Obj, copy: bool) -> Obj:
        if obj.get("apiVersion") != info.api_version:
            obj = {**obj, "apiVersion": info.api_version}
        return clone(obj) if copy else obj

    def _kind_for_object(self, obj: Obj, resource: KindInfo | str | None) -> KindInfo:
        if resource is not None:
            return self.kind(resource)
        info = self.registry.by_kind(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
        if info is None:
            raise bad_request(f"no kind {obj.get('kind')!r} is registered for version {obj.get('apiVersion')!r}")
        return info

    # ----- reads -----

    def get(self, resource: KindInfo | str, name: str, namespace: str | None = None, *, copy: bool = True) -> Obj:
        """The named object; raises :class:`ApiError` 404."""
        info = self.kind(resource)
        with self._lock:
            obj = self._res(info).objects.get(self._key(info, namespace, name))
        if obj is None:
            raise not_found(info.plural, info.group, name)
        return self._out(info, obj, copy)

    def list(self, resource: KindInfo | str, namespace: str | None = None, *, label_selector: str | None = None,
             field_selector: str | None = None, copy: bool = True) -> tuple[_ObjList, str]:
        """Matching objects sorted by (namespace, name) and the list's resourceVersion.

        ``namespace=None`` lists all namespaces (or the cluster-scoped kind)."""
        info = self.kind(resource)
        pred = selector_predicate(label_selector, field_selector)
        with self._lock:
            res = self._res(info)
            items = [o for k, o in sorted(res.objects.items())
                     if (namespace is None or not info.namespaced or k[0] == namespace) and pred(o)]
            rv = str(self._rv)
        return [self._out(info, o, copy) for o in items], rv

    # ----- writes -----

    def _commit(self, info: KindInfo, type_: str, obj: Obj, old: Obj | None) -> None:
        """Record a committed change (lock held; ``obj`` already carries the new resourceVersion)."""
        res = self._res(info)
        md = obj["metadata"]
        key = self._key(info, md.get("namespace"), md["name"])
        if type_ == "DELETED":
            res.objects.pop(key, None)
        else:
            res.objects[key] = obj
        ev = StoreEvent(type_, int(md["resourceVersion"]), obj, old)
        while len(res.history) >= self.history_limit:
            res.compacted_rv = res.history.popleft().rv
        res.history.append(ev)
        for w in list(res.watchers):
            if w._offer(ev):
                w._notify()
        if info.storage_key == CRD_KIND.storage_key:
            self._crd_changed(obj, deleted=type_ == "DELETED")

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def create(self, obj: Obj, *, resource: KindInfo | str | None = None, namespace: str | None = None,
               keep_status: bool = True, copy: bool = True) -> Obj:
        """Create ``obj`` (kind from its apiVersion/kind unless ``resource`` is given); returns the stored object.

        Raises 409 AlreadyExists, 422 for a missing/invalid name, 404 if the namespace does not exist.
        ``keep_status=False`` drops ``status`` for kinds with a status subresource, as HTTP creates do.
        """
        info = self._kind_for_object(obj, resource)
        obj = clone(obj) if copy else dict(obj)
        md = obj.get("metadata")
        if not isinstance(md, dict):
            md = obj["metadata"] = {}
        else:
            md = obj["metadata"] = dict(md)
        if info.namespaced:
            ns = namespace or md.get("namespace") or "default"
            if namespace and md.get("namespace") and md["namespace"] != namespace:
                raise bad_request("the namespace of the provided object does not match the namespace sent on the "
                                  "request")
            md["namespace"] = ns
        else:
            md.pop("namespace", None)
        with self._lock:
            if not md.get("name"):
                if not md.get("generateName"):
                    raise invalid(info.kind, info.group, "", "metadata.name",
                                  "Required value: name or generateName is required")
                md["name"] = self._generate_name(info, str(md["generateName"]), md.get("namespace"))
            name = str(md["name"])
            validate_name(info, name)
            res = self._res(info)
            key = self._key(info, md.get("namespace"), name)
            if info.namespaced and self.require_namespaces and ("", md["namespace"]) not in self._namespaces():
                raise not_found("namespaces", "", md["namespace"])
            if key in res.objects:
                raise already_exists(info.plural, info.group, name)
            obj["apiVersion"], obj["kind"] = info.api_version, info.kind
            if info.status_subresource and not keep_status:
                obj.pop("status", None)
            for k in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"):
                md.pop(k, None)
            md["uid"] = str(uuid.uuid4())
            if self.server_defaults or not md.get("creationTimestamp"):
                md["creationTimestamp"] = now_rfc3339()
            if info.crd or info.storage_key == CRD_KIND.storage_key:
                md["generation"] = 1
            if self.server_defaults:
                self._defaulter.apply(info, obj, None)
            md["resourceVersion"] = self._next_rv()
            self._commit(info, "ADDED", obj, None)
        return self._out(info, obj, copy)

    def _namespaces(self) -> dict[tuple[str, str], Obj]:
        return self._res(NAMESPACE_KIND).objects

    def _generate_name(self, info: KindInfo, prefix: str, namespace: str | None) -> str:
        res = self._res(info)
        for _ in range(100):
            name = prefix + "".join(random.choice(_GENERATE_CHARS) for _ in range(5))
            if self._key(info, namespace, name) not in res.objects:
                return name
        raise ApiError(500, "InternalError", "could not generate a unique name")

    @staticmethod
    def _spec_part(obj: Obj) -> Obj:
        return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}

    def update(self, obj: Obj, *, resource: KindInfo | str | None = None, namespace: str | None = None,
               name: str | None = None, subresource: str | None = None, keep_status: bool = True,
               copy: bool = True) -> Obj:
        """Replace an object (PUT). A non-empty ``metadata.resourceVersion`` must match (else 409 Conflict).

        ``subresource="status"`` changes only ``status``; otherwise, for kinds with a status subresource,
        ``keep_status=False`` keeps the stored status (as HTTP updates do).
        """
        info = self._kind_for_object(obj, resource)
        obj = clone(obj) if copy else dict(obj)
        md = obj.get("metadata")
        if not isinstance(md, dict):
            raise bad_request("metadata is required")
        obj["metadata"] = md = dict(md)
        name = name or md.get("name")
        if not name:
            raise invalid(info.kind, info.group, "", "metadata.name", "Required value: name is required")
        if md.get("name") and md["name"] != name:
            raise bad_request(f"the name of the object ({md['name']}) does not match the name on the URL ({name})")
        ns = (namespace or md.get("namespace") or "default") if info.namespaced else None
        if info.namespaced and md.get("namespace") and md["namespace"] != ns:
            raise bad_request("the namespace of the provided object does not match the namespace sent on the request")
        with self._lock:
            old = self._res(info).objects.get(self._key(info, ns, name))
            if old is None:
                raise not_found(info.plural, info.group, name)
            return self._replace(info, old, obj, subresource=subresource, keep_status=keep_status, copy=copy)

    def _replace(self, info: KindInfo, old: Obj, obj: Obj, *, subresource: str | None, keep_status: bool,
                 copy: bool) -> Obj:
        """Commit ``obj`` over ``old`` (lock held)."""
        old_md = old["metadata"]
        want_rv = (obj.get("metadata") or {}).get("resourceVersion")
        if want_rv and want_rv != old_md["resourceVersion"]:
            raise conflict(info.plural, info.group, old_md["name"])
        if subresource == "status":
            new = {k: v for k, v in old.items() if k != "status"}
            if "status" in obj:
                new["status"] = obj["status"]
            new["metadata"] = dict(old_md)
        else:
            new = dict(obj)
            if info.status_subresource and not keep_status:
                new.pop("status", None)
                if "status" in old:
                    new["status"] = old["status"]
            md = new["metadata"] = dict(new.get("metadata") or {})
            for k in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "name",
                      "namespace", "generation"):
                if k in old_md:
                    md[k] = old_md[k]
                else:
                    md.pop(k, None)
            if "generation" in old_md and self._spec_part(new) != self._spec_part(old):
                md["generation"] = int(old_md["generation"]) + 1
        new["apiVersion"], new["kind"] = info.api_version, info.kind
        new["metadata"]["resourceVersion"] = old_md["resourceVersion"]
        if self.server_defaults:
            self._defaulter.apply(info, new, old)
        if new == old:
            return self._out(info, old, copy)  # no-op writes do not bump the resourceVersion
        new["metadata"]["resourceVersion"] = self._next_rv()
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            self._remove(info, new)
            return self._out(info, new, copy)
        self._commit(info, "MODIFIED", new, old)
        return self._out(info, new, copy)

    def patch(self, resource: KindInfo | str, name: str, patch: Any, *, namespace: str | None = None,
              patch_type: str = "merge", subresource: str | None = None, keep_status: bool = True,
              copy: bool = True) -> Obj:
        """Patch an object. ``patch_type``: ``merge`` (RFC 7386), ``strategic``, ``json`` (RFC 6902) or
        ``apply`` (server-side apply, treated as a strategic merge that may create the object)."""
        info = self.kind(resource)
        ns = (namespace or "default") if info.namespaced else None
        with self._lock:
            old = self._res(info).objects.get(self._key(info, ns, name))
            if old is None:
                if patch_type == "apply" and isinstance(patch, dict):
                    body = dict(patch)
                    body["metadata"] = {**(body.get("metadata") or {}), "name": name}
                    return self.create(body, resource=info, namespace=ns, keep_status=keep_status, copy=copy)
                raise not_found(info.plural, info.group, name)
            if patch_type == "merge":
                new = merge_patch(old, patch)
            elif patch_type in ("strategic", "apply"):
                new = strategic_merge_patch(old, patch)
            elif patch_type == "json":
                new = json_patch(old, patch)
            else:
                raise bad_request(f"unknown patch type {patch_type!r}")
            if not isinstance(new, dict) or not isinstance(new.get("metadata"), dict):
                raise bad_request("the patch removed the object's metadata")
            if new["metadata"].get("name") != name:
                raise bad_request("the patch may not change the object's name")
            if patch_type == "apply":
                new["metadata"].pop("resourceVersion", None)
            if not new["metadata"].get("resourceVersion"):
                new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            return self._replace(info, old, new, subresource=subresource, keep_status=keep_status, copy=copy)

    def delete(self, resource: KindInfo | str, name: str, namespace: str | None = None, *,
               resource_version: str | None = None, uid: str | None = None, copy: bool = True) -> Obj:
        """Delete an object and return it (its final state). With finalizers set, only marks it with a
        ``deletionTimestamp``; it goes away when an update clears the finalizers. Preconditions: 409."""
        info = self.kind(resource)
        with self._lock:
            old = self._res(info).objects.get(self._key(info, namespace, name))
            if old is None:
                raise not_found(info.plural, info.group, name)
            md = old["metadata"]
            if info.storage_key == NAMESPACE_KIND.storage_key and name in PROTECTED_NAMESPACES:
                raise ApiError(403, "Forbidden", f'namespaces "{name}" is forbidden: this namespace may not be deleted',
                               name=name, kind="namespaces")
            if (resource_version and resource_version != md["resourceVersion"]) or (uid and uid != md["uid"]):
                raise conflict(info.plural, info.group, name)
            if md.get("finalizers"):
                if md.get("deletionTimestamp"):
                    return self._out(info, old, copy)
                new = {**old, "metadata": {**md, "deletionTimestamp": now_rfc3339(), "deletionGracePeriodSeconds": 0,
                                           "resourceVersion": self._next_rv()}}
                self._commit(info, "MODIFIED", new, old)
                return self._out(info, new, copy)
            gone_obj = {**old, "metadata": {**md, "resourceVersion": self._next_rv()}}
            self._remove(info, gone_obj)
            return self._out(info, gone_obj, copy)

    def _remove(self, info: KindInfo, obj: Obj) -> None:
        """Commit a deletion of ``obj`` (which carries the deletion's resourceVersion); cascade. Lock held."""
        self._commit(info, "DELETED", obj, None)
        self._defaulter.release(info, obj)
        if info.storage_key == NAMESPACE_KIND.storage_key:
            ns = obj["metadata"]["name"]
            for kind in self._storage_kinds():
                if kind.namespaced:
                    for key, o in list(self._res(kind).objects.items()):
                        if key[0] == ns:
                            self._drop(kind, o)

    def _drop(self, info: KindInfo, obj: Obj) -> None:
        self._remove(info, {**obj, "metadata": {**obj["metadata"], "resourceVersion": self._next_rv()}})

    def _storage_kinds(self) -> _KindList:
        seen: dict[tuple[str, str], KindInfo] = {}
        for k in self.registry.all():
            seen.setdefault(k.storage_key, k)
        return list(seen.values())

    def delete_collection(self, resource: KindInfo | str, namespace: str | None = None, *,
                          label_selector: str | None = None, field_selector: str | None = None) -> _ObjList:
        """Delete every matching object; returns what was deleted (or marked for deletion)."""
        info = self.kind(resource)
        with self._lock:
            items, _ = self.list(info, namespace, label_selector=label_selector, field_selector=field_selector,
                                 copy=False)
            return [self.delete(info, o["metadata"]["name"], o["metadata"].get("namespace")) for o in items]

    # ----- CRDs -----

    def _crd_changed(self, crd: Obj, *, deleted: bool) -> None:
        name = crd["metadata"]["name"]
        if not deleted:
            self.registry.set_crd(name, kinds_from_crd(crd))
            return
        self.registry.remove_crd(name)
        spec = crd.get("spec") or {}
        key = (str(spec.get("group", "")), str((spec.get("names") or {}).get("plural", "")))
        res = self._data.get(key)
        if res is None:
            return
        names = spec.get("names") or {}
        info = KindInfo(key[0], "v1", str(names.get("kind", "")), key[1], spec.get("scope") != "Cluster", crd=True)
        for obj in list(res.objects.values()):
            self._drop(info, obj)
        for w in list(res.watchers):
            w._close()
        res.watchers.clear()

    def install_crds(self, kinds: Iterable[KindInfo]) -> _ObjList:
        """Create (or replace) CRD objects serving ``kinds`` (rows of the kind table)."""
        out = []
        for manifest in crd_manifests(kinds):
            try:
                out.append(self.create(manifest, resource=CRD_KIND))
            except ApiError as e:
                if e.code != 409:
                    raise
                out.append(self.patch(CRD_KIND, manifest["metadata"]["name"], {"spec": manifest["spec"]}))
        return out

    # ----- watch and history -----

    def watch(self, resource: KindInfo | str, *, namespace: str | None = None, resource_version: str | None = None,
              label_selector: str | None = None, field_selector: str | None = None,
              send_initial_events: bool | None = None, loop: asyncio.AbstractEventLoop | None = None) -> Watcher:
        """Register a watcher (call from the consumer's event loop).

        ``resource_version`` ``None``/``""``/``"0"`` (or ``send_initial_events``) queues synthetic ADDED
        events for the current matching state; a specific value replays the retained history after it, or
        raises :class:`ApiError` 410 Expired if that history has been compacted away.
        """
        info = self.kind(resource)
        pred = selector_predicate(label_selector, field_selector)
        loop = loop or asyncio.get_running_loop()
        with self._lock:
            res = self._res(info)
            w = Watcher(self, info, namespace if info.namespaced else None, pred, loop)
            w.start_resource_version = str(self._rv)
            if resource_version in (None, "", "0") or send_initial_events:
                for _, obj in sorted(res.objects.items()):
                    if w._matches(obj):
                        w._push("ADDED", obj)
            else:
                try:
                    since = int(str(resource_version))
                except ValueError:
                    raise bad_request(f"invalid resourceVersion {resource_version!r}") from None
                if since < res.compacted_rv:
                    raise gone(f"too old resource version: {since} ({res.compacted_rv + 1})")
                for ev in res.history:
                    if ev.rv > since:
                        w._offer(ev)
            res.watchers.add(w)
        return w

    def _unwatch(self, w: Watcher) -> None:
        with self._lock:
            for res in self._data.values():
                res.watchers.discard(w)

    def close_watchers(self) -> None:
        """End every open watch (server shutdown)."""
        with self._lock:
            for res in self._data.values():
                for w in res.watchers:
                    w._close()

    def compact(self, resource_version: str | int | None = None) -> None:
        """Drop history up to ``resource_version`` (default: everything so far), like etcd compaction:
        watches from older resourceVersions then fail with 410 Gone."""
        with self._lock:
            upto = self._rv if resource_version is None else int(resource_version)
            for res in self._data.values():
                while res.history and res.history[0].rv <= upto:
                    res.history.popleft()
                res.compacted_rv = max(res.compacted_rv, upto)

    def history(self, resource: KindInfo | str) -> _EventList:
        """The retained events of one resource (oldest first), for tests."""
        info = self.kind(resource)
        with self._lock:
            return list(self._res(info).history)

