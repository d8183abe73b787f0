"""The kubelet's AtomicWriter layout for volume files (lab.node.atomicwriter), on a real directory: the
``..<timestamp>`` version directory, the ``..data`` link swapped by rename, per-name links, keys
appearing and disappearing, no-op writes, takeover of plain files, and the agent's config-dir reader
(meshcore.clustermesh.configdir) following every change."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from lab.node.atomicwriter import DATA_DIR, write_volume
from lab.node.volumes import VolumeError
from meshcore.clustermesh.configdir import ConfigDirWatcher

VERSION_RE = re.compile(r"^\.\.\d{4}_\d\d_\d\d_\d\d_\d\d_\d\d\.\d{9}$")


def versions(d: Path) -> list[str]:
    return sorted(e for e in os.listdir(d) if VERSION_RE.match(e))


def visible(d: Path) -> dict[str, str]:
    """name -> link target of every user-visible entry."""
    return {e: os.readlink(d / e) for e in sorted(os.listdir(d)) if not e.startswith("..")}


def test_layout_update_and_removal(tmp_path: Path) -> None:
    d = tmp_path / "vol"
    assert write_volume(d, {"a": (b"one", 0o600), "conf/b": (b"two", 0o644)})
    (first,) = versions(d)
    assert os.readlink(d / DATA_DIR) == first
    assert visible(d) == {"a": "..data/a", "conf": "..data/conf"}
    assert (d / "a").read_bytes() == b"one" and (d / "conf" / "b").read_bytes() == b"two"
    assert stat.S_IMODE((d / first / "a").stat().st_mode) == 0o600
    assert stat.S_IMODE((d / first / "conf" / "b").stat().st_mode) == 0o644
    assert stat.S_IMODE((d / first).stat().st_mode) == 0o755

    # the same payload again writes nothing
    assert not write_volume(d, {"a": (b"one", 0o600), "conf/b": (b"two", 0o644)})
    assert versions(d) == [first]

    # a changed mode alone is a change too
    assert write_volume(d, {"a": (b"one", 0o640), "conf/b": (b"two", 0o644)})
    (second,) = versions(d)
    assert second != first and os.readlink(d / DATA_DIR) == second

    # a new key appears, a removed one disappears, the old version directory goes
    inode_before = (d / "a").stat().st_ino
    assert write_volume(d, {"a": (b"ONE", 0o600), "c": (b"three", 0o600)})
    (third,) = versions(d)
    assert visible(d) == {"a": "..data/a", "c": "..data/c"}
    assert (d / "a").read_bytes() == b"ONE" and (d / "c").read_bytes() == b"three"
    assert (d / "a").stat().st_ino != inode_before  # a new file, not rewritten in place
    assert sorted(os.listdir(d)) == sorted([DATA_DIR, third, "a", "c"])

    # everything removed: an empty volume
    assert write_volume(d, {})
    assert visible(d) == {}
    assert len(versions(d)) == 1 and not os.listdir(d / DATA_DIR)


def test_entries_outside_the_payload_are_kept(tmp_path: Path) -> None:
    d = tmp_path / "vol"
    write_volume(d, {"a": (b"1", 0o644)})
    (d / "mnt").mkdir()  # e.g. a mount point a container made inside the volume
    write_volume(d, {"b": (b"2", 0o644)})
    assert (d / "mnt").is_dir() and not (d / "mnt").is_symlink()
    assert not os.path.lexists(d / "a") and (d / "b").read_bytes() == b"2"


def test_plain_files_of_an_older_runtime_are_taken_over(tmp_path: Path) -> None:
    d = tmp_path / "vol"
    d.mkdir()
    (d / "a").write_bytes(b"old")
    (d / "sub").mkdir()
    (d / "sub" / "x").write_bytes(b"old")
    assert write_volume(d, {"a": (b"new", 0o644), "sub/x": (b"new", 0o644)})
    assert visible(d) == {"a": "..data/a", "sub": "..data/sub"}
    assert (d / "a").read_bytes() == b"new" and (d / "sub" / "x").read_bytes() == b"new"


@pytest.mark.parametrize("path", ["/abs", "../up", "a/../../b", "..hidden", "", "x/" + "y" * 300])
def test_bad_paths_are_refused(tmp_path: Path, path: str) -> None:
    with pytest.raises(VolumeError):
        write_volume(tmp_path / "vol", {path: (b"x", 0o644)})
    assert not os.path.lexists(tmp_path / "vol" / DATA_DIR)


def test_config_dir_reader_follows_every_swap(tmp_path: Path) -> None:
    d = tmp_path / "clustermesh"
    conf = {"c2": (b"endpoints:\n- https://192.168.2.1:32379\n", 0o400),
            "common-etcd-client.crt": (b"CERT", 0o400)}
    write_volume(d, {})  # an optional Secret that does not exist yet: an empty volume
    watcher = ConfigDirWatcher(d, local_cluster="c1")
    assert watcher.scan() == []
    write_volume(d, conf)
    assert [(n, f is not None) for n, f in watcher.scan()] == [("c2", True)]
    conf["c3"] = (b"endpoints:\n- https://192.168.3.1:32379\n", 0o400)
    conf["c2"] = (b"endpoints:\n- https://192.168.2.9:32379\n", 0o400)
    write_volume(d, conf)
    changes = dict(watcher.scan())
    assert sorted(changes) == ["c2", "c3"]
    c2 = changes["c2"]
    assert c2 is not None and c2.config.endpoints == ("https://192.168.2.9:32379",)
    del conf["c2"]
    write_volume(d, conf)
    assert watcher.scan() == [("c2", None)]
    assert sorted(watcher.current) == ["c3"]
