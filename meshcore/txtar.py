"""Reader for txtar archives, exactly as ``golang.org/x/tools/txtar.Parse`` reads them.

An archive is a comment (here: the test script) followed by files, each introduced by a line
``-- name --``. A file's data runs to the next marker line; the comment and every file get a
final newline added if they lack one (Go's ``fixNL``). Markers are recognised only at the start
of the data or right after a newline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Archive", "parse", "parse_file"]

_NEWLINE_MARKER = b"\n-- "
_MARKER = b"-- "
_MARKER_END = b" --"


@dataclass
class Archive:
    """A parsed archive: the leading ``comment`` and the ordered ``files`` (name, data)."""

    comment: bytes = b""
    files: list[tuple[str, bytes]] = field(default_factory=list)

    def get(self, name: str) -> bytes | None:
        """Data of the first file called ``name``, or ``None``."""
        for file_name, data in self.files:
            if file_name == name:
                return data
        return None

    @property
    def script(self) -> str:
        """The comment decoded as UTF-8 (the script of a Cilium script test)."""
        return self.comment.decode("utf-8")


def _is_marker(data: bytes) -> tuple[str, bytes]:
    if not data.startswith(_MARKER):
        return "", b""
    after = b""
    i = data.find(b"\n")
    if i >= 0:
        data, after = data[:i], data[i + 1 :]
    if not (data.endswith(_MARKER_END) and len(data) >= len(_MARKER) + len(_MARKER_END)):
        return "", b""
    name = data[len(_MARKER) : len(data) - len(_MARKER_END)].decode("utf-8").strip()
    return name, after


def _fix_nl(data: bytes) -> bytes:
    if not data or data.endswith(b"\n"):
        return data
    return data + b"\n"


def _find_file_marker(data: bytes) -> tuple[bytes, str, bytes]:
    i = 0
    while True:
        name, after = _is_marker(data[i:])
        if name:
            return data[:i], name, after
        j = data.find(_NEWLINE_MARKER, i)
        if j < 0:
            return _fix_nl(data), "", b""
        i = j + 1


def parse(data: bytes) -> Archive:
    """Parse txtar ``data`` (Go's ``txtar.Parse``)."""
    archive = Archive()
    archive.comment, name, data = _find_file_marker(data)
    while name:
        content, next_name, data = _find_file_marker(data)
        archive.files.append((name, content))
        name = next_name
    return archive


def parse_file(path: str | Path) -> Archive:
    """Read and parse the archive at ``path``."""
    return parse(Path(path).read_bytes())
