"""kind-configs/: the kind Cluster configs (names, disjoint subnets) and create-mesh.sh (syntax,
shellcheck, and what it runs, against stand-in kind/kubectl/docker/clustermesh commands)."""

from __future__ import annotations

import ipaddress
import itertools
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshcore.wire.clusterinfo import validate_cluster_name

ROOT = Path(__file__).resolve().parents[2] / "kind-configs"
SCRIPT = ROOT / "create-mesh.sh"
MESHES = {"two-clusters": 2, "three-clusters": 3}
LAB_UNDERLAY = ipaddress.ip_network("192.168.0.0/16")  # lab/README.md: every lab node is on it
Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def configs() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in sorted(ROOT.glob("*/*.yaml")):
        doc = yaml.safe_load(path.read_text())
        out.append((path, doc))
    return out


def test_every_mesh_has_its_clusters() -> None:
    for mesh, count in MESHES.items():
        files = sorted((ROOT / mesh).glob("*.yaml"))
        assert len(files) == count, f"{mesh}: expected {count} kind configs, found {[f.name for f in files]}"
    assert {p.parent.name for p, _ in configs()} == set(MESHES)


def test_configs_are_kind_clusters_with_valid_unique_names() -> None:
    names = []
    for path, doc in configs():
        assert doc["kind"] == "Cluster" and doc["apiVersion"] == "kind.x-k8s.io/v1alpha4", path
        name = doc["name"]
        validate_cluster_name(name)  # the kind name is also the mesh cluster name
        assert path.stem == name, f"{path}: file name and cluster name differ"
        net = doc["networking"]
        assert net["disableDefaultCNI"] is False, f"{path}: kindnet stays the CNI (API server --source kubernetes)"
        roles = [n["role"] for n in doc["nodes"]]
        assert roles.count("control-plane") == 1 and "worker" in roles, path
        for node in doc["nodes"]:
            mounts = {(m["hostPath"], m["containerPath"]) for m in node.get("extraMounts", [])}
            assert ("/usr/src", "/usr/src") in mounts, f"{path}: bcc needs the host's kernel headers in the node"
        names.append(name)
    assert len(names) == len(set(names)), f"cluster names must be unique: {names}"


def test_subnets_are_pairwise_disjoint_and_off_the_lab_underlay() -> None:
    nets: list[tuple[str, Net]] = []
    for path, doc in configs():
        for field in ("podSubnet", "serviceSubnet"):
            net = ipaddress.ip_network(doc["networking"][field])
            assert net.prefixlen <= 24, f"{path}: {field} {net} is too small for a cluster"
            nets.append((f"{doc['name']} {field}", net))
    assert len(nets) == 2 * len(configs())
    for (a_name, a), (b_name, b) in itertools.combinations(nets, 2):
        assert not a.overlaps(b), f"{a_name} {a} overlaps {b_name} {b}"
    for name, net in nets:
        assert not net.overlaps(LAB_UNDERLAY), f"{name} {net} overlaps the lab's underlay {LAB_UNDERLAY}"


def test_script_syntax() -> None:
    assert os.access(SCRIPT, os.X_OK), "create-mesh.sh must be executable"
    text = SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck is not installed (Debian package shellcheck; scripts/setup.sh should add it)")
def test_script_passes_shellcheck() -> None:
    proc = subprocess.run(["shellcheck", "--shell=bash", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---- what the script runs, against stand-ins that record their calls ----

STUB = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$CALLS"
case "$(basename "$0") $1 $2" in
  "kind get clusters") [ -f "$STATE/clusters" ] && cat "$STATE/clusters"; exit 0 ;;
  "kind create cluster") name=$(sed -n 's/^name: *//p' "$4"); echo "$name" >> "$STATE/clusters" ;;
  "kind get nodes") echo "$4-control-plane"; echo "$4-worker" ;;
