"""The pod network of one lab node (what kindnet gives a kind cluster), the node side.

Each pod gets a named network namespace (``<lab>-<cluster>.n<j>.<namespace>.<name>``, see
lab/README.md) wired behind the node by :func:`lab.net.topology.plumb_pod`: a veth whose pod end is
``eth0`` with the pod IP as ``/32`` and ``default via 169.254.1.1`` (a permanent neighbour entry for
the node end's MAC), and whose node end ``lxc<first 8 hex digits of the pod UID>`` carries no
address, only the node's ``<pod ip>/32`` route and a permanent neighbour entry for the pod's MAC.
Routes to the other nodes' podCIDRs are :mod:`lab.node.routes`' job.

The node namespace needs :data:`NODE_SYSCTLS` (forwarding on, reverse-path filtering off);
:class:`PodNetwork` sets them on construction, refusing to run anywhere but in the node namespace
``<lab>-<cluster>.n<j>`` (never in the host's).

State: ``<state_dir>/podnet.json`` (the IPAM state and each attached pod's namespace), written
atomically before any plumbing, so a pod keeps its IP across restarts of the node runtime.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute, netns

from lab.net import names, nsutil
from lab.net.topology import plumb_pod
from lab.node.ipam import Ipam, IpamError

STATE_FILE = "podnet.json"
STATE_VERSION = 1
NETNS_NAME_MAX = 200
HOST_IFNAME_PREFIX = "lxc"
#: What a node namespace needs for the pod network (all per-namespace ``net.*`` keys).
NODE_SYSCTLS: dict[str, int] = {
    "net.ipv4.ip_forward": 1,
    "net.ipv4.conf.all.rp_filter": 0,
    "net.ipv4.conf.default.rp_filter": 0,
}
_HEX_DIGIT = re.compile(r"[0-9a-f]")


class PodNetworkError(RuntimeError):
    """The pod network was asked for something invalid or its state is unusable."""


def pod_netns_name(lab: str, cluster: str, node_index: int, namespace: str, name: str) -> str:
    """`<lab>-<cluster>.n<index>.<namespace>.<name>`, cut to 200 characters (README plan)."""
    return names.pod_ns(lab, cluster, f"n{node_index}", f"{namespace}.{name}")[:NETNS_NAME_MAX]


def host_ifname(pod_uid: str) -> str:
    """``lxc`` + the first 8 hex digits of ``pod_uid`` (dashes and other characters skipped); a UID
    with fewer hex digits uses those of its SHA-256 instead."""
    digits = "".join(_HEX_DIGIT.findall(pod_uid.lower()))
    if len(digits) < 8:
        digits = hashlib.sha256(pod_uid.encode()).hexdigest()
    return f"{HOST_IFNAME_PREFIX}{digits[:8]}"


def in_netns(name: str) -> bool:
    """Whether this process's network namespace is the named namespace ``name`` (``/run/netns``)."""
    try:
        here = os.stat("/proc/self/ns/net")
        there = os.stat(os.path.join(nsutil.NETNS_RUN_DIR, name))
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def ensure_node_sysctls(node_netns: str, values: dict[str, int] | None = None) -> None:
    """Set :data:`NODE_SYSCTLS` (or ``values``) in this process's network namespace, which must be
    the node namespace ``node_netns``: the lab never changes the host's network configuration, and
    this guard keeps a node runtime started without ``nsenter`` from doing so."""
    if not in_netns(node_netns):
        raise PodNetworkError(
            f"refusing to configure this network namespace: it is not the node namespace {node_netns!r} "
            f"(run the node runtime inside it: nsenter --net=/run/netns/{node_netns})"
        )
    for key, value in (NODE_SYSCTLS if values is None else values).items():
        path = Path("/proc/sys") / key.replace(".", "/")
        if path.read_text().strip() != str(value):
            path.write_text(f"{value}\n")


