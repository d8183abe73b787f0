"""Pure planning of ``clustermesh connect`` / ``disconnect``: the peer entries, every refusal, a
3-cluster full mesh, and proof that the agent's own config-directory reader parses the entries
once they are laid out as a Kubernetes Secret volume."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

import pytest
import yaml

from clustermesh_cli.mesh.peers import (
    DEFAULT_CONFIG_DIR,
    ClusterInfo,
    ConnectPlan,
    ConnectRefused,
    PeerAccess,
    SecretChange,
    describe,
    peer_keys,
    plan_connect,
    plan_disconnect,
)
from meshcore.clustermesh.configdir import ConfigDirWatcher
from meshcore.kvstore.connection import dial_targets
from meshcore.pki import CertificateAuthority

PEER_KEYS_SUFFIXES = ("", ".etcd-client-ca.crt", ".etcd-client.crt", ".etcd-client.key")


def access_for(ca: CertificateAuthority, *addresses: str, port: int = 32379) -> PeerAccess:
    remote = ca.issue_client("remote")
    return PeerAccess(addresses=tuple(addresses), port=port, ca_crt=ca.cert_pem, client_crt=remote.cert_pem,
                      client_key=remote.key_pem)


def cluster(cid: int, name: str | None = None, *, secret: Mapping[str, bytes] | None = None,
            pod_cidrs: tuple[str, ...] | None = None, ca: CertificateAuthority | None = None,
            **kw: object) -> ClusterInfo:
    """Cluster ``c<cid>`` of the lab plan: node IP 192.168.<cid>.1, pod CIDR 10.<cid>.0.0/24."""
    ca = ca or CertificateAuthority.create(f"ca-{cid}")
    fields: dict[str, object] = {
        "context": f"ctx-{name or f'c{cid}'}",
        "name": name or f"c{cid}",
        "cluster_id": cid,
        "pod_cidrs": pod_cidrs if pod_cidrs is not None else (f"10.{cid}.0.0/24", f"10.{cid}.1.0/24"),
        "access": access_for(ca, f"192.168.{cid}.1"),
        "mesh_secret": secret,
        "mesh_secret_version": None if secret is None else "7",
    }
    fields.update(kw)
    return ClusterInfo(**fields)  # type: ignore[arg-type]


def applied(info: ClusterInfo, plan: ConnectPlan) -> ClusterInfo:
    """``info`` after ``plan`` was written (as the API would hold it)."""
    for change in plan.changes:
        if change.context == info.context and change.changed:
            return dataclasses.replace(info, mesh_secret=dict(change.after), mesh_secret_version="8")
    return info


def write_secret_volume(directory: Path, data: Mapping[str, bytes], *, generation: int = 1) -> None:
    """Lay ``data`` out as the kubelet does for a Secret volume: files in a timestamped directory,
    ``..data`` pointing at it, one visible symlink per key; an update swaps ``..data`` atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = directory / f"..2026_01_01_00_00_0{generation}.000000001"
    stamp.mkdir()
    for key, value in data.items():
        (stamp / key).write_bytes(value)
        os.chmod(stamp / key, 0o600)
    tmp_link = directory / "..data_tmp"
    tmp_link.symlink_to(stamp.name)
    os.replace(tmp_link, directory / "..data")
    for entry in os.listdir(directory):
        if not entry.startswith("..") and entry not in data:
            (directory / entry).unlink()
    for key in data:
        if not (directory / key).is_symlink():
            (directory / key).symlink_to(f"..data/{key}")


# --- connect ---------------------------------------------------------------------------------------


