"""Names, labels, ports and paths of the installed objects (Cilium's where Cilium has them).

Everything a manifest, a Secret builder or a CLI verb (enable, connect, status, disable) needs to
agree on lives here, so that they cannot drift apart.
"""

from __future__ import annotations

from typing import Final

# ---- object names (reference §2.6, §3.1, §7 "Defaults") ----
APISERVER: Final = "clustermesh-apiserver"  # Deployment, Service, ServiceAccount, ClusterRole(Binding)
AGENT: Final = "clustermesh-agent"  # DaemonSet, ServiceAccount, ClusterRole(Binding)
CONFIG_MAP: Final = "clustermesh-config"  # cluster-name, cluster-id, ... (Cilium's cilium-config keys)
AGENT_CONFIG_MAP: Final = "clustermesh-agent-config"  # the agent's local kvstore config and kubeconfig
CA_SECRET: Final = "cilium-ca"
SERVER_CERT_SECRET: Final = "clustermesh-apiserver-server-cert"
ADMIN_CERT_SECRET: Final = "clustermesh-apiserver-admin-cert"
REMOTE_CERT_SECRET: Final = "clustermesh-apiserver-remote-cert"
LOCAL_CERT_SECRET: Final = "clustermesh-apiserver-local-cert"
CLUSTERMESH_SECRET: Final = "cilium-clustermesh"  # one entry per peer cluster, read by the agents

#: Secrets the enable/connect commands create at run time (never rendered with key material).
RUNTIME_SECRETS: Final = (
    CA_SECRET,
    SERVER_CERT_SECRET,
    ADMIN_CERT_SECRET,
    REMOTE_CERT_SECRET,
    LOCAL_CERT_SECRET,
    CLUSTERMESH_SECRET,
)

# ---- labels ----
APP_LABEL: Final = "k8s-app"  # Cilium's pod selector key (k8s-app=clustermesh-apiserver)
PART_OF_LABEL: Final = "app.kubernetes.io/part-of"
PART_OF: Final = "clustermesh-py"
#: ``kubectl get ... -l app.kubernetes.io/part-of=clustermesh-py`` finds every object this installs.
PART_OF_SELECTOR: Final = f"{PART_OF_LABEL}={PART_OF}"

# ---- containers ----
ETCD_CONTAINER: Final = "etcd"
ETCD_INIT_CONTAINER: Final = "etcd-init"
APISERVER_CONTAINER: Final = "apiserver"
AGENT_CONTAINER: Final = "agent"

# ---- ports ----
ETCD_PORT: Final = 2379
DEFAULT_NODE_PORT: Final = 32379
APISERVER_HEALTH_PORT: Final = 9880

# ---- paths inside the pods ----
ETCD_DATA_DIR: Final = "/var/run/etcd"
ETCD_SERVER_SECRETS_DIR: Final = "/var/lib/etcd-secrets"  # server cert, for the etcd container
ETCD_ADMIN_SECRETS_DIR: Final = "/var/lib/cilium/etcd-secrets"  # admin cert, for the apiserver
CLUSTERMESH_CONFIG_DIR: Final = "/var/lib/cilium/clustermesh"  # the cilium-clustermesh Secret
AGENT_CONFIG_DIR: Final = "/var/lib/clustermesh/config"  # the clustermesh-agent-config ConfigMap
AGENT_KVSTORE_FILE: Final = "kvstore.yaml"
AGENT_KUBECONFIG_FILE: Final = "kubeconfig"
SERVICE_ACCOUNT_DIR: Final = "/var/run/secrets/kubernetes.io/serviceaccount"

# Files of the Secrets (a kubernetes.io/tls Secret plus Cilium's ca.crt; cilium-ca's ca.key).
CA_CRT: Final = "ca.crt"
CA_KEY: Final = "ca.key"
TLS_CRT: Final = "tls.crt"
TLS_KEY: Final = "tls.key"

#: This cluster's own remote certificate, projected into the agents' clustermesh directory under
#: Cilium's names, so peer entries written for a shared CA can name these files (reference §3.1).
COMMON_CLIENT_CA: Final = "common-etcd-client-ca.crt"
COMMON_CLIENT_CRT: Final = "common-etcd-client.crt"
COMMON_CLIENT_KEY: Final = "common-etcd-client.key"

#: The domain of peer endpoints (``https://<peer>.mesh.cilium.io:<port>``), in the server cert's SANs.
MESH_DOMAIN: Final = "mesh.cilium.io"


def peer_config_key(peer: str) -> str:
    """The ``cilium-clustermesh`` key (and file) holding ``peer``'s etcd config: the peer's name."""
    return peer


def peer_ca_key(peer: str) -> str:
    return f"{peer}.etcd-client-ca.crt"


def peer_cert_key(peer: str) -> str:
    return f"{peer}.etcd-client.crt"


def peer_key_key(peer: str) -> str:
    return f"{peer}.etcd-client.key"


def service_dns_name(namespace: str) -> str:
    """``clustermesh-apiserver.<ns>.svc``: the server certificate's CN, dialled by local agents."""
    return f"{APISERVER}.{namespace}.svc"


def peer_hostname(peer: str) -> str:
    """``<peer>.mesh.cilium.io``: the name peers dial, matched by the ``*.mesh.cilium.io`` SAN."""
    return f"{peer}.{MESH_DOMAIN}"
