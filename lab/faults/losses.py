"""Packet loss: a tc BPF program (``loss.c``, compiled with bcc) on the underlay bridge ports.

There is no ``sch_netem`` here, so loss ``N`` between node sets *a* and *b* at ``p`` percent is one
program instance with its own hash map of the (source MAC, destination MAC) pairs a x b and b x a,
each with the threshold ``p / 100 * 2^32``: a frame of such a pair is dropped when
``bpf_get_prandom_u32()`` is below it. The program is attached at the ingress of the bridge ports
of every node of a and b (the underlay-namespace ends of their veths), as a filter named
``cmlab-loss/N`` with a priority of its own, so every frame one of those nodes sends passes it
once, and several loss faults stack. It returns ``TC_ACT_UNSPEC`` (next filter) for frames it
keeps.

The filters are the record: :func:`list_losses` finds them by name (``tc -j filter show``), follows
each to its program and reads the pairs, sides and percentage back from the program's map.
Removing the filters frees program and map.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bpf import syscall
from lab.faults import nsexec
from lab.faults.model import (
    FaultError,
    FaultRecord,
    InvalidFault,
    NodeRef,
    UnknownFault,
    mac_bytes,
    mac_text,
    sides,
    validate_name,
    validate_percent,
)
from lab.net import nsutil

SOURCE = Path(__file__).with_name("loss.c")
PROGRAM = "lab_loss"
MAP_NAME = "pairs"
FILTER_PREFIX = "cmlab-loss/"
TC_INGRESS = "ffff:fff2"
TC_EGRESS = "ffff:fff3"
#: Loss filters get priorities from here up (one per fault, the same on all its ports).
PRIO_BASE = 0x4000
PRIO_MAX = 0x7FFF
#: ``struct pair`` and ``struct verdict`` of loss.c.
KEY = struct.Struct("=6s6s")
VALUE = struct.Struct("=QII")
SIDE_A, SIDE_B = 0, 1

_SCHED_CLS = 3
_BPF_PROG_GET_FD_BY_ID = 13
_BPF_MAP_GET_FD_BY_ID = 14
_BPF_OBJ_GET_INFO_BY_FD = 15
#: ``struct bpf_prog_info``: ``nr_map_ids`` (u32) at 52, ``map_ids`` (u64 pointer) at 56.
_PROG_INFO_NR_MAP_IDS = 52
_PROG_INFO_MAP_IDS = 56
_MAX_MAP_IDS = 16


@dataclass(frozen=True)
class PairEntry:
    """One entry of the program's map: frames from ``src`` to ``dst`` are dropped at ``threshold``."""

    src: str
    dst: str
    side: int
    threshold: int
    percent_e6: int

    def pack(self) -> tuple[bytes, bytes]:
        """Key and value bytes as loss.c lays them out."""
        return KEY.pack(mac_bytes(self.src), mac_bytes(self.dst)), VALUE.pack(
            self.threshold, self.side, self.percent_e6
        )

    @classmethod
    def unpack(cls, key: bytes, value: bytes) -> PairEntry:
        """The entry stored as ``key``/``value``."""
        src, dst = KEY.unpack(key)
        threshold, side, percent_e6 = VALUE.unpack(value)
        return cls(mac_text(src), mac_text(dst), side, threshold, percent_e6)


@dataclass(frozen=True)
class InstalledFilter:
    """A loss filter found on a bridge port."""

    port: str
    name: str
    prio: int
    prog_id: int | None


def filter_name(name: str) -> str:
    """The tc filter name of loss ``name``."""
    return FILTER_PREFIX + validate_name(name)


def threshold(percent: float) -> int:
    """The drop threshold for a 32-bit random number: ``percent / 100 * 2^32``, at least 1."""
    return min(1 << 32, max(1, round(validate_percent(percent) / 100 * (1 << 32))))


def plan_pairs(a: Sequence[NodeRef], b: Sequence[NodeRef], percent: float) -> list[PairEntry]:
    """The map entries of a loss between ``a`` and ``b``: every pair, both directions."""
    side_a, side_b = sides(a, b)
    thr, e6 = threshold(percent), round(validate_percent(percent) * 1_000_000)
    entries = [PairEntry(x.underlay_mac, y.underlay_mac, SIDE_A, thr, e6) for x in side_a for y in side_b]
    entries += [PairEntry(y.underlay_mac, x.underlay_mac, SIDE_B, thr, e6) for x in side_a for y in side_b]
    return entries