def test_connect_writes_each_peer_into_the_other_side() -> None:
    c1, c2 = cluster(1), cluster(2)
    plan = plan_connect(c1, c2)
    into_c1, into_c2 = plan.changes
    assert (into_c1.context, into_c2.context) == ("ctx-c1", "ctx-c2")
    assert into_c1.create and into_c2.create
    assert sorted(into_c1.after) == sorted("c2" + s for s in PEER_KEYS_SUFFIXES)
    assert sorted(into_c2.after) == sorted("c1" + s for s in PEER_KEYS_SUFFIXES)
    assert c1.access and c2.access
    # Different CAs: each side carries the peer's CA and the peer's remote client certificate.
    assert into_c1.after["c2.etcd-client-ca.crt"] == c2.access.ca_crt != c1.access.ca_crt
    assert into_c1.after["c2.etcd-client.crt"] == c2.access.client_crt
    assert into_c1.after["c2.etcd-client.key"] == c2.access.client_key
    assert into_c2.after["c1.etcd-client-ca.crt"] == c1.access.ca_crt
    doc = yaml.safe_load(into_c1.after["c2"])
    assert doc == {
        "endpoints": ["https://c2.mesh.cilium.io:32379"],
        "trusted-ca-file": "/var/lib/cilium/clustermesh/c2.etcd-client-ca.crt",
        "cert-file": "/var/lib/cilium/clustermesh/c2.etcd-client.crt",
        "key-file": "/var/lib/cilium/clustermesh/c2.etcd-client.key",
        "cilium-host-aliases": [{"hostname": "c2.mesh.cilium.io", "ips": ["192.168.2.1"]}],
    }
    # Every file the config names is a key of the same Secret, i.e. a file of the same mount.
    for field in ("trusted-ca-file", "cert-file", "key-file"):
        path = PurePosixPath(doc[field])
        assert path.parent == DEFAULT_CONFIG_DIR and path.name in into_c1.after
    assert "created cilium-clustermesh: added peer c2" in describe(into_c1)


def test_connect_keeps_other_peers_and_foreign_keys_and_is_idempotent() -> None:
    c1 = cluster(1, secret={"c9": b"endpoints:\n- https://x:1\n", "c9.etcd-client.crt": b"x", "notes": b"keep"})
    c2 = cluster(2)
    plan = plan_connect(c1, c2)
    after = plan.changes[0].after
    assert {"c9", "c9.etcd-client.crt", "notes"} <= set(after)
    assert plan.changes[0].added == sorted("c2" + s for s in PEER_KEYS_SUFFIXES)
    assert not plan.changes[0].removed and not plan.changes[0].create
    again = plan_connect(applied(c1, plan), applied(c2, plan))
    assert not again.changed and again.warnings == ()
    assert all("unchanged" in describe(c) for c in again.changes)


def test_reconnect_after_an_address_change_replaces_the_entry_with_a_warning() -> None:
    c1, c2 = cluster(1), cluster(2)
    plan = plan_connect(c1, c2)
    c1, c2 = applied(c1, plan), applied(c2, plan)
    assert c2.access
    moved = dataclasses.replace(c2, access=dataclasses.replace(c2.access, addresses=("192.168.2.9",)))
    replan = plan_connect(c1, moved)
    assert replan.changes[0].updated == ["c2"] and not replan.changes[1].changed
    assert any("replacing the existing entry for c2" in w for w in replan.warnings)


def test_full_mesh_of_three_clusters() -> None:
    clusters = {cid: cluster(cid) for cid in (1, 2, 3)}
    for x, y in ((1, 2), (1, 3), (2, 3)):
        plan = plan_connect(clusters[x], clusters[y])
        clusters[x], clusters[y] = applied(clusters[x], plan), applied(clusters[y], plan)
    for cid, info in clusters.items():
        others = sorted(f"c{o}" for o in (1, 2, 3) if o != cid)
        assert info.peers() == others
        assert sorted(info.mesh_secret or {}) == sorted(p + s for p in others for s in PEER_KEYS_SUFFIXES)
    # Every pair again: nothing left to do.
    for x, y in ((1, 2), (1, 3), (2, 3), (3, 1)):
        assert not plan_connect(clusters[x], clusters[y]).changed


# --- refusals ---------------------------------------------------------------------------------------


def refused(a: ClusterInfo, b: ClusterInfo) -> str:
    with pytest.raises(ConnectRefused) as err:
        plan_connect(a, b)
    return str(err.value)


def test_refuses_duplicate_cluster_id_naming_both_clusters_and_the_fix() -> None:
    message = refused(cluster(1, "east"), cluster(1, "west"))
    for part in ("east (context ctx-east)", "west (context ctx-west)", "cluster ID 1", "--cluster-id",
                 "clustermesh enable --context ctx-west"):
        assert part in message, message


