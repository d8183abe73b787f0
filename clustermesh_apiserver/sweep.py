"""Remove keys a previous run left behind: mark and sweep against etcd, never a flush.

After the initial sync of a prefix, every key under it that the sync store does not want (no
Kubernetes object produces it any more) is deleted; every other key stays where it is, so a
restart neither deletes nor re-creates anything that is still valid.
"""

from __future__ import annotations

from clustermesh_apiserver.stores import ExportStore
from meshcore.kvstore.types import MAX_TXN_OPS, DeleteOp, KVStore
from meshcore.log import get_logger

_log = get_logger(__name__)


async def sweep_stale(kv: KVStore, store: ExportStore) -> list[str]:
    """Delete the keys under ``store.prefix`` that ``store`` does not want; returns them.

    Run it once the store's synced canary is written. Names are checked against the store right
    before each batch is sent, so an object that appears meanwhile keeps its key (the store
    writes it again if the delete overtook its put, see the note in the code).
    """
    prefix = store.prefix + "/"
    listing = await kv.list_prefix(prefix)
    wanted = set(store.names())
    stale = [item.key for item in listing.items if item.key[len(prefix) :] not in wanted]
    deleted: list[str] = []
    for start in range(0, len(stale), MAX_TXN_OPS):
        wanted = set(store.names())
        batch = [key for key in stale[start : start + MAX_TXN_OPS] if key[len(prefix) :] not in wanted]
        if batch:
            await kv.txn([DeleteOp(key) for key in batch])
            deleted.extend(batch)
    # A name that became wanted while its delete was in flight: the store queued a put for it,
    # which etcd may have applied before the delete; write it again to be sure.
    wanted = set(store.names())
    for key in deleted:
        name = key[len(prefix) :]
        if name in wanted:
            store.rewrite(name)
    if deleted:
        _log.info("deleted stale keys left by a previous run", prefix=store.prefix, keys=len(deleted))
    return deleted

