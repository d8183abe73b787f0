"""Fixtures for the agent datapath tests: a private bpffs pin root, and a TCP forwarder that makes a
loopback port of this (host) namespace reachable as the same loopback port inside a node's network
namespace (the agent runs in the node namespace; etcd and the Kubernetes API emulator listen on the
host's loopback; :class:`lab.dpmesh.Forwarder`). Nothing touches the host's interfaces."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lab.dpmesh import Forwarder


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "datapath tests need root"
    if not os.path.ismount("/sys/fs/bpf"):
        return "bpffs is not mounted on /sys/fs/bpf (run scripts/setup.sh)"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "bcc is not importable (run scripts/setup.sh)"
    if shutil.which("ip") is None:
        return "iproute2 missing"
    return None


_REASON = _skip_reason()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _REASON is None:
        return
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.skip(reason=_REASON))


def _rm_tree(path: Path) -> None:
    if not path.exists():
        return
    for child in path.iterdir():
        if child.is_dir():
            _rm_tree(child)
        else:
            child.unlink()
    path.rmdir()


@pytest.fixture
def pin_root() -> Iterator[Path]:
    """A fresh directory on bpffs, removed with everything pinned under it."""
    root = Path("/sys/fs/bpf") / f"cmdp-{uuid.uuid4().hex[:10]}"
    root.mkdir()
    try:
        yield root
    finally:
        _rm_tree(root)


@pytest.fixture
def forwarder() -> Iterator[Callable[[str, int], None]]:
    """``forwarder(ns, port)``: 127.0.0.1:port in ``ns`` reaches 127.0.0.1:port here."""
    fwd = Forwarder()
    try:
        yield fwd.add
    finally:
        fwd.close()


@pytest.fixture(scope="session")
def forwarder_cls() -> type[Forwarder]:
    """The :class:`Forwarder` class, for module-scoped fixtures (test modules cannot import conftest)."""
    return Forwarder
