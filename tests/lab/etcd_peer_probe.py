"""Run by tests/lab/test_mesh_security.py inside a node namespace of one lab cluster: connect to a
peer's clustermesh etcd with the peer entry of this cluster's ``cilium-clustermesh`` Secret (the
etcd config and client certificate its agents use, host aliases included), read, then try every
kind of write. Prints one JSON document: who it connected as, what it read, and for each write
attempt ``"denied: ..."`` or ``"ALLOWED"`` (or, refused at connect, ``connected: false`` and why).

``python tests/lab/etcd_peer_probe.py ETCD_CONFIG PEER``
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from meshcore.errors import KVStoreAuthError
from meshcore.kvstore.client import EtcdClient
from meshcore.kvstore.config import load_etcd_config
from meshcore.kvstore.types import PutOp
from meshcore.wire import keys as wk


async def _attempt(what: Callable[[], Awaitable[object]]) -> str:
    try:
        await what()
    except KVStoreAuthError as err:
        return f"denied: {err}"
    except Exception as err:  # noqa: BLE001 - anything but a denial is reported as such
        return f"error: {type(err).__name__}: {err}"
    return "ALLOWED"


async def probe(config: Path, peer: str) -> dict[str, Any]:
    client = EtcdClient(load_etcd_config(config))
    try:
        await client.connect()
        state = await client.list_prefix(f"{wk.STATE}/")
    except Exception as err:  # noqa: BLE001 - refused at the door: report it
        await client.close()
        return {"connected": False, "error": f"{type(err).__name__}: {err}"}
    async with client:
        nodes = f"{wk.STATE}/nodes/v1/{peer}/"
        victim = next((kv for kv in state.items if kv.key.startswith(nodes)), None)
        if victim is None:
            raise SystemExit(f"no node of {peer} under {nodes}: nothing to try writes on")
        cluster_config = await client.get(wk.cluster_config_key(peer))
        intruder = f"{nodes}intruder"
        writes = {
            "put a new key under cilium/state": lambda: client.put(intruder, b"{}"),
            "overwrite an existing node key": lambda: client.put(victim.key, b"{}"),
            "delete an existing node key": lambda: client.delete(victim.key),
            "delete the prefix cilium/": lambda: client.delete_prefix("cilium/"),
            "put outside cilium/": lambda: client.put("intruder", b"x"),
            "overwrite the cluster config": lambda: client.put(wk.cluster_config_key(peer), b"{}"),
            "put in a transaction": lambda: client.txn([PutOp(intruder, b"{}")]),
            "revoke the lease of a node key": lambda: client.revoke_lease(victim.lease),
            "grant itself the root role": lambda: client.user_grant_role(client.user or "remote", "root"),
            "grant its role write on cilium/": lambda: client.role_grant_permission(
                "remote", "cilium/", prefix=True, permission="readwrite"),
            "disable auth": lambda: client.auth_disable(),
        }
        results = {name: await _attempt(fn) for name, fn in writes.items()}
        after = await client.get(victim.key)
        return {
            "connected": True,
            "user": client.user,
            "endpoint": client.endpoint,
            "read": {
                "state keys": len(state.items),
                "node keys of the peer": sum(1 for kv in state.items if kv.key.startswith(nodes)),
                "cluster config": cluster_config is not None,
            },
            "writes": results,
            "victim": {"key": victim.key, "lease": victim.lease, "mod_revision": victim.mod_revision,
                       "mod_revision_after": after.mod_revision if after else None},
            "intruder_exists": await client.get(intruder) is not None,
            "read outside its grants": await _attempt(lambda: client.get("intruder")),
        }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(probe(Path(sys.argv[1]), sys.argv[2])), indent=2))
