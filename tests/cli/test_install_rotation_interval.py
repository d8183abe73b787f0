"""``clustermesh enable --wireguard-key-rotation-interval`` (pure): validation naming the flag, the
agent argument in the DaemonSet (only when on), the record in ``clustermesh-config`` that a later
``enable`` keeps, the help, and ``lab up`` handing it to every cluster's install."""

from __future__ import annotations

import json
from typing import Any

import click
import pytest
from click.testing import CliRunner

from agent.cli import main as agent_main
from clustermesh_cli.enable.commands import enable
from clustermesh_cli.enable.resolve import EnableUsageError, config_defaults, resolve_options
from clustermesh_cli.install import InstallOptions, InstallOptionsError, names, render_manifests
from clustermesh_cli.install.cliopts import options_from_params
from clustermesh_cli.install.render import render_command
from clustermesh_cli.install.yamlout import load_documents
from clustermesh_cli.lab import _check_encryption
from lab.mesh import lab_install_options
from lab.node.podspec import expand
from lab.supervisor.spec import from_dict, plan

WG: dict[str, Any] = {"encryption": "wireguard"}
MONTH = 720 * 3600.0


def opts(**kw: Any) -> InstallOptions:
    return InstallOptions(cluster_name="c1", cluster_id=1, **kw)


def agent_args(options: InstallOptions) -> list[str]:
    ds = next(o for o in render_manifests(options) if o["kind"] == "DaemonSet")
    return list(ds["spec"]["template"]["spec"]["containers"][0]["args"])


def cluster_config(options: InstallOptions) -> dict[str, str]:
    cm = next(o for o in render_manifests(options) if o["metadata"]["name"] == names.CONFIG_MAP)
    return dict(cm["data"])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"wireguard_key_rotation_interval": 3600.0},
         "--wireguard-key-rotation-interval 3600.0: needs --encryption wireguard"),
        ({**WG, "wireguard_key_rotation_interval": -1.0}, "--wireguard-key-rotation-interval -1.0: must be 0 (off)"),
        ({**WG, "wireguard_key_rotation_interval": float("inf")}, "must be 0 (off) or a duration"),
        ({**WG, "wireguard_key_rotation_interval": "720h"}, "must be 0 (off) or a duration"),
    ],
)  # fmt: skip
def test_invalid_intervals_name_the_flag(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(InstallOptionsError) as err:
        opts(**changes)
    assert message in str(err.value)


def test_the_daemonset_passes_the_interval_only_when_on() -> None:
    base = agent_args(opts(**WG))
    assert agent_args(opts(**WG, wireguard_key_rotation_interval=0.0)) == base
    assert agent_args(opts(**WG, wireguard_key_rotation_interval=MONTH)) == [
        *base, "--wireguard-key-rotation-interval", "720h"]  # fmt: skip
    assert agent_args(opts(**WG, wireguard_key_rotation_interval=5400.0))[-2:] == [
        "--wireguard-key-rotation-interval", "1h30m"]  # fmt: skip


def test_the_rendered_flag_parses_with_the_real_agent_command() -> None:
    args = [expand(a, {"NODE_NAME": "c1-n0"}) for a in agent_args(opts(**WG, wireguard_key_rotation_interval=MONTH))]
    params = agent_main.make_context("clustermesh-agent", args).params
    assert params["wireguard_key_rotation_interval"] == MONTH


def test_the_record_keeps_the_interval_for_the_next_enable() -> None:
    options = opts(**WG, wireguard_key_rotation_interval=MONTH)
    data = cluster_config(options)
    assert data["wireguard-key-rotation-interval"] == "720h"
    assert "wireguard-key-rotation-interval" not in cluster_config(opts(**WG))
    existing = config_defaults(data)
    assert existing["wireguard_key_rotation_interval"] == MONTH
    again = resolve_options(cluster_name=None, cluster_id=None, params={}, base=None, existing=existing, context="x")
    assert again == options
    # 0 turns it off, and the next enable keeps it off
    off = resolve_options(cluster_name=None, cluster_id=None, params={"wireguard_key_rotation_interval": 0.0},
                          base=None, existing=existing, context="x")  # fmt: skip
    assert off == opts(**WG)
    # --encryption none drops it with the other encryption settings
    none = resolve_options(cluster_name=None, cluster_id=None, params={"encryption": "none"}, base=None,
                           existing=existing, context="x")  # fmt: skip
    assert none == opts()
    with pytest.raises(EnableUsageError, match="--wireguard-key-rotation-interval 60.0: needs --encryption"):
        resolve_options(cluster_name="c1", cluster_id=1, existing={}, context="x", base=None,
                        params={"wireguard_key_rotation_interval": 60.0})  # fmt: skip
    # a hand-edited record that is no duration is ignored (the default then)
    assert "wireguard_key_rotation_interval" not in config_defaults({**data, "wireguard-key-rotation-interval": "x"})


def test_the_flag_takes_go_durations_and_zero() -> None:
    assert options_from_params("c1", 1, encryption="wireguard", wireguard_key_rotation_interval=MONTH) == opts(
        **WG, wireguard_key_rotation_interval=MONTH)  # fmt: skip
    runner = CliRunner()
    result = runner.invoke(render_command, ["--encryption", "wireguard", "--wireguard-key-rotation-interval", "720h"])
    assert result.exit_code == 0, result.output
    rendered = load_documents(result.output)
    assert rendered == render_manifests(InstallOptions(cluster_name="cluster1", cluster_id=1, **WG,
                                                       wireguard_key_rotation_interval=MONTH))  # fmt: skip
    zero = runner.invoke(render_command, ["--encryption", "wireguard", "--wireguard-key-rotation-interval", "0"])
    assert zero.exit_code == 0 and "--wireguard-key-rotation-interval" not in zero.output
    bad = runner.invoke(render_command, ["--encryption", "wireguard", "--wireguard-key-rotation-interval", "soon"])
    assert bad.exit_code == 2 and "'soon' is not a duration" in bad.output
    alone = runner.invoke(render_command, ["--wireguard-key-rotation-interval", "1h"])
    assert alone.exit_code == 2 and "needs --encryption wireguard" in alone.output


def test_enable_help_teaches_the_flag() -> None:
    result = CliRunner().invoke(enable, ["--help"], terminal_width=400)
    text = " ".join(result.output.split())
    assert "--wireguard-key-rotation-interval DURATION" in text
    assert "make-before-break" in text and "clustermesh encryption rotate" in text


def test_lab_up_hands_the_interval_to_every_cluster() -> None:
    spec = plan("ex", 2, 1, encryption="wireguard", wireguard_key_rotation_interval=600.0)
    assert from_dict(json.loads(spec.to_json())).wireguard_key_rotation_interval == 600.0
    old = json.loads(plan("ex", 1, 1).to_json())
    del old["wireguard_key_rotation_interval"]
    assert from_dict(old).wireguard_key_rotation_interval == 0.0  # specs of earlier labs
    for cluster in spec.clusters:
        assert agent_args(lab_install_options(spec, cluster))[-2:] == ["--wireguard-key-rotation-interval", "10m"]
    with pytest.raises(click.UsageError, match="--wireguard-key-rotation-interval 600.0: needs --encryption"):
        _check_encryption("ex", "none", None, 600.0)
