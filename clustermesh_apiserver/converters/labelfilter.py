"""Which pod labels become identity labels: Cilium's default label filter
(``pkg/labelsfilter/filter.go``, ``defaultLabelPrefixCfg``). The default list lives here only.

Each prefix is a regular expression that must match at the start of the label key (without the
source); ``!`` marks an exclusion. A label is kept when no exclusion matches it, or when the
longest matching inclusion is longer than the shortest matching exclusion (so
``io.kubernetes.pod.namespace`` survives ``!io\\.kubernetes``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from meshcore.wire.identity import Label

__all__ = ["LabelPrefix", "LabelFilter", "DEFAULT_LABEL_PREFIXES", "DEFAULT_LABEL_FILTER", "parse_label_prefix"]

POD_NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
NAMESPACE_META_LABELS = "io.cilium.k8s.namespace.labels"
POLICY_CLUSTER_LABEL = "io.cilium.k8s.policy.cluster"
APP_KUBERNETES = "app.kubernetes.io"


@dataclass(frozen=True)
class LabelPrefix:
    """One filter entry: ``source`` (``""`` = any), ``pattern`` and whether it excludes."""

    source: str
    pattern: str
    ignore: bool = False

    def match_length(self, label: Label) -> int | None:
        """Length of the match at the start of ``label.key``, or ``None`` (Go's ``matches``:
        the leftmost match must start at 0)."""
        if self.source and self.source != label.source:
            return None
        found = re.search(self.pattern, label.key)
        if found is None or found.start() != 0:
            return None
        return found.end()


def parse_label_prefix(text: str) -> LabelPrefix:
    """Cilium's ``parseLabelPrefix``: ``[source:][!]regexp``. Raises ``ValueError``."""
    source, sep, prefix = text.partition(":")
    if not sep:
        source, prefix = "", text
    if not prefix:
        raise ValueError(f"invalid label prefix {text!r}")
    ignore = prefix.startswith("!")
    if ignore:
        prefix = prefix[1:]
    re.compile(prefix)
    return LabelPrefix(source, prefix, ignore)


DEFAULT_LABEL_PREFIXES: tuple[LabelPrefix, ...] = tuple(
    parse_label_prefix(text)
    for text in (
        "reserved:.*",  # all reserved labels
        re.escape(POD_NAMESPACE_LABEL),
        re.escape(NAMESPACE_META_LABELS),  # io.cilium.k8s.namespace.labels.*
        re.escape(APP_KUBERNETES),
        re.escape(POLICY_CLUSTER_LABEL),
        r"!io\.kubernetes",  # all other io.kubernetes labels
        r"!kubernetes\.io",  # all other kubernetes.io labels
        "!" + re.escape("statefulset.kubernetes.io/pod-name"),
        "!" + re.escape("apps.kubernetes.io/pod-index"),
        "!" + re.escape("batch.kubernetes.io/job-completion-index"),
        r"!.*beta\.kubernetes\.io",
        r"!k8s\.io",
        "!pod-template-generation",
        "!pod-template-hash",
        "!controller-revision-hash",
        "!annotation.*",
        "!etcd_node",
    )
)
"""Cilium's default label prefixes, in Cilium's order."""


class LabelFilter:
    """Mirror of Cilium's ``labelPrefixCfg.filterLabels``. ``whitelist`` is set when the
    configuration came from a user list containing an inclusion (then some inclusion must
    match); Cilium's built-in default list runs with it unset."""

    def __init__(self, prefixes: Iterable[LabelPrefix] = DEFAULT_LABEL_PREFIXES, *, whitelist: bool = False):
        self.prefixes = tuple(prefixes)
        self.whitelist = whitelist

    def is_identity_label(self, label: Label) -> bool:
        """Whether ``label`` is relevant for the security identity."""
        included = ignored = 0
        for prefix in self.prefixes:
            length = prefix.match_length(label)
            if length is None:
                continue
            if prefix.ignore:
                if ignored == 0 or length < ignored:
                    ignored = length
            elif length > included:
                included = length
        return (not self.whitelist and ignored == 0) or included > ignored

    def filter(self, labels: Iterable[Label]) -> list[Label]:
        """The identity-relevant labels of ``labels``, in order."""
        return [label for label in labels if self.is_identity_label(label)]


DEFAULT_LABEL_FILTER = LabelFilter()
"""The filter Cilium applies when no ``--labels``/``--label-prefix-file`` is given."""
