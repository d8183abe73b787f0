"""The lab's install options and agent helpers (pure; no lab is started): the rendered manifests
point at the lab's per-lab paths and addresses, and the agents' readiness is judged as cilium-cli
does."""

from __future__ import annotations

from typing import Any

import yaml

from clustermesh_cli.install import names, render_manifests
from clustermesh_cli.install.manifests import CGROUP_MOUNT
from lab.mesh import agent_pin_root, agent_socket, agent_state_root, lab_cluster_at, lab_install_options, peer_blockers
from lab.supervisor.spec import plan


def _by_kind(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(o for o in objs if o["kind"] == kind)


def test_lab_options_render_the_labs_paths_and_addresses() -> None:
    spec = plan("mx", 2, 2, api_ports=[40001, 40002], api_internal_ports=[40003, 40004])
    c2 = spec.cluster("c2")
    options = lab_install_options(spec, c2)
    assert (options.cluster_name, options.cluster_id, options.source) == ("c2", 2, "kubernetes")
    objs = render_manifests(options)
    ds = _by_kind(objs, "DaemonSet")["spec"]["template"]["spec"]
    args = ds["containers"][0]["args"]
    flag = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}
    assert flag["--pin-root"] == f"/sys/fs/bpf/{spec.bpffs_dir.name}"
    assert flag["--cgroup"] == f"{CGROUP_MOUNT}/{spec.cgroup_dir.name}/$(NODE_NAME)"
    assert flag["--underlay-device"] == "mxul"
    host_paths = {v["name"]: v["hostPath"]["path"] for v in ds["volumes"] if "hostPath" in v}
    assert host_paths["agent-state"] == str(agent_state_root(spec)) == "/run/clustermesh-lab/mx/agents"
    assert host_paths["cgroup"] == "/sys/fs/cgroup/unified"
    config = next(o for o in objs if o["metadata"]["name"] == names.AGENT_CONFIG_MAP)
    kubeconfig = yaml.safe_load(config["data"][names.AGENT_KUBECONFIG_FILE])
    assert kubeconfig["clusters"][0]["cluster"]["server"] == f"https://{c2.api_service_ip}:443"
    kvstore = yaml.safe_load(config["data"][names.AGENT_KVSTORE_FILE])
    assert kvstore["endpoints"] == [f"https://clustermesh-apiserver.kube-system.svc:{names.DEFAULT_NODE_PORT}"]
    assert kvstore["cilium-host-aliases"] == [{"hostname": "clustermesh-apiserver.kube-system.svc",
                                               "ips": ["127.0.0.1"]}]
    assert agent_pin_root(spec) == spec.bpffs_dir
    assert agent_socket(spec, "c2-n1") == agent_state_root(spec) / "c2-n1" / "agent.sock"
    assert lab_install_options(spec, c2, "cilium").source == "cilium"


def test_no_lab_serves_an_unknown_address() -> None:
    assert lab_cluster_at("https://127.0.0.1:1") is None


def test_peer_blockers_follow_cilium_clis_reasons() -> None:
    ready: dict[str, Any] = {"name": "c2", "ready": True, "connected": True, "config": {"retrieved": True},
                             "synced": {"nodes": True, "endpoints": True, "identities": True, "services": True}}
    assert peer_blockers({"cluster-mesh": {"clusters": [ready]}}, {"c2"}) == []
    syncing = {**ready, "ready": False, "synced": {**ready["synced"], "endpoints": False}}
    assert peer_blockers({"cluster-mesh": {"clusters": [syncing]}}, {"c2", "c3"}) == [
        "c3: no config (not in its cilium-clustermesh volume)",
        "c2: synchronization in progress for endpoints",
    ]
    assert peer_blockers({}, {"c2"}) == ["c2: no config (not in its cilium-clustermesh volume)"]