def free_prio(used: set[int]) -> int:
    """The first loss priority not in ``used``."""
    for prio in range(PRIO_BASE, PRIO_MAX + 1):
        if prio not in used:
            return prio
    raise FaultError(f"no free tc priority left in {PRIO_BASE}..{PRIO_MAX} for another loss")


def parse_tc_filters(port: str, document: list[dict[str, Any]]) -> list[InstalledFilter]:
    """The loss filters in a ``tc -j filter show dev <port> ingress`` document."""
    found = []
    for item in document:
        options = item.get("options") or {}
        bpf_name = str(options.get("bpf_name", ""))
        if item.get("kind") != "bpf" or not bpf_name.startswith(FILTER_PREFIX):
            continue
        prog = options.get("prog") or {}
        prog_id = prog.get("id") if isinstance(prog, dict) else None
        found.append(InstalledFilter(port, bpf_name[len(FILTER_PREFIX) :], int(item["pref"]), prog_id))
    return found


def records(filters: Sequence[InstalledFilter], entries: dict[int, list[PairEntry]]) -> list[FaultRecord]:
    """Loss records from the filters in place and the map entries of their programs."""
    by_name: dict[str, set[int]] = {}
    for f in filters:
        by_name.setdefault(f.name, set())
        if f.prog_id is not None:
            by_name[f.name].add(f.prog_id)
    result = []
    for name in sorted(by_name):
        a: set[str] = set()
        b: set[str] = set()
        percent: float | None = None
        for prog_id in sorted(by_name[name]):
            for e in entries.get(prog_id, []):
                src_side, dst_side = (a, b) if e.side == SIDE_A else (b, a)
                src_side.add(e.src)
                dst_side.add(e.dst)
                percent = e.percent_e6 / 1_000_000
        result.append(FaultRecord("loss", name, tuple(sorted(a)), tuple(sorted(b)), percent=percent))
    return result


# --- I/O: devices and filters ---------------------------------------------------------------------


def bridge_port(underlay_ns: str, node: NodeRef) -> str:
    """The bridge port in ``underlay_ns`` that is the peer of ``node``'s underlay veth."""
    nsexec.require_namespace(node.ns)
    with nsutil.iproute(node.ns) as ipr:
        found = ipr.link_lookup(ifname=node.underlay_ifname)
        if not found:
            raise FaultError(f"no underlay device {node.underlay_ifname!r} in {node.ns}")
        local = ipr.link("get", index=int(found[0]))[0]
        peer = local.get_attr("IFLA_LINK")
    if not peer:
        raise FaultError(f"{node.underlay_ifname} in {node.ns} is not a veth with a peer in another namespace")
    with nsutil.iproute(underlay_ns) as ipr:
        try:
            port = ipr.link("get", index=int(peer))[0]
        except Exception as exc:  # pyroute2 raises NetlinkError (ENODEV) for a missing index
            raise FaultError(f"the peer of {node.underlay_ifname} in {node.ns} is not in {underlay_ns}") from exc
    if port.get_attr("IFLA_LINK") != int(found[0]) or not port.get_attr("IFLA_MASTER"):
        raise FaultError(f"the peer of {node.underlay_ifname} in {node.ns} is not a bridge port of {underlay_ns}")
    return str(port.get_attr("IFLA_IFNAME"))


def _clsact_ports(underlay_ns: str) -> list[tuple[int, str]]:
    with nsutil.iproute(underlay_ns) as ipr:
        names = {int(link["index"]): str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()}
        indexes = {int(q["index"]) for q in ipr.get_qdiscs() if q.get_attr("TCA_KIND") == "clsact"}
    return sorted((i, names[i]) for i in indexes if i in names)


def installed_filters(underlay_ns: str) -> list[InstalledFilter]:
    """Every loss filter in ``underlay_ns`` (read with ``tc -j``, which shows the program ids)."""
    nsexec.require_namespace(underlay_ns)
    tc = nsexec.tool("tc", nsexec.TC_FALLBACK)
    found: list[InstalledFilter] = []
    for _, port in _clsact_ports(underlay_ns):
        out = nsexec.run(underlay_ns, tc, "-j", "filter", "show", "dev", port, "ingress")
        try:
            document = json.loads(out) if out.strip() else []
        except ValueError as exc:
            raise FaultError(f"tc printed something that is not JSON for {port}: {out[:200]!r}") from exc
        found += parse_tc_filters(port, document)
    return found


