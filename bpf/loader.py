"""Compile the datapath with bcc against a node's pinned maps, and attach it.

``Datapath.load(node, pin_root, config)`` opens (or creates) the node's pinned maps, then compiles
``bpf/c/datapath.c`` (tc programs) and, when socket LB is wanted, ``bpf/c/sock_lb.c`` (cgroup
programs). The programs declare the maps ``BPF_TABLE_PINNED`` at the node's pin directory, so
they share the maps with :class:`bpf.maps.NodeMaps` and with any earlier run.

Attachments outlive this process (tc filters and cgroup attachments hold their programs), which
is what lets an agent restart without losing packets: ``attach_*`` *replaces* what an earlier run
attached at the same place (fixed tc priority/handle, cgroup attach without ``BPF_F_ALLOW_MULTI``).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bpf.maps import DEFAULT_PIN_ROOT, NodeMaps
from bpf.syscall import prog_attach, prog_detach
from meshcore.errors import ConfigError, MeshError

__all__ = ["C_DIR", "DatapathConfig", "Datapath", "LoadError", "TC_INGRESS", "TC_EGRESS", "strict_mode_defines"]

C_DIR = Path(__file__).resolve().parent / "c"
TC_INGRESS = "ffff:fff2"
TC_EGRESS = "ffff:fff3"

# uapi/linux/bpf.h enum bpf_attach_type / bpf_prog_type.
_CGROUP_INET4_CONNECT = 10
_CGROUP_INET6_CONNECT = 11
_CGROUP_UDP4_SENDMSG = 14
_CGROUP_UDP6_SENDMSG = 15
_CGROUP_UDP4_RECVMSG = 19
_CGROUP_UDP6_RECVMSG = 20
_SCHED_CLS = 3
_CGROUP_SOCK_ADDR = 18

TC_PROGRAMS = ("from_pod", "to_pod", "to_tunnel", "from_tunnel")
SOCK_PROGRAMS = {
    "sock_connect4": _CGROUP_INET4_CONNECT,
    "sock_sendmsg4": _CGROUP_UDP4_SENDMSG,
    "sock_recvmsg4": _CGROUP_UDP4_RECVMSG,
    "sock_connect6": _CGROUP_INET6_CONNECT,
    "sock_sendmsg6": _CGROUP_UDP6_SENDMSG,
    "sock_recvmsg6": _CGROUP_UDP6_RECVMSG,
}


class LoadError(MeshError):
    """A program did not compile, load or attach."""


def strict_mode_defines(strict_cidr: str | None, allow_remote_node: bool = False) -> dict[str, str]:
    """The ``datapath.c`` defines of egress strict mode (empty when ``strict_cidr`` is None).

    ``STRICT_CIDR4_NET`` / ``STRICT_CIDR4_MASK`` are the CIDR's network and netmask in host byte
    order (``10.0.0.0/8`` -> ``0x0a000000`` / ``0xff000000``); ``STRICT_ALLOW_REMOTE_NODE`` is 0
    or 1. Raises :class:`ConfigError` for anything but an IPv4 network with a prefix length of 1
    to 32: strict mode is IPv4 only, as Cilium's, and mask 0 means "off" to the program."""
    if strict_cidr is None:
        return {}
    try:
        net = ipaddress.ip_network(strict_cidr, strict=True)
    except ValueError as exc:
        raise ConfigError(f"strict-mode CIDR {strict_cidr!r} is not a network address with a prefix: {exc}") from None
    if net.version != 4:
        raise ConfigError(
            f"strict-mode CIDR {strict_cidr!r} is IPv6: egress strict mode is IPv4 only (as Cilium's); "
            "give an IPv4 CIDR"
        )
    if net.prefixlen == 0:
        raise ConfigError(f"strict-mode CIDR {strict_cidr!r} has prefix length 0; give a prefix of /1 to /32")
    return {
        "STRICT_CIDR4_NET": f"0x{int(net.network_address):08x}",
        "STRICT_CIDR4_MASK": f"0x{int(net.netmask):08x}",
        "STRICT_ALLOW_REMOTE_NODE": "1" if allow_remote_node else "0",
    }


