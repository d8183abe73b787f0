"""The install's Kubernetes objects, as pure functions of :class:`InstallOptions`.

:func:`render_manifests` returns, in apply order: the ConfigMaps, the ServiceAccounts, the
ClusterRoles and their bindings, the ``clustermesh-apiserver`` Service and Deployment, and the
``clustermesh-agent`` DaemonSet. Secrets are not among them: they carry key material, which
``clustermesh enable`` issues at run time (:mod:`clustermesh_cli.install.secrets` builds them).

Every container names its command explicitly (no image ENTRYPOINT is relied on), so the same
objects run in a real cluster with the image of the ``Containerfile`` and in the lab, whose node
runtime runs ``command``/``args`` on the host. The pod layout is Cilium's (reference §0, §2.5):

- ``etcd-init`` (init container): starts etcd on loopback over the pod's data directory, runs
  ``clustermesh-apiserver etcdinit`` (users ``root``, ``admin-<cluster>``, ``local-<cluster>``,
  ``remote``; roles ``local`` and ``remote``; auth on), and stops it again. Cilium's etcdinit
  starts etcd itself; ours needs a running etcd, so a short shell script does that part.
- ``etcd``: mTLS with the server certificate, ``--client-cert-auth``, data on an emptyDir.
- ``apiserver``: ``clustermesh-apiserver clustermesh`` with the admin certificate; ``/readyz``.

Agents run on the host network and reach their own cluster's etcd (which holds this cluster's
endpoints, identities and services) with the cluster's remote certificate (role ``remote``,
read-only on ``cilium/state/``), and their Kubernetes API with a kubeconfig that uses the pod's
service-account token.
"""

from __future__ import annotations

import shlex
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import yaml

from clustermesh_cli.install import names
from clustermesh_cli.install.options import DEFAULT_WIREGUARD_DEVICE, InstallOptions
from clustermesh_cli.install.rbac import agent_rules, apiserver_rules
from meshcore.duration import format_duration

__all__ = [
    "Obj",
    "BPFFS_MOUNT",
    "CGROUP_MOUNT",
    "AGENT_STATE_MOUNT",
    "render_manifests",
    "agent_socket_path",
    "agent_kvstore_config",
    "agent_kubeconfig",
    "encryption_config",
    "etcd_init_script",
]

Obj = dict[str, Any]

#: Where the agent container sees the host paths of the options.
BPFFS_MOUNT = "/sys/fs/bpf"
CGROUP_MOUNT = "/run/clustermesh-cgroupv2"  # not /sys/fs/cgroup: the container runtime mounts its own view there
AGENT_STATE_MOUNT = "/var/run/clustermesh"
#: bcc compiles against the node's kernel headers: ``/lib/modules/<release>/build`` -> ``/usr/src/...``.
KERNEL_HEADER_PATHS = (("lib-modules", "/lib/modules"), ("usr-src", "/usr/src"))
SECRET_MODE = 0o400
ETCD_MEMBER_NAME = "clustermesh-apiserver"
ETCD_INIT_ATTEMPTS = 30
ETCD_INIT_PAUSE = 2


# ---- helpers ----

def _labels(app: str | None = None) -> dict[str, str]:
    labels = {names.APP_LABEL: app} if app else {}
    labels[names.PART_OF_LABEL] = names.PART_OF
    return labels


def _meta(name: str, options: InstallOptions | None, *, app: str | None = None,
          annotations: dict[str, str] | None = None) -> Obj:
    """Metadata: namespaced when ``options`` is given (cluster-scoped objects pass None)."""
    md: Obj = {"name": name}
    if options is not None:
        md["namespace"] = options.namespace
    md["labels"] = _labels(app)
    if annotations:
        md["annotations"] = dict(sorted(annotations.items()))
    return md


def _below(root: str, path: str, mount: str) -> str:
    """``path`` (below the host path ``root``) as seen where ``root`` is mounted at ``mount``."""
    rel = PurePosixPath(path).relative_to(PurePosixPath(root))
    return str(PurePosixPath(mount) / rel) if str(rel) != "." else mount


def _host_path(name: str, path: str, kind: str) -> Obj:
    return {"name": name, "hostPath": {"path": path, "type": kind}}


def _mount(name: str, path: str, *, read_only: bool = False) -> Obj:
    mount: Obj = {"name": name, "mountPath": path}
    if read_only:
        mount["readOnly"] = True
    return mount


