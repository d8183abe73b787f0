"""Commands inside the underlay namespace, bounded, with errors that name the fault layer."""

from __future__ import annotations

import os
import shutil
import subprocess

from lab.faults.model import FaultError
from lab.net import nsutil

TIMEOUT = 10.0
NFT_FALLBACK = "/usr/sbin/nft"
TC_FALLBACK = "/usr/sbin/tc"


def tool(name: str, fallback: str) -> str:
    """The path of ``name`` (``$PATH``, then ``fallback``); :class:`FaultError` if neither exists."""
    found = shutil.which(name) or (fallback if os.path.exists(fallback) else None)
    if found is None:
        raise FaultError(f"{name} is not installed (run scripts/setup.sh)")
    return found


def require_namespace(ns: str) -> None:
    """Raise :class:`FaultError` unless the named network namespace ``ns`` exists."""
    if not os.path.exists(os.path.join(nsutil.NETNS_RUN_DIR, ns)):
        raise FaultError(f"network namespace {ns!r} does not exist (is the lab up?)")


def namespace_exists(ns: str) -> bool:
    """Whether the named network namespace ``ns`` exists."""
    return os.path.exists(os.path.join(nsutil.NETNS_RUN_DIR, ns))


def run(ns: str, *argv: str, stdin: str | None = None, timeout: float = TIMEOUT) -> str:
    """Run ``argv`` inside ``ns`` (feeding ``stdin``); return its stdout. :class:`FaultError` on a
    non-zero exit or after ``timeout`` seconds (the command is killed)."""
    full = nsutil.exec_argv(ns, *argv)
    try:
        proc = subprocess.run(full, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise FaultError(f"{' '.join(argv)} in {ns}: timed out after {timeout:g}s") from exc
    if proc.returncode != 0:
        raise FaultError(f"{' '.join(argv)} in {ns} exited with {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout
