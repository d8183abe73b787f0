"""One node's datapath (``NodeDatapath`` with its WireGuard) in the current network namespace, fed
from a JSON spec instead of etcd, for the WireGuard datapath tests and benchmark: they start it
inside a node namespace with ``nsenter --net`` (not ``ip netns exec``, which remounts /sys and hides
the bpffs pin root) and end it with :func:`stop`.

    python -m lab.wgnode SPEC.json

The spec names the node (``local``), its datapath and encryption config, the remote clusters'
records (``remote``: nodes and ipcache pairs as Cilium JSON) and this cluster's (``local_state``).
The status (``NodeDatapath.status_json()``) is written to ``status`` every 0.2 s (atomically);
SIGTERM stops it (nothing is torn down, as the agent).
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from contextlib import suppress
from pathlib import Path
from typing import Any

from agent.datapath.local import LocalState
from agent.datapath.node import NodeDatapath, NodeDatapathConfig
from agent.datapath.wireguard import EncryptionConfig
from agent.desired import ClusterView, LocalInfo
from agent.incremental import DesiredIndex
from meshcore.log import configure
from meshcore.wire import IPIdentityPair, Node


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    """End a node started as ``python -m lab.wgnode``: SIGTERM, then SIGKILL after 10 s."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _views(spec: dict[str, Any]) -> dict[str, ClusterView]:
    out = {}
    for c in spec["remote"]:
        nodes = {name: Node.decode(raw) for name, raw in c["nodes"].items()}
        pairs = {ip: IPIdentityPair.decode(raw) for ip, raw in c["ipcache"].items()}
        out[c["name"]] = ClusterView(c["name"], c["id"], nodes, pairs, {}, {})
    return out


async def run(spec: dict[str, Any]) -> None:
    local = LocalInfo(spec["local"]["cluster"], spec["local"]["cluster_id"], spec["local"]["node"])
    enc = spec["encryption"]
    config = NodeDatapathConfig(
        pin_root=Path(spec["pin_root"]),
        underlay_device=spec["underlay"],
        routing_mode=spec["routing_mode"],
        encryption=EncryptionConfig(
            mode=enc["mode"],
            device=enc["device"],
            scope=enc.get("scope", "all"),
            node_encryption=enc.get("node_encryption", False),
            opt_out_labels=enc.get("opt_out_labels", "node-role.kubernetes.io/control-plane"),
            strict_cidr=enc.get("strict_cidr"),
            state_dir=Path(spec["state_dir"]),
        ),
    )
    node = NodeDatapath(local, config)
    await asyncio.to_thread(node.start)
    index = DesiredIndex(local)
    index.load(_views(spec))
    state = spec["local_state"]
    node.set_local_state(LocalState(
        pairs=tuple(IPIdentityPair.decode(raw) for raw in state["pairs"]),
        nodes=tuple(Node.decode(raw) for raw in state["nodes"]),
    ))  # fmt: skip
    synced: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    synced.set_result(None)
    status = Path(spec["status"])
    tmp = status.with_suffix(".tmp")

    async def write_status() -> None:
        while True:
            tmp.write_text(json.dumps(node.status_json()))
            tmp.replace(status)
            await asyncio.sleep(0.2)

    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(node.run(index, synced))
            tasks.create_task(write_status())
    finally:
        node.close()


def main() -> None:
    configure(level="info", json=False)
    spec = json.loads(Path(sys.argv[1]).read_text())
    loop = asyncio.new_event_loop()
    task = loop.create_task(run(spec))
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    with suppress(asyncio.CancelledError):
        loop.run_until_complete(task)
    loop.close()


if __name__ == "__main__":
    main()
