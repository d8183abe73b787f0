"""Fixtures for the datapath tests: a private bpffs pin root, throwaway network namespaces and a
throwaway cgroup v2 directory. Nothing touches the host's interfaces: every device is created
inside a namespace made here, and every command has a timeout."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bpf.maps import remove_pin_tree
from lab.prereqs import datapath_unavailable, skip_items_below

CGROUP2_ROOTS = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_items_below(Path(__file__).parent, list(items), datapath_unavailable())


def run(*args: str, timeout: float = 10, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command with a timeout; raise with its output when it fails."""
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    return proc




@pytest.fixture
def pin_root() -> Iterator[Path]:
    """A fresh directory on bpffs, removed with everything pinned under it."""
    root = Path("/sys/fs/bpf") / f"cmtest-{uuid.uuid4().hex[:10]}"
    root.mkdir()
    try:
        yield root
    finally:
        remove_pin_tree(root)


@pytest.fixture
def netns() -> Iterator[Callable[[str], str]]:
    """``netns("a")`` creates a namespace with a unique name (loopback up); all are deleted."""
    created: list[str] = []
    tag = uuid.uuid4().hex[:6]

    def make(name: str) -> str:
        full = f"cmt{tag}-{name}"
        run("ip", "netns", "add", full)
        created.append(full)
        run("ip", "-n", full, "link", "set", "lo", "up")
        return full

    try:
        yield make
    finally:
        for full in reversed(created):
            run("ip", "netns", "del", full, check=False)


@pytest.fixture
def cgroup() -> Iterator[Path]:
    """A fresh cgroup v2 directory (processes put in it must have exited by teardown)."""
    root = next((Path(r) for r in CGROUP2_ROOTS if (Path(r) / "cgroup.controllers").exists()), None)
    if root is None:
        pytest.skip("no cgroup v2 mount")
    path = root / f"cmtest-{uuid.uuid4().hex[:10]}"
    path.mkdir()
    try:
        yield path
    finally:
        path.rmdir()


@pytest.fixture
def sh() -> Callable[..., subprocess.CompletedProcess[str]]:
    """The bounded command runner above, as a fixture (test modules cannot import conftest)."""
    return run
