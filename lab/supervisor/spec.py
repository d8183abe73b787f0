"""What a lab is made of: names, addresses, ports and paths, derived from a few choices (pure).

A :class:`LabSpec` is written once to ``<state dir>/spec.json`` by ``lab up`` and read by every
later command (``status``, ``exec``, ``logs``, ``fault``, ``down``), so they all agree on the plan in
lab/README.md without talking to the supervisor.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from lab.net import names

STATE_ROOT = Path("/run/clustermesh-lab")
CGROUP_UNIFIED_ROOTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))
BPFFS = Path("/sys/fs/bpf")
ENV_MARKER = "CLUSTERMESH_LAB"
"""Environment variable carried by every lab process; its value is the lab's name."""
MAX_CLUSTERS = 16
MAX_NODES = 16
DEFAULT_NAME = "lab"
API_SERVICE_PORT = 443

RoutingMode = Literal["tunnel", "native"]
ENCRYPTION_MODES = ("none", "wireguard")
_NAME_RE = re.compile(r"^[a-z][a-z0-9]{1,6}$")


class LabSpecError(ValueError):
    """A lab cannot be built as asked (bad name, sizes, or a broken spec file)."""


def validate_lab_name(name: str) -> str:
    """Return ``name`` if it can name a lab, else raise :class:`LabSpecError` saying why."""
    if not _NAME_RE.match(name):
        raise LabSpecError(
            f"invalid lab name {name!r}: use 2-7 characters of [a-z0-9] starting with a letter "
            "(it prefixes namespace and interface names)"
        )
    return name


def wireguard_device_template(name: str) -> str:
    """The lab's ``--wireguard-device``: ``cmwg``, 3 hex digits of sha256(lab name), then the agent's
    ``{hash}`` (8 hex digits of sha256("<cluster>/<node>")), 15 characters in all. wireguard-go
    device names (and control sockets) are global on this host and every lab has a ``c1-n0``: the
    lab part keeps labs apart (``lab up`` refuses a lab whose part another lab here shares)."""
    return f"cmwg{hashlib.sha256(validate_lab_name(name).encode()).hexdigest()[:3]}{{hash}}"


def wireguard_device_pattern(name: str) -> re.Pattern[str]:
    """Matches the device names :func:`wireguard_device_template` gives the nodes of lab ``name``, and
    their key rotation's transition devices (:func:`~encryption.wireguard.device.transition_device_name`:
    the last hex digit made ``t`` or ``u``)."""
    return re.compile(re.escape(wireguard_device_template(name).replace("{hash}", "")) + r"[0-9a-f]{7}[0-9a-ftu]")


def state_dir(name: str) -> Path:
    """Where a lab keeps its files."""
    return STATE_ROOT / validate_lab_name(name)


def cgroup_unified_root() -> Path:
    """The cgroup v2 hierarchy (the unified mount on this hybrid layout)."""
    for root in CGROUP_UNIFIED_ROOTS:
        if (root / "cgroup.controllers").exists():
            return root
    raise LabSpecError("no cgroup v2 hierarchy found at /sys/fs/cgroup/unified or /sys/fs/cgroup")


@dataclass(frozen=True)
class NodeSpec:
    """One node of one cluster (see lab/README.md for the address plan)."""

    cluster: str
    cluster_id: int
    index: int
    name: str
    netns: str
    internal_ip: str
    pod_cidr: str

    @property
    def short(self) -> str:
        """``n<index>``: the node's part of namespace names."""
        return f"n{self.index}"


@dataclass(frozen=True)
class ClusterSpec:
    """One cluster: its ID, context, address ranges and API ports.

    Clients use ``api_port`` (the supervisor's watch-resuming front, :mod:`lab.kube.front`); the API
    process listens on ``api_internal_port`` behind it (0 in specs written before the front existed)."""

    name: str
    cluster_id: int
    context: str
    pod_cidr: str
    service_cidr: str
    api_service_ip: str
    api_port: int
    nodes: tuple[NodeSpec, ...]
    api_internal_port: int = 0


