"""The agent's WireGuard metrics (agent.metrics.wireguard_metrics, read at scrape time from the
node datapath's encryption status), served on the agent API's /metrics (its unix socket); the
migration label and the key withdrawal's merge patches (pure). The live agents' metrics are checked
in tests/lab/test_lab_wireguard.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from agent.api import AgentAPI
from agent.datapath.wireguard import EncryptionConfig, disabled_status_json, encryption_disabled_by_label
from agent.metrics import AgentMetrics
from agent.nodepublish import (
    ENCRYPTION_KEY_ANNOTATION,
    WIREGUARD_PUB_KEY,
    cilium_node_withdraw_patch,
    node_withdraw_patch,
)
from clustermesh_cli.status import agent_get_raw

KEY = "Q" * 43 + "="


def _status() -> dict[str, Any]:
    return {
        "mode": "wireguard", "public-key": KEY, "key-file-age-seconds": 30.0, "key-rotations": 0,
        "plaintext-peer-count": 1, "plaintext-peers": ["c2/c2-n1"],
        "peers": [
            {"node": "c2/c2-n0", "public-key": "peerkey1" + "A" * 35 + "=", "latest-handshake-seconds-ago": 4.5,
             "rx-bytes": 1000, "tx-bytes": 2000, "in-sync": True},
            {"node": "c1/c1-n1", "public-key": "peerkey2" + "A" * 35 + "=", "latest-handshake-seconds-ago": None,
             "rx-bytes": 0, "tx-bytes": 0, "in-sync": False},
        ],
    }  # fmt: skip


async def test_metrics_endpoint_serves_the_wireguard_families(tmp_path: Path) -> None:
    metrics = AgentMetrics(local_cluster="c1", node_name="c1-n0")
    status: dict[str, Any] = _status()
    metrics.watch_encryption(lambda: status)
    api = AgentAPI(tmp_path / "agent.sock", status=dict, desired=bytes, registry=metrics.registry)
    await api.start()
    try:
        text = (await asyncio.to_thread(agent_get_raw, tmp_path / "agent.sock", "/metrics")).decode()
    finally:
        await api.stop()
    samples = {(smp.name, tuple(sorted(smp.labels.items()))): smp.value
               for family in text_string_to_metric_families(text) for smp in family.samples}

    def value(name: str, **labels: str) -> float | None:
        key = tuple(sorted({"source_cluster": "c1", "source_node_name": "c1-n0", **labels}.items()))
        return samples.get((name, key))

    assert value("clustermesh_wireguard_enabled") == 1.0
    assert value("clustermesh_wireguard_peers") == 2.0
    assert value("clustermesh_wireguard_plaintext_peers") == 1.0
    assert value("clustermesh_wireguard_key_age_seconds") == 30.0
    assert value("clustermesh_wireguard_key_rotations_total") == 0.0
    peer = {"peer_node": "c2/c2-n0", "peer_public_key": "peerkey1"}
    assert value("clustermesh_wireguard_peer_latest_handshake_age_seconds", **peer) == 4.5
    assert value("clustermesh_wireguard_peer_received_bytes_total", **peer) == 1000.0
    assert value("clustermesh_wireguard_peer_sent_bytes_total", **peer) == 2000.0
    assert value("clustermesh_wireguard_peer_in_sync", **peer) == 1.0
    # no handshake yet: no age series for that peer, but its bytes and in-sync are there
    fresh = {"peer_node": "c1/c1-n1", "peer_public_key": "peerkey2"}
    assert value("clustermesh_wireguard_peer_latest_handshake_age_seconds", **fresh) is None
    assert value("clustermesh_wireguard_peer_received_bytes_total", **fresh) == 0.0
    assert value("clustermesh_wireguard_peer_in_sync", **fresh) == 0.0


def test_a_node_without_wireguard_reports_enabled_0_and_no_peers() -> None:
    metrics = AgentMetrics(local_cluster="c1", node_name="c1-n0")
    off = disabled_status_json(EncryptionConfig(mode="wireguard"), 3, plaintext=["c1/c1-n1"],
                               disabled_by="label clustermesh.io/encryption=disabled", withdrawn=True)
    metrics.watch_encryption(lambda: off)
    src = {"source_cluster": "c1", "source_node_name": "c1-n0"}
    assert metrics.registry.get_sample_value("clustermesh_wireguard_enabled", src) == 0.0
    assert metrics.registry.get_sample_value("clustermesh_wireguard_peers", src) == 0.0
    assert metrics.registry.get_sample_value("clustermesh_wireguard_plaintext_peers", src) == 3.0
    assert metrics.registry.get_sample_value("clustermesh_wireguard_key_age_seconds", src) is None
    assert (off["mode"], off["configured-mode"], off["key-withdrawn"]) == ("none", "wireguard", True)


def test_the_migration_label() -> None:
    assert encryption_disabled_by_label({"clustermesh.io/encryption": "disabled"})
    assert encryption_disabled_by_label({"clustermesh.io/encryption": " Disabled "})
    assert not encryption_disabled_by_label({"clustermesh.io/encryption": "enabled"})
    assert not encryption_disabled_by_label({"other": "disabled"})


def test_withdraw_patches_remove_the_keys_and_are_idempotent() -> None:
    node = {"metadata": {"name": "n1", "annotations": {WIREGUARD_PUB_KEY: KEY, ENCRYPTION_KEY_ANNOTATION: "255",
                                                       "keep": "x"}}}
    assert node_withdraw_patch(node) == {"metadata": {"annotations": {WIREGUARD_PUB_KEY: None,
                                                                      ENCRYPTION_KEY_ANNOTATION: None}}}
    assert node_withdraw_patch({"metadata": {"name": "n1", "annotations": {"keep": "x"}}}) is None
    cn = {"metadata": {"name": "n1", "annotations": {WIREGUARD_PUB_KEY: KEY}}, "spec": {"encryption": {"key": 255}}}
    assert cilium_node_withdraw_patch(cn) == {"metadata": {"annotations": {WIREGUARD_PUB_KEY: None}},
                                              "spec": {"encryption": {"key": 0}}}
    assert cilium_node_withdraw_patch({"metadata": {"name": "n1"}, "spec": {"encryption": {"key": 0}}}) is None
