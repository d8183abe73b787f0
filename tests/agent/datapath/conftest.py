"""Fixtures for the agent datapath tests: a private bpffs pin root (the lab-based tests bring their
own lab: :func:`lab.meshtest.meshed_lab`)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bpf.maps import remove_pin_tree
from lab.prereqs import datapath_unavailable, skip_items_below


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_items_below(Path(__file__).parent, list(items), datapath_unavailable())




@pytest.fixture
def pin_root() -> Iterator[Path]:
    """A fresh directory on bpffs, removed with everything pinned under it."""
    root = Path("/sys/fs/bpf") / f"cmdp-{uuid.uuid4().hex[:10]}"
    root.mkdir()
    try:
        yield root
    finally:
        remove_pin_tree(root)