@dataclass(frozen=True)
class LabSpec:
    """A whole lab. Build one with :func:`plan`; persist with :meth:`save` / :func:`load`."""

    name: str
    routing_mode: RoutingMode
    clusters: tuple[ClusterSpec, ...]
    kubeconfig_merged: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: ``lab up --encryption`` / ``--encryption-strict-mode-cidr`` /
    #: ``--wireguard-key-rotation-interval`` (seconds, 0 off), given to every cluster's install.
    encryption: str = "none"
    encryption_strict_mode_cidr: str | None = None
    wireguard_key_rotation_interval: float = 0.0

    @property
    def state_dir(self) -> Path:
        return state_dir(self.name)

    @property
    def kubeconfig(self) -> Path:
        """The lab's own kubeconfig (every context)."""
        return self.state_dir / "kubeconfig"

    @property
    def underlay_ns(self) -> str:
        return names.underlay_ns(self.name)

    @property
    def cgroup_dir(self) -> Path:
        return cgroup_unified_root() / f"clustermesh-lab-{self.name}"

    @property
    def bpffs_dir(self) -> Path:
        return BPFFS / f"clustermesh-lab-{self.name}"

    @property
    def wireguard_device(self) -> str:
        """The ``--wireguard-device`` template of this lab's agents (see :func:`wireguard_device_template`)."""
        return wireguard_device_template(self.name)

    @property
    def nodes(self) -> list[NodeSpec]:
        return [n for c in self.clusters for n in c.nodes]

    def cluster(self, name: str) -> ClusterSpec:
        """The cluster called ``name`` (or whose context is ``name``)."""
        for c in self.clusters:
            if name in (c.name, c.context):
                return c
        raise LabSpecError(f"lab {self.name!r} has no cluster {name!r} (clusters: "
                           f"{', '.join(c.name for c in self.clusters)})")

    def node(self, name: str) -> NodeSpec:
        """The node called ``name`` (its Node object name, e.g. ``c1-n0``)."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise LabSpecError(f"lab {self.name!r} has no node {name!r} (nodes: {', '.join(n.name for n in self.nodes)})")

    def cluster_dir(self, cluster: str) -> Path:
        return self.state_dir / "clusters" / cluster

    def node_dir(self, node: str) -> Path:
        return self.state_dir / "nodes" / node

    def node_cgroup(self, node: NodeSpec) -> Path:
        """The node's cgroup (its pods' cgroups are below it), named after the Node."""
        return self.cgroup_dir / node.name

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def save(self) -> Path:
        """Write ``spec.json`` into the state directory (atomically)."""
        path = self.state_dir / "spec.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)
        return path


def plan(name: str, clusters: int, nodes: int, *, routing_mode: RoutingMode = "tunnel",
         api_ports: list[int] | None = None, api_internal_ports: list[int] | None = None,
         kubeconfig_merged: str | None = None, encryption: str = "none",
         encryption_strict_mode_cidr: str | None = None, wireguard_key_rotation_interval: float = 0.0) -> LabSpec:
    """The lab ``name`` with ``clusters`` clusters of ``nodes`` nodes each (``encryption``,
    ``encryption_strict_mode_cidr`` and ``wireguard_key_rotation_interval`` are recorded for the
    mesh install, which validates them).

    ``api_ports`` gives each cluster's API port on 127.0.0.1 and ``api_internal_ports`` the port of
    the API process behind it (chosen by the caller, who can probe for free ones)."""
    validate_lab_name(name)
    if not 1 <= clusters <= MAX_CLUSTERS:
        raise LabSpecError(f"--clusters must be between 1 and {MAX_CLUSTERS}, not {clusters}")
    if not 1 <= nodes <= MAX_NODES:
        raise LabSpecError(f"--nodes must be between 1 and {MAX_NODES}, not {nodes}")
    if routing_mode not in ("tunnel", "native"):
        raise LabSpecError(f"--routing-mode must be tunnel or native, not {routing_mode!r}")
    if encryption not in ENCRYPTION_MODES:
        raise LabSpecError(f"--encryption must be none or wireguard, not {encryption!r}")
    ports = api_ports or [0] * clusters
    internal_ports = api_internal_ports or [0] * clusters
    if len(ports) != clusters or len(internal_ports) != clusters:
        raise LabSpecError("one API port and one internal API port per cluster are needed")
    out = []
    for i in range(clusters):
        cid = i + 1
        cname = f"c{cid}"
        pod_cidr = names.default_pod_cidr(cid)
        svc = ipaddress.IPv4Network(f"172.16.{cid}.0/24")
        node_specs = tuple(
            NodeSpec(
                cluster=cname, cluster_id=cid, index=j, name=f"{cname}-n{j}",
                netns=names.node_ns(name, cname, f"n{j}"),
                internal_ip=str(names.node_underlay_ip(cid, j)),
                pod_cidr=str(names.node_pod_cidr(pod_cidr, j)),
            )
            for j in range(nodes)
        )  # fmt: skip
        out.append(ClusterSpec(
            name=cname, cluster_id=cid, context=f"{name}-{cname}", pod_cidr=str(pod_cidr),
            service_cidr=str(svc), api_service_ip=str(svc.network_address + 1), api_port=ports[i],
            nodes=node_specs, api_internal_port=internal_ports[i],
        ))  # fmt: skip
    return LabSpec(name=name, routing_mode=routing_mode, clusters=tuple(out), kubeconfig_merged=kubeconfig_merged,
                   encryption=encryption, encryption_strict_mode_cidr=encryption_strict_mode_cidr,
                   wireguard_key_rotation_interval=wireguard_key_rotation_interval)


def from_dict(doc: dict[str, Any]) -> LabSpec:
    """Rebuild a spec from its JSON form; raises :class:`LabSpecError` on a broken document."""
    try:
        clusters = tuple(
            ClusterSpec(**{**c, "nodes": tuple(NodeSpec(**n) for n in c["nodes"])}) for c in doc["clusters"]
        )
        return LabSpec(name=validate_lab_name(doc["name"]), routing_mode=doc["routing_mode"], clusters=clusters,
                       kubeconfig_merged=doc.get("kubeconfig_merged"), extra=dict(doc.get("extra") or {}),
                       encryption=str(doc.get("encryption") or "none"),
                       encryption_strict_mode_cidr=doc.get("encryption_strict_mode_cidr"),
                       wireguard_key_rotation_interval=float(doc.get("wireguard_key_rotation_interval") or 0.0))
    except (KeyError, TypeError, ValueError) as err:
        raise LabSpecError(f"broken lab spec: {err!r}") from err


def load(name: str) -> LabSpec:
    """The spec of the lab ``name``; a clear error if there is no such lab."""
    path = state_dir(name) / "spec.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise LabSpecError(f"no lab named {name!r} is up (no {path}); start one with `clustermesh lab up`") from None
    except json.JSONDecodeError as err:
        raise LabSpecError(f"{path} is not valid JSON ({err}); `clustermesh lab down --name {name}` cleans up") \
            from None
    return from_dict(doc)


def labs_present() -> list[str]:
    """Names of the labs with a state directory on this machine."""
    if not STATE_ROOT.is_dir():
        return []
    return sorted(p.name for p in STATE_ROOT.iterdir() if p.is_dir() and _NAME_RE.match(p.name))
