"""CiliumIdentity -> identity label set (``cilium/state/identities/v1/id/<ID>``, reference §1.9)."""

from __future__ import annotations

from clustermesh_apiserver.converters._k8s import KubeObject, as_map, name_of, str_map
from meshcore.errors import WireError
from meshcore.wire.identity import Label, LabelSet

__all__ = [
    "POD_NAMESPACE_LABEL",
    "SOURCE_UNSPEC",
    "cilium_identity_to_labels",
    "identity_namespace",
    "parse_label",
]

POD_NAMESPACE_LABEL = "k8s:io.kubernetes.pod.namespace"
"""The security label naming an identity's namespace (``PodPrefixLbl`` in Cilium)."""

SOURCE_UNSPEC = "unspec"
"""``labels.LabelSourceUnspec``, the source of a label written without one."""


def parse_label(key: str, value: str) -> Label:
    """Cilium's ``labels.NewLabel(key, value, "")``: ``source:key`` split at the first ``:``;
    a leading ``$`` means ``reserved``; no source means ``unspec``; a reserved label written
    as ``reserved:`` with the name in the value is normalised to ``reserved:<name>``."""
    if key.startswith("$"):
        source, rest = "reserved", key[1:]
    else:
        source, sep, rest = key.partition(":")
        if not sep:
            source, rest = "", key
    if source == "reserved" and rest == "":
        rest, value = value, ""
    return Label(source or SOURCE_UNSPEC, rest, value)


def identity_namespace(obj: KubeObject) -> str:
    """The namespace a CiliumIdentity belongs to, from its ``k8s:io.kubernetes.pod.namespace``
    security label (Cilium's identity namespacer and namespace index); ``""`` when absent."""
    labels = str_map(obj.get("security-labels")) or {}
    return labels.get(POD_NAMESPACE_LABEL, "")


def cilium_identity_to_labels(obj: KubeObject) -> tuple[int, LabelSet] | None:
    """Mirror of the clustermesh-apiserver's ``CiliumIdentityConverter`` for upserts: the object
    name is the numeric ID and the value ``Map2Labels(security-labels).SortedList()``.

    Returns ``None`` (skip, as Cilium does with a warning) for an identity without security
    labels. Also ``None`` where Cilium would write a value no reader can use: a name that is
    not a decimal ID, or labels that cannot be written in the ``src:k=v;`` form.
    """
    name = name_of(obj)
    if not name.isdigit() or not name.isascii():
        return None
    security = str_map(as_map(obj).get("security-labels"))
    if not security:
        return None
    try:
        labels = LabelSet.from_labels(parse_label(k, v) for k, v in security.items())
    except WireError:
        return None
    return int(name), labels