def _used_prios(underlay_ns: str, ports: Sequence[str]) -> set[int]:
    used: set[int] = set()
    with nsutil.iproute(underlay_ns) as ipr:
        for port in ports:
            index = nsutil.ifindex(ipr, port)
            used |= {int(f["info"]) >> 16 for f in ipr.get_filters(index=index, parent=TC_INGRESS)}
    return used


def _attach(underlay_ns: str, ports: Sequence[str], prog_fd: int, name: str, prio: int) -> None:
    with nsutil.iproute(underlay_ns) as ipr:
        for port in ports:
            index = nsutil.ifindex(ipr, port)
            if not any(q.get_attr("TCA_KIND") == "clsact" for q in ipr.get_qdiscs(index=index)):
                ipr.tc("add", "clsact", index)
            ipr.tc(
                "add-filter", "bpf", index, ":1", fd=prog_fd, name=filter_name(name), parent=TC_INGRESS,
                prio=prio, classid=1, direct_action=True,
            )  # fmt: skip


def _detach(underlay_ns: str, filters: Sequence[InstalledFilter]) -> None:
    tc = nsexec.tool("tc", nsexec.TC_FALLBACK)
    for f in filters:
        nsexec.run(underlay_ns, tc, "filter", "del", "dev", f.port, "ingress", "pref", str(f.prio))
    ports = sorted({f.port for f in filters})
    with nsutil.iproute(underlay_ns) as ipr:
        for port in ports:
            found = ipr.link_lookup(ifname=port)
            if not found:
                continue
            index = int(found[0])
            left = [*ipr.get_filters(index=index, parent=TC_INGRESS), *ipr.get_filters(index=index, parent=TC_EGRESS)]
            if not left:  # the clsact qdisc was ours (or empty): leave the port as the topology built it
                with contextlib.suppress(Exception):
                    ipr.tc("del", "clsact", index)


# --- I/O: the program and its map -----------------------------------------------------------------


def _attr(fmt: str, *values: int) -> ctypes.Array[ctypes.c_char]:
    buf = ctypes.create_string_buffer(128)
    struct.pack_into(fmt, buf, 0, *values)
    return buf


