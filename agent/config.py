"""The agent's one validated configuration object (what ``clustermesh-agent`` flags fill in)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.policy.resolve import ALLOW_LOCALHOST
from meshcore.errors import ConfigError, WireError
from meshcore.kvstore.config import EtcdClientConfig, load_etcd_config
from meshcore.wire.clusterinfo import validate_cluster_id, validate_cluster_name

__all__ = ["ALLOW_LOCALHOST", "DATAPATHS", "ROUTING_MODES", "BPF_NEEDS_KVSTORE", "AgentConfig"]

DATAPATHS = ("bpf", "none")
ROUTING_MODES = ("tunnel", "native")
BPF_NEEDS_KVSTORE = (
    "--datapath bpf needs --kvstore-config: this node's endpoints (pods) and identities are read from "
    "this cluster's own kvstore. Use --datapath none to run the control plane only."
)
DEFAULT_PIN_ROOT = Path("/sys/fs/bpf/clustermesh")


@dataclass(frozen=True)
class AgentConfig:
    """Everything one agent needs; :meth:`validate` says what is wrong and how to fix it.

    ``clustermesh_config`` is the directory of remote cluster configs (one etcd YAML per remote,
    named after it, as Cilium's ``/var/lib/cilium/clustermesh/``). ``kvstore_config`` is the
    local cluster's etcd (optional; loaded and checked, not used by the control plane yet).
    ``metrics_port`` 0 means no TCP metrics endpoint (``/metrics`` stays on the socket).
    Times are seconds.
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

    def local_etcd(self) -> EtcdClientConfig | None:
        """The local etcd config, loaded (raises :class:`ConfigError` when unusable)."""
        if self.kvstore_config is None:
            return None
        return load_etcd_config(self.kvstore_config)
