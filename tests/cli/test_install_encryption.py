"""The install's encryption options (pure): validation naming the flag, the agent arguments (only
when not default), the RBAC the key publication needs (and nothing more), the record in
``clustermesh-config`` that a later ``enable`` keeps, and the help that teaches the flags."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner
from kubernetes import client as kclient

from agent.cli import main as agent_main
from clustermesh_cli.enable.commands import enable
from clustermesh_cli.enable.resolve import EnableUsageError, config_defaults, resolve_options
from clustermesh_cli.install import InstallOptions, InstallOptionsError, names, render_manifests
from clustermesh_cli.install.cliopts import options_from_params
from clustermesh_cli.install.manifests import encryption_config
from clustermesh_cli.install.rbac import WRITE_VERBS
from clustermesh_cli.install.render import equivalent_command, render_command
from clustermesh_cli.install.yamlout import load_documents
from lab.node.podspec import expand

Obj = dict[str, Any]
WG: dict[str, Any] = {"encryption": "wireguard"}
FULL: dict[str, Any] = {**WG, "encryption_scope": "inter-cluster", "node_encryption": True,
                        "encryption_strict_mode_cidr": "10.0.0.0/8", "wireguard_device": "cmwg{hash}"}


def opts(**kw: Any) -> InstallOptions:
    return InstallOptions(cluster_name="c1", cluster_id=1, **kw)


def agent_args(options: InstallOptions) -> list[str]:
    ds = next(o for o in render_manifests(options) if o["kind"] == "DaemonSet")
    return list(ds["spec"]["template"]["spec"]["containers"][0]["args"])


def agent_rules(options: InstallOptions) -> list[Obj]:
    role = next(o for o in render_manifests(options)
                if o["kind"] == "ClusterRole" and o["metadata"]["name"] == names.AGENT)
    return list(role["rules"])


def cluster_config(options: InstallOptions) -> dict[str, str]:
    cm = next(o for o in render_manifests(options) if o["metadata"]["name"] == names.CONFIG_MAP)
    return dict(cm["data"])


# ---- validation ----

@pytest.mark.parametrize(("changes", "message"), [
    ({"encryption": "ipsec"}, "--encryption 'ipsec': must be one of none, wireguard"),
    ({**WG, "encryption_scope": "intra"}, "--encryption-scope 'intra': must be one of all, inter-cluster"),
    ({**WG, "encryption_strict_mode_cidr": "10.0.0.1/8"}, "--encryption-strict-mode-cidr '10.0.0.1/8': is not a CIDR"),
    ({**WG, "encryption_strict_mode_cidr": "nope"}, "--encryption-strict-mode-cidr 'nope': is not a CIDR"),
    ({**WG, "encryption_strict_mode_cidr": "fd00::/64"}, "must be an IPv4 CIDR (strict mode is IPv4 only"),
    ({**WG, "wireguard_device": "a-much-too-long-name"}, "--wireguard-device 'a-much-too-long-name': must be a"),
    ({**WG, "wireguard_device": "wg{hash}toolong"}, "(a {hash} counts as 8)"),
    ({**WG, "wireguard_device": "wg{node}"}, "--wireguard-device 'wg{node}'"),
    ({**WG, "wireguard_device": "wg/0"}, "--wireguard-device 'wg/0'"),
    ({**WG, "wireguard_device": "wg 0"}, "letters, digits, '_', '.' or '-'"),
    ({"encryption_strict_mode_cidr": "10.0.0.0/8"},
     "--encryption-strict-mode-cidr '10.0.0.0/8': needs --encryption wireguard"),
    ({"encryption_scope": "inter-cluster"}, "--encryption-scope 'inter-cluster': needs --encryption wireguard"),
    ({"node_encryption": True}, "--node-encryption True: needs --encryption wireguard"),
])
def test_invalid_encryption_options_name_their_flag(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(InstallOptionsError) as err:
        opts(**changes)
    assert message in str(err.value)


def test_valid_encryption_options() -> None:
    assert opts(**FULL).wireguard_device == "cmwg{hash}"
    assert opts(**WG, wireguard_device="wg{hash}abc").wireguard_device == "wg{hash}abc"  # 13 characters
    assert opts(wireguard_device="wg1").encryption == "none"  # a name alone encrypts nothing: allowed, unused


# ---- rendering ----

def test_defaults_render_no_encryption_at_all() -> None:
    defaults = opts()
    assert not any(a.startswith(("--encryption", "--wireguard")) for a in agent_args(defaults))
    assert encryption_config(defaults) == {} and "encryption" not in cluster_config(defaults)
    assert all(set(r["verbs"]) == {"get", "list", "watch"} for r in agent_rules(defaults))
    # a device name without encryption is not rendered either
    assert agent_args(opts(wireguard_device="wg1")) == agent_args(defaults)


def test_wireguard_renders_only_the_flags_that_differ_from_the_agents_defaults() -> None:
    base = agent_args(opts())
    assert agent_args(opts(**WG)) == [*base, "--encryption", "wireguard"]
    assert agent_args(opts(**FULL, agent_extra_args=("--x", "1"))) == [
        *base, "--encryption", "wireguard", "--wireguard-device", "cmwg{hash}", "--encryption-scope", "inter-cluster",
        "--encryption-node-encryption", "--encryption-strict-mode-cidr", "10.0.0.0/8", "--x", "1"]
    assert agent_args(opts(**WG, wireguard_device="cilium_wg0")) == [*base, "--encryption", "wireguard"]


_AGENT_HAS_ENCRYPTION = any(p.name == "encryption" for p in agent_main.params)


@pytest.mark.skipif(not _AGENT_HAS_ENCRYPTION, reason="clustermesh-agent has no --encryption yet (agent part)")
def test_encryption_arguments_parse_with_the_real_agent_command() -> None:
    args = [expand(a, {"NODE_NAME": "c1-n0"}) for a in agent_args(opts(**FULL))]
    params = agent_main.make_context("clustermesh-agent", args).params
    assert params["encryption"] == "wireguard"
    assert params["wireguard_device"] == "cmwg{hash}"
    assert params["encryption_scope"] == "inter-cluster"
    assert params["node_encryption"] is True
    assert str(params["strict_mode_cidr"]) == "10.0.0.0/8"


def test_wireguard_rbac_is_get_and_patch_on_the_nodes_own_objects_only() -> None:
    rules = agent_rules(opts(**WG))
    writes = [r for r in rules if set(r["verbs"]) & WRITE_VERBS]
    assert writes == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]},
        {"apiGroups": ["cilium.io"], "resources": ["ciliumnodes"], "verbs": ["get", "patch"]},
    ]
    assert rules[: len(agent_rules(opts()))] == agent_rules(opts())  # the read rules are unchanged
    for source in ("cilium", "kubernetes"):  # the agent patches whichever exists, whatever the source
        assert agent_rules(opts(**WG, source=source)) == rules


def test_encrypted_objects_survive_the_official_clients_models() -> None:
    api = kclient.ApiClient()
    for obj in render_manifests(opts(**FULL)):
        version = obj["apiVersion"].split("/")[-1]
        model = api.deserialize(json.dumps(obj), f"{version.capitalize()}{obj['kind']}", "application/json")
        assert api.sanitize_for_serialization(model) == obj  # type: ignore[no-untyped-call]


# ---- the record in clustermesh-config, and enable's precedence ----

def test_the_cluster_record_keeps_encryption_for_the_next_enable() -> None:
    data = cluster_config(opts(**FULL))
    assert {k: v for k, v in data.items() if "encryption" in k or "wireguard" in k} == {
        "encryption": "wireguard", "encryption-scope": "inter-cluster", "wireguard-device": "cmwg{hash}",
        "encryption-node-encryption": "true", "encryption-strict-mode-cidr": "10.0.0.0/8"}
    existing = config_defaults(data)
    again = resolve_options(cluster_name=None, cluster_id=None, params={}, base=None, existing=existing, context="x")
    assert again == opts(**FULL)
    # --encryption none turns it off, with every setting that only made sense with it
    off = resolve_options(cluster_name=None, cluster_id=None, params={"encryption": "none"}, base=opts(**FULL),
                          existing=existing, context="x")
    assert off == opts()
    # a setting given with --encryption none is still refused
    with pytest.raises(EnableUsageError, match="--encryption-strict-mode-cidr '10.1.0.0/16': needs --encryption"):
        resolve_options(cluster_name=None, cluster_id=None, existing=existing, context="x", base=None,
                        params={"encryption": "none", "encryption_strict_mode_cidr": "10.1.0.0/16"})


def test_cilium_config_does_not_set_our_encryption() -> None:
    assert "encryption" not in config_defaults({"cluster-name": "c1", "encryption": "wireguard"}, cilium=True)


# ---- flags and help ----

def test_flags_become_options() -> None:
    options = options_from_params("c1", 1, encryption="wireguard", encryption_scope="inter-cluster",
                                  node_encryption=True, encryption_strict_mode_cidr="10.0.0.0/8",
                                  wireguard_device="cmwg{hash}")
    assert options == opts(**FULL)


def test_render_command_with_encryption_flags() -> None:
    result = CliRunner().invoke(render_command, ["--cluster-name", "c1", "--cluster-id", "1", "--encryption",
                                                 "wireguard", "--encryption-strict-mode-cidr", "10.0.0.0/8"])
    assert result.exit_code == 0, result.output
    assert load_documents(result.output) == render_manifests(opts(**WG, encryption_strict_mode_cidr="10.0.0.0/8"))
    assert result.output.splitlines()[0].endswith(
        "--cluster-name c1 --cluster-id 1 --encryption wireguard --encryption-strict-mode-cidr 10.0.0.0/8")
    assert equivalent_command(opts(**WG, node_encryption=True)).endswith("--encryption wireguard --node-encryption")
    bad = CliRunner().invoke(render_command, ["--encryption-strict-mode-cidr", "10.0.0.0/8"])
    assert bad.exit_code == 2 and "needs --encryption wireguard" in bad.output


def test_enable_help_teaches_the_encryption_flags() -> None:
    result = CliRunner().invoke(enable, ["--help"], terminal_width=400)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for expected in ("--encryption [none|wireguard]", "encryption.enabled=true", "encryption.type=wireguard",
                     "encryption.strictMode.cidr=CIDR", "encryption.nodeEncryption=true", "--encryption-scope",
                     "[all|inter-cluster]", "--wireguard-device", "[default: cilium_wg0]",
                     "network.cilium.io/wg-pub-key", "--node-encryption / --no-node-encryption",
                     "--encryption-strict-mode-cidr CIDR"):
        assert expected in text, expected
