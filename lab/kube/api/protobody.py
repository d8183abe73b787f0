"""Protobuf request bodies (``application/vnd.kubernetes.protobuf``) decoded to JSON objects (pure).

kubectl's typed clients (``kubectl create namespace|configmap|secret|serviceaccount|role|rolebinding|
clusterrole|clusterrolebinding``) send their bodies as protobuf whatever the server advertises (kubectl
1.32, seen with ``-v=8``: ``Content-Type: application/vnd.kubernetes.protobuf``, ``Accept:
application/vnd.kubernetes.protobuf,application/json``); the emulator answers in JSON, which they accept.
A body is ``k8s\\x00`` followed by a ``runtime.Unknown`` (``typeMeta`` 1, ``raw`` 2) whose ``raw`` is the
object's message. The schemas below are the field numbers of ``k8s.io/api``'s ``generated.proto`` for
the kinds listed in :data:`SCHEMAS` (unknown fields are skipped; ``creationTimestamp`` and other server-set
times are dropped, and so are empty strings and zero integers outside maps and lists, which Go's encoder
writes for every non-pointer field and JSON leaves out). Any other kind raises
:class:`~lab.kube.api.errors.ApiError` 415 naming what works.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any, Union

from lab.kube.api.errors import ApiError

MAGIC = b"k8s\x00"

# A schema maps a field number to (JSON name, type). Types: "string", "bytes" (base64 in JSON), "bool",
# "int", a nested schema, ("repeated", type) or ("map", key type, value type).
FieldType = Union[str, "Schema", tuple[Any, ...]]
Schema = dict[int, tuple[str, FieldType]]

OWNER_REFERENCE: Schema = {1: ("kind", "string"), 3: ("name", "string"), 4: ("uid", "string"),
                           5: ("apiVersion", "string"), 6: ("controller", "bool"), 7: ("blockOwnerDeletion", "bool")}
OBJECT_META: Schema = {
    1: ("name", "string"), 2: ("generateName", "string"), 3: ("namespace", "string"), 5: ("uid", "string"),
    6: ("resourceVersion", "string"), 7: ("generation", "int"), 10: ("deletionGracePeriodSeconds", "int"),
    11: ("labels", ("map", "string", "string")), 12: ("annotations", ("map", "string", "string")),
    13: ("ownerReferences", ("repeated", OWNER_REFERENCE)), 14: ("finalizers", ("repeated", "string")),
}
OBJECT_REFERENCE: Schema = {1: ("kind", "string"), 2: ("namespace", "string"), 3: ("name", "string"),
                            4: ("uid", "string"), 5: ("apiVersion", "string"), 6: ("resourceVersion", "string"),
                            7: ("fieldPath", "string")}
POLICY_RULE: Schema = {1: ("verbs", ("repeated", "string")), 2: ("apiGroups", ("repeated", "string")),
                       3: ("resources", ("repeated", "string")), 4: ("resourceNames", ("repeated", "string")),
                       5: ("nonResourceURLs", ("repeated", "string"))}
LABEL_SELECTOR_REQUIREMENT: Schema = {1: ("key", "string"), 2: ("operator", "string"),
                                      3: ("values", ("repeated", "string"))}
LABEL_SELECTOR: Schema = {1: ("matchLabels", ("map", "string", "string")),
                          2: ("matchExpressions", ("repeated", LABEL_SELECTOR_REQUIREMENT))}
SUBJECT: Schema = {1: ("kind", "string"), 2: ("apiGroup", "string"), 3: ("name", "string"),
                   4: ("namespace", "string")}
ROLE_REF: Schema = {1: ("apiGroup", "string"), 2: ("kind", "string"), 3: ("name", "string")}
_META = (1, ("metadata", OBJECT_META))
_ROLE: Schema = dict([_META, (2, ("rules", ("repeated", POLICY_RULE)))])
_BINDING: Schema = dict([_META, (2, ("subjects", ("repeated", SUBJECT))), (3, ("roleRef", ROLE_REF))])

SCHEMAS: dict[tuple[str, str], Schema] = {
    ("v1", "Namespace"): dict([_META, (2, ("spec", {1: ("finalizers", ("repeated", "string"))}))]),
    ("v1", "ConfigMap"): dict([_META, (2, ("data", ("map", "string", "string"))),
                               (3, ("binaryData", ("map", "string", "bytes"))), (4, ("immutable", "bool"))]),
    ("v1", "Secret"): dict([_META, (2, ("data", ("map", "string", "bytes"))), (3, ("type", "string")),
                            (4, ("stringData", ("map", "string", "string"))), (5, ("immutable", "bool"))]),
    ("v1", "ServiceAccount"): dict([_META, (2, ("secrets", ("repeated", OBJECT_REFERENCE))),
                                    (3, ("imagePullSecrets", ("repeated", {1: ("name", "string")}))),
                                    (4, ("automountServiceAccountToken", "bool"))]),
    ("rbac.authorization.k8s.io/v1", "Role"): _ROLE,
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): {
        **_ROLE, 3: ("aggregationRule", {1: ("clusterRoleSelectors", ("repeated", LABEL_SELECTOR))})},
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): _BINDING,
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): _BINDING,
}


class ProtobufError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf):
            raise ProtobufError("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7
        if shift > 63:
            raise ProtobufError("varint too long")


def fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """``(field number, wire type, value)`` of each field of a message: an int for varints and fixed
    widths, the bytes for length-delimited fields."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
            yield num, wire, value
        elif wire == 1:
            if i + 8 > len(buf):
                raise ProtobufError("truncated fixed64")
            yield num, wire, int.from_bytes(buf[i:i + 8], "little")
            i += 8
        elif wire == 2:
            length, i = _varint(buf, i)
            if i + length > len(buf):
                raise ProtobufError("truncated length-delimited field")
            yield num, wire, buf[i:i + length]
            i += length
        elif wire == 5:
            if i + 4 > len(buf):
                raise ProtobufError("truncated fixed32")
            yield num, wire, int.from_bytes(buf[i:i + 4], "little")
            i += 4
        else:
            raise ProtobufError(f"unsupported wire type {wire}")


