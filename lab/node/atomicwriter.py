"""Write a volume's files the way the kubelet's ``AtomicWriter`` does, so readers see each update whole.

Layout of a volume directory (``pkg/volume/util/atomic_writer.go``)::

    ..2026_01_02_03_04_05.123456789/   the files of one version (with their modes; subdirectories 0755)
    ..data -> ..2026_01_02_03_04_05.123456789
    <top-level name> -> ..data/<top-level name>      one per key (or first path component)

An update writes a new timestamped directory, points ``..data_tmp`` at it and renames that onto
``..data`` (``rename(2)``: atomic), then adds the links of new names, removes the links of names the
new version no longer has, and removes the previous timestamped directory. So a reader that follows
``<name>`` sees either the old or the new content of every file at once, a new key appears after the
swap and a removed one disappears. Nothing outside the payload's names is touched: mount points a
container made inside the volume stay.

A directory written by an older runtime with plain files (no ``..data``) is taken over: each name is
replaced by its link atomically.
"""

from __future__ import annotations

import datetime
import os
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path

from lab.node.volumes import VolumeError

DATA_DIR = "..data"
NEW_DATA_DIR = "..data_tmp"
_MAX_NAME = 255
_MAX_PATH = 4096

#: relative path -> (content, mode)
Payload = Mapping[str, tuple[bytes, int]]


def validate_path(rel: str) -> None:
    """Raise :class:`VolumeError` unless ``rel`` is a relative path inside the volume that does not
    start with ``..`` (the kubelet's ``validatePath``)."""
    if not rel:
        raise VolumeError("volume file path is empty")
    if len(rel) > _MAX_PATH:
        raise VolumeError(f"volume file path {rel[:40]!r}... is longer than {_MAX_PATH}")
    if rel.startswith("/"):
        raise VolumeError(f"volume file path {rel!r} must be relative")
    if rel.startswith(".."):
        raise VolumeError(f"volume file path {rel!r} must not start with '..'")
    for part in rel.split("/"):
        if part == "..":
            raise VolumeError(f"volume file path {rel!r} must not contain '..'")
        if len(part) > _MAX_NAME:
            raise VolumeError(f"volume file path {rel!r}: a component is longer than {_MAX_NAME}")


def _clean(payload: Payload) -> dict[str, tuple[bytes, int]]:
    out = {}
    for rel, value in payload.items():
        validate_path(rel)
        norm = os.path.normpath(rel)
        if norm in (".", "") or norm.startswith(".."):
            raise VolumeError(f"volume file path {rel!r} names no file in the volume")
        out[norm] = value
    return out


def _top(rel: str) -> str:
    return rel.split("/", 1)[0]


def _read_version(directory: Path) -> tuple[str | None, dict[str, tuple[bytes, int]]]:
    """The current timestamped directory's name and files (None, {} if there is none)."""
    try:
        current = os.readlink(directory / DATA_DIR)
    except OSError:
        return None, {}
    base = directory / current
    if not base.is_dir():
        return None, {}
    files: dict[str, tuple[bytes, int]] = {}
    for root, _dirs, names in os.walk(base):
        for name in names:
            path = Path(root) / name
            try:
                files[str(path.relative_to(base))] = (path.read_bytes(), path.stat().st_mode & 0o7777)
            except OSError:
                continue
    return current, files


def _links_in_place(directory: Path, names: set[str]) -> bool:
    for name in names:
        try:
            if os.readlink(directory / name) != f"{DATA_DIR}/{name}":
                return False
        except OSError:
            return False
    return True


def _new_version_dir(directory: Path) -> Path:
    stamp = datetime.datetime.now(datetime.UTC).strftime("..%Y_%m_%d_%H_%M_%S.")
    for _ in range(100):
        path = directory / f"{stamp}{secrets.randbelow(10**9):09d}"
        try:
            path.mkdir(mode=0o755)
        except FileExistsError:
            continue
        os.chmod(path, 0o755)
        return path
    raise OSError(f"cannot make a new version directory in {directory}")


def _write_payload(base: Path, payload: Mapping[str, tuple[bytes, int]]) -> None:
    for rel, (content, mode) in sorted(payload.items()):
        path = base / rel
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            os.fchmod(f.fileno(), mode)  # the umask must not narrow the asked-for mode


def _link(directory: Path, name: str) -> None:
    """Make ``<name> -> ..data/<name>``, replacing whatever is there (atomically, unless a directory)."""
    target = f"{DATA_DIR}/{name}"
    path = directory / name
    try:
        if os.readlink(path) == target:
            return
    except OSError:
        pass
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)  # an older runtime's plain subdirectory
    tmp = directory / f"..{secrets.token_hex(6)}.link_tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, path)


def write_volume(directory: Path, payload: Payload) -> bool:
    """Project ``payload`` into ``directory`` (created 0755) as described in the module docstring;
    False if the directory already held exactly this payload (nothing written)."""
    files = _clean(payload)
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    old_dir, old_files = _read_version(directory)
    names = {_top(rel) for rel in files}
    if old_dir is not None and old_files == files and _links_in_place(directory, names):
        return False
    new_dir = _new_version_dir(directory)
    try:
        _write_payload(new_dir, files)
        tmp = directory / NEW_DATA_DIR
        tmp.unlink(missing_ok=True)
        os.symlink(new_dir.name, tmp)
        os.replace(tmp, directory / DATA_DIR)
    except BaseException:
        shutil.rmtree(new_dir, ignore_errors=True)
        raise
    for name in sorted(names):
        _link(directory, name)
    for name in sorted({_top(rel) for rel in old_files} - names):
        (directory / name).unlink(missing_ok=True)
    for entry in os.listdir(directory):  # the previous version, and whatever an interrupted write left
        path = directory / entry
        if not entry.startswith("..") or entry in (DATA_DIR, new_dir.name):
            continue
        if path.is_symlink():
            if entry.endswith("_tmp"):
                path.unlink(missing_ok=True)
        elif path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
    return True
