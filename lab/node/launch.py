"""The container launcher: ``python -m lab.node.launch SPEC.json`` (started by the node runtime).

It stays as a small shim (like containerd's) so that a container's exit status outlives the node
runtime: it forks the container and waits for it. The child, in order: makes its own process group
(so one container's processes can be signalled together), writes its pid to the pod cgroup's
``cgroup.procs``, enters the pod network namespace (``setns`` on ``/run/netns/<name>``; none for
host-network pods), unshares a mount namespace (and a UTS one, for the pod's host name) with ``/``
made recursively slave, bind-mounts every volume onto its mount path (read-only ones remounted
``ro``), changes to ``workingDir`` and ``execve``s the command (looked up in the container's own
``PATH``). A failure before the ``exec`` comes back to the shim through a close-on-exec pipe.

The shim writes, next to the run's log (see :mod:`lab.node.layout`):

- ``<n>.pid.json`` ``{"pid", "shim_pid", "start_time", "started_at"}`` once the command runs
  (``start_time``: clock ticks since boot, from ``/proc/<pid>/stat``, to tell a recycled pid);
- ``<n>.exit.json`` ``{"exit_code", "signal", "reason", "message", "started_at", "finished_at"}``
  when it ended (``exit_code`` is 128+signal for a killed process, 128 with reason ``StartError``
  if it never started).

stdin is /dev/null; stdout and stderr are whatever the runtime gave the shim (the run's log file).
The shim ignores SIGHUP/SIGINT/SIGTERM (the container gets them, not its keeper) and has no parent
death signal: containers outlive a node runtime that dies.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import msgspec

from lab.node import linux

START_ERROR_CODE = 128
_SHIM_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE, signal.SIGQUIT)


class MountSpec(msgspec.Struct, frozen=True):
    source: str
    target: str
    read_only: bool = False
    is_file: bool = False


class LaunchSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything one run of one container needs (the runtime writes it as ``<n>.spec.json``)."""

    argv: list[str]
    env: dict[str, str]
    pid_file: str
    exit_file: str
    cwd: str | None = None
    cgroup: str | None = None
    netns: str | None = None
    hostname: str | None = None
    mounts: list[MountSpec] = []


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_json(path: str, doc: dict[str, object]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


def _resolve(argv0: str, env: dict[str, str], cwd: str) -> str:
    if "/" in argv0:
        return argv0 if os.path.isabs(argv0) else os.path.join(cwd, argv0)
    found = shutil.which(argv0, path=env.get("PATH", ""))
    if found is None:
        raise FileNotFoundError(f'exec: "{argv0}": executable file not found in $PATH')
    return found


def _make_mountpoint(target: str, is_file: bool) -> None:
    if os.path.lexists(target):
        return
    os.makedirs(os.path.dirname(target) or "/", exist_ok=True)
    if is_file:
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
    else:
        os.mkdir(target, 0o755)


def _child(spec: LaunchSpec) -> None:
    """Set up the container's process and exec it; raises on failure (never returns otherwise)."""
    for sig in _SHIM_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    os.setpgid(0, 0)
    if spec.cgroup:
        with open(os.path.join(spec.cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    if spec.netns:
        linux.setns(spec.netns, linux.CLONE_NEWNET)
    linux.unshare(linux.CLONE_NEWNS | (linux.CLONE_NEWUTS if spec.hostname else 0))
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_SLAVE)
    if spec.hostname:
        linux.sethostname(spec.hostname)
    for m in spec.mounts:  # shallow targets first: a nested mount point is made inside its parent volume
        if not os.path.exists(m.source):
            raise FileNotFoundError(f"volume source {m.source} does not exist (mount on {m.target})")
        _make_mountpoint(m.target, m.is_file)
        linux.mount(m.source, m.target, None, linux.MS_BIND | linux.MS_REC)
        if m.read_only:
            linux.mount(None, m.target, None, linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY)
    cwd = spec.cwd or "/"
    try:
        os.chdir(cwd)
    except OSError as err:
        raise OSError(err.errno, f"workingDir {cwd}: {err.strerror}") from None
    exe = _resolve(spec.argv[0], spec.env, cwd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.execve(exe, spec.argv, spec.env)


def run(spec: LaunchSpec) -> int:
    """Fork the container, report its pid, wait for it, report its exit."""
    for sig in _SHIM_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    started_at = now_rfc3339()
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # the container
        os.close(r)
        try:
            _child(spec)
            message = "exec returned"
        except BaseException as err:  # everything goes back to the shim, which reports it
            message = str(err) or type(err).__name__
        os.write(w, message.encode(errors="replace")[:4096])
        os._exit(START_ERROR_CODE)
    os.close(w)
    ticks = linux.start_time(pid)
    chunks = []
    while chunk := os.read(r, 4096):
        chunks.append(chunk)
    os.close(r)
    failure = b"".join(chunks).decode(errors="replace")
    if failure:
        os.waitpid(pid, 0)
        sys.stderr.write(f"lab: cannot start the container: {failure}\n")
        sys.stderr.flush()
        _write_json(spec.exit_file, {"exit_code": START_ERROR_CODE, "signal": None, "reason": "StartError",
                                     "message": failure, "started_at": started_at, "finished_at": now_rfc3339()})
        return 0
    _write_json(spec.pid_file, {"pid": pid, "shim_pid": os.getpid(), "start_time": ticks, "started_at": started_at})
    _, status = os.waitpid(pid, 0)
    killed_by = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    code = 128 + killed_by if killed_by is not None else os.WEXITSTATUS(status)
    _write_json(spec.exit_file, {"exit_code": code, "signal": killed_by,
                                 "reason": "Completed" if code == 0 else "Error", "message": "",
                                 "started_at": started_at, "finished_at": now_rfc3339()})
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m lab.node.launch SPEC.json\n")
        return 2
    try:
        spec = msgspec.json.decode(Path(args[0]).read_bytes(), type=LaunchSpec)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as err:
        sys.stderr.write(f"lab: bad launch spec {args[0]}: {err}\n")
        return 2
    return run(spec)


if __name__ == "__main__":
    sys.exit(main())
