"""The sync stores of one exporting cluster: one per prefix, with its canary name."""

from __future__ import annotations

from dataclasses import dataclass

from meshcore.kvstore.types import KVStore
from meshcore.store.syncstore import LeaseSource, SyncStore
from meshcore.wire import keys as wk


class ExportStore(SyncStore):
    """A :class:`SyncStore` that can also say what it wants under a name, and write it again."""

    def value(self, name: str) -> bytes | None:
        """The value ``name`` should hold, ``None`` if the store does not want it."""
        return self._desired.get(name)

    def rewrite(self, name: str) -> None:
        """Queue ``name`` to be written again even if the store believes etcd already has it."""
        value = self.value(name)
        if value is not None:
            self.delete(name)
            self.upsert(name, value)


@dataclass(frozen=True)
class ClusterStores:
    """The five exported prefixes of ``cluster`` (job name -> store via :meth:`by_job`)."""

    nodes: ExportStore
    identities: ExportStore
    ip: ExportStore
    services: ExportStore
    serviceexports: ExportStore

    @classmethod
    def create(cls, kv: KVStore, cluster: str, leases: LeaseSource | None) -> ClusterStores:
        def store(prefix: str, canary: str | None = None) -> ExportStore:
            return ExportStore(kv, prefix, cluster=cluster, leases=leases, canary_prefix=canary)

        return cls(
            nodes=store(f"{wk.NODES}/{cluster}", wk.NODES),
            identities=store(wk.IDENTITIES_ID, wk.IDENTITIES),
            ip=store(wk.IP_DEFAULT, wk.IP),
            services=store(f"{wk.SERVICES}/{cluster}", wk.SERVICES),
            serviceexports=store(f"{wk.SERVICE_EXPORTS}/{cluster}", wk.SERVICE_EXPORTS),
        )

    def by_job(self) -> dict[str, ExportStore]:
        return {
            "nodes": self.nodes,
            "identities": self.identities,
            "ip": self.ip,
            "services": self.services,
            "serviceexports": self.serviceexports,
        }
