"""Process faults on real processes: a ``sleep`` and a throwaway cgroup v2 directory (a "pod" with
two containers of one process each), every state checked in ``/proc``."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.faults import (
    FaultError,
    InvalidFault,
    cgroup_pids,
    kill_cgroup,
    kill_pids,
    pause_cgroup,
    pause_pids,
    proc_state,
    resume_cgroup,
    resume_pids,
    signal_pids,
)

CGROUP2_ROOTS = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup")


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Two ``sleep 60`` processes, killed and reaped at teardown whatever happened."""
    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture
def pod_cgroup(sleepers: list[subprocess.Popen[bytes]]) -> Iterator[Path]:
    """A cgroup v2 directory ``pod`` with children ``ctr-a`` and ``ctr-b`` holding one sleeper each;
    removed at teardown (after the sleepers are gone: this fixture tears down first, so it kills
    them itself)."""
    if os.geteuid() != 0:
        pytest.skip("needs root for cgroups")
    root = next((Path(r) for r in CGROUP2_ROOTS if (Path(r) / "cgroup.procs").exists()
                 and (Path(r) / "cgroup.controllers").exists()), None)  # fmt: skip
    if root is None:
        pytest.skip("no cgroup v2 mount")
    pod = root / f"cmtest-faults-{uuid.uuid4().hex[:10]}"
    children = [pod / "ctr-a", pod / "ctr-b"]
    try:
        for child, proc in zip(children, sleepers, strict=True):
            child.mkdir(parents=True)
            (child / "cgroup.procs").write_text(str(proc.pid))
        yield pod
    finally:
        for proc in sleepers:
            proc.kill()
            proc.wait(timeout=5)
        for path in (*children, pod):
            if path.exists():
                path.rmdir()


def test_pause_resume_kill_a_process(sleepers: list[subprocess.Popen[bytes]]) -> None:
    proc = sleepers[0]
    assert proc_state(proc.pid) in ("R", "S")  # R while it is still starting
    assert pause_pids([proc.pid]) == [proc.pid]
    assert proc_state(proc.pid) == "T"
    assert proc_state(sleepers[1].pid) in ("R", "S")  # only the named process is stopped
    assert resume_pids([proc.pid, proc.pid]) == [proc.pid]
    assert proc_state(proc.pid) in ("R", "S")
    assert kill_pids([proc.pid]) == [proc.pid]
    assert proc_state(proc.pid) in (None, "Z")  # a zombie until we reap it
    assert proc.wait(timeout=5) == -signal.SIGKILL


def test_signal_pids_skips_gone_processes_and_refuses_special_ones() -> None:
    done = subprocess.Popen(["true"])
    done.wait(timeout=5)
    assert signal_pids([done.pid], signal.SIGCONT) == []
    assert proc_state(done.pid) is None
    assert kill_pids([done.pid]) == []  # nothing to kill, nothing to wait for
    for bad in (0, 1, -5, os.getpid()):
        with pytest.raises(InvalidFault, match="refusing"):
            signal_pids([bad], signal.SIGSTOP)


def test_pause_resume_kill_every_process_of_a_cgroup(pod_cgroup: Path, sleepers: list[subprocess.Popen[bytes]]) -> None:
    pids = sorted(p.pid for p in sleepers)
    assert cgroup_pids(pod_cgroup) == pids  # both children's processes
    assert pause_cgroup(pod_cgroup) == pids
    assert [proc_state(p) for p in pids] == ["T", "T"]
    assert pause_cgroup(pod_cgroup) == []  # already stopped: nothing to signal
    assert resume_cgroup(pod_cgroup) == pids
    assert all(proc_state(p) in ("R", "S") for p in pids)

    pause_cgroup(pod_cgroup)  # a stopped pod dies too
    assert kill_cgroup(pod_cgroup) == pids
    assert cgroup_pids(pod_cgroup) == []
    assert all(proc_state(p) in (None, "Z") for p in pids)
    assert [p.wait(timeout=5) for p in sleepers] == [-signal.SIGKILL, -signal.SIGKILL]


def test_cgroup_functions_refuse_a_directory_that_is_not_a_cgroup(tmp_path: Path) -> None:
    for fn in (cgroup_pids, pause_cgroup, resume_cgroup, kill_cgroup):
        with pytest.raises(FaultError, match="not a cgroup v2 directory"):
            fn(tmp_path)