def _write_json_atomic(path: Path, doc: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class PodNetwork:
    """Pod namespaces and veths of one node; runs in the node's network namespace (the process is
    started with nsenter --net=<node netns>), so pyroute2's IPRoute() is the node namespace.

    Thread-safe (one lock around each operation); one instance per node at a time.
    """

    def __init__(
        self, *, lab: str, cluster: str, node_index: int, pod_cidr: ipaddress.IPv4Network, state_dir: Path,
        mtu: int = names.POD_MTU,
    ) -> None:
        names.validate_prefix(lab)
        names.validate_name("cluster", cluster)
        self.lab, self.cluster, self.node_index = lab, cluster, node_index
        self.pod_cidr = ipaddress.IPv4Network(pod_cidr)
        self.mtu = mtu  # lab.net.names.ENCRYPTED_POD_MTU in a lab with WireGuard
        self.state_file = Path(state_dir) / STATE_FILE
        #: The node's namespace, where this runs; every pod namespace of the node starts with it + ".".
        self.node_netns = names.node_ns(lab, cluster, f"n{node_index}")
        self.netns_prefix = self.node_netns + "."
        self._lock = threading.Lock()
        ensure_node_sysctls(self.node_netns)
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        self._ipam, self._netns = self._load()

    # --- state -------------------------------------------------------------------------------

    def _load(self) -> tuple[Ipam, dict[str, str]]:
        if not self.state_file.exists():
            return Ipam(self.pod_cidr), {}
        try:
            doc = json.loads(self.state_file.read_text())
            if doc.get("version") != STATE_VERSION:
                raise PodNetworkError(f"unknown state version {doc.get('version')!r}")
            ipam = Ipam.from_json(doc["ipam"], self.pod_cidr)
            pods = {str(uid): str(ns) for uid, ns in doc["netns"].items()}
        except (OSError, ValueError, KeyError, AttributeError, IpamError, PodNetworkError) as err:
            raise PodNetworkError(
                f"cannot use the pod network state {self.state_file}: {err} (if the node was re-planned, "
                "remove the file together with the node's pod namespaces)"
            ) from err
        if set(pods) != set(ipam.allocations()):
            raise PodNetworkError(f"pod network state {self.state_file} is inconsistent (IPs vs namespaces)")
        return ipam, pods

    def _save(self) -> None:
        doc = {"version": STATE_VERSION, "ipam": self._ipam.to_json(), "netns": dict(sorted(self._netns.items()))}
        _write_json_atomic(self.state_file, doc)

    def _check_netns_name(self, netns_name: str) -> None:
        if not netns_name.startswith(self.netns_prefix) or "/" in netns_name or len(netns_name) > NETNS_NAME_MAX:
            raise PodNetworkError(
                f"pod namespace name {netns_name!r} is not one of this node's: it must start with "
                f"{self.netns_prefix!r}, have no '/' and at most {NETNS_NAME_MAX} characters (see pod_netns_name)"
            )

    # --- operations --------------------------------------------------------------------------

    def attach(self, pod_uid: str, netns_name: str) -> ipaddress.IPv4Address:
        """Create the pod's netns (ip netns add, so it shows in `ip netns list`; if missing), a veth
        whose pod end is eth0 (MTU :attr:`mtu`: 1500, 1420 with WireGuard) and whose node end is
        named lxc<first 8 hex of the uid> in the node namespace, the pod IP /32 on eth0, lo up,
        default via 169.254.1.1 with a permanent neighbour entry to the node end's MAC, and on the
        node <ip>/32 dev lxc... plus a permanent neighbour entry for the pod's MAC. Idempotent: the
        same uid keeps its IP across restarts of the process (allocations persisted in state_dir,
        written atomically).

        Raises :class:`PodNetworkError` for a namespace name outside this node's, a UID already
        attached under another namespace name or whose ``lxc`` name another pod has, and
        :class:`lab.node.ipam.PoolExhausted` when the podCIDR is full.
        """
        self._check_netns_name(netns_name)
        ifname = host_ifname(pod_uid)
        with self._lock:
            known = self._netns.get(pod_uid)
            if known is not None and known != netns_name:
                raise PodNetworkError(f"pod {pod_uid} is attached already with namespace {known!r}, not {netns_name!r}")
            for other in self._netns:
                if other != pod_uid and host_ifname(other) == ifname:
                    raise PodNetworkError(f"pods {other} and {pod_uid} would share the node device {ifname}")
            ip = self._ipam.allocate(pod_uid)
            if known is None:
                self._netns[pod_uid] = netns_name
                self._save()  # before plumbing: an interrupted attach keeps its IP when retried
            if not os.path.exists(os.path.join(nsutil.NETNS_RUN_DIR, netns_name)):
                netns.create(netns_name)
            with IPRoute() as ipr:
                plumb_pod(ipr, netns_name, ifname, ip, mtu=self.mtu)
            return ip

    def detach(self, pod_uid: str, netns_name: str) -> None:
        """Remove the veth, the netns and the IP allocation (the caller has stopped processes inside).

        Idempotent: missing pieces are skipped. Processes still inside are not killed; the namespace
        is unnamed regardless (they keep it alive, without a network).
        """
        self._check_netns_name(netns_name)
        with self._lock:
            with IPRoute() as ipr:
                for index in ipr.link_lookup(ifname=host_ifname(pod_uid)):
                    with contextlib.suppress(Exception):  # gone meanwhile (with its namespace)
                        ipr.link("del", index=index)
            for ns in {netns_name, self._netns.get(pod_uid, netns_name)}:
                nsutil.remove_namespace(ns, kill_processes=False)
            if pod_uid in self._netns:
                del self._netns[pod_uid]
                self._ipam.release(pod_uid)
                self._save()

    def attached(self) -> dict[str, tuple[str, ipaddress.IPv4Address]]:
        """uid -> (netns name, IP) of pods attached now.

        That is, of every pod :meth:`attach` was called for and :meth:`detach` was not since (also
        across restarts), including one whose attach was interrupted: attach it again or detach it.
        """
        with self._lock:
            allocations = self._ipam.allocations()
            return {uid: (ns, allocations[uid]) for uid, ns in sorted(self._netns.items())}
