"""What the eBPF datapath needs from the machine, checked in one place (tests, benchmarks, lab)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def datapath_unavailable() -> str | None:
    """Why BPF programs cannot be loaded and attached here, or ``None`` when they can."""
    if os.geteuid() != 0:
        return "the datapath needs root"
    if not os.path.ismount("/sys/fs/bpf"):
        return "bpffs is not mounted on /sys/fs/bpf (run scripts/setup.sh)"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "bcc is not importable (run scripts/setup.sh)"
    if shutil.which("ip") is None:
        return "iproute2 missing (run scripts/setup.sh)"
    return None


def skip_items_below(directory: Path, items: list[object], reason: str | None) -> None:
    """Mark every pytest item under ``directory`` skipped with ``reason`` (no-op when ``None``)."""
    if reason is None:
        return
    import pytest

    for item in items:
        if directory in Path(str(item.fspath)).parents:  # type: ignore[attr-defined]
            item.add_marker(pytest.mark.skip(reason=reason))  # type: ignore[attr-defined]
