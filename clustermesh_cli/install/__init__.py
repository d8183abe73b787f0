"""The install artifacts: Kubernetes objects of one cluster of a mesh, as pure functions.

- :class:`InstallOptions` (:mod:`.options`): the validated options;
- :func:`render_manifests` (:mod:`.manifests`): ConfigMaps, ServiceAccounts, RBAC, the
  ``clustermesh-apiserver`` Service and Deployment, the ``clustermesh-agent`` DaemonSet;
- :mod:`.secrets`: the Secrets from given PEM bytes (``cilium-ca``, the four
  ``clustermesh-apiserver-*-cert``, ``cilium-clustermesh`` and its peer entries);
- :func:`issue_cluster_certificates` (:mod:`.certificates`): the certificates themselves;
- :func:`to_yaml` (:mod:`.yamlout`); :func:`clustermesh_cli.install.render.render_yaml` (what
  ``clustermesh enable --dry-run -o yaml`` prints; ``python -m clustermesh_cli.install.render``
  also regenerates ``deploy/clustermesh.yaml``); :mod:`.cliopts`: the flags.
"""

from clustermesh_cli.install.certificates import issue_cluster_certificates
from clustermesh_cli.install.manifests import render_manifests
from clustermesh_cli.install.options import InstallOptions, InstallOptionsError
from clustermesh_cli.install.secrets import (
    ClusterCertificates,
    PeerEntry,
    TLSMaterial,
    certificate_secrets,
    cilium_clustermesh_secret,
    peer_entry,
    secret_peers,
    with_peer,
    without_peer,
)
from clustermesh_cli.install.yamlout import to_yaml

__all__ = [
    "InstallOptions",
    "InstallOptionsError",
    "render_manifests",
    "to_yaml",
    "ClusterCertificates",
    "TLSMaterial",
    "PeerEntry",
    "certificate_secrets",
    "cilium_clustermesh_secret",
    "peer_entry",
    "secret_peers",
    "with_peer",
    "without_peer",
    "issue_cluster_certificates",
]
