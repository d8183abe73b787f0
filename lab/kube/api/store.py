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

With an :class:`~lab.kube.api.etcdbacking.EtcdBacking` the same store is backed by etcd, as kube-apiserver is:
each write is a guarded etcd transaction made under the lock, and its revision is the resourceVersion; on
start the objects and the watch history come from etcd (see :meth:`ObjectStore.__init__`). The store is
etcd's only writer; writes made by others are picked up (with their events) on the store's next write.

The store is thread-safe: tests may write through it from their own thread while the HTTP server runs
on another loop; watchers are woken on their own loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import random
import threading
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from lab.kube.api.defaults import DEFAULT_SERVICE_CIDR, Defaulter, now_rfc3339, rfc3339_in, validate_name
from lab.kube.api.errors import ApiError, already_exists, bad_request, conflict, gone, invalid, not_found
from lab.kube.api.etcdbacking import BackingEvent, EtcdBacking, Snapshot
from lab.kube.api.etcdkeys import decode_object, encode_object, object_key, parse_key
from lab.kube.api.kinds import CRD_KIND, NAMESPACE_KIND, KindInfo, crd_manifests, kinds_from_crd
from lab.kube.api.patch import json_patch, merge_patch, strategic_merge_patch
from lab.kube.api.registry import KindRegistry
from lab.kube.api.selectors import Predicate, selector_predicate
from meshcore.errors import KVStoreError

Obj = dict[str, Any]
_log = logging.getLogger(__name__)
POD_STORAGE_KEY = ("", "pods")
DEFAULT_POD_GRACE_SECONDS = 30
# built-in kinds whose metadata.generation counts spec changes (CRD-backed kinds always do)
GENERATION_KINDS = frozenset({("apps", "deployments"), ("apps", "replicasets"), ("apps", "daemonsets"),
                              ("apps", "statefulsets"), ("policy", "poddisruptionbudgets"),
                              ("networking.k8s.io", "networkpolicies")})
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
PROTECTED_NAMESPACES = frozenset({"default", "kube-system", "kube-public"})
_GENERATE_CHARS = "bcdfghjklmnpqrstvwxz2456789"
_ObjList = list[Obj]  # aliases: ObjectStore.list shadows the builtin inside the class body
_KindList = list[KindInfo]


def scale_of(obj: Obj) -> Obj:
    """The ``autoscaling/v1`` Scale document of a workload object."""
    md, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    labels = ((spec.get("selector") or {}).get("matchLabels") or {})
    return {"kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {k: md[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                         if k in md},
            "spec": {"replicas": int(spec.get("replicas", 1))},
            "status": {"replicas": int(status.get("replicas", 0)),
                       "selector": ",".join(f"{k}={v}" for k, v in sorted(labels.items()))}}