def _container(name: str, options: InstallOptions, command: list[str], args: list[str], *,
               image: str | None = None) -> Obj:
    return {"name": name, "image": image or options.image, "imagePullPolicy": options.image_pull_policy,
            "command": command, "args": args}


def _yaml_text(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def agent_socket_path(node_name: str) -> str:
    """The agent API socket of ``node_name`` inside the agent container (``clustermesh status``
    reads it there with ``kubectl exec``; on the host it is under ``agent_state_root``)."""
    return f"{AGENT_STATE_MOUNT}/{node_name}/agent.sock"


# ---- ConfigMaps ----

def cluster_config_map(options: InstallOptions) -> Obj:
    """``clustermesh-config``: this cluster's identity, with the keys of Cilium's ``cilium-config``
    that ``cilium clustermesh connect`` reads (reference §7), plus the API server's source."""
    data = {
        "cluster-name": options.cluster_name,
        "cluster-id": str(options.cluster_id),
        "max-connected-clusters": str(options.max_connected_clusters),
        "routing-mode": options.routing_mode,
    }
    if options.routing_mode == "tunnel":
        data["tunnel-protocol"] = "vxlan"
    data["apiserver-source"] = options.source
    data.update(encryption_config(options))
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(names.CONFIG_MAP, options), "data": data}


def encryption_config(options: InstallOptions) -> dict[str, str]:
    """The encryption settings recorded in ``clustermesh-config`` (none when encryption is off), so
    that a later ``enable`` without flags keeps them and status commands can show them."""
    if options.encryption == "none":
        return {}
    data = {"encryption": options.encryption, "encryption-scope": options.encryption_scope,
            "wireguard-device": options.wireguard_device,
            "encryption-node-encryption": "true" if options.node_encryption else "false"}
    if options.encryption_strict_mode_cidr is not None:
        data["encryption-strict-mode-cidr"] = options.encryption_strict_mode_cidr
    if options.wireguard_key_rotation_interval > 0:
        data["wireguard-key-rotation-interval"] = format_duration(options.wireguard_key_rotation_interval)
    return data


def agent_kvstore_config(options: InstallOptions) -> str:
    """The agents' etcd config for their own cluster's clustermesh etcd (``--kvstore-config``)."""
    d = names.CLUSTERMESH_CONFIG_DIR
    endpoint = options.resolved_agent_kvstore_endpoint
    doc: Obj = {
        "endpoints": [endpoint],
        "trusted-ca-file": f"{d}/{names.COMMON_CLIENT_CA}",
        "cert-file": f"{d}/{names.COMMON_CLIENT_CRT}",
        "key-file": f"{d}/{names.COMMON_CLIENT_KEY}",
    }
    if options.agent_kvstore_host_ips:
        host = urlsplit(endpoint).hostname or ""
        doc["cilium-host-aliases"] = [{"hostname": host, "ips": list(options.agent_kvstore_host_ips)}]
    return _yaml_text(doc)


def agent_kubeconfig(options: InstallOptions) -> str:
    """A kubeconfig for the agents (``--kubeconfig``): the pod's service-account token and CA."""
    sa = names.SERVICE_ACCOUNT_DIR
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "in-cluster", "cluster": {"server": options.kube_api_server,
                                                         "certificate-authority": f"{sa}/ca.crt"}}],
        "users": [{"name": names.AGENT, "user": {"tokenFile": f"{sa}/token"}}],
        "contexts": [{"name": "in-cluster", "context": {"cluster": "in-cluster", "user": names.AGENT}}],
        "current-context": "in-cluster",
    }
    return _yaml_text(doc)


