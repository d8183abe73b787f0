"""The agent's one validated configuration object (what ``clustermesh-agent`` flags fill in)."""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
from dataclasses import dataclass
from pathlib import Path

from agent.policy.resolve import ALLOW_LOCALHOST
from meshcore.errors import ConfigError, WireError
from meshcore.kvstore.config import EtcdClientConfig, load_etcd_config
from meshcore.wire.clusterinfo import validate_cluster_id, validate_cluster_name

__all__ = [
    "ALLOW_LOCALHOST",
    "DATAPATHS",
    "ROUTING_MODES",
    "ENCRYPTION_MODES",
    "ENCRYPTION_SCOPES",
    "DEFAULT_WIREGUARD_DEVICE",
    "DEFAULT_OPT_OUT_LABELS",
    "BPF_NEEDS_KVSTORE",
    "AgentConfig",
    "wireguard_device_name",
]

DATAPATHS = ("bpf", "none")
ROUTING_MODES = ("tunnel", "native")
BPF_NEEDS_KVSTORE = (
    "--datapath bpf needs --kvstore-config: this node's endpoints (pods) and identities are read from "
    "this cluster's own kvstore. Use --datapath none to run the control plane only."
)
DEFAULT_PIN_ROOT = Path("/sys/fs/bpf/clustermesh")
ENCRYPTION_MODES = ("none", "wireguard")
ENCRYPTION_SCOPES = ("all", "inter-cluster")
"""``all``: every other node of the mesh is a WireGuard peer; ``inter-cluster``: only the remote
clusters' nodes (this cluster's traffic stays plaintext, cilium/cilium#25418)."""
DEFAULT_WIREGUARD_DEVICE = "cilium_wg0"
DEFAULT_OPT_OUT_LABELS = "node-role.kubernetes.io/control-plane"
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


def wireguard_device_name(template: str, cluster: str, node: str) -> str:
    """``template`` with a literal ``{hash}`` replaced by the first 8 hex digits of
    sha256("<cluster>/<node>"): on a machine running many lab nodes, wireguard-go device names are
    global (its control sockets live in one /var/run/wireguard), so each node needs its own."""
    digest = hashlib.sha256(f"{cluster}/{node}".encode()).hexdigest()[:8]
    return template.replace("{hash}", digest)


