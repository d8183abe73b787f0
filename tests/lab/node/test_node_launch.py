"""The launcher on its own (real fork, mount and UTS namespaces, bind mounts) and the mount-point
bookkeeping (real directories under a temporary labs root)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from lab.node import mountpoints
from lab.node.containers import ContainerRun
from lab.node.launch import LaunchSpec, MountSpec
from lab.node.layout import CREATED_PATHS, PodDir, parse_pod_dir_name, pod_dir_name

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount and UTS namespaces)")


def run_launcher(tmp_path: Path, spec: LaunchSpec) -> tuple[int, str]:
    spec_file = tmp_path / "spec.json"
    spec_file.write_bytes(msgspec.json.encode(spec))
    proc = subprocess.run([sys.executable, "-m", "lab.node.launch", str(spec_file)], capture_output=True, text=True,
                          timeout=30)
    return proc.returncode, proc.stdout + proc.stderr


@needs_root
def test_launcher_runs_the_command_with_its_mounts_host_name_and_reports(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "file").write_text("from the volume")
    target = tmp_path / "target"
    target.mkdir()
    script = ("import os, socket; print(socket.gethostname(), open('target/file').read(), os.getcwd());"
              "open('target/new', 'w')")
    spec = LaunchSpec(argv=["python3", "-c", script], env={"PATH": str(Path(sys.executable).parent)},
                      pid_file=str(tmp_path / "0.pid.json"), exit_file=str(tmp_path / "0.exit.json"),
                      cwd=str(tmp_path), hostname="web-1", mounts=[MountSpec(str(src), str(target), read_only=True)])
    code, out = run_launcher(tmp_path, spec)
    assert code == 0, out
    assert "web-1 from the volume " + str(tmp_path) in out
    assert "Read-only file system" in out  # the read-only mount refused the write
    pid = json.loads((tmp_path / "0.pid.json").read_text())
    ended = json.loads((tmp_path / "0.exit.json").read_text())
    assert isinstance(pid["pid"], int) and pid["start_time"] > 0
    assert ended["exit_code"] == 1 and ended["reason"] == "Error" and ended["signal"] is None
    assert not any(target.iterdir()), "the bind mount stayed in the container's mount namespace"


@needs_root
def test_launcher_reports_a_start_error(tmp_path: Path) -> None:
    spec = LaunchSpec(argv=["no-such-program"], env={"PATH": "/nonexistent"}, pid_file=str(tmp_path / "p.json"),
                      exit_file=str(tmp_path / "e.json"))
    code, out = run_launcher(tmp_path, spec)
    assert code == 0 and "executable file not found in $PATH" in out
    ended = json.loads((tmp_path / "e.json").read_text())
    assert ended["exit_code"] == 128 and ended["reason"] == "StartError"
    assert "no-such-program" in ended["message"] and not (tmp_path / "p.json").exists()


@needs_root
def test_container_run_follows_a_run_to_its_exit_code(tmp_path: Path) -> None:
    pod_dir = PodDir(tmp_path / "pods" / "ns_p_u")
    spec = LaunchSpec(argv=[sys.executable, "-c", "import time, sys; time.sleep(0.3); sys.exit(7)"], env={},
                      pid_file=str(pod_dir.pid_file("c", 0)), exit_file=str(pod_dir.exit_file("c", 0)))
    run = ContainerRun.start(pod_dir, "c", 0, spec, env_marker={})
    deadline = time.monotonic() + 20
    seen_running = False
    while run.exit is None and time.monotonic() < deadline:
        run.poll()
        seen_running = seen_running or run.running
        time.sleep(0.02)
    assert seen_running and run.exit is not None and run.exit.exit_code == 7 and run.exit.reason == "Error"
    adopted = ContainerRun.adopt(pod_dir, "c", 0, shim_pid=None)
    assert adopted.exit == run.exit and pod_dir.runs("c") == [0]


def test_mount_points_are_created_shared_and_removed_by_the_last_user(tmp_path: Path) -> None:
    labs = tmp_path / "labs"
    rec_a = labs / "l1" / "nodes" / "n" / "pods" / "a" / CREATED_PATHS
    rec_b = labs / "l2" / "nodes" / "n" / "pods" / "b" / CREATED_PATHS
    host = tmp_path / "host"
    host.mkdir()
    made = mountpoints.prepare(rec_a, [(host / "x" / "y", False), (host / "f.conf", True)], labs)
    assert made == [host / "x", host / "x" / "y", host / "f.conf"] and (host / "f.conf").is_file()
    assert mountpoints.prepare(rec_b, [(host / "x" / "y" / "z", False)], labs) == [host / "x" / "y" / "z"]
    assert set(json.loads(rec_b.read_text())) == {str(host / "x"), str(host / "x" / "y"), str(host / "x" / "y" / "z")}
    removed = mountpoints.release(rec_a, labs)  # b still mounts below x/y: only the file goes
    assert removed == [host / "f.conf"] and (host / "x" / "y").is_dir() and not rec_a.exists()
    (host / "x" / "keep").write_text("someone's file")
    assert mountpoints.release(rec_b, labs) == [host / "x" / "y" / "z", host / "x" / "y"]
    assert (host / "x" / "keep").exists(), "a directory with files in it is never removed"


def test_pod_dir_names_round_trip() -> None:
    assert parse_pod_dir_name(pod_dir_name("kube-system", "coredns-1", "0d1f-22")) == \
        ("kube-system", "coredns-1", "0d1f-22")
    assert parse_pod_dir_name("not-a-pod-dir") is None
