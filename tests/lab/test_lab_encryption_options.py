"""``lab up --encryption`` / ``--encryption-strict-mode-cidr`` (no lab is started): the spec records
them, every cluster's install gets them with a WireGuard device name unique per node on this host,
bad values are refused before anything is built, and ``lab status`` shows the mode."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from agent.config import wireguard_device_name
from clustermesh_cli.install import render_manifests
from clustermesh_cli.lab import _status_doc, lab
from encryption.wireguard.device import transition_device_name
from lab.mesh import lab_install_options
from lab.supervisor import cleanup
from lab.supervisor.spec import (
    LabSpecError,
    from_dict,
    plan,
    wireguard_device_pattern,
    wireguard_device_template,
)


def agent_args(spec_name: str, **kw: object) -> list[str]:
    spec = plan(spec_name, 2, 2, **kw)  # type: ignore[arg-type]
    objs = render_manifests(lab_install_options(spec, spec.cluster("c2")))
    ds = next(o for o in objs if o["kind"] == "DaemonSet")
    return list(ds["spec"]["template"]["spec"]["containers"][0]["args"])


def test_the_spec_records_encryption_and_old_specs_read_as_none() -> None:
    spec = plan("ex", 1, 1, encryption="wireguard", encryption_strict_mode_cidr="10.0.0.0/8")
    again = from_dict(json.loads(spec.to_json()))
    assert (again.encryption, again.encryption_strict_mode_cidr) == ("wireguard", "10.0.0.0/8")
    old = json.loads(plan("ex", 1, 1).to_json())
    del old["encryption"], old["encryption_strict_mode_cidr"]
    assert (from_dict(old).encryption, from_dict(old).encryption_strict_mode_cidr) == ("none", None)
    with pytest.raises(LabSpecError, match="--encryption must be none or wireguard"):
        plan("ex", 1, 1, encryption="ipsec")


def test_every_cluster_gets_the_encryption_flags_with_a_per_lab_device() -> None:
    base = agent_args("ex")
    assert not any(a.startswith(("--encryption", "--wireguard")) for a in base)
    args = agent_args("ex", encryption="wireguard", encryption_strict_mode_cidr="10.0.0.0/8")
    assert args == [*base, "--encryption", "wireguard", "--wireguard-device", wireguard_device_template("ex"),
                    "--encryption-strict-mode-cidr", "10.0.0.0/8"]


def test_device_names_are_unique_per_node_on_this_host_and_recognisable_per_lab() -> None:
    template = wireguard_device_template("ex")
    assert template.startswith("cmwg") and template.endswith("{hash}") and len(template) == 4 + 3 + 6
    names = {lab_name: {wireguard_device_name(wireguard_device_template(lab_name), c, f"{c}-n{j}")
                        for c in ("c1", "c2", "c3") for j in range(4)}
             for lab_name in ("lab", "ex", "wgpub")}
    for lab_name, devices in names.items():
        assert len(devices) == 12 and all(len(d) == 15 for d in devices)
        assert all(wireguard_device_pattern(lab_name).fullmatch(d) for d in devices)
        others = set().union(*(v for k, v in names.items() if k != lab_name))
        assert not devices & others
        assert not any(wireguard_device_pattern(lab_name).fullmatch(d) for d in others)
        assert all(wireguard_device_pattern(lab_name).fullmatch(transition_device_name(d)) for d in devices)
    # the agent expands the template the lab renders into a valid device name
    assert wireguard_device_pattern("ex").fullmatch(wireguard_device_name(template, "c1", "c1-n0"))


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="lab up needs root")


@needs_root
@pytest.mark.parametrize(("argv", "message"), [
    (["--encryption-strict-mode-cidr", "10.0.0.0/8"], "--encryption-strict-mode-cidr '10.0.0.0/8': needs --encryption"),
    (["--encryption", "wireguard", "--encryption-strict-mode-cidr", "10.0.0.1/8"], "is not a CIDR"),
    (["--encryption", "wireguard", "--encryption-strict-mode-cidr", "fd00::/8"], "must be an IPv4 CIDR"),
    (["--encryption", "ipsec"], "'ipsec' is not one of 'none', 'wireguard'"),
])
def test_lab_up_refuses_bad_encryption_flags_before_building_anything(argv: list[str], message: str) -> None:
    name = "t" + secrets.token_hex(3)[:5]
    result = CliRunner().invoke(lab, ["up", "--name", name, *argv])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert cleanup.sweep(name).empty  # nothing was built


def test_lab_up_help_shows_the_encryption_flags() -> None:
    result = CliRunner().invoke(lab, ["up", "--help"], terminal_width=300)
    text = " ".join(result.output.split())
    assert "--encryption [none|wireguard]" in text and "[default: none]" in text
    assert "--encryption-strict-mode-cidr CIDR" in text


@pytest.fixture
def saved_spec() -> Iterator[str]:
    name = "t" + secrets.token_hex(3)[:5]
    spec = plan(name, 1, 1, api_ports=[1], api_internal_ports=[2], encryption="wireguard",
                encryption_strict_mode_cidr="10.0.0.0/8")
    spec.save()
    try:
        yield name
    finally:
        cleanup.sweep(name)


@needs_root
def test_lab_status_shows_the_encryption_mode(saved_spec: str) -> None:
    from lab.supervisor.spec import load

    doc = _status_doc(load(saved_spec))
    assert (doc["encryption"], doc["encryption_strict_mode_cidr"]) == ("wireguard", "10.0.0.0/8")
    assert doc["nodes"][0]["wg_pub_key"] is None  # the API is not up: no key seen
    result = CliRunner().invoke(lab, ["status", "--name", saved_spec])
    assert result.exit_code == 0, result.output
    device = wireguard_device_template(saved_spec)
    assert f"routing mode tunnel, encryption wireguard (devices {device}, strict mode 10.0.0.0/8)" in result.output
    assert "WG_PUB_KEY" in result.output
