"""Host paths created as mount points for containers, and their removal when no pod needs them.

A container's volume mounts are bind mounts in its own mount namespace, but the mount point must
exist on the (shared) host file system. What the lab has to create for that is recorded per pod in
``created-paths.json`` (a JSON list of paths); a pod that mounts onto a path some other lab pod
created records it too, so the last pod using a path removes it. Removal is ``rmdir`` (or the
unlink of an empty file): a path someone has put files into is never removed.

A path must not be removed while another pod still mounts on it: deleting a mount point that is in
use in another mount namespace silently detaches that mount. So the records of every pod of every
lab on this machine (``<labs root>/*/nodes/*/pods/*/created-paths.json``) are consulted, under one
machine-wide lock file in the labs root.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from lab.node.layout import CREATED_PATHS, MOUNTPOINT_LOCK


@contextlib.contextmanager
def _locked(labs_root: Path) -> Iterator[None]:
    labs_root.mkdir(parents=True, exist_ok=True)
    fd = os.open(labs_root / MOUNTPOINT_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read(record: Path) -> list[str]:
    try:
        doc = json.loads(record.read_text())
    except (OSError, ValueError):
        return []
    return [str(p) for p in doc] if isinstance(doc, list) else []


def _write(record: Path, paths: list[str]) -> None:
    tmp = record.with_name(f".{record.name}.tmp")
    tmp.write_text(json.dumps(paths, indent=1))
    tmp.replace(record)


def _others(labs_root: Path, record: Path) -> set[str]:
    out: set[str] = set()
    for other in labs_root.glob(f"*/nodes/*/pods/*/{CREATED_PATHS}"):
        if other != record:
            out.update(_read(other))
    return out


def _components(path: Path) -> list[Path]:
    """``/a``, ``/a/b``, ``/a/b/c`` for ``/a/b/c`` (after resolving symlinks of the existing part)."""
    real = Path(os.path.realpath(path))
    return [*reversed(real.parents[:-1]), real]


def prepare(record: Path, targets: Iterable[tuple[Path, bool]], labs_root: Path) -> list[Path]:
    """Make sure each ``(path, is_file)`` target exists, creating what is missing (directories, and
    an empty file for a file target); record what this pod now depends on. Returns what was created."""
    created: list[Path] = []
    with _locked(labs_root):
        mine = _read(record)
        others = _others(labs_root, record)
        for target, is_file in targets:
            comps = _components(target)
            for i, comp in enumerate(comps):
                s = str(comp)
                last = i == len(comps) - 1
                if os.path.lexists(comp):
                    if s in others and s not in mine:
                        mine.append(s)
                    continue
                if last and is_file:
                    os.close(os.open(comp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
                else:
                    os.mkdir(comp, 0o755)
                created.append(comp)
                if s not in mine:
                    mine.append(s)
        record.parent.mkdir(parents=True, exist_ok=True)
        _write(record, mine)
    return created


def release(record: Path, labs_root: Path) -> list[Path]:
    """Remove the recorded paths no other pod depends on (deepest first, only if empty) and clear
    the record. Returns what was removed."""
    removed: list[Path] = []
    if not record.exists():
        return removed
    with _locked(labs_root):
        others = _others(labs_root, record)
        mine = _read(record)
        for s in sorted(mine, key=lambda p: p.count("/"), reverse=True):
            if s in others:
                continue
            p = Path(s)
            try:
                if p.is_dir() and not p.is_symlink():
                    p.rmdir()
                elif p.is_file() and p.stat().st_size == 0:
                    p.unlink()
                else:
                    continue
                removed.append(p)
            except OSError:
                pass  # not empty (someone's files), or a mount point here: leave it
        record.unlink(missing_ok=True)
    return removed
