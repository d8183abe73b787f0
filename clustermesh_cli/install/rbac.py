"""Least-privilege RBAC rules: exactly what each component reads, and the one write it makes.

Derived from the code, not from Cilium's chart:

- the API server (``clustermesh_apiserver/server.py`` with ``resources.py``) lists and watches
  Namespaces, Services and EndpointSlices always; CiliumNodes, CiliumIdentities and
  CiliumEndpoints (or CiliumEndpointSlices) with ``--source cilium``; Nodes and Pods with
  ``--source kubernetes``; CustomResourceDefinitions and ServiceExports with MCS-API. It writes
  nothing to Kubernetes (its output is its etcd; no leases, no events), so it gets no write verb.
- the agent (``agent/policy/source.py``, ``agent/datapath/node.py``) watches NetworkPolicies,
  CiliumNetworkPolicies, CiliumClusterwideNetworkPolicies and Services (affinity annotations).
  With ``--encryption wireguard`` it publishes its WireGuard key on its own Node and CiliumNode
  (``agent/nodepublish.py``: ``get``, then a merge ``patch``; Cilium's agent does the same), so
  only then it gets ``get`` and ``patch`` on ``nodes`` and ``ciliumnodes``, and nothing else
  (no list/watch, no create: the objects are the node's own and already exist).

Cilium's chart also grants ``endpoints`` and CRDs unconditionally; neither is read here.
"""

from __future__ import annotations

from typing import Any, Final

from clustermesh_cli.install.options import InstallOptions

__all__ = ["READ_VERBS", "WRITE_VERBS", "PUBLISH_VERBS", "apiserver_rules", "agent_rules"]

READ_VERBS: Final = ("get", "list", "watch")
PUBLISH_VERBS: Final = ("get", "patch")
WRITE_VERBS: Final = frozenset({"create", "update", "patch", "delete", "deletecollection", "*"})


def _rule(group: str, *resources: str, verbs: tuple[str, ...] = READ_VERBS) -> dict[str, Any]:
    return {"apiGroups": [group], "resources": sorted(resources), "verbs": list(verbs)}


def apiserver_rules(options: InstallOptions) -> list[dict[str, Any]]:
    """What the API server reads with ``options.source`` (and MCS-API / CiliumEndpointSlices)."""
    core = {"namespaces", "services"}
    rules: list[dict[str, Any]] = []
    if options.source == "kubernetes":
        core |= {"nodes", "pods"}
    rules.append(_rule("", *core))
    rules.append(_rule("discovery.k8s.io", "endpointslices"))
    if options.source == "cilium":
        endpoints = "ciliumendpointslices" if options.enable_cilium_endpoint_slice else "ciliumendpoints"
        rules.append(_rule("cilium.io", "ciliumnodes", "ciliumidentities", endpoints))
    if options.enable_mcs_api:
        rules.append(_rule("apiextensions.k8s.io", "customresourcedefinitions"))
        rules.append(_rule("multicluster.x-k8s.io", "serviceexports"))
    return rules


def agent_rules(options: InstallOptions) -> list[dict[str, Any]]:
    """What the agent reads (policies and Services, whatever the API server's source) and, with
    encryption, the Node and CiliumNode it publishes its key on (both: the agent does not know the
    API server's source)."""
    rules = [
        _rule("", "services"),
        _rule("networking.k8s.io", "networkpolicies"),
        _rule("cilium.io", "ciliumnetworkpolicies", "ciliumclusterwidenetworkpolicies"),
    ]
    if options.encryption != "none":
        rules.append(_rule("", "nodes", verbs=PUBLISH_VERBS))
        rules.append(_rule("cilium.io", "ciliumnodes", verbs=PUBLISH_VERBS))
    return rules
