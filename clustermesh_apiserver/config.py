"""The one validated configuration object of the clustermesh-apiserver daemon."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from meshcore.errors import ConfigError, WireError
from meshcore.kvstore.config import EtcdClientConfig
from meshcore.wire.clusterinfo import validate_cluster_id, validate_cluster_name

SERVICE_V2_MODES = {
    "": "",
    "prefer-endpointslice": "services-and-endpointslices",
    "only-endpointslice": "endpointslices-only",
}
"""``--clustermesh-service-v2`` value -> ``endpointSlicesExportMode`` of the cluster config."""

SOURCES = ("cilium", "kubernetes")


@dataclass(frozen=True)
class ApiServerConfig:
    """Settings of one clustermesh-apiserver (``clustermesh-apiserver clustermesh`` flags).

    ``source="cilium"`` exports Cilium's CRDs (CiliumNode, CiliumIdentity, CiliumEndpoint or
    CiliumEndpointSlice); ``source="kubernetes"`` derives nodes, identities and pod IPs from core
    Nodes and Pods for clusters without Cilium, allocating identities itself (kept stable across
    restarts through the etcd identity keys and, if set, ``state_dir``). Services (and MCS-API
    service exports) come from Services and EndpointSlices in both modes. Times are seconds.
    ``serviceexport_crd_versions``: the ServiceExport versions the MCS-API export accepts, in
    order of preference (the newest Cilium: only ``v1beta1``). Call :meth:`validate` before use
    (the server does).
    """

    cluster_name: str
    cluster_id: int
    etcd: EtcdClientConfig
    kubeconfig: Path | None = None
    max_connected_clusters: int = 255
    source: Literal["cilium", "kubernetes"] = "cilium"
    health_port: int = 9880
    health_address: str = "127.0.0.1"
    enable_mcs_api: bool = False
    enable_cilium_endpoint_slice: bool = False
    default_global_namespace: bool = True
    service_v2_mode: str = ""
    lease_ttl: int = 900
    heartbeat_interval: float = 60.0
    cluster_config_reassert: float = 300.0
    state_dir: Path | None = None
    serviceexport_crd_versions: tuple[str, ...] = ("v1beta1",)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the flag at fault and what would be accepted."""
        try:
            validate_cluster_name(self.cluster_name, cluster_id=self.cluster_id)
        except WireError as err:
            raise ConfigError(f"--cluster-name: {err.reason}") from None
        if self.max_connected_clusters not in (255, 511):
            raise ConfigError(
                f"--max-connected-clusters must be 255 or 511, got {self.max_connected_clusters}"
            )
        try:
            validate_cluster_id(self.cluster_id, self.max_connected_clusters)
        except WireError as err:
            raise ConfigError(
                f"--cluster-id: {err.reason}; pick a unique ID in 1..{self.max_connected_clusters} for every "
                "cluster of the mesh"
            ) from None
        if self.source not in SOURCES:
            raise ConfigError(f"--source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if self.service_v2_mode not in SERVICE_V2_MODES:
            choices = ", ".join(repr(m) for m in SERVICE_V2_MODES)
            raise ConfigError(f"--clustermesh-service-v2 must be one of {choices}, got {self.service_v2_mode!r}")
        if not self.serviceexport_crd_versions:
            raise ConfigError("serviceexport_crd_versions must name at least one version, e.g. ('v1beta1',)")
        if not 0 <= self.health_port <= 65535:
            raise ConfigError(f"--health-port must be in 0..65535 (0 picks a free port), got {self.health_port}")
        if self.lease_ttl < 5:
            raise ConfigError(f"lease TTL must be at least 5 seconds, got {self.lease_ttl}")
        for name, value in (
            ("heartbeat interval", self.heartbeat_interval),
            ("cluster config re-assert interval", self.cluster_config_reassert),
        ):
            if not value > 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        if self.heartbeat_interval > 60:
            raise ConfigError(
                f"heartbeat interval {self.heartbeat_interval}s is too long: remote agents give up on a "
                "heartbeat older than 2 minutes; use at most 60"
            )
        if self.kubeconfig is not None and not Path(self.kubeconfig).is_file():
            raise ConfigError(f"--kubeconfig {self.kubeconfig} does not exist")

    @property
    def endpoint_slices_export_mode(self) -> str:
        """The cluster config's ``endpointSlicesExportMode`` for :attr:`service_v2_mode`."""
        return SERVICE_V2_MODES.get(self.service_v2_mode, "")