@dataclass(frozen=True, slots=True)
class DatapathConfig:
    """Where the node's devices are and which parts to load.

    ``netns``: the named network namespace holding the node's devices (None: this process's).
    ``tunnel_device``: the VXLAN ``external`` device; ``from_pod`` redirects traffic for
    ipcache entries with a tunnel endpoint straight into it (None: the kernel routes it).
    ``cgroup``: the cgroup v2 directory whose sockets get service load-balancing (None: none).
    ``strict_cidr``: egress strict mode (Cilium's ``encryption-strict-mode-cidr``): ``from_pod``
    drops, counted ``unencrypted``, a packet to an endpoint on another node when source and
    destination are both inside this IPv4 CIDR and the destination's ipcache ``encrypt_key`` is 0
    (None: off). ``strict_allow_remote_node``: still let such packets reach remote-node identities
    (``encryption-strict-mode-allow-remote-node-identities``). Checked at construction
    (:func:`strict_mode_defines`).
    """

    netns: str | None = None
    tunnel_device: str | None = None
    cgroup: str | None = None
    tc_priority: int = 1
    extra_cflags: tuple[str, ...] = field(default_factory=tuple)
    strict_cidr: str | None = None
    strict_allow_remote_node: bool = False

    def __post_init__(self) -> None:
        strict_mode_defines(self.strict_cidr, self.strict_allow_remote_node)