def agent_config_map(options: InstallOptions) -> Obj:
    """``clustermesh-agent-config``: the agents' local kvstore config and kubeconfig files."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(names.AGENT_CONFIG_MAP, options, app=names.AGENT),
        "data": {names.AGENT_KUBECONFIG_FILE: agent_kubeconfig(options),
                 names.AGENT_KVSTORE_FILE: agent_kvstore_config(options)},
    }


# ---- identities and RBAC ----

def service_account(name: str, options: InstallOptions) -> Obj:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(name, options, app=name)}


def cluster_role(name: str, rules: list[Obj]) -> Obj:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": _meta(name, None, app=name), "rules": rules}


def cluster_role_binding(name: str, options: InstallOptions) -> Obj:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": _meta(name, None, app=name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": options.namespace}],
    }


# ---- the clustermesh-apiserver ----

def apiserver_service(options: InstallOptions) -> Obj:
    """``clustermesh-apiserver``: port 2379 to the etcd container; NodePort 32379 by default."""
    port: Obj = {"name": "etcd", "port": names.ETCD_PORT, "targetPort": names.ETCD_PORT, "protocol": "TCP"}
    if options.service_type == "NodePort" and options.node_port is not None:
        port["nodePort"] = options.node_port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(names.APISERVER, options, app=names.APISERVER,
                          annotations=dict(options.service_annotations)),
        "spec": {"type": options.service_type, "selector": {names.APP_LABEL: names.APISERVER}, "ports": [port]},
    }


def _etcd_server_flags(listen: str, advertise: str) -> list[str]:
    s = names.ETCD_SERVER_SECRETS_DIR
    return [
        f"--data-dir={names.ETCD_DATA_DIR}",
        f"--name={ETCD_MEMBER_NAME}",
        "--client-cert-auth",
        f"--trusted-ca-file={s}/{names.CA_CRT}",
        f"--cert-file={s}/{names.TLS_CRT}",
        f"--key-file={s}/{names.TLS_KEY}",
        f"--listen-client-urls={listen}",
        f"--advertise-client-urls={advertise}",
        "--auto-compaction-retention=1",
    ]


def _admin_etcd_flags(endpoint: str) -> list[str]:
    a = names.ETCD_ADMIN_SECRETS_DIR
    return ["--etcd-endpoints", endpoint, "--etcd-ca", f"{a}/{names.CA_CRT}",
            "--etcd-cert", f"{a}/{names.TLS_CRT}", "--etcd-key", f"{a}/{names.TLS_KEY}"]


def _shell_lines(argv: list[str], *, indent: str, pair: bool = False) -> str:
    """``argv`` quoted for sh, one argument (or ``--flag value`` pair) per continued line."""
    words = [shlex.quote(a) for a in argv]
    groups: list[str] = []
    i = 0
    while i < len(words):
        if pair and argv[i].startswith("--") and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            groups.append(f"{words[i]} {words[i + 1]}")
            i += 2
        else:
            groups.append(words[i])
            i += 1
    head = " ".join(groups[:2]) if pair else groups[0]
    rest = groups[2:] if pair else groups[1:]
    return " \\\n".join([head, *(indent + g for g in rest)])


def etcd_init_script(options: InstallOptions) -> str:
    """The ``etcd-init`` container's ``sh -c`` script (POSIX sh; bounded; no ``$(NAME)`` or ``$$``,
    which Kubernetes would expand in ``args``)."""
    loopback = f"https://127.0.0.1:{names.ETCD_PORT}"
    etcd = _shell_lines(["etcd", *_etcd_server_flags(loopback, loopback)], indent="  ")
    init = _shell_lines(["clustermesh-apiserver", "etcdinit", "--cluster-name", options.cluster_name,
                         *_admin_etcd_flags(loopback)], indent="    ", pair=True)
    return "\n".join([
        "set -eu",
        "# Start this pod's etcd on loopback, create its users and roles and enable auth, then stop it:",
        "# the etcd container serves the same data directory next (as Cilium's etcdinit does).",
        f"{etcd} &",
        "etcd_pid=$!",
        "trap 'kill \"$etcd_pid\" 2>/dev/null || true; wait \"$etcd_pid\" 2>/dev/null || true' EXIT",
        "tries=0",
        f"until {init}; do",
        "  tries=$((tries + 1))",
        "  if ! kill -0 \"$etcd_pid\" 2>/dev/null; then",
        "    echo \"etcd-init: etcd exited before etcdinit succeeded\" >&2",
        "    exit 1",
        "  fi",
        f"  if [ \"$tries\" -ge {ETCD_INIT_ATTEMPTS} ]; then",
        "    echo \"etcd-init: etcdinit failed $tries times; giving up\" >&2",
        "    exit 1",
        "  fi",
        f"  sleep {ETCD_INIT_PAUSE}",
        "done",
        "",
    ])


def _apiserver_args(options: InstallOptions) -> list[str]:
    args = ["clustermesh", "--cluster-name", options.cluster_name, "--cluster-id", str(options.cluster_id),
            "--max-connected-clusters", str(options.max_connected_clusters), "--source", options.source,
            *_admin_etcd_flags(f"https://127.0.0.1:{names.ETCD_PORT}"),
            "--health-port", str(names.APISERVER_HEALTH_PORT), "--health-address", "0.0.0.0"]
    if options.enable_mcs_api:
        args.append("--clustermesh-enable-mcs-api")
    if options.enable_cilium_endpoint_slice:
        args.append("--enable-cilium-endpoint-slice")
    return [*args, *options.apiserver_extra_args]


def apiserver_deployment(options: InstallOptions) -> Obj:
    """``clustermesh-apiserver``: etcd-init, etcd and apiserver containers (reference §0, §2.5)."""
    data = _mount("etcd-data-dir", names.ETCD_DATA_DIR)
    server = _mount("etcd-server-secrets", names.ETCD_SERVER_SECRETS_DIR, read_only=True)
    admin = _mount("etcd-admin-client", names.ETCD_ADMIN_SECRETS_DIR, read_only=True)
    init = _container(names.ETCD_INIT_CONTAINER, options, ["/bin/sh", "-c"], [etcd_init_script(options)])
    init["volumeMounts"] = [data, server, admin]
    etcd = _container(names.ETCD_CONTAINER, options, ["etcd"],
                      _etcd_server_flags(f"https://0.0.0.0:{names.ETCD_PORT}", f"https://localhost:{names.ETCD_PORT}"),
                      image=options.resolved_etcd_image)
    etcd["ports"] = [{"name": "etcd", "containerPort": names.ETCD_PORT, "protocol": "TCP"}]
    etcd["volumeMounts"] = [data, server]
    apiserver = _container(names.APISERVER_CONTAINER, options, ["clustermesh-apiserver"], _apiserver_args(options))
    apiserver["ports"] = [{"name": "health", "containerPort": names.APISERVER_HEALTH_PORT, "protocol": "TCP"}]
    apiserver["readinessProbe"] = {"httpGet": {"path": "/readyz", "port": "health"},
                                   "periodSeconds": 5, "timeoutSeconds": 5, "failureThreshold": 3}
    apiserver["volumeMounts"] = [admin]
    empty_dir: Obj = {"medium": options.etcd_data_medium} if options.etcd_data_medium else {}
    volumes = [
        {"name": "etcd-data-dir", "emptyDir": empty_dir},
        {"name": "etcd-server-secrets", "secret": {"secretName": names.SERVER_CERT_SECRET, "defaultMode": SECRET_MODE}},
        {"name": "etcd-admin-client", "secret": {"secretName": names.ADMIN_CERT_SECRET, "defaultMode": SECRET_MODE}},
    ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(names.APISERVER, options, app=names.APISERVER),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {names.APP_LABEL: names.APISERVER}},
            "template": {
                "metadata": {"labels": _labels(names.APISERVER)},
                "spec": {
                    "serviceAccountName": names.APISERVER,
                    "initContainers": [init],
                    "containers": [etcd, apiserver],
                    "volumes": volumes,
                },
            },
        },
    }


# ---- the clustermesh-agent ----

def _agent_args(options: InstallOptions) -> list[str]:
    cfg = names.AGENT_CONFIG_DIR
    args = [
        "--cluster-name", options.cluster_name,
        "--cluster-id", str(options.cluster_id),
        "--max-connected-clusters", str(options.max_connected_clusters),
        "--node-name", "$(NODE_NAME)",
        "--clustermesh-config", names.CLUSTERMESH_CONFIG_DIR,
        "--kvstore-config", f"{cfg}/{names.AGENT_KVSTORE_FILE}",
        "--kubeconfig", f"{cfg}/{names.AGENT_KUBECONFIG_FILE}",
        "--datapath", "bpf",
        "--routing-mode", options.routing_mode,
        "--pin-root", _below(options.bpffs_root, options.pin_root, BPFFS_MOUNT),
        "--cgroup", _below(options.cgroup_root, options.resolved_agent_cgroup, CGROUP_MOUNT),
        "--state-dir", f"{AGENT_STATE_MOUNT}/$(NODE_NAME)",
    ]  # fmt: skip
    if options.underlay_device is not None:
        args += ["--underlay-device", options.underlay_device]
    return [*args, *_encryption_args(options), *options.agent_extra_args]


def _encryption_args(options: InstallOptions) -> list[str]:
    """The agent's encryption flags: only those that differ from the agent's defaults."""
    if options.encryption == "none":
        return []
    args = ["--encryption", options.encryption]
    if options.wireguard_device != DEFAULT_WIREGUARD_DEVICE:
        args += ["--wireguard-device", options.wireguard_device]
    if options.encryption_scope != "all":
        args += ["--encryption-scope", options.encryption_scope]
    if options.node_encryption:
        args.append("--encryption-node-encryption")
    if options.encryption_strict_mode_cidr is not None:
        args += ["--encryption-strict-mode-cidr", options.encryption_strict_mode_cidr]
    if options.wireguard_key_rotation_interval > 0:
        args += ["--wireguard-key-rotation-interval", format_duration(options.wireguard_key_rotation_interval)]
    return args


def _clustermesh_volume() -> Obj:
    """The agents' ``/var/lib/cilium/clustermesh``: the ``cilium-clustermesh`` Secret (optional, so
    agents start before any peer is connected) plus this cluster's remote certificate under
    Cilium's ``common-etcd-client*`` names (reference §3.1)."""
    remote_items = [
        {"key": names.CA_CRT, "path": names.COMMON_CLIENT_CA},
        {"key": names.TLS_CRT, "path": names.COMMON_CLIENT_CRT},
        {"key": names.TLS_KEY, "path": names.COMMON_CLIENT_KEY},
    ]
    return {"name": "clustermesh-secrets", "projected": {"defaultMode": SECRET_MODE, "sources": [
        {"secret": {"name": names.CLUSTERMESH_SECRET, "optional": True}},
        {"secret": {"name": names.REMOTE_CERT_SECRET, "items": remote_items}},
    ]}}


