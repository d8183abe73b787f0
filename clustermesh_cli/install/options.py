"""The one validated options object of an install: what ``clustermesh enable`` renders from.

:class:`InstallOptions` checks itself on construction (an invalid one cannot exist); every error
names the command-line flag of the field at fault (``cluster_id`` is ``--cluster-id``) and says
what is allowed. The defaults are a real cluster's; the lab overrides the host paths and the
addresses its nodes can reach (see the field notes).
"""

from __future__ import annotations

import importlib.metadata
import ipaddress
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Final
from urllib.parse import urlsplit

from clustermesh_cli.install import names
from meshcore.errors import ConfigError, WireError
from meshcore.wire.clusterinfo import validate_cluster_id, validate_cluster_name

__all__ = [
    "IMAGE_REPOSITORY",
    "SERVICE_TYPES",
    "SOURCES",
    "ROUTING_MODES",
    "ENCRYPTION_MODES",
    "ENCRYPTION_SCOPES",
    "DEFAULT_WIREGUARD_DEVICE",
    "MAX_CONNECTED_CLUSTERS",
    "InstallOptionsError",
    "InstallOptions",
    "default_image",
    "project_version",
    "flag_name",
]

IMAGE_REPOSITORY: Final = "ghcr.io/clustermesh-py/clustermesh"
SERVICE_TYPES: Final = ("NodePort", "LoadBalancer")
SOURCES: Final = ("cilium", "kubernetes")
ROUTING_MODES: Final = ("tunnel", "native")
ENCRYPTION_MODES: Final = ("none", "wireguard")
ENCRYPTION_SCOPES: Final = ("all", "inter-cluster")
DEFAULT_WIREGUARD_DEVICE: Final = "cilium_wg0"
#: The agent replaces this in ``--wireguard-device`` by 8 hex characters per node.
WIREGUARD_DEVICE_HASH: Final = "{hash}"
MAX_CONNECTED_CLUSTERS: Final = (255, 511)
PULL_POLICIES: Final = ("IfNotPresent", "Always", "Never")
ETCD_MEDIA: Final = ("", "Memory")
_DIST: Final = "clustermesh-py"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_IMAGE = re.compile(r"^[^\s]+$")
_ANNOTATION_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DEVICE = re.compile(r"^[^\s/]{1,15}$")
_WG_DEVICE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")  # the agent's rule for --wireguard-device


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class InstallOptionsError(ConfigError):
    """An install option is invalid; the message names its flag and what is allowed."""