class Datapath:
    """A node's loaded programs plus its :class:`NodeMaps`; use :meth:`load`."""

    def __init__(self, node: str, maps: NodeMaps, config: DatapathConfig) -> None:
        self.node = node
        self.maps = maps
        self.config = config
        self.tunnel_ifindex = 0
        self._tc_bpf: Any = None
        self._sock_bpf: Any = None
        self._fds: dict[str, int] = {}
        self._cgroup_fd = -1

    # ---- loading ----

    @classmethod
    def load(
        cls, node: str, pin_root: str | os.PathLike[str] = DEFAULT_PIN_ROOT, config: DatapathConfig | None = None
    ) -> Datapath:
        """Open the node's maps and compile its programs; attach the cgroup programs if configured."""
        config = config or DatapathConfig()
        maps = NodeMaps(node, pin_root)
        dp = cls(node, maps, config)
        try:
            if config.tunnel_device:
                dp.tunnel_ifindex = dp.ifindex(config.tunnel_device)
            defines = {"TUNNEL_IFINDEX": str(dp.tunnel_ifindex)}
            defines |= strict_mode_defines(config.strict_cidr, config.strict_allow_remote_node)
            dp._tc_bpf = dp._compile("datapath.c", defines)
            for name in TC_PROGRAMS:
                dp._fds[name] = dp._load_fn(dp._tc_bpf, name, _SCHED_CLS, -1)
            if config.cgroup:
                dp._sock_bpf = dp._compile("sock_lb.c", {})
                for name, attach_type in SOCK_PROGRAMS.items():
                    dp._fds[name] = dp._load_fn(dp._sock_bpf, name, _CGROUP_SOCK_ADDR, attach_type)
                dp.attach_cgroup(config.cgroup)
        except BaseException:
            dp.close()
            raise
        return dp

    def _compile(self, source: str, defines: dict[str, str]) -> Any:
        from bcc import BPF  # imported late: bcc is Debian's module, present only on datapath hosts

        cflags = [f'-DPIN_DIR="{self.maps.directory}"', f"-I{C_DIR}", "-Wno-unused-function"]
        cflags += [f"-D{k}={v}" for k, v in defines.items()]
        cflags += list(self.config.extra_cflags)
        try:
            return BPF(src_file=str(C_DIR / source).encode(), cflags=cflags)
        except Exception as exc:  # bcc raises bare Exception; its stderr has the compiler output
            raise LoadError(f"bcc could not compile {source}: {exc} (see the compiler output above)") from exc

    @staticmethod
    def _load_fn(bpf_obj: Any, name: str, prog_type: int, attach_type: int) -> int:
        try:
            fn = bpf_obj.load_func(name.encode(), prog_type, attach_type=attach_type)
        except Exception as exc:
            raise LoadError(f"the kernel rejected program {name}: {exc} (verifier log above)") from exc
        return int(fn.fd)

    def program_fd(self, name: str) -> int:
        """The fd of a loaded program (``from_pod``, ``sock_connect4``...)."""
        try:
            return self._fds[name]
        except KeyError:
            raise LoadError(f"program {name} is not loaded on node {self.node}") from None

    # ---- netlink ----

    @contextmanager
    def _ipr(self) -> Iterator[Any]:
        from pyroute2 import IPRoute

        # With netns, pyroute2 opens the socket inside it; our program fds stay valid.
        ipr = IPRoute(netns=self.config.netns) if self.config.netns else IPRoute()
        try:
            yield ipr
        finally:
            ipr.close()

    def ifindex(self, ifname: str) -> int:
        """The ifindex of ``ifname`` in the node's namespace."""
        with self._ipr() as ipr:
            found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise LoadError(f"no device {ifname!r} in netns {self.config.netns or '(current)'}")
        return int(found[0])

    def _attach_tc(self, ifname: str, ingress: str | None, egress: str | None) -> int:
        with self._ipr() as ipr:
            found = ipr.link_lookup(ifname=ifname)
            if not found:
                raise LoadError(f"no device {ifname!r} in netns {self.config.netns or '(current)'}")
            index = int(found[0])
            qdiscs = ipr.get_qdiscs(index=index)
            if not any(q.get_attr("TCA_KIND") == "clsact" for q in qdiscs):
                ipr.tc("add", "clsact", index)
            for prog, parent in ((ingress, TC_INGRESS), (egress, TC_EGRESS)):
                if prog is None:
                    continue
                ipr.tc(
                    "replace-filter",
                    "bpf",
                    index,
                    ":1",
                    fd=self.program_fd(prog),
                    name=prog,
                    parent=parent,
                    prio=self.config.tc_priority,
                    classid=1,
                    direct_action=True,
                )
        return index

    def _detach_tc(self, ifname: str) -> None:
        with self._ipr() as ipr:
            found = ipr.link_lookup(ifname=ifname)
            if found:
                try:
                    ipr.tc("del", "clsact", int(found[0]))
                except Exception:  # no clsact: nothing attached
                    pass

    # ---- attach points ----

    def attach_pod(self, ifname: str, endpoint_id: int, identity: int) -> int:
        """Attach from_pod/to_pod to the node side of a pod's veth and register the endpoint.

        Returns the veth's ifindex (the ``endpoints`` map key)."""
        from bpf.layouts import EndpointKey, EndpointValue

        index = self.ifindex(ifname)
        # Register first: the programs pass unknown endpoints unpoliced.
        self.maps.endpoints.update(EndpointKey(index), EndpointValue(endpoint_id, identity))
        self._attach_tc(ifname, "from_pod", "to_pod")
        return index

    def detach_pod(self, ifname: str) -> None:
        """Remove the pod veth's programs and its endpoint entry."""
        from bpf.layouts import EndpointKey

        try:
            index = self.ifindex(ifname)
        except LoadError:
            return
        self._detach_tc(ifname)
        self.maps.endpoints.delete(EndpointKey(index))

    def attach_tunnel(self, ifname: str | None = None) -> int:
        """Attach to_tunnel (egress) and from_tunnel (ingress) to the VXLAN device."""
        name = ifname or self.config.tunnel_device
        if not name:
            raise LoadError("no tunnel device named (DatapathConfig.tunnel_device)")
        return self._attach_tc(name, "from_tunnel", "to_tunnel")

    def detach_tunnel(self, ifname: str | None = None) -> None:
        """Remove the tunnel device's programs."""
        name = ifname or self.config.tunnel_device
        if name:
            self._detach_tc(name)

    def attach_cgroup(self, path: str) -> None:
        """Attach the socket-LB programs (connect/sendmsg/recvmsg, IPv4 and IPv6) to a cgroup v2
        directory, replacing earlier ones of each attach type."""
        if self._sock_bpf is None:
            self._sock_bpf = self._compile("sock_lb.c", {})
            for name, attach_type in SOCK_PROGRAMS.items():
                self._fds[name] = self._load_fn(self._sock_bpf, name, _CGROUP_SOCK_ADDR, attach_type)
        self.detach_cgroup()
        try:
            self._cgroup_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise LoadError(f"cannot open cgroup {path}: {exc} (a cgroup v2 directory is needed)") from exc
        try:
            for name, attach_type in SOCK_PROGRAMS.items():
                prog_attach(self._fds[name], self._cgroup_fd, attach_type)
        except OSError as exc:
            raise LoadError(f"cannot attach socket LB to {path}: {exc}") from exc

    def detach_cgroup(self) -> None:
        """Detach the socket-LB programs from the cgroup they were attached to."""
        if self._cgroup_fd < 0:
            return
        for name, attach_type in SOCK_PROGRAMS.items():
            try:
                prog_detach(self._fds[name], self._cgroup_fd, attach_type)
            except OSError:
                pass  # already gone (cgroup removed)
        os.close(self._cgroup_fd)
        self._cgroup_fd = -1

    def close(self) -> None:
        """Release this process's handles; attachments and pinned maps stay in the kernel.

        Cgroup programs stay attached too (call :meth:`detach_cgroup` first to remove them)."""
        if self._cgroup_fd >= 0:
            os.close(self._cgroup_fd)
            self._cgroup_fd = -1
        for obj in (self._tc_bpf, self._sock_bpf):
            if obj is not None:
                obj.cleanup()
        self._tc_bpf = self._sock_bpf = None
        self._fds.clear()
        self.maps.close()

    def __enter__(self) -> Datapath:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