def agent_daemonset(options: InstallOptions) -> Obj:
    """``clustermesh-agent``: one privileged host-network agent per node with the eBPF datapath."""
    mounts = [
        _mount("bpf-maps", BPFFS_MOUNT),
        _mount("cgroup", CGROUP_MOUNT),
        _mount("agent-state", AGENT_STATE_MOUNT),
        _mount("clustermesh-secrets", names.CLUSTERMESH_CONFIG_DIR, read_only=True),
        _mount("agent-config", names.AGENT_CONFIG_DIR, read_only=True),
    ]
    volumes = [
        _host_path("bpf-maps", options.bpffs_root, "DirectoryOrCreate"),
        _host_path("cgroup", options.cgroup_root, "Directory"),
        _host_path("agent-state", options.agent_state_root, "DirectoryOrCreate"),
        _clustermesh_volume(),
        {"name": "agent-config", "configMap": {"name": names.AGENT_CONFIG_MAP}},
    ]
    if options.mount_kernel_headers:
        for name, path in KERNEL_HEADER_PATHS:
            mounts.append(_mount(name, path, read_only=True))
            volumes.append(_host_path(name, path, "Directory"))
    agent = _container(names.AGENT_CONTAINER, options, ["clustermesh-agent"], _agent_args(options))
    node_name = {"fieldRef": {"apiVersion": "v1", "fieldPath": "spec.nodeName"}}
    agent["env"] = [{"name": "NODE_NAME", "valueFrom": node_name}]
    agent["securityContext"] = {"privileged": True}
    agent["volumeMounts"] = mounts
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": _meta(names.AGENT, options, app=names.AGENT),
        "spec": {
            "selector": {"matchLabels": {names.APP_LABEL: names.AGENT}},
            "template": {
                "metadata": {"labels": _labels(names.AGENT)},
                "spec": {
                    "serviceAccountName": names.AGENT,
                    "hostNetwork": True,
                    "dnsPolicy": "ClusterFirstWithHostNet",
                    "tolerations": [{"operator": "Exists"}],
                    "terminationGracePeriodSeconds": 10,
                    "containers": [agent],
                    "volumes": volumes,
                },
            },
        },
    }


# ---- everything ----

def render_manifests(options: InstallOptions) -> list[Obj]:
    """Every object of the install except the Secrets, in apply order (deterministic)."""
    return [
        cluster_config_map(options),
        agent_config_map(options),
        service_account(names.APISERVER, options),
        service_account(names.AGENT, options),
        cluster_role(names.APISERVER, apiserver_rules(options)),
        cluster_role_binding(names.APISERVER, options),
        cluster_role(names.AGENT, agent_rules(options)),
        cluster_role_binding(names.AGENT, options),
        apiserver_service(options),
        apiserver_deployment(options),
        agent_daemonset(options),
    ]