def _earlier(timestamp: str, seconds: int) -> str:
    """The RFC 3339 ``timestamp`` (``...Z``) moved ``seconds`` back (now, if it does not parse)."""
    try:
        then = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ")
    except (TypeError, ValueError):
        return now_rfc3339()
    return (then - datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


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
                 server_defaults: bool = True, backing: EtcdBacking | None = None,
                 service_cidr: str = DEFAULT_SERVICE_CIDR) -> None:
        """``server_defaults=False`` stores objects as given, like client-go's fake clientset that
        Cilium's script tests use: no defaulted fields, and a given ``creationTimestamp`` is kept.

        With a connected ``backing`` every object lives in etcd (see :mod:`lab.kube.api.etcdbacking`): the
        store starts from what etcd holds (objects, resourceVersions = mod_revisions, and the watch history
        etcd still has), and every write is a guarded etcd transaction whose revision becomes the new
        resourceVersion. Without it the store is in memory, as a fresh apiserver with an empty etcd."""
        self.registry = registry or KindRegistry()
        self.server_defaults = server_defaults
        self.history_limit = history_limit
        self.require_namespaces = require_namespaces
        self._lock = threading.RLock()
        self._rv = 0
        self._history_floor = 0  # every change after this resourceVersion is in the histories
        self._data: dict[tuple[str, str], _Resource] = {}
        self._defaulter = Defaulter(service_cidr)
        self._backing = backing
        self._undecodable: set[str] = set()
        if backing is not None:
            self._install_snapshot(backing.load())
        for ns in default_namespaces:
            if backing is None or ("", ns) not in self._namespaces():
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

    @property
    def backing(self) -> EtcdBacking | None:
        """The etcd this store persists to (None: in memory)."""
        return self._backing

    @property
    def service_network(self) -> str:
        """The Service cluster-IP range (CIDR)."""
        return str(self._defaulter.service_net)

    def _res(self, info: KindInfo) -> _Resource:
        return self._res_at(info.storage_key)

    def _res_at(self, storage_key: tuple[str, str]) -> _Resource:
        res = self._data.get(storage_key)
        if res is None:
            res = self._data[storage_key] = _Resource(compacted_rv=self._history_floor)
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

    def _commit(self, info: KindInfo, type_: str, obj: Obj, old: Obj | None, *, cascade: bool = True) -> None:
        """Record a committed change (lock held; ``obj`` already carries the new resourceVersion).
        ``cascade=False``: a CRD deletion does not delete its objects here (whoever deleted it does)."""
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
            self._crd_changed(obj, deleted=type_ == "DELETED", cascade=cascade)

    def _write(self, info: KindInfo, type_: str, obj: Obj, old: Obj | None) -> None:
        """Persist one change and commit it (lock held): sets ``obj``'s resourceVersion. ``old`` is the
        stored object an update or deletion replaces."""
        applied = False
        if self._backing is None:
            self._rv += 1
            rev = self._rv
        else:
            rev, applied = self._persist(self._backing, info, type_, obj, old)
        obj["metadata"]["resourceVersion"] = str(rev)
        if not applied:
            self._commit(info, type_, obj, old)
        self._rv = max(self._rv, rev)

    def _persist(self, backing: EtcdBacking, info: KindInfo, type_: str, obj: Obj, old: Obj | None
                 ) -> tuple[int, bool]:
        """Write one change to etcd (lock held); returns its revision and whether catching up with other
        writers already committed it to the store."""
        md = obj["metadata"]
        key = object_key(backing.prefix, info.group, info.plural, info.crd,
                         md.get("namespace") if info.namespaced else None, md["name"])
        try:
            if type_ == "ADDED":
                done, rev = backing.create(key, encode_object(obj))
            elif type_ == "MODIFIED":
                assert old is not None
                done, rev = backing.update(key, encode_object(obj), int(old["metadata"]["resourceVersion"]))
            else:
                assert old is not None
                done, rev = backing.delete(key, int(old["metadata"]["resourceVersion"]))
        except KVStoreError as e:
            raise ApiError(503, "ServiceUnavailable", f"etcd: {e}") from None
        if not done:  # etcd holds a write the store did not make: learn it, then refuse this one
            self._resync(backing)
            if type_ == "ADDED":
                raise already_exists(info.plural, info.group, md["name"])
            raise conflict(info.plural, info.group, md["name"])
        if rev != self._rv + 1:  # someone else wrote in between: apply their events first
            try:
                missed = backing.events(self._rv + 1, rev)
            except KVStoreError:
                self._resync(backing)  # learns this write too, as etcd has it
                return rev, True
            for ev in missed:
                if ev.revision < rev:
                    self._apply_backing_event(backing, ev)
        return rev, False

    # ----- etcd: start and resync -----

    def _install_snapshot(self, snap: Snapshot) -> None:
        """Load etcd's state and history (lock held or not yet shared)."""
        assert self._backing is not None
        prefix = self._backing.prefix
        self._rv, self._history_floor = snap.revision, snap.floor
        self._data = {}
        loaded: list[tuple[tuple[str, str], Obj]] = []
        for kv in snap.kvs:
            sk = parse_key(prefix, kv.key)
            obj = self._decode(kv.key, kv.value, kv.mod_revision) if sk else None
            if sk is not None and obj is not None:
                loaded.append((sk, obj))
        for sk, obj in loaded:  # CRDs first: they decide which kinds are served
            if sk == CRD_KIND.storage_key:
                self.registry.set_crd(obj["metadata"]["name"], kinds_from_crd(obj))
        for sk, obj in loaded:
            md = obj["metadata"]
            self._res_at(sk).objects[(md.get("namespace") or "", md["name"])] = obj
            self._defaulter.track(sk, obj)
        for ev in snap.events:
            change = self._event_change(prefix, ev)
            if change is None:
                continue
            sk, type_, obj, old = change
            res = self._res_at(sk)
            while len(res.history) >= self.history_limit:
                res.compacted_rv = res.history.popleft().rv
            res.history.append(StoreEvent(type_, ev.revision, obj, old))

    def _decode(self, key: str, value: bytes, revision: int) -> Obj | None:
        try:
            return decode_object(value, revision)
        except ValueError as e:
            if key not in self._undecodable:
                self._undecodable.add(key)
                _log.warning("skipping etcd key %s: %s", key, e)
            return None

    def _event_change(self, prefix: str, ev: BackingEvent) -> tuple[tuple[str, str], str, Obj, Obj | None] | None:
        """An etcd event as (storage key, event type, object, previous object), or None if not an object."""
        sk = parse_key(prefix, ev.key)
        if sk is None:
            return None
        old = self._decode(ev.key, ev.prev_value, ev.prev_revision) if ev.prev_value is not None else None
        if ev.deleted:
            if ev.prev_value is None:
                return None
            gone_obj = self._decode(ev.key, ev.prev_value, ev.revision)
            return None if gone_obj is None else (sk, "DELETED", gone_obj, None)
        obj = self._decode(ev.key, ev.value, ev.revision)
        if obj is None:
            return None
        return sk, "MODIFIED" if old is not None else "ADDED", obj, old

    def _apply_backing_event(self, backing: EtcdBacking, ev: BackingEvent) -> None:
        """Commit a change made in etcd by someone else (lock held); no cascades, no writes."""
        change = self._event_change(backing.prefix, ev)
        self._rv = max(self._rv, ev.revision)
        if change is None:
            return
        sk, type_, obj, old = change
        info = self._info_at(sk, obj)
        self._commit(info, type_, obj, old, cascade=False)
        if type_ == "DELETED":
            self._defaulter.release(info, obj)
        else:
            self._defaulter.track(sk, obj)

    def _info_at(self, sk: tuple[str, str], obj: Obj) -> KindInfo:
        versions = self.registry.versions_of(*sk)
        if versions:
            return versions[0]
        namespaced = bool(obj["metadata"].get("namespace"))
        return KindInfo(sk[0], "v1", str(obj.get("kind", "")), sk[1], namespaced, crd=True)

    def _resync(self, backing: EtcdBacking) -> None:
        """Catch up with writes made in etcd by someone else (lock held). If etcd no longer has all of
        them, reload everything and end every watch (their clients re-list)."""
        try:
            events, floor, rev = backing.resync(self._rv)
        except KVStoreError as e:
            raise ApiError(503, "ServiceUnavailable", f"etcd: {e}") from None
        if floor <= self._rv:
            for ev in events:
                self._apply_backing_event(backing, ev)
            self._rv = max(self._rv, rev)
            return
        _log.warning("etcd compacted revisions %d..%d that the store had not seen: reloading", self._rv + 1, floor)
        self.close_watchers()
        self.registry.clear_crds()  # the snapshot brings back the CRDs etcd still has
        self._defaulter.reset()
        self._install_snapshot(backing.load())

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
            if info.crd or info.storage_key == CRD_KIND.storage_key or info.storage_key in GENERATION_KINDS:
                md["generation"] = 1
            if self.server_defaults:
                self._defaulter.apply(info, obj, None)
            self._write(info, "ADDED", obj, None)
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
        # like kube-apiserver's shouldDeleteDuringUpdate: the last finalizer gone from an object being deleted
        # with no grace period left (a gracefully terminating Pod stays until deleted with grace 0)
        if old_md.get("deletionTimestamp") and not new["metadata"].get("finalizers") \
                and not int(old_md.get("deletionGracePeriodSeconds") or 0):
            gone_obj = self._remove(info, new if self._backing is None else old, old)
            return self._out(info, gone_obj, copy)
        self._write(info, "MODIFIED", new, old)
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
               resource_version: str | None = None, uid: str | None = None, grace_period_seconds: int | None = None,
               graceful: bool = False, copy: bool = True) -> Obj:
        """Delete an object and return it (its final state). With finalizers set, only marks it with a
        ``deletionTimestamp``; it goes away when an update clears the finalizers. Preconditions: 409.

        With ``graceful=True`` (every HTTP DELETE) or a ``grace_period_seconds``, Pods bound to a node are
        deleted gracefully (see :meth:`_graceful`); ``grace_period_seconds`` overrides
        ``spec.terminationGracePeriodSeconds`` (0: at once). Without either, a direct call deletes at once,
        as a test harness wants."""
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
            marked = self._graceful(info, old, grace_period_seconds) \
                if graceful or grace_period_seconds is not None else None
            if marked is not None:
                return self._out(info, marked, copy)
            if md.get("finalizers"):
                if md.get("deletionTimestamp"):
                    pending = int(md.get("deletionGracePeriodSeconds") or 0)
                    if grace_period_seconds is None or grace_period_seconds > 0 or not pending:
                        return self._out(info, old, copy)
                    # kube-apiserver's BeforeDelete: a deletion under way may be shortened, here to grace 0
                    # (deletionTimestamp moves back by the old grace), so the last finalizer's removal deletes it
                    new = {**old, "metadata": {**md, "deletionGracePeriodSeconds": 0,
                                               "deletionTimestamp": _earlier(md["deletionTimestamp"], pending)}}
                    self._write(info, "MODIFIED", new, old)
                    return self._out(info, new, copy)
                new = {**old, "metadata": {**md, "deletionTimestamp": now_rfc3339(), "deletionGracePeriodSeconds": 0}}
                self._write(info, "MODIFIED", new, old)
                return self._out(info, new, copy)
            gone_obj = self._remove(info, old, old)
            return self._out(info, gone_obj, copy)

    def _graceful(self, info: KindInfo, old: Obj, grace_period_seconds: int | None) -> Obj | None:
        """A Pod's graceful deletion, as kube-apiserver does it (lock held): a bound, running Pod deleted
        with a grace period > 0 only gets ``deletionTimestamp`` (now + grace) and
        ``deletionGracePeriodSeconds``; the node runtime deletes it for good with grace 0. Returns the
        object to answer with, or None when it must go at once."""
        if info.storage_key != POD_STORAGE_KEY:
            return None
        spec, md = old.get("spec") or {}, old["metadata"]
        phase = (old.get("status") or {}).get("phase")
        if not spec.get("nodeName") or phase in ("Succeeded", "Failed"):
            return None
        grace = grace_period_seconds
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds")
            grace = DEFAULT_POD_GRACE_SECONDS if grace is None else int(grace)
        if grace <= 0:
            return None
        current = md.get("deletionGracePeriodSeconds")
        if md.get("deletionTimestamp") and current is not None and int(current) <= grace:
            return old  # already terminating at least this fast: nothing to change
        new = {**old, "metadata": {**md, "deletionTimestamp": rfc3339_in(grace), "deletionGracePeriodSeconds": grace}}
        self._write(info, "MODIFIED", new, old)
        return new

    def _remove(self, info: KindInfo, final: Obj, old: Obj) -> Obj:
        """Delete ``old`` (reporting ``final`` as its last state, stamped with the deletion's resourceVersion);
        cascade. Lock held. Returns the reported object."""
        obj = {**final, "metadata": dict(final["metadata"])}
        self._write(info, "DELETED", obj, old)
        self._defaulter.release(info, obj)
        if info.storage_key == NAMESPACE_KIND.storage_key:
            ns = obj["metadata"]["name"]
            for kind in self._storage_kinds():
                if kind.namespaced:
                    for key, o in list(self._res(kind).objects.items()):
                        if key[0] == ns:
                            self._drop(kind, o)
        return obj

    def _drop(self, info: KindInfo, obj: Obj) -> None:
        self._remove(info, obj, obj)

    def _storage_kinds(self) -> _KindList:
        seen: dict[tuple[str, str], KindInfo] = {}
        for k in self.registry.all():
            seen.setdefault(k.storage_key, k)
        return list(seen.values())

    def delete_collection(self, resource: KindInfo | str, namespace: str | None = None, *,
                          label_selector: str | None = None, field_selector: str | None = None,
                          graceful: bool = False) -> _ObjList:
        """Delete every matching object; returns what was deleted (or marked for deletion)."""
        info = self.kind(resource)
        with self._lock:
            items, _ = self.list(info, namespace, label_selector=label_selector, field_selector=field_selector,
                                 copy=False)
            return [self.delete(info, o["metadata"]["name"], o["metadata"].get("namespace"), graceful=graceful)
                    for o in items]

    # ----- subresources: pods/binding, <workload>/scale -----

    def bind(self, name: str, namespace: str, node: str, *, uid: str | None = None) -> Obj:
        """``pods/binding``: set ``spec.nodeName`` and the ``PodScheduled`` condition. 409 Conflict if the
        Pod is already bound or being deleted (or its uid is not ``uid``); returns the updated Pod."""
        info = self.registry.lookup("", "v1", "pods")
        assert info is not None
        with self._lock:
            old = self._res(info).objects.get(self._key(info, namespace, name))
            if old is None:
                raise not_found("pods", "", name)
            spec, md = old.get("spec") or {}, old["metadata"]
            why = ""
            if uid and uid != md.get("uid"):
                why = f"the uid of pod {name} is {md.get('uid')}, not {uid}"
            elif md.get("deletionTimestamp"):
                why = f"pod {name} is being deleted, cannot be assigned to a host"
            elif spec.get("nodeName"):
                why = f'pod {name} is already assigned to node "{spec["nodeName"]}"'
            if why:
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on pods/binding "{name}": {why}',
                               name=name, kind="pods/binding")
            status = dict(old.get("status") or {})
            conditions = [c for c in status.get("conditions") or [] if c.get("type") != "PodScheduled"]
            conditions.append({"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                               "lastTransitionTime": now_rfc3339()})
            status["conditions"] = conditions
            new = {**old, "spec": {**spec, "nodeName": node}, "status": status, "metadata": dict(md)}
            self._write(info, "MODIFIED", new, old)
            return self._out(info, new, True)

    def scale(self, resource: KindInfo | str, name: str, namespace: str | None = None) -> Obj:
        """The ``autoscaling/v1`` Scale of a Deployment or ReplicaSet."""
        return scale_of(self.get(resource, name, namespace, copy=False))

    def set_scale(self, resource: KindInfo | str, name: str, replicas: int, namespace: str | None = None, *,
                  resource_version: str | None = None) -> Obj:
        """Set ``spec.replicas`` through the scale subresource; returns the new Scale."""
        info = self.kind(resource)
        with self._lock:
            old = self.get(info, name, namespace, copy=False)
            if resource_version and resource_version != old["metadata"]["resourceVersion"]:
                raise conflict(info.plural, info.group, name)
            new = {**old, "spec": {**(old.get("spec") or {}), "replicas": int(replicas)}}
            return scale_of(self._replace(info, old, new, subresource=None, keep_status=False, copy=False))

    # ----- CRDs -----

    def _crd_changed(self, crd: Obj, *, deleted: bool, cascade: bool = True) -> None:
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
        for obj in list(res.objects.values()) if cascade else ():
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

