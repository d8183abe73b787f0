"""The clustermesh config directory: adds, changes, removals, Secret-volume symlink swaps, the
local cluster's file, invalid names and broken files (no etcd needed: files only)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from meshcore.clustermesh.configdir import ConfigDirWatcher, RemoteConfigFile
from tests.meshcore.store.helpers import eventually


def _yaml(port: int) -> str:
    return f"endpoints:\n- http://127.0.0.1:{port}\n"


def _names(changes: list[tuple[str, RemoteConfigFile | None]]) -> list[tuple[str, bool]]:
    return [(name, file is not None) for name, file in changes]


def test_add_change_remove(tmp_path: Path) -> None:
    (tmp_path / "c2").write_text(_yaml(2379))
    (tmp_path / "c3").write_text(_yaml(2380))
    (tmp_path / "common-etcd-client.key").write_text("not a config")
    w = ConfigDirWatcher(tmp_path, local_cluster="c1")
    first = w.scan()
    assert _names(first) == [("c2", True), ("c3", True)]
    c2 = dict(first)["c2"]
    assert c2 is not None and c2.config.endpoints == ("http://127.0.0.1:2379",)
    assert len(c2.digest) == 64

    # Rewriting the same content is no change (the digest suppresses it).
    (tmp_path / "c2").write_text(_yaml(2379))
    assert w.scan() == []

    (tmp_path / "c2").write_text(_yaml(2381))
    changed = w.scan()
    assert _names(changed) == [("c2", True)]
    new = changed[0][1]
    assert new is not None and new.digest != c2.digest and new.config.endpoints == ("http://127.0.0.1:2381",)

    (tmp_path / "c3").unlink()
    assert w.scan() == [("c3", None)]
    assert sorted(w.current) == ["c2"]


def test_local_cluster_and_invalid_names(tmp_path: Path) -> None:
    (tmp_path / "c1").write_text(_yaml(2379))  # the local cluster
    (tmp_path / "Bad_Name").write_text(_yaml(2379))
    (tmp_path / ("x" * 40)).write_text(_yaml(2379))
    (tmp_path / "c2").write_text(_yaml(2379))
    w = ConfigDirWatcher(tmp_path, local_cluster="c1")
    assert _names(w.scan()) == [("c2", True)]
    assert "c1" not in w.problems
    assert "invalid cluster name" in w.problems["Bad_Name"]
    assert "invalid cluster name" in w.problems["x" * 40]
    assert w.scan() == []  # reported once, still rejected


def test_broken_file_keeps_previous_config(tmp_path: Path) -> None:
    path = tmp_path / "c2"
    path.write_text(_yaml(2379))
    w = ConfigDirWatcher(tmp_path, local_cluster="c1")
    assert _names(w.scan()) == [("c2", True)]
    good = w.current["c2"]

    path.write_text("endpoints: [unclosed\n")  # broken YAML
    assert w.scan() == []
    assert w.current["c2"] == good
    assert "keeping the previous, valid configuration" in w.problems["c2"]

    path.write_text("endpoints:\n- ftp://nope\n")  # parses, but invalid
    assert w.scan() == []
    assert "ftp://nope" in w.problems["c2"]

    path.write_text(_yaml(2390))  # fixed: a change, and the problem is gone
    assert _names(w.scan()) == [("c2", True)]
    assert "c2" not in w.problems

    # A new, broken file is reported but never becomes a config.
    (tmp_path / "c3").write_text("endpoints:\n  - :::\n")
    assert w.scan() == []
    assert "c3" in w.problems and "c3" not in w.current
    (tmp_path / "c3").unlink()
    w.scan()
    assert "c3" not in w.problems


def _secret_generation(root: Path, stamp: str, files: dict[str, str]) -> None:
    """Write one generation of a Kubernetes Secret volume and swap ``..data`` to it atomically."""
    gen = root / f"..{stamp}"
    gen.mkdir()
    for name, content in files.items():
        (gen / name).write_text(content)
    tmp = root / "..data_tmp"
    os.symlink(gen.name, tmp)
    os.replace(tmp, root / "..data")  # rename(2) over the old symlink: atomic
    for name in files:
        link = root / name
        if not link.is_symlink():
            os.symlink(f"..data/{name}", link)


def test_secret_volume_symlink_swap(tmp_path: Path) -> None:
    _secret_generation(tmp_path, "2026_01_01_00_00_00.1", {"c2": _yaml(2379), "c3": _yaml(2380)})
    w = ConfigDirWatcher(tmp_path, local_cluster="c1")
    assert _names(w.scan()) == [("c2", True), ("c3", True)]
    old = tmp_path / "..2026_01_01_00_00_00.1"

    # New generation: c2 changes, c3 is unchanged; then the old generation is deleted.
    _secret_generation(tmp_path, "2026_01_01_00_01_00.2", {"c2": _yaml(2400), "c3": _yaml(2380)})
    for f in old.iterdir():
        f.unlink()
    old.rmdir()
    changes = w.scan()
    assert _names(changes) == [("c2", True)]
    assert changes[0][1] is not None and changes[0][1].path == tmp_path / "c2"

    # A generation without c3: its visible symlink dangles, so c3 is removed.
    _secret_generation(tmp_path, "2026_01_01_00_02_00.3", {"c2": _yaml(2400)})
    assert w.scan() == [("c3", None)]


async def test_changes_stream(tmp_path: Path) -> None:
    w = ConfigDirWatcher(tmp_path / "later", local_cluster="c1", interval=0.05)
    got: list[tuple[str, bool]] = []

    async def consume() -> None:
        async for name, file in w.changes():
            got.append((name, file is not None))

    task = asyncio.create_task(consume())
    try:
        async with asyncio.timeout(5):
            await w.initial_scan.wait()
        assert got == []  # the directory does not exist yet: no clusters, no crash
        (tmp_path / "later").mkdir()
        (tmp_path / "later" / "c2").write_text(_yaml(2379))
        await eventually(lambda: got == [("c2", True)], within=5)
        (tmp_path / "later" / "c2").unlink()
        await eventually(lambda: got == [("c2", True), ("c2", False)], within=5)
    finally:
        task.cancel()
        await asyncio.wait([task], timeout=5)