def test_refuses_duplicate_cluster_name() -> None:
    message = refused(cluster(1, "same", context="ctx-a"), cluster(2, "same", context="ctx-b"))
    assert "both clusters are named 'same'" in message and "--cluster-name" in message
    assert "ctx-a" in message and "ctx-b" in message


def test_refuses_overlapping_pod_cidrs_naming_both() -> None:
    message = refused(cluster(1, pod_cidrs=("10.1.0.0/24", "10.0.0.0/16")),
                      cluster(2, pod_cidrs=("10.2.0.0/24", "10.0.5.0/24")))
    assert "pod CIDR 10.0.0.0/16 of c1" in message and "pod CIDR 10.0.5.0/24 of c2" in message
    # Different families never overlap; disjoint ones pass.
    plan_connect(cluster(1, pod_cidrs=("10.1.0.0/16", "fd00:1::/64")), cluster(2, pod_cidrs=("fd00:2::/64",)))


def test_refuses_connecting_a_cluster_to_itself() -> None:
    c1 = cluster(1)
    assert "to itself" in refused(c1, c1)
    # The same cluster under a second context name: same address and certificates.
    assert "are the same cluster" in refused(c1, dataclasses.replace(c1, context="alias"))


def test_refuses_a_mesh_larger_than_max_connected_clusters() -> None:
    full = {f"p{i}": b"endpoints:\n- https://p:1\n" for i in range(254)}  # 255 clusters with c1
    message = refused(cluster(1, secret=full), cluster(2))
    assert "c1 (context ctx-c1) already has 254 peer(s)" in message
    assert "mesh of 256 clusters" in message and "max-connected-clusters=255" in message
    # One peer fewer fits; a re-connect of an existing peer does not count twice.
    plan_connect(cluster(1, secret=dict(list(full.items())[:253])), cluster(2))
    plan_connect(cluster(1, secret={**dict(list(full.items())[:253]), "c2": b"endpoints: []"}), cluster(2))
    # The other side is checked too.
    assert "c2 (context ctx-c2) already has 254" in refused(cluster(1), cluster(2, secret=full))


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (dict(cid=1, max_connected_clusters=511), dict(cid=2), "max-connected-clusters=511 but"),
        (dict(cid=0, name="zero"), dict(cid=2), "cluster ID 0 is reserved"),
        (dict(cid=300), dict(cid=2), "out of range 1..255"),
        (dict(cid=1, name="default"), dict(cid=2), "unusable cluster name"),
        (dict(cid=1, name="Bad_Name"), dict(cid=2), "lowercase alphanumerics"),
        (dict(cid=1, pod_cidrs=("10.1.0.0/33",)), dict(cid=2), "which is not a CIDR"),
    ],
)
def test_refuses_unusable_settings(a: dict[str, object], b: dict[str, object], expected: str) -> None:
    def make(spec: dict[str, object]) -> ClusterInfo:
        spec = dict(spec)
        cid = spec.pop("cid")
        assert isinstance(cid, int)
        return cluster(cid, **spec)  # type: ignore[arg-type]

    assert expected in refused(make(a), make(b))


def test_certificates_are_checked() -> None:
    c1, c2 = cluster(1), cluster(2)
    assert c2.access
    broken = dataclasses.replace(c2, access=dataclasses.replace(c2.access, ca_crt=b"not a certificate"))
    assert "cilium-ca does not hold a PEM certificate" in refused(c1, broken)
    other_ca = CertificateAuthority.create("unrelated")
    foreign = dataclasses.replace(c2, access=dataclasses.replace(c2.access, ca_crt=other_ca.cert_pem))
    plan = plan_connect(c1, foreign)
    assert any("is not issued by its cilium-ca" in w for w in plan.warnings)
    assert any("no Node has spec.podCIDRs" in w for w in plan_connect(c1, cluster(2, pod_cidrs=())).warnings)


# --- disconnect -------------------------------------------------------------------------------------


