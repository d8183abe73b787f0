"""The node runtime's configuration file (``NODE.json``, written by the lab supervisor).

Every field is required except the restart backoff pair and the pod MTU::

    {
      "lab": "lab",                     # lab name (2-7 of [a-z0-9], starting with a letter)
      "cluster": "c1", "cluster_id": 1,  # cluster name and ClusterMesh id (1-255)
      "node_name": "c1-n0", "node_index": 0,
      "pod_cidr": "10.1.0.0/24",         # this node's podCIDR
      "internal_ip": "192.168.1.1",      # underlay address (InternalIP, hostIP, hostNetwork pods' IP)
      "kubeconfig": "/run/clustermesh-lab/lab/clusters/c1/kubeconfig",
      "state_dir": "/run/clustermesh-lab/lab/nodes/c1-n0",
      "cgroup_root": "/sys/fs/cgroup/unified/clustermesh-lab-lab/c1.n0",
      "api_service_host": "172.16.1.1", "api_service_port": 443,
      "api_ca_file": "/run/clustermesh-lab/lab/clusters/c1/api/tls/ca.crt",
      "restart_backoff": 1.0,            # optional: first container restart delay (s)
      "restart_backoff_max": 30.0,       # optional: cap of the doubling delay (s)
      "pod_mtu": 1500                    # optional: the pods' eth0 MTU (1420 in a lab with WireGuard)
    }

The restart backoff is deliberately faster than the kubelet's (10 s doubling to 300 s): lab
scenarios crash and restart containers on purpose and should not wait minutes.
``state_dir`` must end in ``<lab>/nodes/<node_name>`` (lab/README.md): the runtime finds the
other nodes' and labs' mount-point records relative to it.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import msgspec

from meshcore.errors import ConfigError

_LAB_RE = re.compile(r"^[a-z][a-z0-9]{1,6}$")
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class NodeConfigError(ConfigError):
    """``NODE.json`` is missing, malformed, or names something unusable."""


class NodeConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One node runtime's settings (see the module docstring for the file format)."""

    lab: str
    cluster: str
    cluster_id: int
    node_name: str
    node_index: int
    pod_cidr: str
    internal_ip: str
    kubeconfig: str
    state_dir: str
    cgroup_root: str
    api_service_host: str
    api_service_port: int
    api_ca_file: str
    restart_backoff: float = 1.0
    restart_backoff_max: float = 30.0
    pod_mtu: int = 1500

    @property
    def pod_network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.pod_cidr)

    @property
    def host_ip(self) -> ipaddress.IPv4Address:
        return ipaddress.IPv4Address(self.internal_ip)

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    @property
    def cgroup_path(self) -> Path:
        return Path(self.cgroup_root)


def validate(cfg: NodeConfig, *, check_files: bool = True) -> NodeConfig:
    """Return ``cfg`` if every field is usable, else raise :class:`NodeConfigError` naming the field."""
    def bad(field: str, why: str) -> NodeConfigError:
        return NodeConfigError(f"node config: {field}: {why}")

    if not _LAB_RE.match(cfg.lab):
        raise bad("lab", f"{cfg.lab!r} is not a lab name (2-7 characters of [a-z0-9], starting with a letter)")
    for field, value in (("cluster", cfg.cluster), ("node_name", cfg.node_name)):
        if not _NAME_RE.match(value):
            raise bad(field, f"{value!r} is not a DNS label")
    if not 1 <= cfg.cluster_id <= 255:
        raise bad("cluster_id", f"{cfg.cluster_id} is outside 1..255")
    if cfg.node_index < 0:
        raise bad("node_index", f"{cfg.node_index} is negative")
    try:
        net = ipaddress.IPv4Network(cfg.pod_cidr)
    except ValueError as err:
        raise bad("pod_cidr", f"{cfg.pod_cidr!r} is not an IPv4 network ({err})") from None
    if net.num_addresses < 4:
        raise bad("pod_cidr", f"{net} is too small for pods")
    for field, value in (("internal_ip", cfg.internal_ip), ("api_service_host", cfg.api_service_host)):
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            raise bad(field, f"{value!r} is not an IPv4 address") from None
    if not 1 <= cfg.api_service_port <= 65535:
        raise bad("api_service_port", f"{cfg.api_service_port} is not a port")
    state = Path(cfg.state_dir)
    if not state.is_absolute() or state.name != cfg.node_name or state.parent.name != "nodes" \
            or state.parent.parent.name != cfg.lab:
        raise bad("state_dir", f"{cfg.state_dir!r} must be an absolute path ending in {cfg.lab}/nodes/{cfg.node_name}")
    if not Path(cfg.cgroup_root).is_absolute():
        raise bad("cgroup_root", f"{cfg.cgroup_root!r} must be an absolute path")
    if not cfg.restart_backoff > 0:
        raise bad("restart_backoff", "must be a positive number of seconds")
    if cfg.restart_backoff_max < cfg.restart_backoff:
        raise bad("restart_backoff_max", f"must be at least restart_backoff ({cfg.restart_backoff})")
    if not 576 <= cfg.pod_mtu <= 1500:
        raise bad("pod_mtu", "must be 576..1500")
    if check_files:
        for field, value in (("kubeconfig", cfg.kubeconfig), ("api_ca_file", cfg.api_ca_file)):
            if not Path(value).is_file():
                raise bad(field, f"{value} does not exist")
    return cfg


def parse_config(data: bytes | str, *, source: str = "node config", check_files: bool = True) -> NodeConfig:
    """Decode and validate a ``NODE.json`` document."""
    try:
        cfg = msgspec.json.decode(data, type=NodeConfig)
    except msgspec.ValidationError as err:
        raise NodeConfigError(f"{source}: {err}") from None
    except msgspec.DecodeError as err:
        raise NodeConfigError(f"{source}: not valid JSON ({err})") from None
    return validate(cfg, check_files=check_files)


def load_config(path: str | Path, *, check_files: bool = True) -> NodeConfig:
    """Read, decode and validate ``NODE.json`` at ``path``."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise NodeConfigError(f"cannot read node config {path}: {err.strerror or err}") from None
    return parse_config(data, source=str(path), check_files=check_files)
