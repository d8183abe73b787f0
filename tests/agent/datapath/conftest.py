"""Fixtures for the agent datapath tests: a private bpffs pin root, and a TCP forwarder that makes a
loopback port of this (host) namespace reachable as the same loopback port inside a node's network
namespace (the agent runs in the node namespace; etcd and the Kubernetes API emulator listen on the
host's loopback; :class:`lab.dpmesh.Forwarder`). Nothing touches the host's interfaces."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lab.dpmesh import Forwarder
from lab.prereqs import datapath_unavailable, skip_items_below


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_items_below(Path(__file__).parent, list(items), datapath_unavailable())


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
