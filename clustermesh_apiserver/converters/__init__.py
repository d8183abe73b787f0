"""Pure converters of the clustermesh-apiserver: Kubernetes objects (plain dicts, as the API
returns them) to the wire records of :mod:`meshcore.wire`. No I/O anywhere in this package.

One module per source kind:

* :mod:`.ciliumnode` - CiliumNode -> Node
* :mod:`.ciliumidentity` - CiliumIdentity -> (ID, LabelSet)
* :mod:`.ciliumendpoint` - CiliumEndpoint / CiliumEndpointSlice -> IPIdentityPairs
* :mod:`.ownership` - who owns an ipcache key several endpoints claim
* :mod:`.service` - Service + EndpointSlices -> ClusterService
* :mod:`.serviceexport` - ServiceExport + Service -> MCSAPIServiceSpec
* :mod:`.namespaces` / :mod:`.annotations` - global namespaces and ClusterMesh annotations
* :mod:`.kubernetes`, :mod:`.labelfilter`, :mod:`.identityalloc` - kubernetes mode (no Cilium CNI)
"""

from clustermesh_apiserver.converters.annotations import (
    is_global_service,
    is_shared_service,
    service_affinity,
)
from clustermesh_apiserver.converters.ciliumendpoint import (
    cilium_endpoint_owner,
    cilium_endpoint_slice_namespace,
    cilium_endpoint_slice_owner,
    cilium_endpoint_slice_to_pairs,
    cilium_endpoint_to_pairs,
)
from clustermesh_apiserver.converters.ciliumidentity import cilium_identity_to_labels, identity_namespace
from clustermesh_apiserver.converters.ciliumnode import cilium_node_to_node
from clustermesh_apiserver.converters.identityalloc import IdentityAllocator
from clustermesh_apiserver.converters.kubernetes import node_to_node, pod_identity_labels, pod_to_pairs
from clustermesh_apiserver.converters.labelfilter import DEFAULT_LABEL_FILTER, LabelFilter
from clustermesh_apiserver.converters.namespaces import namespace_is_global
from clustermesh_apiserver.converters.ownership import Changes, OwnershipTracker, ipcache_tracker
from clustermesh_apiserver.converters.service import service_to_cluster_service
from clustermesh_apiserver.converters.serviceexport import service_export_to_spec

__all__ = [
    "Changes",
    "DEFAULT_LABEL_FILTER",
    "IdentityAllocator",
    "LabelFilter",
    "OwnershipTracker",
    "cilium_endpoint_owner",
    "cilium_endpoint_slice_namespace",
    "cilium_endpoint_slice_owner",
    "cilium_endpoint_slice_to_pairs",
    "cilium_endpoint_to_pairs",
    "cilium_identity_to_labels",
    "cilium_node_to_node",
    "identity_namespace",
    "ipcache_tracker",
    "is_global_service",
    "is_shared_service",
    "namespace_is_global",
    "node_to_node",
    "pod_identity_labels",
    "pod_to_pairs",
    "service_affinity",
    "service_export_to_spec",
    "service_to_cluster_service",
]
