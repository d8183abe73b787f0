"""NODE.json loading: the supervisor's document decodes; every bad field gets a message naming it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lab.node.config import NodeConfigError, load_config, parse_config


def doc(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    (tmp_path / "kubeconfig").write_text("apiVersion: v1\n")
    (tmp_path / "ca.crt").write_text("CA\n")
    base: dict[str, Any] = {
        "lab": "lab", "cluster": "c1", "cluster_id": 1, "node_name": "c1-n0", "node_index": 0,
        "pod_cidr": "10.1.0.0/24", "internal_ip": "192.168.1.1", "kubeconfig": str(tmp_path / "kubeconfig"),
        "state_dir": "/run/clustermesh-lab/lab/nodes/c1-n0",
        "cgroup_root": "/sys/fs/cgroup/unified/clustermesh-lab-lab/c1.n0", "api_service_host": "172.16.1.1",
        "api_service_port": 443, "api_ca_file": str(tmp_path / "ca.crt"),
    }  # fmt: skip
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def test_the_supervisors_document_loads_with_backoff_defaults(tmp_path: Path) -> None:
    path = tmp_path / "node-config.json"
    path.write_text(json.dumps(doc(tmp_path)))
    cfg = load_config(path)
    assert cfg.node_name == "c1-n0" and str(cfg.pod_network) == "10.1.0.0/24"
    assert cfg.restart_backoff == 1.0 and cfg.restart_backoff_max == 30.0
    assert cfg.state_path == Path("/run/clustermesh-lab/lab/nodes/c1-n0")


@pytest.mark.parametrize(("changes", "needle"), [
    ({"pod_cidr": "10.1.0.300/24"}, "pod_cidr"),
    ({"internal_ip": "nope"}, "internal_ip"),
    ({"cluster_id": 0}, "cluster_id"),
    ({"lab": "Lab!"}, "lab"),
    ({"state_dir": "/tmp/elsewhere"}, "state_dir"),
    ({"restart_backoff": 0}, "restart_backoff"),
    ({"restart_backoff": 5.0, "restart_backoff_max": 1.0}, "restart_backoff_max"),
    ({"kubeconfig": "/nonexistent/kubeconfig"}, "kubeconfig"),
    ({"node_index": "zero"}, "node_index"),
    ({"api_service_port": None}, "api_service_port"),
    ({"typo_field": 1}, "typo_field"),
])  # fmt: skip
def test_bad_fields_are_named(tmp_path: Path, changes: dict[str, Any], needle: str) -> None:
    with pytest.raises(NodeConfigError, match=needle):
        parse_config(json.dumps(doc(tmp_path, **changes)))


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(NodeConfigError, match="cannot read node config"):
        load_config(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(NodeConfigError, match="not valid JSON"):
        load_config(tmp_path / "broken.json")