@contextlib.contextmanager
def _fd(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def _prog_map_ids(prog_fd: int) -> list[int]:
    ids = (ctypes.c_uint32 * _MAX_MAP_IDS)()
    info = ctypes.create_string_buffer(256)  # zero tail: the kernel accepts a longer bpf_prog_info
    struct.pack_into("=I", info, _PROG_INFO_NR_MAP_IDS, _MAX_MAP_IDS)
    struct.pack_into("=Q", info, _PROG_INFO_MAP_IDS, ctypes.addressof(ids))
    syscall.bpf(_BPF_OBJ_GET_INFO_BY_FD, _attr("=IIQ", prog_fd, len(info), ctypes.addressof(info)), "prog info")
    (count,) = struct.unpack_from("=I", info, _PROG_INFO_NR_MAP_IDS)
    return [int(i) for i in ids[: min(count, _MAX_MAP_IDS)]]


def _map_entries(map_fd: int) -> list[PairEntry]:
    key = ctypes.create_string_buffer(KEY.size)
    value = ctypes.create_string_buffer(VALUE.size)
    entries: list[PairEntry] = []
    prev: ctypes.Array[ctypes.c_char] | None = None
    for _ in range(1 << 16):  # bounded: a loss map holds at most a few thousand pairs
        if not syscall.map_get_next_key(map_fd, prev, key):
            break
        if syscall.map_lookup(map_fd, key, value):
            entries.append(PairEntry.unpack(key.raw, value.raw))
        prev = ctypes.create_string_buffer(key.raw, KEY.size)
    return entries


def program_entries(prog_id: int) -> list[PairEntry]:
    """The pairs in the map of loss program ``prog_id`` ([] if the program is gone meanwhile)."""
    try:
        prog_fd = syscall.bpf(_BPF_PROG_GET_FD_BY_ID, _attr("=I", prog_id), f"prog {prog_id}")
    except syscall.BpfSyscallError:
        return []
    with _fd(prog_fd):
        for map_id in _prog_map_ids(prog_fd):
            with _fd(syscall.bpf(_BPF_MAP_GET_FD_BY_ID, _attr("=I", map_id), f"map {map_id}")) as map_fd:
                info = syscall.map_info(map_fd)
                if (info.name, info.key_size, info.value_size) == (MAP_NAME, KEY.size, VALUE.size):
                    return _map_entries(map_fd)
    return []


def _compile(entries: Sequence[PairEntry]) -> Any:
    try:
        from bcc import BPF  # imported late: bcc is Debian's module, present only on datapath hosts
    except ImportError as exc:
        raise FaultError("bcc is not importable: packet loss needs it (run scripts/setup.sh)") from exc
    try:
        bpf_obj = BPF(src_file=str(SOURCE).encode(), cflags=[f"-DMAX_PAIRS={max(1, len(entries))}"])
    except Exception as exc:  # bcc raises bare Exception; the compiler output went to stderr
        raise FaultError(f"bcc could not compile {SOURCE.name}: {exc}") from exc
    try:
        map_fd = int(bpf_obj[MAP_NAME.encode()].map_fd)
        for entry in entries:
            key, value = entry.pack()
            key_buf = ctypes.create_string_buffer(key, KEY.size)
            syscall.map_update(map_fd, key_buf, ctypes.create_string_buffer(value, VALUE.size))
    except BaseException:
        bpf_obj.cleanup()
        raise
    return bpf_obj


# --- the operations -------------------------------------------------------------------------------


def list_losses(underlay_ns: str) -> list[FaultRecord]:
    """The losses in place in ``underlay_ns``, read back from its tc filters and their programs."""
    filters = installed_filters(underlay_ns)
    entries = {pid: program_entries(pid) for pid in {f.prog_id for f in filters if f.prog_id is not None}}
    return records(filters, entries)


def loss(underlay_ns: str, a: Sequence[NodeRef], b: Sequence[NodeRef], percent: float, *, name: str) -> None:
    """Drop ``percent`` % (``0 < percent <= 100``) of the frames between the nodes of ``a`` and
    those of ``b``, each direction independently, as loss ``name``.

    Raises :class:`InvalidFault` for a bad name, percentage or node sets, or if a loss ``name`` is
    in place already (clear it first); :class:`FaultError` if the program cannot be built or attached
    (nothing is left behind then)."""
    validate_name(name)
    entries = plan_pairs(a, b, percent)
    nsexec.require_namespace(underlay_ns)
    if any(f.name == name for f in installed_filters(underlay_ns)):
        raise InvalidFault(f"loss {name!r} is in place already in {underlay_ns}: clear it first or pick another name")
    side_a, side_b = sides(a, b)
    ports = [bridge_port(underlay_ns, n) for n in (*side_a, *side_b)]
    bpf_obj = _compile(entries)
    try:
        try:
            fd = int(bpf_obj.load_func(PROGRAM.encode(), _SCHED_CLS).fd)
        except Exception as exc:  # bcc raises bare Exception; the verifier log went to stderr
            raise FaultError(f"the kernel rejected the loss program: {exc}") from exc
        prio = free_prio(_used_prios(underlay_ns, ports))
        try:
            _attach(underlay_ns, ports, fd, name, prio)
        except Exception as exc:
            _detach(underlay_ns, [f for f in installed_filters(underlay_ns) if f.name == name])
            raise FaultError(f"could not attach loss {name!r} in {underlay_ns}: {exc}") from exc
    finally:
        bpf_obj.cleanup()  # the filters hold the program, the program holds its map


def clear_loss(underlay_ns: str, *, name: str) -> None:
    """Remove loss ``name``; :class:`UnknownFault` (listing those in place) if there is none."""
    validate_name(name)
    filters = installed_filters(underlay_ns)
    mine = [f for f in filters if f.name == name]
    if not mine:
        active = sorted({f.name for f in filters})
        raise UnknownFault(f"no loss {name!r} in {underlay_ns}; in place: {', '.join(active) if active else 'none'}")
    _detach(underlay_ns, mine)


def clear_all_losses(underlay_ns: str) -> list[str]:
    """Remove every loss in ``underlay_ns``; return their names."""
    filters = installed_filters(underlay_ns)
    _detach(underlay_ns, filters)
    return sorted({f.name for f in filters})