def test_disconnect_removes_every_key_of_the_peer_and_only_those() -> None:
    c1, c2, c3 = cluster(1), cluster(2), cluster(3)
    p12 = plan_connect(c1, c2)
    c1, c2 = applied(c1, p12), applied(c2, p12)
    p13 = plan_connect(c1, c3)
    c1, c3 = applied(c1, p13), applied(c3, p13)
    plan = plan_disconnect(c1, c2)
    into_c1, into_c2 = plan.changes
    assert into_c1.removed == sorted(peer_keys("c2")) and sorted(into_c1.after) == sorted(peer_keys("c3"))
    assert into_c2.removed == sorted(peer_keys("c1")) and into_c2.after == {}
    assert plan.warnings == ()
    c1, c2 = applied(c1, plan), applied(c2, plan)
    again = plan_disconnect(c1, c2)
    assert not again.changed and again.warnings == ()
    # Connected one way only: the side without an entry is named.
    one_way = dataclasses.replace(c1, mesh_secret={**(c1.mesh_secret or {}), **p12.changes[0].after})
    partial = plan_disconnect(one_way, c2)
    assert partial.changes[0].changed and not partial.changes[1].changed
    assert partial.warnings == ("c2 (context ctx-c2) had no entry for c1",)
    # Nothing to disconnect when the Secrets do not exist at all; a context is never its own peer.
    assert not plan_disconnect(cluster(4), cluster(5)).changed
    with pytest.raises(ConnectRefused, match="to itself"):
        plan_disconnect(c1, c1)


def test_secret_change_properties() -> None:
    change = SecretChange(context="x", namespace="kube-system", cluster="c1", before=None, after={})
    assert not change.changed and not change.create


# --- the agent's reader parses the entries ----------------------------------------------------------


def test_agent_config_dir_reader_parses_planned_entries(tmp_path: Path) -> None:
    mount = tmp_path / "clustermesh"  # what /var/lib/cilium/clustermesh is in the agent's pod
    c1 = cluster(1)
    hostname_ca = CertificateAuthority.create("ca-3")
    c2 = cluster(2)
    c3 = cluster(3, access=access_for(hostname_ca, "mesh-c3.example.org", port=2379))
    config_dir = PurePosixPath(mount)
    plan = plan_connect(c1, c2, config_dir=config_dir)
    c1, c2 = applied(c1, plan), applied(c2, plan)
    plan = plan_connect(c1, c3, config_dir=config_dir)
    c1, c3 = applied(c1, plan), applied(c3, plan)
    assert c1.mesh_secret and c2.access
    write_secret_volume(mount, c1.mesh_secret)

    watcher = ConfigDirWatcher(mount, local_cluster="c1")
    changes = dict(watcher.scan())
    assert sorted(changes) == ["c2", "c3"] and watcher.problems == {}
    cfg2 = changes["c2"]
    assert cfg2 is not None
    assert list(cfg2.config.endpoints) == ["https://c2.mesh.cilium.io:32379"]
    assert dict(cfg2.config.host_aliases) == {"c2.mesh.cilium.io": ("192.168.2.1",)}
    assert cfg2.config.trusted_ca_file == mount / "c2.etcd-client-ca.crt"
    assert cfg2.config.trusted_ca_file.read_bytes() == c2.access.ca_crt
    assert cfg2.config.cert_file and cfg2.config.cert_file.read_bytes() == c2.access.client_crt
    assert cfg2.config.key_file and cfg2.config.key_file.read_bytes() == c2.access.client_key
    # The agent dials the node address and verifies the server certificate for the mesh name.
    [target] = dial_targets(cfg2.config)
    assert (target.address, target.server_name, target.secure) == ("192.168.2.1:32379", "c2.mesh.cilium.io", True)
    cfg3 = changes["c3"]
    assert cfg3 is not None
    assert list(cfg3.config.endpoints) == ["https://mesh-c3.example.org:2379"] and not cfg3.config.host_aliases
    assert [t.address for t in dial_targets(cfg3.config)] == ["mesh-c3.example.org:2379"]

    # Disconnecting c2: the kubelet swaps the volume; the agent sees c2 go (and drains it).
    plan = plan_disconnect(c1, c2)
    c1 = applied(c1, plan)
    assert c1.mesh_secret is not None
    write_secret_volume(mount, c1.mesh_secret, generation=2)
    assert watcher.scan() == [("c2", None)]
    assert sorted(watcher.current) == ["c3"]
