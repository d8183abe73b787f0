"""`lab down`'s sweep removes every kind of trace a lab leaves, found by the lab's name alone."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from lab.net import nsutil
from lab.supervisor import cleanup, kubeconfig
from lab.supervisor.spec import ENV_MARKER, cgroup_unified_root, plan

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def _sleep(env_marker: str | None = None, argv_prefix: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    if env_marker:
        env[ENV_MARKER] = env_marker
    else:
        env.pop(ENV_MARKER, None)
    return subprocess.Popen([*argv_prefix, "sleep", "300"], env=env, start_new_session=True)


@pytest.fixture
def name() -> Iterator[str]:
    lab = "t" + secrets.token_hex(3)[:5]
    yield lab
    cleanup.sweep(lab)


def test_sweep_removes_processes_namespaces_cgroups_mounts_pins_paths_and_contexts(
        name: str, tmp_path: Path) -> None:
    user_kc = tmp_path / "kubeconfig"
    user_kc.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Config", "contexts": [
        {"name": "prod", "context": {"cluster": "prod", "user": "prod"}}], "clusters": [], "users": []}))
    spec = plan(name, 1, 1, api_ports=[1], kubeconfig_merged=str(user_kc))
    spec.save()
    kubeconfig.merge_into(user_kc, kubeconfig.context_entry(spec.clusters[0].context, "https://x", b"CA"))
    procs = []
    # a supervisor (answers SIGTERM by dying), a stray lab process, a process inside a lab namespace
    procs.append(sup := _sleep(name))
    (spec.state_dir / "supervisor.pid").write_text(str(sup.pid))
    procs.append(_sleep(name))
    node = spec.nodes[0]
    nsutil.create_namespace(node.netns)
    nsutil.create_namespace(f"{node.netns}.default.pod")
    procs.append(_sleep(None, ("nsenter", f"--net=/run/netns/{node.netns}", "--")))
    # a pod cgroup with a process in it
    pod_cg = spec.node_cgroup(node) / "uid-1"
    pod_cg.mkdir(parents=True)
    procs.append(in_cg := _sleep(None))
    (pod_cg / "cgroup.procs").write_text(str(in_cg.pid))
    # a mount below the state dir, a pinned map, a created mount point
    mnt = spec.node_dir(node.name) / "pods" / "x" / "volumes" / "v"
    mnt.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mnt)], check=True)
    spec.bpffs_dir.mkdir(parents=True)
    subprocess.run(["bpftool", "map", "create", str(spec.bpffs_dir / "m"), "type", "hash", "key", "4", "value",
                    "4", "entries", "4", "name", "labsweep"], check=True)
    made = tmp_path / "made" / "mountpoint"
    made.mkdir(parents=True)
    (spec.node_dir(node.name) / "pods" / "x" / "created-paths.json").write_text(json.dumps([str(made)]))
    other = _sleep(None)  # not the lab's: must survive
    try:
        report = cleanup.sweep(name)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.05)
        assert all(p.poll() is not None for p in procs), [p.pid for p in procs if p.poll() is None]
        assert other.poll() is None
        assert nsutil.namespaces_with_prefix(name) == []
        assert not (cgroup_unified_root() / f"clustermesh-lab-{name}").exists()
        assert cleanup.mounts_below([spec.state_dir]) == []
        assert not spec.bpffs_dir.exists()
        assert not made.exists() and made.parent.exists()
        assert not spec.state_dir.exists()
        doc = kubeconfig.read(user_kc)
        assert doc is not None and [c["name"] for c in doc["contexts"]] == ["prod"]
        assert report.contexts == [spec.clusters[0].context] and len(report.namespaces) == 2
        assert cleanup.sweep(name).empty  # a second sweep finds nothing
    finally:
        other.kill()
        for p in procs:
            p.kill()
            p.wait()
        other.wait()


def test_sweep_of_an_unknown_lab_is_a_no_op(name: str) -> None:
    assert cleanup.sweep(name).empty


def test_sweep_keeps_mount_points_another_lab_still_records(name: str, tmp_path: Path) -> None:
    other = "u" + secrets.token_hex(3)[:5]
    shared = tmp_path / "var" / "lib" / "cilium"
    shared.mkdir(parents=True)
    try:
        for lab in (name, other):
            spec = plan(lab, 1, 1, api_ports=[1])
            spec.save()
            record = spec.node_dir(spec.nodes[0].name) / "pods" / "p" / "created-paths.json"
            record.parent.mkdir(parents=True)
            record.write_text(json.dumps([str(shared)]))
        cleanup.sweep(name)
        assert shared.exists(), "a mount point another lab's pods use was removed"
        cleanup.sweep(other)
        assert not shared.exists()
    finally:
        cleanup.sweep(other)
