"""The runtime kind registry: built-in kinds plus whatever the stored CRDs define right now.

The store calls :meth:`KindRegistry.set_crd` / :meth:`KindRegistry.remove_crd` whenever a CRD object is
written or deleted, so discovery and routing change in the same instant the CRD write commits. Readers
take an immutable snapshot (a tuple swapped under a lock), so lookups from the HTTP loop and from test
threads never see a half-built table.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from lab.kube.api.kinds import BUILTIN_KINDS, KindInfo, version_priority


class KindRegistry:
    """Which group/version/kinds are served; looked up by REST path, by apiVersion+kind, or by name."""

    def __init__(self, builtin: Iterable[KindInfo] = BUILTIN_KINDS) -> None:
        self._lock = threading.Lock()
        self._builtin = tuple(builtin)
        self._crds: dict[str, tuple[KindInfo, ...]] = {}
        self._all: tuple[KindInfo, ...] = self._builtin

    def set_crd(self, crd_name: str, kinds: Iterable[KindInfo]) -> None:
        """Serve exactly ``kinds`` for the CRD ``crd_name`` (replacing what it served before)."""
        with self._lock:
            self._crds[crd_name] = tuple(kinds)
            self._rebuild()

    def remove_crd(self, crd_name: str) -> None:
        """Stop serving the kinds of CRD ``crd_name``."""
        with self._lock:
            self._crds.pop(crd_name, None)
            self._rebuild()

    def clear_crds(self) -> None:
        """Stop serving every CRD-defined kind (before a reload from etcd)."""
        with self._lock:
            self._crds.clear()
            self._rebuild()

    def _rebuild(self) -> None:
        crd_kinds = [k for kinds in self._crds.values() for k in kinds]
        self._all = self._builtin + tuple(crd_kinds)

    def all(self) -> tuple[KindInfo, ...]:
        """Every served kind (snapshot)."""
        return self._all

    def lookup(self, group: str, version: str, plural: str) -> KindInfo | None:
        """The kind served at ``/apis/<group>/<version>/<plural>`` (or ``/api/v1/<plural>``), if any."""
        for k in self._all:
            if k.group == group and k.version == version and k.plural == plural:
                return k
        return None

    def by_kind(self, api_version: str, kind: str) -> KindInfo | None:
        """The kind for an object's ``apiVersion`` and ``kind``."""
        group, _, version = api_version.rpartition("/")
        for k in self._all:
            if k.group == group and k.version == version and k.kind == kind:
                return k
        return None

    def resolve(self, name: str) -> KindInfo | None:
        """Resolve a kubectl-style name (``pods``, ``svc``, ``ciliumnodes.cilium.io``, ``Pod``) to the
        preferred version of that resource."""
        matches = [k for k in self._all
                   if name in (k.plural, k.singular, k.kind, k.resource, f"{k.plural}.{k.version}.{k.group}")
                   or name in k.short_names]
        if not matches:
            return None
        return sorted(matches, key=lambda k: version_priority(k.version))[0]

    def versions_of(self, group: str, plural: str) -> list[KindInfo]:
        """All served versions of one resource, preferred first."""
        return sorted((k for k in self._all if k.group == group and k.plural == plural),
                      key=lambda k: version_priority(k.version))

    def groups(self) -> list[tuple[str, list[str]]]:
        """``[(group, [versions preferred first])]`` for discovery; the core group first."""
        seen: dict[str, set[str]] = {}
        order: list[str] = []
        for k in self._all:
            if k.group not in seen:
                seen[k.group] = set()
                order.append(k.group)
            seen[k.group].add(k.version)
        return [(g, sorted(seen[g], key=version_priority)) for g in order]