def _scalar(ftype: FieldType, value: int | bytes) -> Any:
    if isinstance(ftype, dict):
        if not isinstance(value, bytes):
            raise ProtobufError("a message field is not length-delimited")
        return decode_message(value, ftype)
    if ftype == "string":
        if not isinstance(value, bytes):
            raise ProtobufError("a string field is not length-delimited")
        return value.decode("utf-8", errors="replace")
    if ftype == "bytes":
        if not isinstance(value, bytes):
            raise ProtobufError("a bytes field is not length-delimited")
        return base64.b64encode(value).decode()
    if isinstance(value, bytes):
        raise ProtobufError(f"a {ftype} field is length-delimited")
    if ftype == "bool":
        return bool(value)
    return value - (1 << 64) if value >= 1 << 63 else value  # int64 as two's complement


def decode_message(buf: bytes, schema: Schema) -> dict[str, Any]:
    """One message as a JSON object (fields absent from ``schema`` are skipped)."""
    out: dict[str, Any] = {}
    for num, _, value in fields(buf):
        entry = schema.get(num)
        if entry is None:
            continue
        name, ftype = entry
        if isinstance(ftype, tuple) and ftype[0] == "map":
            if not isinstance(value, bytes):
                raise ProtobufError(f"map field {name} is not length-delimited")
            key, val = "", _scalar(ftype[2], b"" if ftype[2] in ("string", "bytes") else 0)
            for n, _, v in fields(value):
                if n == 1:
                    key = _scalar(ftype[1], v)
                elif n == 2:
                    val = _scalar(ftype[2], v)
            out.setdefault(name, {})[key] = val
        elif isinstance(ftype, tuple) and ftype[0] == "repeated":
            out.setdefault(name, []).append(_scalar(ftype[1], value))
        else:
            scalar = _scalar(ftype, value)
            if scalar == "" or (ftype == "int" and scalar == 0):
                continue  # Go writes every non-pointer field; JSON leaves the empty ones out (omitempty)
            out[name] = scalar
    return out


def decode(body: bytes) -> dict[str, Any]:
    """A protobuf request body as the JSON object it stands for (``apiVersion`` and ``kind`` included)."""
    if not body.startswith(MAGIC):
        raise ApiError(400, "BadRequest", "the protobuf body does not start with the Kubernetes magic k8s\\x00")
    try:
        type_meta: dict[str, Any] = {}
        raw = b""
        for num, _, value in fields(body[len(MAGIC):]):
            if num == 1 and isinstance(value, bytes):
                type_meta = decode_message(value, {1: ("apiVersion", "string"), 2: ("kind", "string")})
            elif num == 2 and isinstance(value, bytes):
                raw = value
        api_version, kind = str(type_meta.get("apiVersion", "")), str(type_meta.get("kind", ""))
        schema = SCHEMAS.get((api_version, kind))
        if schema is None:
            known = ", ".join(sorted(k for _, k in SCHEMAS))
            raise ApiError(415, "UnsupportedMediaType", f"the Kubernetes API emulator decodes protobuf bodies only "
                           f"for {known}; got {kind or 'an unknown kind'} ({api_version or 'no apiVersion'}): "
                           "send it as JSON or YAML (e.g. kubectl create -f FILE)")
        obj = decode_message(raw, schema)
    except ProtobufError as e:
        raise ApiError(400, "BadRequest", f"the protobuf body could not be decoded: {e}") from None
    return {"apiVersion": api_version, "kind": kind, **obj}
