"""The encryption flags of ``clustermesh-agent``: parsed into :class:`~agent.config.AgentConfig`,
validated with messages naming the flag, and handed to the node datapath's config."""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.cli import main
from agent.config import AgentConfig, wireguard_device_name
from agent.datapath.node import NodeDatapathConfig
from meshcore.errors import ConfigError


def _config(tmp_path: Path, **kw: object) -> AgentConfig:
    (tmp_path / "cm").mkdir(exist_ok=True)
    base: dict[str, object] = dict(
        cluster_name="c1", cluster_id=1, node_name="n1", clustermesh_config=tmp_path / "cm",
        state_dir=tmp_path / "state", datapath="bpf", kvstore_config=tmp_path / "etcd.yaml",
    )  # fmt: skip
    base.update(kw)
    return AgentConfig(**base)  # type: ignore[arg-type]


def test_device_name_hash() -> None:
    digest = hashlib.sha256(b"c1/n1").hexdigest()[:8]
    assert wireguard_device_name("cmwg{hash}", "c1", "n1") == f"cmwg{digest}"
    assert wireguard_device_name("cilium_wg0", "c1", "n1") == "cilium_wg0"
    assert wireguard_device_name("cmwg{hash}", "c1", "n2") != wireguard_device_name("cmwg{hash}", "c1", "n1")


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"encryption": "ipsec"}, "--encryption must be one of none, wireguard"),
        ({"encryption_scope": "cluster"}, "--encryption-scope must be one of all, inter-cluster"),
        ({"wireguard_device": "toolongx{hash}"}, "--wireguard-device 'toolongx{hash}' gives the device name"),
        ({"wireguard_device": "bad name"}, "--wireguard-device"),
        ({"encryption": "wireguard", "wireguard_device": "cilium_vxlan"}, "must differ from --tunnel-device"),
        ({"wireguard_persistent_keepalive": -1}, "--wireguard-persistent-keepalive must be 0"),
        ({"node_encryption_opt_out_labels": "a in (b"}, "--node-encryption-opt-out-labels: unbalanced"),
        ({"strict_mode_cidr": "10.1.2.3/8"}, "--encryption-strict-mode-cidr '10.1.2.3/8' is not a network"),
        ({"strict_mode_cidr": "fd00::/64"}, "IPv4 only"),
        ({"strict_mode_allow_remote_node": True}, "needs --encryption-strict-mode-cidr"),
        ({"datapath": "none", "kvstore_config": None, "encryption": "wireguard"}, "needs --datapath bpf"),
    ],
)
def test_validation_names_the_flag(tmp_path: Path, kw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        _config(tmp_path, **kw).validate()


def test_valid_encryption_config_reaches_the_datapath(tmp_path: Path) -> None:
    config = _config(tmp_path, encryption="wireguard", wireguard_device="cmwg{hash}", wireguard_persistent_keepalive=25,
                     encryption_scope="inter-cluster", node_encryption=True, node_encryption_opt_out_labels="",
                     strict_mode_cidr="10.0.0.0/8", strict_mode_allow_remote_node=True,
                     kubeconfig=tmp_path / "kubeconfig")  # fmt: skip
    config.validate()
    enc = NodeDatapathConfig.from_agent(config).encryption
    assert enc.wireguard and enc.device == wireguard_device_name("cmwg{hash}", "c1", "n1")
    assert (enc.keepalive, enc.scope, enc.node_encryption, enc.opt_out_labels) == (25, "inter-cluster", True, "")
    assert (enc.strict_cidr, enc.strict_allow_remote_node) == ("10.0.0.0/8", True)
    assert (enc.state_dir, enc.kubeconfig) == (tmp_path / "state", tmp_path / "kubeconfig")
    # strict mode without WireGuard is allowed (everything in the CIDR is then dropped; logged)
    replace(config, encryption="none").validate()


def test_cli_flags(tmp_path: Path) -> None:
    (tmp_path / "cm").mkdir()
    base = ["--cluster-name", "c1", "--cluster-id", "1", "--node-name", "n1", "--clustermesh-config",
            str(tmp_path / "cm"), "--state-dir", str(tmp_path / "state"),
            "--kvstore-config", str(tmp_path / "x")]  # fmt: skip
    result = CliRunner().invoke(main, [*base, "--encryption", "wireguard", "--wireguard-device", "abcdefgh{hash}"])
    assert result.exit_code == 2 and "--wireguard-device 'abcdefgh{hash}'" in " ".join(result.output.split())
    result = CliRunner().invoke(main, [*base, "--encryption-strict-mode-cidr", "10.0.0.0/33"])
    assert result.exit_code == 2 and "--encryption-strict-mode-cidr" in result.output
    result = CliRunner().invoke(main, ["--help"])
    flat = " ".join(result.output.split())
    for flag in ("--encryption [none|wireguard]", "--wireguard-device NAME", "--wireguard-persistent-keepalive",
                 "--encryption-scope [all|inter-cluster]",
                 "--encryption-node-encryption / --no-encryption-node-encryption",
                 "--node-encryption-opt-out-labels SELECTOR", "--encryption-strict-mode-cidr CIDR",
                 "--encryption-strict-mode-allow-remote-node-identities"):  # fmt: skip
        assert flag in flat, flag
