"""Numeric identities for kubernetes mode (no CiliumIdentity objects exist there).

Design note (restart stability)
-------------------------------
Cilium's CRD allocator persists every allocation as a CiliumIdentity object, so a restarted
operator finds the same ``labels -> ID`` map. This class is the pure core of the same idea:

* The caller persists allocations (one record per ID with its label string, e.g. a ConfigMap
  or small CRD-like objects; the etcd ``identities/v1/id/`` keys themselves are leased and vanish
  with the apiserver, so they are *not* a durable store) and passes them back in ``existing``
  at start-up. Every label set seen before therefore gets its old ID again.
* New label sets get the lowest free ID in the cluster's range (§4: ``c << 16`` ..
  ``((c + 1) << 16) - 1`` with 255 clusters). Given the same ``existing`` map and the same
  sequence of calls the result is deterministic.
* :meth:`IdentityAllocator.release` frees an ID immediately and the next allocation may reuse
  it. Remote agents cache ``ID -> labels``; to avoid a reused ID being read with stale labels,
  the caller should delay releases (Cilium's operator GCs unused identities after a grace
  period) and persist the release before deleting the etcd key.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping

from meshcore.errors import WireError
from meshcore.wire.clusterinfo import DEFAULT_MAX_CONNECTED_CLUSTERS, identity_range
from meshcore.wire.identity import LabelSet

__all__ = ["IdentityAllocator"]


class IdentityAllocator:
    """Allocate numeric identities for label sets within one cluster's identity range.

    ``existing`` maps label sets to previously allocated IDs (all inside the range, no ID used
    twice); raises :class:`~meshcore.errors.WireError` otherwise.
    """

    def __init__(
        self,
        cluster_id: int,
        existing: Mapping[LabelSet, int] | None = None,
        *,
        max_connected_clusters: int = DEFAULT_MAX_CONNECTED_CLUSTERS,
    ) -> None:
        self.cluster_id = cluster_id
        self.low, self.high = identity_range(cluster_id, max_connected_clusters)
        self._by_labels: dict[LabelSet, int] = {}
        self._by_id: dict[int, LabelSet] = {}
        for labels, ident in (existing or {}).items():
            if not self.low <= ident <= self.high:
                raise WireError(
                    f"identity {ident} for {labels} is outside cluster {cluster_id}'s range {self.low}..{self.high}"
                )
            if ident in self._by_id:
                raise WireError(f"identity {ident} is allocated to both {self._by_id[ident]} and {labels}")
            self._by_labels[labels] = ident
            self._by_id[ident] = labels
        self._cursor = self.low  # every ID below the cursor is used or in _freed
        self._freed: list[int] = []

    def allocate(self, labels: LabelSet) -> tuple[int, bool]:
        """The ID of ``labels``: ``(id, True)`` when newly allocated, ``(id, False)`` when the
        set already had one. Raises :class:`~meshcore.errors.WireError` when the range is full."""
        ident = self._by_labels.get(labels)
        if ident is not None:
            return ident, False
        ident = self._lowest_free()
        self._by_labels[labels] = ident
        self._by_id[ident] = labels
        return ident, True

    def _lowest_free(self) -> int:
        while self._freed and self._freed[0] in self._by_id:
            heapq.heappop(self._freed)
        if self._freed:
            return heapq.heappop(self._freed)
        while self._cursor <= self.high and self._cursor in self._by_id:
            self._cursor += 1
        if self._cursor > self.high:
            raise WireError(f"identity range {self.low}..{self.high} of cluster {self.cluster_id} is exhausted")
        ident = self._cursor
        self._cursor += 1
        return ident

    def release(self, key: LabelSet | int) -> int | None:
        """Free the ID of a label set (or an ID); returns the freed ID, ``None`` if unknown."""
        if isinstance(key, int):
            labels = self._by_id.get(key)
            if labels is None:
                return None
        else:
            labels = key
        ident = self._by_labels.pop(labels, None)
        if ident is None:
            return None
        del self._by_id[ident]
        if ident < self._cursor:
            heapq.heappush(self._freed, ident)
        return ident

    def lookup(self, labels: LabelSet) -> int | None:
        """The ID allocated to ``labels``, if any."""
        return self._by_labels.get(labels)

    def labels_of(self, ident: int) -> LabelSet | None:
        """The label set allocated ``ident``, if any."""
        return self._by_id.get(ident)

    def allocations(self) -> dict[LabelSet, int]:
        """A copy of every current allocation (what the caller persists)."""
        return dict(self._by_labels)

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[tuple[LabelSet, int]]:
        return iter(sorted(self._by_labels.items(), key=lambda item: item[1]))
