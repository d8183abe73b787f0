"""Pure extraction of a cluster's mesh facts from its objects (as the API's JSON): the Service
address for NodePort and LoadBalancer, the cluster's identity, pod CIDRs and the TLS material."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from clustermesh_cli.mesh.access import (
    MeshAccessError,
    cluster_identity,
    peer_access,
    pod_cidrs,
    secret_data,
    service_address,
)


def svc(kind: str, ports: list[dict[str, Any]], ingress: list[dict[str, str]] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"name": "clustermesh-apiserver", "namespace": "kube-system"},
                           "spec": {"type": kind, "ports": ports}}
    if ingress is not None:
        obj["status"] = {"loadBalancer": {"ingress": ingress}}
    return obj


def node(name: str, ip: str | None, *, ready: bool | None = None, external: str | None = None,
         cidrs: list[str] | None = None) -> dict[str, Any]:
    addresses = [{"type": "Hostname", "address": name}]
    if ip:
        addresses.append({"type": "InternalIP", "address": ip})
    if external:
        addresses.append({"type": "ExternalIP", "address": external})
    status: dict[str, Any] = {"addresses": addresses}
    if ready is not None:
        status["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
    return {"metadata": {"name": name}, "spec": {"podCIDRs": cidrs or []}, "status": status}


def test_nodeport_uses_node_addresses_ready_first_and_the_node_port() -> None:
    service = svc("NodePort", [{"name": "etcd", "port": 2379, "nodePort": 32379}])
    nodes = [node("n3", "192.168.1.3", ready=True), node("n1", "192.168.1.1", ready=False),
             node("n2", "192.168.1.2", ready=True), node("n0", None, external="203.0.113.9"),
             node("n4", "192.168.1.4", ready=True)]
    assert service_address(service, nodes, context="c") == (("192.168.1.2", "192.168.1.3", "192.168.1.4"), 32379)
    assert service_address(service, [node("n0", None, external="203.0.113.9")], context="c") == (
        ("203.0.113.9",), 32379)


def test_nodeport_errors_say_what_is_missing() -> None:
    with pytest.raises(MeshAccessError, match="without a nodePort"):
        service_address(svc("NodePort", [{"port": 2379}]), [node("n", "10.0.0.1")], context="c")
    with pytest.raises(MeshAccessError, match="no Node has an InternalIP"):
        service_address(svc("NodePort", [{"port": 2379, "nodePort": 32379}]), [node("n", None)], context="c")


def test_port_choice_among_several() -> None:
    ports = [{"name": "metrics", "port": 9963, "nodePort": 30001}, {"name": "x", "port": 2379, "nodePort": 30002}]
    assert service_address(svc("NodePort", ports), [node("n", "10.0.0.1")], context="c")[1] == 30002
    with pytest.raises(MeshAccessError, match="no etcd port"):
        service_address(svc("NodePort", [{"name": "a", "port": 1}, {"name": "b", "port": 2}]), [], context="c")


def test_load_balancer_ips_else_hostnames_else_a_clear_error() -> None:
    ports = [{"name": "etcd", "port": 2379, "nodePort": 31000}]
    lb = svc("LoadBalancer", ports, [{"ip": "198.51.100.7"}, {"hostname": "lb.example.org"}])
    assert service_address(lb, [], context="c") == (("198.51.100.7",), 2379)
    lb = svc("LoadBalancer", ports, [{"hostname": "lb.example.org"}])
    assert service_address(lb, [], context="c") == (("lb.example.org",), 2379)
    with pytest.raises(MeshAccessError) as err:
        service_address(svc("LoadBalancer", ports, []), [], context="ctx-b")
    assert "without an address yet" in str(err.value) and "kubectl --context ctx-b" in str(err.value)
    with pytest.raises(MeshAccessError, match="ClusterIP, which other clusters cannot reach"):
        service_address(svc("ClusterIP", ports), [], context="c")


def test_cluster_identity() -> None:
    assert cluster_identity({"cluster-name": "c1", "cluster-id": "3"}, where="cm") == ("c1", 3, 255)
    assert cluster_identity({"cluster-name": "c1", "cluster-id": "3", "max-connected-clusters": "511"},
                            where="cm") == ("c1", 3, 511)
    with pytest.raises(MeshAccessError, match="has no cluster-id: the cluster is not enabled"):
        cluster_identity({"cluster-name": "c1"}, where="cm")
    with pytest.raises(MeshAccessError, match="cluster-id is 'x3', not a number"):
        cluster_identity({"cluster-name": "c1", "cluster-id": "x3"}, where="cm")


def test_pod_cidrs_and_secrets() -> None:
    nodes = [node("a", "1.1.1.1", cidrs=["10.1.0.0/24", "fd00::/64"]), node("b", "1.1.1.2", cidrs=["10.1.0.0/24"]),
             {"metadata": {"name": "old"}, "spec": {"podCIDR": "10.1.9.0/24"}}]
    assert pod_cidrs(nodes) == ("10.1.0.0/24", "fd00::/64", "10.1.9.0/24")
    secret = {"metadata": {"name": "s"}, "data": {"a": base64.b64encode(b"x\x00").decode()}}
    assert secret_data(secret) == {"a": b"x\x00"}
    with pytest.raises(MeshAccessError, match="not valid base64"):
        secret_data({"metadata": {"name": "s"}, "data": {"a": "%%%"}})
    access = peer_access(("1.1.1.1",), 32379, {"tls.crt": b"CA"}, {"tls.crt": b"C", "tls.key": b"K"}, context="c")
    assert (access.ca_crt, access.client_crt, access.client_key) == (b"CA", b"C", b"K")
    with pytest.raises(MeshAccessError, match="has no tls.key"):
        peer_access((), 1, {"ca.crt": b"CA"}, {"tls.crt": b"C"}, context="c")
    with pytest.raises(MeshAccessError, match="neither ca.crt nor tls.crt"):
        peer_access((), 1, {}, {"tls.crt": b"C", "tls.key": b"K"}, context="c")