esac
exit 0
"""


def _bin(tmp: Path, commands: list[str]) -> Path:
    bindir = tmp / "bin"
    bindir.mkdir()
    for name in commands:
        stub = bindir / name
        stub.write_text(STUB)
        stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    for tool in ("bash", "sed", "grep", "basename", "dirname", "cat", "printf"):  # the script's own needs
        found = shutil.which(tool)
        if found and not (bindir / tool).exists():
            (bindir / tool).symlink_to(found)
    return bindir


def _run(tmp: Path, *args: str, commands: list[str], extra_env: dict[str, str] | None = None
         ) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    bindir = _bin(tmp, commands)
    (tmp / "state").mkdir(exist_ok=True)
    env = {"PATH": str(bindir), "CALLS": str(tmp / "calls"), "STATE": str(tmp / "state"), "HOME": str(tmp),
           **(extra_env or {})}
    proc = subprocess.run([str(bindir / "bash"), str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=60)
    calls = (tmp / "calls").read_text().splitlines() if (tmp / "calls").exists() else []
    return proc, calls


@pytest.mark.parametrize("count", [2, 3])
def test_script_enables_every_cluster_connects_every_pair_and_waits(tmp_path: Path, count: int) -> None:
    proc, calls = _run(tmp_path, str(count), commands=["kind", "kubectl", "docker", "clustermesh"])
    assert proc.returncode == 0, proc.stderr
    mesh = "two-clusters" if count == 2 else "three-clusters"
    names = [p.stem for p in sorted((ROOT / mesh).glob("*.yaml"))]
    creates = [c for c in calls if c.startswith("kind create cluster")]
    assert creates == [f"kind create cluster --config {ROOT / mesh / n}.yaml" for n in names]
    mesh_calls = [c for c in calls if c.startswith("clustermesh ")]
    enables = [f"clustermesh enable --context kind-{n} --cluster-name {n} --cluster-id {i} --service-type NodePort "
               "--source kubernetes" for i, n in enumerate(names, 1)]
    connects = [f"clustermesh connect --context kind-{a} --destination-context kind-{b}"
                for a, b in itertools.combinations(names, 2)]
    statuses = [f"clustermesh status --context kind-{n} --wait" for n in names]
    assert mesh_calls == enables + connects + statuses
    bpffs = [c for c in calls if c.startswith("docker exec")]
    assert len(bpffs) == 2 * count and all("mount -t bpf bpf /sys/fs/bpf" in c for c in bpffs)


def test_script_reuses_existing_clusters_and_loads_an_image(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc, calls = _run(tmp_path, "2", commands=["kind", "kubectl", "podman", "clustermesh"],
                       extra_env={"KIND_EXPERIMENTAL_PROVIDER": "podman", "CLUSTERMESH_IMAGE": "example/cm:dev"})
    assert proc.returncode == 0, proc.stderr
    assert not any(c.startswith("docker") for c in calls) and any(c.startswith("podman exec") for c in calls)
    assert [c for c in calls if c.startswith("kind load")] == [
        f"kind load docker-image example/cm:dev --name {n}" for n in ("mesh2-c1", "mesh2-c2")]
    assert all(c.endswith("--image example/cm:dev") for c in calls if c.startswith("clustermesh enable"))
    assert (state / "clusters").read_text().split() == ["mesh2-c1", "mesh2-c2"]
    # a second run finds both clusters and creates none
    (tmp_path / "calls").unlink()
    shutil.rmtree(tmp_path / "bin")
    proc, calls = _run(tmp_path, "2", commands=["kind", "kubectl", "docker", "clustermesh"])
    assert proc.returncode == 0, proc.stderr
    assert not any(c.startswith("kind create") for c in calls)
    assert proc.stdout.count("exists; reusing it") == 2


@pytest.mark.parametrize(("missing", "hint"), [
    ("kind", "kind.sigs.k8s.io"), ("kubectl", "kubernetes.io/docs"), ("clustermesh", "pip install"),
    ("docker", "KIND_EXPERIMENTAL_PROVIDER"),
])
def test_script_says_what_is_missing(tmp_path: Path, missing: str, hint: str) -> None:
    present = [c for c in ("kind", "kubectl", "docker", "clustermesh") if c != missing]
    proc, calls = _run(tmp_path, "2", commands=present)
    assert proc.returncode == 1
    assert f"'{missing}' is not installed or not on PATH" in proc.stderr and hint in proc.stderr
    assert not any(c.startswith(("kind create", "clustermesh")) for c in calls)


@pytest.mark.parametrize("args", [["4"], ["two"], ["2", "3"]])
def test_script_rejects_bad_arguments(tmp_path: Path, args: list[str]) -> None:
    proc, calls = _run(tmp_path, *args, commands=["kind", "kubectl", "docker", "clustermesh"])
    assert proc.returncode == 2 and "usage:" in proc.stderr
    assert calls == []