@dataclass(frozen=True)
class AgentConfig:
    """Everything one agent needs; :meth:`validate` says what is wrong and how to fix it.

    ``clustermesh_config`` is the directory of remote cluster configs (one etcd YAML per remote,
    named after it, as Cilium's ``/var/lib/cilium/clustermesh/``). ``kvstore_config`` is the
    local cluster's etcd (optional; loaded and checked, not used by the control plane yet).
    ``metrics_port`` 0 means no TCP metrics endpoint (``/metrics`` stays on the socket).
    Times are seconds.

    Encryption (``--datapath bpf`` only; see :mod:`agent.datapath.wireguard`): ``encryption``
    (none/wireguard), ``wireguard_device`` (a template: see :attr:`wireguard_device_name`),
    ``wireguard_persistent_keepalive`` (seconds, 0 off), ``encryption_scope`` (all/inter-cluster),
    ``node_encryption`` with ``node_encryption_opt_out_labels`` (a label selector; empty: nobody
    opts out), egress strict mode ``strict_mode_cidr`` / ``strict_mode_allow_remote_node``
    (allowed without WireGuard: everything in the CIDR is then dropped),
    ``wireguard_key_rotation_interval`` (seconds: rotate the key when it is this old; 0 off).
    """

    cluster_name: str
    cluster_id: int
    node_name: str
    clustermesh_config: Path
    state_dir: Path
    agent_socket: Path | None = None
    kvstore_config: Path | None = None
    datapath: str = "none"
    metrics_port: int = 0
    metrics_address: str = "127.0.0.1"
    sync_timeout: float = 60.0
    heartbeat_timeout: float = 120.0
    max_connected_clusters: int = 255
    config_interval: float = 1.0
    debounce: float = 0.2
    max_debounce: float = 2.0
    kubeconfig: Path | None = None
    pin_root: Path = DEFAULT_PIN_ROOT
    tunnel_device: str = "cilium_vxlan"
    underlay_device: str | None = None
    cgroup: Path | None = None
    routing_mode: str = "tunnel"
    allow_localhost: str = "auto"
    encryption: str = "none"
    wireguard_device: str = DEFAULT_WIREGUARD_DEVICE
    wireguard_persistent_keepalive: int = 0
    encryption_scope: str = "all"
    node_encryption: bool = False
    node_encryption_opt_out_labels: str = DEFAULT_OPT_OUT_LABELS
    strict_mode_cidr: str | None = None
    strict_mode_allow_remote_node: bool = False
    wireguard_key_rotation_interval: float = 0.0

    @property
    def wireguard_device_name(self) -> str:
        """The WireGuard device name, ``{hash}`` resolved (see :func:`wireguard_device_name`)."""
        return wireguard_device_name(self.wireguard_device, self.cluster_name, self.node_name)

    @property
    def socket_path(self) -> Path:
        """``agent_socket``, or ``<state_dir>/agent.sock``."""
        return self.agent_socket if self.agent_socket is not None else self.state_dir / "agent.sock"

    def validate(self) -> None:
        """Raise :class:`ConfigError` for anything the agent cannot run with."""
        try:
            validate_cluster_id(self.cluster_id, self.max_connected_clusters)
        except WireError as err:
            raise ConfigError(
                f"--cluster-id {self.cluster_id}: {err.reason} (ClusterMesh needs a unique ID in"
                f" 1..{self.max_connected_clusters}; see --max-connected-clusters)"
            ) from None
        try:
            validate_cluster_name(self.cluster_name, cluster_id=self.cluster_id)
        except WireError as err:
            raise ConfigError(f"--cluster-name: {err.reason}") from None
        if not self.node_name:
            raise ConfigError("--node-name must not be empty (default: $K8S_NODE_NAME, else the hostname)")
        if self.datapath not in DATAPATHS:
            raise ConfigError(f"--datapath must be one of {', '.join(DATAPATHS)}, got {self.datapath!r}")
        if self.routing_mode not in ROUTING_MODES:
            raise ConfigError(
                f"--routing-mode must be one of {', '.join(ROUTING_MODES)}, got {self.routing_mode!r}"
            )
        if self.allow_localhost not in ALLOW_LOCALHOST:
            raise ConfigError(
                f"--allow-localhost must be one of {', '.join(ALLOW_LOCALHOST)}, got {self.allow_localhost!r}"
            )
        if self.datapath == "bpf" and self.kvstore_config is None:
            raise ConfigError(BPF_NEEDS_KVSTORE)
        if not 1 <= len(self.tunnel_device) <= 15:
            raise ConfigError(f"--tunnel-device {self.tunnel_device!r} must be 1..15 characters (a device name)")
        self._validate_encryption()
        if not self.clustermesh_config.is_dir():
            raise ConfigError(
                f"--clustermesh-config {self.clustermesh_config} is not a directory; it must hold one etcd"
                " config file per remote cluster, named after the cluster"
            )
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"--metrics-port must be in 0..65535 (0 = off), got {self.metrics_port}")
        for flag, value in (
            ("--clustermesh-sync-timeout", self.sync_timeout),
            ("--heartbeat-timeout", self.heartbeat_timeout),
        ):
            if not value > 0:
                raise ConfigError(f"{flag} must be a positive number of seconds, got {value}")
        if len(str(self.socket_path)) > 100:
            raise ConfigError(
                f"--agent-socket {self.socket_path} is too long for a unix socket (at most 100 characters)"
            )

    def _validate_encryption(self) -> None:
        if self.encryption not in ENCRYPTION_MODES:
            raise ConfigError(f"--encryption must be one of {', '.join(ENCRYPTION_MODES)}, got {self.encryption!r}")
        if self.encryption_scope not in ENCRYPTION_SCOPES:
            raise ConfigError(
                f"--encryption-scope must be one of {', '.join(ENCRYPTION_SCOPES)}, got {self.encryption_scope!r}"
            )
        name = self.wireguard_device_name
        if not _IFNAME.match(name):
            raise ConfigError(
                f"--wireguard-device {self.wireguard_device!r} gives the device name {name!r}: a device name is 1..15 "
                "characters of letters, digits, '_', '.' and '-' ({hash} stands for 8 of them)"
            )
        if self.encryption == "wireguard" and name == self.tunnel_device:
            raise ConfigError(f"--wireguard-device {name!r} must differ from --tunnel-device")
        if not 0 <= self.wireguard_persistent_keepalive <= 65535:
            raise ConfigError(
                "--wireguard-persistent-keepalive must be 0 (off) to 65535 seconds, got "
                f"{self.wireguard_persistent_keepalive}"
            )
        interval = self.wireguard_key_rotation_interval
        if not (math.isfinite(interval) and interval >= 0):
            raise ConfigError(
                f"--wireguard-key-rotation-interval must be 0 (off) or a positive duration, got {interval}"
            )
        if interval > 0 and self.encryption != "wireguard":
            raise ConfigError(
                "--wireguard-key-rotation-interval needs --encryption wireguard (there is no key to rotate)"
            )
        try:
            from agent.datapath.labelselector import parse_selector

            parse_selector(self.node_encryption_opt_out_labels)
        except ValueError as err:
            raise ConfigError(f"--node-encryption-opt-out-labels: {err}") from None
        if self.strict_mode_cidr is not None:
            try:
                net = ipaddress.ip_network(self.strict_mode_cidr, strict=True)
            except ValueError as err:
                raise ConfigError(
                    f"--encryption-strict-mode-cidr {self.strict_mode_cidr!r} is not a network address with a prefix: "
                    f"{err}"
                ) from None
            if net.version != 4 or net.prefixlen == 0:
                raise ConfigError(
                    f"--encryption-strict-mode-cidr {self.strict_mode_cidr!r}: egress strict mode takes an IPv4 CIDR "
                    "of /1 to /32 (IPv4 only, as Cilium's)"
                )
        elif self.strict_mode_allow_remote_node:
            raise ConfigError(
                "--encryption-strict-mode-allow-remote-node-identities needs --encryption-strict-mode-cidr"
            )
        if self.datapath != "bpf":
            for flag, on in (
                ("--encryption wireguard", self.encryption != "none"),
                ("--encryption-strict-mode-cidr", self.strict_mode_cidr is not None),
                ("--encryption-node-encryption", self.node_encryption),
            ):
                if on:
                    raise ConfigError(f"{flag} needs --datapath bpf (the node datapath does the encryption)")

    def local_etcd(self) -> EtcdClientConfig | None:
        """The local etcd config, loaded (raises :class:`ConfigError` when unusable)."""
        if self.kvstore_config is None:
            return None
        return load_etcd_config(self.kvstore_config)
