"""Progress of a lab's bring-up, written by the supervisor and followed by ``lab up``.

One JSON object per line in ``<state dir>/progress.log``: ``{"msg": ...}`` for a step, and a last
line with ``"final": "ready"`` or ``"final": "failed"`` (then ``msg`` says why). A file, not a
pipe, so that a ``lab up`` that dies does not break the supervisor, and a second reader can follow.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

READY = "ready"
FAILED = "failed"


class ProgressWriter:
    """Appends progress lines (flushed at once)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._out = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the supervisor
        self._t0 = time.monotonic()

    def _write(self, doc: dict[str, Any]) -> None:
        doc["t"] = round(time.monotonic() - self._t0, 2)
        self._out.write(json.dumps(doc) + "\n")
        self._out.flush()

    def step(self, msg: str) -> None:
        self._write({"msg": msg})

    def final(self, outcome: str, msg: str) -> None:
        self._write({"msg": msg, "final": outcome})

    def close(self) -> None:
        self._out.close()


def follow(path: Path, *, alive: Callable[[], bool], timeout: float, poll: float = 0.1) -> Iterator[dict[str, Any]]:
    """Yield progress lines as they are written until a final one, ``alive()`` turns False (then a
    synthetic failure is yielded) or ``timeout`` seconds pass (likewise)."""
    deadline = time.monotonic() + timeout
    offset = 0
    buf = b""
    while time.monotonic() < deadline:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
        except FileNotFoundError:
            chunk = b""
        offset += len(chunk)
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            try:
                doc = json.loads(line)
            except json.JSONDecodeError:
                continue
            yield doc
            if doc.get("final"):
                return
        if not chunk and not alive():
            yield {"msg": "the lab supervisor exited before the lab was ready", "final": FAILED}
            return
        time.sleep(poll)
    yield {"msg": f"the lab was not ready within {timeout:.0f} s", "final": FAILED}
