"""Thin I/O over network namespaces: create/remove, commands and sysctls inside one, netlink sockets
bound to one, and removal of whatever a topology prefix left behind.

Nothing here ever touches the root namespace's configuration: the only root-namespace operation is
deleting a stray device whose name this package gives out for a prefix (:func:`cleanup_stale`), a
safety net for devices that should never be there in the first place.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from pyroute2 import IPRoute, netns

from lab.net import names
from lab.net.errors import CommandError, TopologyError

IP = "ip"
SETPRIV = "/usr/bin/setpriv"
NETNS_RUN_DIR = "/run/netns"
DEFAULT_TIMEOUT = 10.0


class InNamespace(Protocol):
    """Anything living in one named namespace (a :class:`~lab.net.topology.Node` or ``Pod``)."""

    @property
    def ns(self) -> str: ...


def ns_name(where: str | InNamespace) -> str:
    """The namespace name of ``where`` (a name, a node or a pod)."""
    return where if isinstance(where, str) else where.ns


def die_with_parent_prefix() -> list[str]:
    """``setpriv --pdeathsig KILL --``: the command dies with the thread that started it."""
    return [SETPRIV, "--pdeathsig", "KILL", "--"] if os.path.exists(SETPRIV) else []


def exec_argv(ns: str, *argv: str) -> list[str]:
    """The argv running ``argv`` inside namespace ``ns`` (``ip netns exec``), dying with its parent."""
    return [IP, "netns", "exec", ns, *die_with_parent_prefix(), *argv]


def run_in(
    ns: str | InNamespace, *argv: str, timeout: float = DEFAULT_TIMEOUT, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside namespace ``ns`` (a name, a node or a pod) and return the finished
    process (stdout/stderr as text).

    Raises :class:`CommandError` if it does not finish within ``timeout`` seconds (it is killed) or,
    with ``check``, if it exits non-zero.
    """
    full = exec_argv(ns_name(ns), *argv)
    try:
        proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise CommandError(full, f"timed out after {timeout}s") from exc
    if check and proc.returncode != 0:
        raise CommandError(full, f"exited with {proc.returncode}", returncode=proc.returncode, output=proc.stderr)
    return proc


def set_sysctls(ns: str, values: Mapping[str, int | str], *, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Set ``net.*`` sysctls inside namespace ``ns`` (one ``sysctl`` process for all of them)."""
    for key in values:
        if not key.startswith("net."):
            raise TopologyError(f"refusing sysctl {key!r}: only per-namespace net.* keys are set here")
    run_in(ns, "sysctl", "-q", "-w", *(f"{k}={v}" for k, v in values.items()), timeout=timeout)


def list_namespaces() -> list[str]:
    """Names of all named network namespaces (``/run/netns``)."""
    return sorted(str(n) for n in netns.listnetns())


def namespaces_with_prefix(prefix: str) -> list[str]:
    """The named namespaces of topology ``prefix``."""
    start = names.ns_prefix(prefix)
    return [n for n in list_namespaces() if n.startswith(start)]


def create_namespace(name: str) -> None:
    """Create the named namespace ``name``; it must not exist yet."""
    if name in list_namespaces():
        raise TopologyError(f"network namespace {name!r} already exists (a leftover? see cleanup_stale)")
    netns.create(name)


def namespace_pids(name: str) -> list[int]:
    """PIDs of the processes whose network namespace is ``name``."""
    proc = subprocess.run([IP, "netns", "pids", name], capture_output=True, text=True, timeout=DEFAULT_TIMEOUT)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def kill_namespace_processes(name: str, *, within: float = 3.0) -> None:
    """SIGKILL the processes still inside namespace ``name`` (processes the lab started there) and
    wait up to ``within`` seconds for them to go."""
    pids = namespace_pids(name)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + within
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if os.path.exists(f"/proc/{p}")]
        if pids:
            time.sleep(0.02)


def remove_namespace(name: str, *, kill_processes: bool = True) -> None:
    """Remove the named namespace ``name`` (no error if it is gone). With ``kill_processes``, first
    kill the processes inside it, which would otherwise keep it and its devices alive."""
    if not os.path.exists(os.path.join(NETNS_RUN_DIR, name)):
        return
    if kill_processes:
        kill_namespace_processes(name)
    try:
        netns.remove(name)
    except OSError:
        subprocess.run([IP, "netns", "delete", name], capture_output=True, timeout=DEFAULT_TIMEOUT, check=False)


def stray_root_devices(prefix: str) -> list[str]:
    """Devices of the root namespace named like this package's devices of ``prefix`` (never expected)."""
    with IPRoute() as ipr:
        found = [str(link.get("ifname")) for link in ipr.get_links()]
    return [n for n in found if names.is_topology_ifname(prefix, n)]


def cleanup_stale(prefix: str) -> list[str]:
    """Remove every namespace of topology ``prefix`` (killing processes left inside) and any stray
    root-namespace device named with it; return what was removed. For leftovers of killed runs."""
    names.validate_prefix(prefix)
    removed: list[str] = []
    # Pods first, then nodes, then the underlay: each removal also destroys the peers of its veths.
    for ns in sorted(namespaces_with_prefix(prefix), key=lambda n: (-n.count("."), n)):
        remove_namespace(ns)
        removed.append(ns)
    strays = stray_root_devices(prefix)
    if strays:
        with IPRoute() as ipr:
            for ifname in strays:
                for index in ipr.link_lookup(ifname=ifname):
                    with contextlib.suppress(Exception):
                        ipr.link("del", index=index)
                removed.append(ifname)
    return removed


@contextlib.contextmanager
def iproute(ns: str | InNamespace) -> Iterator[Any]:
    """A pyroute2 ``IPRoute`` bound to namespace ``ns`` (a name, a node or a pod; closed on exit)."""
    ipr = IPRoute(netns=ns_name(ns))
    try:
        yield ipr
    finally:
        ipr.close()


def ifindex(ipr: Any, ifname: str) -> int:
    """The index of device ``ifname`` seen through ``ipr``; :class:`TopologyError` if missing."""
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise TopologyError(f"no device {ifname!r}")
    return int(found[0])
