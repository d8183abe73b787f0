"""``clustermesh-agent``: the per-node agent's command line (Cilium's flag names where they exist).

Exit status: 0 after SIGTERM/SIGINT, 1 when something outside the command line failed (the socket
cannot be served, ...), 2 on a usage error (bad or missing flags, --datapath bpf without --kvstore-config).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import click

from agent.config import (
    ALLOW_LOCALHOST,
    DATAPATHS,
    DEFAULT_OPT_OUT_LABELS,
    DEFAULT_PIN_ROOT,
    DEFAULT_WIREGUARD_DEVICE,
    ENCRYPTION_MODES,
    ENCRYPTION_SCOPES,
    ROUTING_MODES,
    AgentConfig,
)
from meshcore.cliopts import CONTEXT_SETTINGS, log_options, run_until_signalled
from meshcore.duration import Duration
from meshcore.errors import ConfigError
from meshcore.log import configure as configure_logging

__all__ = ["main"]

DEFAULT_STATE_DIR = Path("/var/run/clustermesh-agent")


def _default_node_name() -> str:
    return os.environ.get("K8S_NODE_NAME") or socket.gethostname()


@click.command(name="clustermesh-agent", context_settings=CONTEXT_SETTINGS)
@click.option("--cluster-name", required=True, help="This cluster's name: lowercase, digits and '-', at most 32.")
@click.option("--cluster-id", type=int, required=True,
              help="This cluster's ID, unique in the mesh: 1..255 (1..511 with --max-connected-clusters 511).")
@click.option("--node-name", default=_default_node_name, show_default="$K8S_NODE_NAME, else the hostname",
              help="The node this agent runs on.")
@click.option("--clustermesh-config", type=click.Path(path_type=Path), required=True, metavar="DIR",
              help="Directory with one etcd config (YAML) per remote cluster, named after the cluster; "
              "files are picked up, changed and removed while running.")
@click.option("--kvstore-config", type=click.Path(path_type=Path), metavar="FILE",
              help="etcd config (YAML) of this cluster's own kvstore; with --datapath bpf (required there) the "
              "node's endpoints, identities and global services are read from it.")
@click.option("--kubeconfig", type=click.Path(dir_okay=False, path_type=Path),
              help="kubeconfig of this cluster's Kubernetes API: policies (CiliumNetworkPolicy, "
              "CiliumClusterwideNetworkPolicy, NetworkPolicy) and Service affinity annotations are watched there "
              "(--datapath bpf). Without it no policy is enforced.")
@click.option("--pin-root", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_PIN_ROOT,
              show_default=True, help="bpffs directory; this node's maps are pinned in <pin-root>/<node-name>/.")
@click.option("--tunnel-device", default="cilium_vxlan", show_default=True,
              help="The VXLAN collect-metadata device (dstport 8472) the agent creates if missing "
              "(--routing-mode tunnel).")
@click.option("--routing-mode", type=click.Choice(ROUTING_MODES), default="tunnel", show_default=True,
              help="tunnel: remote pods through the VXLAN device, the source identity in the VNI. native: no "
              "VXLAN device (none created, an existing one left alone); the kernel routes each remote pod CIDR "
              "via its node's underlay IP (routes the agent keeps, tagged with route protocol 201; no other "
              "route is touched) and policy resolves the source identity from the ipcache by source IP.")
@click.option("--allow-localhost", type=click.Choice(ALLOW_LOCALHOST), default="auto", show_default=True,
              help="auto: traffic from the node itself (identity reserved:host, every address of the node's "
              "network namespace but 127/8: kubelet probes) reaches every local pod whatever the policies say "
              "(an explicit deny still wins). policy: only as a policy admits the host entity.")
@click.option("--encryption", type=click.Choice(ENCRYPTION_MODES), default="none", show_default=True,
              help="wireguard: encrypt pod traffic to the other nodes with WireGuard (--datapath bpf): the key is "
              "kept in <state-dir>/cilium_wg0.key, every node publishing a key becomes a peer, and the kernel steers "
              "the traffic into the device (tunnel mode: the VXLAN packets; native mode: the pod CIDRs). none: no "
              "encryption; WireGuard steering rules a previous agent left are removed. Per-node migration switch: "
              "a node whose Node carries the label clustermesh.io/encryption=disabled (read at start, with "
              "--kubeconfig) runs as with none: no device (deleted), its published key withdrawn (no wg-pub-key, "
              "encryption key 0); the other nodes list it as a plaintext peer and, with strict mode, drop pod "
              "traffic to it. Remove the label and restart the agent to encrypt again (same key).")
@click.option("--wireguard-device", default=DEFAULT_WIREGUARD_DEVICE, show_default=True, metavar="NAME",
              help="The WireGuard device; a literal {hash} becomes 8 hex digits of sha256(<cluster>/<node>) (where "
              "many nodes share one machine, wireguard-go device names must be unique machine-wide). At most 15 "
              "characters once expanded.")
@click.option("--wireguard-persistent-keepalive", type=int, default=0, show_default=True, metavar="SECONDS",
              help="WireGuard persistent keepalive of every peer (0 = off).")
@click.option("--wireguard-key-rotation-interval", type=Duration(allow_zero=True), default="0", show_default=True,
              metavar="DURATION", help="Rotate this node's WireGuard key when it is this old (seconds, or Go-style "
              "720h, 30m; 0 = off: only `clustermesh encryption rotate` rotates it). Make-before-break: the node "
              "announces its next key, moves its peers to a transition device under it, commits, then moves back "
              "to the main device, without losing packets (see `clustermesh encryption rotate --help`).")
@click.option("--encryption-scope", type=click.Choice(ENCRYPTION_SCOPES), default="all", show_default=True,
              help="all: every other node of the mesh is a peer. inter-cluster: only the remote clusters' nodes; "
              "traffic within this cluster stays plaintext.")
@click.option("--encryption-node-encryption/--no-encryption-node-encryption", "node_encryption", default=False,
              show_default=True, help="Also encrypt node-to-node traffic (host IPs) to peers that did not opt out "
              "(Cilium's encrypt-node).")
@click.option("--node-encryption-opt-out-labels", default=DEFAULT_OPT_OUT_LABELS, show_default=True,
              metavar="SELECTOR", help="Label selector of nodes that opt out of node encryption: they advertise "
              "encryption key 0, so no node encrypts host traffic to them (pod traffic still is). Empty: no node "
              "opts out.")
@click.option("--encryption-strict-mode-cidr", "strict_mode_cidr", metavar="CIDR",
              help="Egress strict mode: drop (counted 'unencrypted') pod traffic to another node when source and "
              "destination are both in this IPv4 CIDR and the destination's node is not a WireGuard peer. Without "
              "--encryption wireguard every such packet is dropped.")
@click.option("--encryption-strict-mode-allow-remote-node-identities", "strict_mode_allow_remote_node",
              is_flag=True, default=False, help="Strict mode still lets traffic reach remote-node identities.")
@click.option("--underlay-device", metavar="IFNAME",
              help="Device carrying node-to-node traffic (its IPv4 address is the node IP)  "
              "[default: the first device with a global IPv4 address]")
@click.option("--cgroup", type=click.Path(file_okay=False, path_type=Path),
              help="cgroup v2 directory whose sockets get global-service load-balancing (default: none).")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_STATE_DIR,
              show_default=True, help="Directory for the agent's runtime state (created mode 0700).")
@click.option("--agent-socket", type=click.Path(dir_okay=False, path_type=Path),
              help="Unix socket of the local API (mode 0600)  [default: <state-dir>/agent.sock]")
@click.option("--datapath", type=click.Choice(DATAPATHS), default="bpf", show_default=True,
              help="bpf: load the eBPF datapath in this network namespace and keep its pinned maps equal to "
              "the desired state. none: control plane only; the desired state is served on GET /v1/desired.")
@click.option("--metrics-port", type=int, default=0, show_default=True,
              help="TCP port for /metrics (0 = off; /metrics is always on the socket).")
@click.option("--metrics-address", default="127.0.0.1", show_default=True, help="Address for --metrics-port.")
@click.option("--clustermesh-sync-timeout", "sync_timeout", type=float, default=60.0, show_default=True,
              help="Seconds to wait for the initial sync of all remote clusters; after that, log one warning "
              "and carry on as if synced.")
@click.option("--heartbeat-timeout", type=float, default=120.0, show_default=True,
              help="Seconds without a cilium/.heartbeat update after which a remote counts as not ready.")
@click.option("--max-connected-clusters", type=int, default=255, show_default=True,
              help="255 or 511; every cluster of a mesh must use the same value.")
@log_options()
def main(
    cluster_name: str,
    cluster_id: int,
    node_name: str,
    clustermesh_config: Path,
    kvstore_config: Path | None,
    kubeconfig: Path | None,
    pin_root: Path,
    tunnel_device: str,
    routing_mode: str,
    allow_localhost: str,
    encryption: str,
    wireguard_device: str,
    wireguard_persistent_keepalive: int,
    wireguard_key_rotation_interval: float,
    encryption_scope: str,
    node_encryption: bool,
    node_encryption_opt_out_labels: str,
    strict_mode_cidr: str | None,
    strict_mode_allow_remote_node: bool,
    underlay_device: str | None,
    cgroup: Path | None,
    state_dir: Path,
    agent_socket: Path | None,
    datapath: str,
    metrics_port: int,
    metrics_address: str,
    sync_timeout: float,
    heartbeat_timeout: float,
    max_connected_clusters: int,
    log_level: str,
    log_json: bool,
) -> None:
    """Connect this node to every remote cluster of the mesh and keep their state in sync.

    \b
    Per remote cluster (a file in --clustermesh-config, as Cilium mounts the secret
    cilium-clustermesh): connect to its etcd, read its cluster config, watch its nodes,
    services, ipcache entries and identities (validated: wrong cluster name or ID and
    identities outside its range are skipped and counted), and turn them into the desired
    datapath state.

    \b
    Inspect it with:
      clustermesh status --agent-socket <state-dir>/agent.sock
      clustermesh agent dump --agent-socket <state-dir>/agent.sock -o json
    """
    configure_logging(level=log_level, json=log_json)
    config = AgentConfig(
        cluster_name=cluster_name,
        cluster_id=cluster_id,
        node_name=node_name,
        clustermesh_config=clustermesh_config,
        state_dir=state_dir,
        agent_socket=agent_socket,
        kvstore_config=kvstore_config,
        datapath=datapath,
        metrics_port=metrics_port,
        metrics_address=metrics_address,
        sync_timeout=sync_timeout,
        heartbeat_timeout=heartbeat_timeout,
        max_connected_clusters=max_connected_clusters,
        kubeconfig=kubeconfig,
        pin_root=pin_root,
        tunnel_device=tunnel_device,
        routing_mode=routing_mode,
        allow_localhost=allow_localhost,
        underlay_device=underlay_device,
        cgroup=cgroup,
        encryption=encryption,
        wireguard_device=wireguard_device,
        wireguard_persistent_keepalive=wireguard_persistent_keepalive,
        wireguard_key_rotation_interval=wireguard_key_rotation_interval,
        encryption_scope=encryption_scope,
        node_encryption=node_encryption,
        node_encryption_opt_out_labels=node_encryption_opt_out_labels,
        strict_mode_cidr=strict_mode_cidr,
        strict_mode_allow_remote_node=strict_mode_allow_remote_node,
    )
    try:
        config.validate()
        config.local_etcd()
    except ConfigError as err:
        raise click.UsageError(str(err)) from None
    _run(config)


def _run(config: AgentConfig) -> None:
    """Run the agent until it fails or SIGTERM/SIGINT arrives (then stop gracefully)."""
    from agent.daemon import Agent

    run_until_signalled(lambda: Agent(config).run())


if __name__ == "__main__":
    main(prog_name="clustermesh-agent")