def project_version() -> str:
    """This project's version: the installed distribution's, else ``pyproject.toml``'s (source tree)."""
    try:
        return importlib.metadata.version(_DIST)
    except importlib.metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        try:
            return str(tomllib.loads(pyproject.read_text())["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "0.0.0"


def default_image() -> str:
    """``ghcr.io/clustermesh-py/clustermesh:<version>``: the image the ``Containerfile`` builds."""
    return f"{IMAGE_REPOSITORY}:{project_version()}"


def flag_name(field_name: str) -> str:
    """The command-line flag of an options field: ``cluster_id`` -> ``--cluster-id``."""
    return "--" + field_name.replace("_", "-")


def _fail(field_name: str, value: Any, why: str) -> InstallOptionsError:
    return InstallOptionsError(f"{flag_name(field_name)} {value!r}: {why}")


@dataclass(frozen=True)
class InstallOptions:
    """Everything the manifests depend on. Sequences are stored as tuples; see the module docstring.

    Lab-facing fields (a real cluster keeps the defaults):

    - ``bpffs_root`` / ``pin_root``: the host's bpffs (a hostPath) and the agents' pin root under
      it (each agent pins in ``<pin_root>/<node name>/``);
    - ``cgroup_root`` / ``agent_cgroup``: the host's cgroup v2 hierarchy (``/sys/fs/cgroup``, or
      ``/sys/fs/cgroup/unified`` on a hybrid mount) and the cgroup whose sockets get global-service
      load-balancing (default: the root); ``agent_cgroup`` may use ``$(NODE_NAME)``;
    - ``agent_state_root``: a hostPath; each agent keeps its state and API socket in
      ``<agent_state_root>/<node name>/``;
    - ``kube_api_server``: the Kubernetes API URL in the agents' kubeconfig (they run on the host
      network with the pod's service-account token);
    - ``agent_kvstore_endpoint`` / ``agent_kvstore_host_ips``: where agents reach their own
      cluster's clustermesh etcd (default ``https://clustermesh-apiserver.<ns>.svc:2379``), and IPs
      to dial for that name instead of resolving it (Cilium's ``cilium-host-aliases``);
    - ``mount_kernel_headers``: mount the host's ``/lib/modules`` and ``/usr/src`` read-only (bcc
      compiles the datapath against the node's kernel headers);
    - ``agent_extra_args`` / ``apiserver_extra_args``: appended to the commands as given.

    Encryption (Cilium's Helm ``encryption.*``): ``encryption`` ``none`` or ``wireguard``;
    ``encryption_scope``, ``node_encryption`` and ``encryption_strict_mode_cidr`` need
    ``wireguard`` (they would promise a protection that is not there); ``wireguard_device`` is only
    used with it (a ``{hash}`` in it becomes 8 hex characters per node, for hosts where device
    names are global, as with wireguard-go's sockets). ``wireguard_key_rotation_interval``
    (seconds, 0 off; needs ``wireguard``): the agents rotate their keys when this old.
    """

    cluster_name: str
    cluster_id: int
    namespace: str = "kube-system"
    image: str = field(default_factory=default_image)
    image_pull_policy: str = "IfNotPresent"
    etcd_image: str | None = None  # None: ``image`` (it ships Debian's etcd 3.4 as /usr/bin/etcd)
    service_type: str = "NodePort"
    node_port: int | None = names.DEFAULT_NODE_PORT  # NodePort only; None lets Kubernetes pick
    service_annotations: tuple[tuple[str, str], ...] = ()
    source: str = "cilium"
    max_connected_clusters: int = 255
    routing_mode: str = "tunnel"
    enable_mcs_api: bool = False
    enable_cilium_endpoint_slice: bool = False
    etcd_data_medium: str = ""
    underlay_device: str | None = None
    bpffs_root: str = "/sys/fs/bpf"
    pin_root: str = "/sys/fs/bpf/clustermesh"
    cgroup_root: str = "/sys/fs/cgroup"
    agent_cgroup: str | None = None
    agent_state_root: str = "/var/run/clustermesh"
    mount_kernel_headers: bool = True
    kube_api_server: str = "https://kubernetes.default.svc:443"
    agent_kvstore_endpoint: str | None = None
    agent_kvstore_host_ips: tuple[str, ...] = ()
    encryption: str = "none"
    encryption_scope: str = "all"
    node_encryption: bool = False
    encryption_strict_mode_cidr: str | None = None
    wireguard_device: str = DEFAULT_WIREGUARD_DEVICE
    wireguard_key_rotation_interval: float = 0.0
    agent_extra_args: tuple[str, ...] = ()
    apiserver_extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("agent_kvstore_host_ips", "agent_extra_args", "apiserver_extra_args"):
            object.__setattr__(self, name, tuple(str(v) for v in getattr(self, name)))
        annotations = self.service_annotations
        if isinstance(annotations, dict):
            annotations = tuple(annotations.items())
        object.__setattr__(self, "service_annotations", tuple((str(k), str(v)) for k, v in annotations))
        self._validate()

    # ---- derived values ----

    @property
    def resolved_etcd_image(self) -> str:
        return self.etcd_image or self.image

    @property
    def resolved_agent_cgroup(self) -> str:
        return self.agent_cgroup or self.cgroup_root

    @property
    def resolved_agent_kvstore_endpoint(self) -> str:
        return self.agent_kvstore_endpoint or f"https://{names.service_dns_name(self.namespace)}:{names.ETCD_PORT}"

    # ---- validation ----

    def _validate(self) -> None:
        try:
            validate_cluster_name(self.cluster_name, cluster_id=self.cluster_id)
        except WireError as err:
            raise _fail("cluster_name", self.cluster_name, err.reason) from None
        if self.max_connected_clusters not in MAX_CONNECTED_CLUSTERS:
            raise _fail("max_connected_clusters", self.max_connected_clusters,
                        "must be 255 or 511, the same on every cluster of the mesh")
        if isinstance(self.cluster_id, bool) or not isinstance(self.cluster_id, int):
            raise _fail("cluster_id", self.cluster_id, "must be an integer")
        try:
            validate_cluster_id(self.cluster_id, self.max_connected_clusters)
        except WireError as err:
            raise _fail("cluster_id", self.cluster_id,
                        f"{err.reason}; every cluster of a mesh needs its own ID in 1..{self.max_connected_clusters}"
                        " (see --max-connected-clusters)") from None
        if len(self.namespace) > 63 or not _DNS_LABEL.fullmatch(self.namespace):
            raise _fail("namespace", self.namespace,
                        "must be a DNS label: lowercase alphanumerics and '-', at most 63 characters")
        for name in ("image", "etcd_image"):
            value = getattr(self, name)
            if value is not None and not _IMAGE.fullmatch(value):
                raise _fail(name, value, "must be an image reference without spaces, e.g. registry/name:tag")
        self._one_of("image_pull_policy", PULL_POLICIES)
        self._one_of("service_type", SERVICE_TYPES)
        self._one_of("source", SOURCES)
        self._one_of("routing_mode", ROUTING_MODES)
        self._one_of("etcd_data_medium", ETCD_MEDIA)
        if self.node_port is not None and (isinstance(self.node_port, bool) or not 1 <= self.node_port <= 65535):
            raise _fail("node_port", self.node_port,
                        "must be a port in the cluster's node-port range (30000-32767 by default)")
        for key, _ in self.service_annotations:
            if len(key) > 316 or not _ANNOTATION_KEY.fullmatch(key):
                raise _fail("service_annotations", key, "is not a valid annotation key ([prefix/]name)")
        if self.enable_cilium_endpoint_slice and self.source != "cilium":
            raise _fail("enable_cilium_endpoint_slice", True, "needs --source cilium (CiliumEndpointSlices are "
                        "Cilium's objects)")
        if self.underlay_device is not None and not _DEVICE.fullmatch(self.underlay_device):
            raise _fail("underlay_device", self.underlay_device, "must be a network device name (1-15 characters)")
        for name in ("bpffs_root", "pin_root", "cgroup_root", "agent_state_root"):
            self._absolute(name, getattr(self, name))
        self._below("pin_root", self.pin_root, "bpffs_root", self.bpffs_root, strict=True)
        if self.agent_cgroup is not None:
            self._absolute("agent_cgroup", self.agent_cgroup)
            self._below("agent_cgroup", self.agent_cgroup, "cgroup_root", self.cgroup_root, strict=False)
        self._https_url("kube_api_server", self.kube_api_server)
        if self.agent_kvstore_endpoint is not None:
            self._https_url("agent_kvstore_endpoint", self.agent_kvstore_endpoint)
        for ip in self.agent_kvstore_host_ips:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise _fail("agent_kvstore_host_ips", ip, "is not an IP address") from None
        if self.agent_kvstore_host_ips and _is_ip(urlsplit(self.resolved_agent_kvstore_endpoint).hostname or ""):
            raise _fail("agent_kvstore_host_ips", list(self.agent_kvstore_host_ips),
                        "needs an endpoint with a host name to alias; --agent-kvstore-endpoint is an IP already")
        self._validate_encryption()

    def _validate_encryption(self) -> None:
        self._one_of("encryption", ENCRYPTION_MODES)
        self._one_of("encryption_scope", ENCRYPTION_SCOPES)
        if not _WG_DEVICE.fullmatch(self.wireguard_device.replace(WIREGUARD_DEVICE_HASH, "0" * 8)):
            raise _fail("wireguard_device", self.wireguard_device,
                        "must be a device name of 1-15 letters, digits, '_', '.' or '-' (a {hash} counts as 8), "
                        "e.g. cilium_wg0")
        if self.encryption_strict_mode_cidr is not None:
            try:
                cidr = ipaddress.ip_network(self.encryption_strict_mode_cidr, strict=True)
            except ValueError as err:
                raise _fail("encryption_strict_mode_cidr", self.encryption_strict_mode_cidr,
                            f"is not a CIDR ({err}), e.g. 10.0.0.0/8") from None
            if cidr.version != 4:
                raise _fail("encryption_strict_mode_cidr", self.encryption_strict_mode_cidr,
                            "must be an IPv4 CIDR (strict mode is IPv4 only, as in Cilium)")
        interval = self.wireguard_key_rotation_interval
        if isinstance(interval, bool) or not isinstance(interval, int | float) or not 0 <= interval < math.inf:
            raise _fail("wireguard_key_rotation_interval", interval,
                        "must be 0 (off) or a duration, e.g. 720h, 30m, or a number of seconds")
        if self.encryption == "none":
            needs = [name for name, value in (("encryption_scope", self.encryption_scope != "all"),
                                              ("node_encryption", self.node_encryption),
                                              ("encryption_strict_mode_cidr", self.encryption_strict_mode_cidr),
                                              ("wireguard_key_rotation_interval", interval > 0))
                     if value]
            if needs:
                value = getattr(self, needs[0])
                raise _fail(needs[0], value, "needs --encryption wireguard (without it nothing is encrypted)")

    def _one_of(self, name: str, allowed: tuple[str, ...]) -> None:
        value = getattr(self, name)
        if value not in allowed:
            shown = ", ".join(repr(a) if a == "" else a for a in allowed)
            raise _fail(name, value, f"must be one of {shown}")

    @staticmethod
    def _absolute(name: str, value: str) -> None:
        if not value.startswith("/") or ".." in PurePosixPath(value).parts:
            raise _fail(name, value, "must be an absolute path without '..'")

    @staticmethod
    def _below(name: str, value: str, root_name: str, root: str, *, strict: bool) -> None:
        path, base = PurePosixPath(value), PurePosixPath(root)
        inside = path != base and base in path.parents
        if not (inside or (not strict and path == base)):
            where = "below" if strict else "at or below"
            raise _fail(name, value, f"must be {where} {flag_name(root_name)} {root} (that is what is mounted)")

    @staticmethod
    def _https_url(name: str, value: str) -> None:
        try:
            parts = urlsplit(value)
            _ = parts.port  # raises ValueError for a bad port
        except ValueError as err:
            raise _fail(name, value, f"is not a URL: {err}") from None
        if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/"):
            raise _fail(name, value, "must be an https:// URL with a host and no path, e.g. https://host:443")
