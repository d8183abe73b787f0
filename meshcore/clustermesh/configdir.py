"""The clustermesh config directory: one etcd client YAML per remote cluster, named after it.

Cilium's ``pkg/clustermesh/common/config.go`` (reference §3.1), done by polling rather than fsnotify:

- a directory entry is a cluster config if it is a regular file (symlinks followed) whose content
  contains ``endpoints:``; its name is the cluster name;
- names starting with ``..`` are the backing entries of a Kubernetes Secret volume (``..data``,
  ``..2026_01_02_03_04_05.123``) and are never configs themselves; the visible ``<name> ->
  ..data/<name>`` symlinks are, so the atomic ``..data`` swap Kubernetes does on a Secret update
  shows up as a content change of every file at once;
- the local cluster's own file is ignored, and a file whose name is not a valid cluster name is
  rejected (logged, and kept in :attr:`ConfigDirWatcher.problems`);
- the SHA-256 of the content suppresses spurious updates: only a new digest is a change;
- a file that stops parsing is reported and does not replace (nor remove) the last good config;
  only a file that is gone (or no longer a regular file) is a removal.

Polling (every ``interval`` seconds, 1 s by default) sees the same states as fsnotify with none
of its races around symlink swaps; the directory is small, so a scan costs next to nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path

from meshcore.errors import ConfigError, WireError
from meshcore.kvstore.config import EtcdClientConfig, load_etcd_config
from meshcore.log import get_logger
from meshcore.wire.clusterinfo import validate_cluster_name

# Substring that marks a file as an etcd config (Cilium's isEtcdConfigFile).
CONFIG_MARKER = b"endpoints:"
# Larger files are not etcd configs; never read more than this.
_MAX_FILE_BYTES = 1 << 20


@dataclass(frozen=True)
class RemoteConfigFile:
    """A parsed remote cluster config file. ``digest`` is the SHA-256 (hex) of its content."""

    name: str
    path: Path
    digest: str
    config: EtcdClientConfig


ConfigChange = tuple[str, RemoteConfigFile | None]


@dataclass(frozen=True, slots=True)
class _Seen:
    """One directory entry as a scan found it: a config candidate with its content digest and,
    when it needed parsing, the parsed config or why it could not be parsed."""

    path: Path
    digest: str
    config: EtcdClientConfig | None = None
    error: str | None = None


class ConfigDirWatcher:
    """Reports the remote cluster configs in ``directory``: adds, changes and removals.

    :meth:`changes` yields ``(name, file)`` for a new or changed config and ``(name, None)`` for a
    removed one. :attr:`current` holds the configs in effect, :attr:`problems` the files that are
    present but unusable (invalid name, broken YAML) with the reason, and :attr:`initial_scan`
    is set once the events of the first scan have all been consumed.
    """

    def __init__(self, directory: Path, *, local_cluster: str, interval: float = 1.0) -> None:
        if interval <= 0:
            raise ValueError(f"config directory poll interval must be positive, got {interval}")
        self.directory = Path(directory)
        self.local_cluster = local_cluster
        self.interval = interval
        self.current: dict[str, RemoteConfigFile] = {}
        self.problems: dict[str, str] = {}
        self.initial_scan = asyncio.Event()
        # name -> digest of content we already reported as unusable (to log each problem once)
        self._reported: dict[str, str] = {}
        self._missing_dir_logged = False
        self._log = get_logger(__name__, directory=str(self.directory))

    async def changes(self) -> AsyncGenerator[ConfigChange, None]:
        """Yield the initial configs, then every change, until the caller stops iterating."""
        while True:
            seen = await asyncio.to_thread(self._scan_entries)
            if seen is not None:
                for change in self._diff(seen):
                    yield change
            self.initial_scan.set()
            await asyncio.sleep(self.interval)

    def scan(self) -> list[ConfigChange]:
        """One synchronous scan: apply and return the changes since the previous one."""
        seen = self._scan_entries()
        return self._diff(seen) if seen is not None else []

    # --- scanning (runs in a worker thread: file I/O only, no shared state) --------------------

    def _scan_entries(self) -> dict[str, _Seen] | None:
        """Every config candidate, parsed where its content is new; None if unlistable."""
        seen: dict[str, _Seen] = {}
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            if not self._missing_dir_logged:
                self._missing_dir_logged = True
                self._log.warning("clustermesh config directory does not exist (yet); no remote clusters")
            return seen
        except OSError as err:
            self._log.warning("cannot list clustermesh config directory, keeping what we have", error=str(err))
            return None
        self._missing_dir_logged = False
        for name in names:
            if name.startswith(".."):
                continue  # Secret volume internals (..data, ..<timestamp>); their files come via symlinks
            path = self.directory / name
            try:
                if not path.is_file():  # follows symlinks; a dangling link is not a file
                    continue
                with open(path, "rb") as f:
                    content = f.read(_MAX_FILE_BYTES + 1)
            except OSError:
                continue  # vanished or unreadable between listing and reading: as if absent
            if len(content) > _MAX_FILE_BYTES or CONFIG_MARKER not in content:
                continue
            digest = hashlib.sha256(content).hexdigest()
            seen[name] = self._parse(name, path, digest)
        return seen

    def _parse(self, name: str, path: Path, digest: str) -> _Seen:
        current = self.current.get(name)
        if name == self.local_cluster or self._reported.get(name) == digest:
            return _Seen(path, digest)
        if current is not None and current.digest == digest:
            return _Seen(path, digest)
        try:
            validate_cluster_name(name)
        except WireError as err:
            return _Seen(path, digest, error=f"invalid cluster name, file ignored: {err.reason}")
        try:
            config = load_etcd_config(path)
        except ConfigError as err:
            kept = " (keeping the previous, valid configuration)" if current is not None else ""
            return _Seen(path, digest, error=f"invalid configuration file{kept}: {err}")
        if _digest_of(path) != digest:
            return _Seen(path, digest, error="")  # rewritten while we parsed it: next scan
        return _Seen(path, digest, config=config)

    # --- diffing (on the event loop) ----------------------------------------------------------

    def _diff(self, seen: dict[str, _Seen]) -> list[ConfigChange]:
        changes: list[ConfigChange] = []
        for name, entry in seen.items():
            if name == self.local_cluster:
                continue
            current = self.current.get(name)
            if current is not None and current.digest == entry.digest:
                self._clear_problem(name)
                continue
            if self._reported.get(name) == entry.digest:
                continue  # the same unusable content as last time: already reported
            if entry.error:
                self._problem(name, entry.digest, entry.error)
                continue
            if entry.config is None:
                continue  # in flux while scanned: the next scan decides
            self._clear_problem(name)
            file = RemoteConfigFile(name=name, path=entry.path, digest=entry.digest, config=entry.config)
            self.current[name] = file
            self._log.info(
                "remote cluster config added" if current is None else "remote cluster config changed",
                cluster=name,
                path=str(entry.path),
            )
            changes.append((name, file))
        for name in [n for n in self.current if n not in seen]:
            del self.current[name]
            self._log.info("remote cluster config removed", cluster=name)
            changes.append((name, None))
        for name in [n for n in self.problems if n not in seen]:
            self._clear_problem(name)
        return changes

    def _problem(self, name: str, digest: str, message: str) -> None:
        self._reported[name] = digest
        self.problems[name] = message
        self._log.warning("rejected clustermesh config file", cluster=name, problem=message)

    def _clear_problem(self, name: str) -> None:
        self._reported.pop(name, None)
        self.problems.pop(name, None)


def _digest_of(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read(_MAX_FILE_BYTES + 1)).hexdigest()
    except OSError:
        return None
