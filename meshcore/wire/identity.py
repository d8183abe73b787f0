"""Identity label sets: the value of ``cilium/state/identities/v1/id/<ID>`` (reference §1.9).

The kvstore form is every label as ``source:key=value;`` (the ``=`` and the trailing ``;`` are
always written, even for an empty value), sorted by label *key* (``SortedList`` with
``formatForKVStoreInto`` in ``pkg/labels``). A set holds at most one label per key, as Go's
``labels.Labels`` map does.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import msgspec

from meshcore.errors import WireError

__all__ = ["Label", "LabelSet", "decode_identity", "encode_identity", "CLUSTER_LABEL"]

CLUSTER_LABEL = "io.cilium.k8s.policy.cluster"
"""Key of the ``k8s:`` label naming the cluster an identity belongs to."""


class Label(msgspec.Struct, frozen=True, order=True):
    """One label: ``source`` (``k8s``, ``reserved``, ...), ``key`` and ``value``."""

    source: str
    key: str
    value: str = ""

    @classmethod
    def parse(cls, text: str) -> Label:
        """Parse ``source:key=value`` (``=value`` optional). Raises :class:`WireError`."""
        source, sep, rest = text.partition(":")
        if not sep or not source:
            raise WireError(f"label {text!r} has no source (expected source:key=value)")
        key, _, value = rest.partition("=")
        label = cls(source, key, value)
        label.validate()
        return label

    def validate(self) -> None:
        """Reject labels that cannot round-trip through the kvstore form."""
        text = f"{self.source}:{self.key}={self.value}"
        if not self.source or ":" in self.source:
            raise WireError(f"label {text!r}: source must be non-empty and contain no ':'")
        if not self.key or "=" in self.key:
            raise WireError(f"label {text!r}: key must be non-empty and contain no '='")
        if ";" in text:
            raise WireError(f"label {text!r} must not contain ';'")

    def format(self) -> str:
        """``source:key=value`` (without the terminating ``;``)."""
        return f"{self.source}:{self.key}={self.value}"

    def __str__(self) -> str:
        return self.format()


class LabelSet(msgspec.Struct, frozen=True):
    """An identity's labels, kept sorted by key with unique keys. Build with
    :meth:`from_labels`, :meth:`from_strings` or :meth:`parse` rather than the constructor."""

    labels: tuple[Label, ...] = ()

    @classmethod
    def from_labels(cls, labels: Iterable[Label]) -> LabelSet:
        """Build a set; a later label with the same key replaces an earlier one (Go map)."""
        by_key: dict[str, Label] = {}
        for label in labels:
            label.validate()
            by_key[label.key] = label
        return cls(tuple(by_key[k] for k in sorted(by_key)))

    @classmethod
    def from_strings(cls, items: Iterable[str]) -> LabelSet:
        """Build a set from ``["k8s:app=foo", ...]``."""
        return cls.from_labels(Label.parse(item) for item in items)

    @classmethod
    def parse(cls, text: str, *, key: str | None = None) -> LabelSet:
        """Parse the kvstore form ``src:k=v;src:k=v;``; the trailing ``;`` is mandatory.
        ``""`` is the empty set."""
        if text == "":
            return cls()
        if not text.endswith(";"):
            raise WireError(f"label list {text!r} must end with ';'", key=key)
        try:
            return cls.from_strings(text[:-1].split(";"))
        except WireError as exc:
            raise exc.with_key(key) if key is not None else exc from None

    def format(self) -> str:
        """The kvstore form: ``source:key=value;`` per label, sorted by key."""
        labels = self.labels
        if any(a.key > b.key for a, b in zip(labels, labels[1:], strict=False)):
            labels = tuple(sorted(labels, key=lambda lbl: lbl.key))
        return "".join(f"{lbl.source}:{lbl.key}={lbl.value};" for lbl in labels)

    def get(self, key: str) -> Label | None:
        """The label with ``key``, if any."""
        for label in self.labels:
            if label.key == key:
                return label
        return None

    def cluster(self) -> str | None:
        """The cluster named by ``k8s:io.cilium.k8s.policy.cluster``, if present."""
        label = self.get(CLUSTER_LABEL)
        if label is None or label.source != "k8s":
            return None
        return label.value

    def __iter__(self) -> Iterator[Label]:
        return iter(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __str__(self) -> str:
        return self.format()

    def encode(self) -> bytes:
        """The kvstore value bytes."""
        return encode_identity(self)

    @classmethod
    def decode(cls, data: bytes | str, *, key: str | None = None) -> LabelSet:
        """Strictly decode an identity value (see :func:`decode_identity`)."""
        return decode_identity(data, key=key)


def decode_identity(data: bytes | str, *, key: str | None = None) -> LabelSet:
    """Decode an identity value (UTF-8 label list); errors are :class:`WireError` naming ``key``."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WireError(f"identity value is not UTF-8: {exc}", key=key) from None
    else:
        text = data
    return LabelSet.parse(text, key=key)


def encode_identity(labels: LabelSet) -> bytes:
    """The kvstore value bytes of a label set."""
    if not isinstance(labels, LabelSet):
        raise WireError(f"expected a LabelSet, got {type(labels).__name__}")
    return labels.format().encode("utf-8")
