"""Shared decoding helpers: Go integer types, msgspec decoders, error translation."""

from __future__ import annotations

import re
from functools import cache
from typing import Annotated, Any, TypeVar, cast

import msgspec

from meshcore.errors import WireError
from meshcore.wire.netaddr import canonical_ip, validate_ip_text, validate_mask

Uint8 = Annotated[int, msgspec.Meta(ge=0, le=0xFF)]
Uint16 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFF)]
Uint32 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFFFFFF)]
Int32 = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)]

T = TypeVar("T")

_PATH = re.compile(r" - at `\$(.*)`$")


@cache
def _decoder(typ: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(typ)


def decode_as(typ: type[T], data: bytes | str, key: str | None) -> T:
    """Decode ``data`` into ``typ`` with msgspec, turning its errors into :class:`WireError`
    that name the JSON field (``IPAddresses[2].IP``) and the etcd ``key``."""
    try:
        result: T = _decoder(cast(Any, typ)).decode(data)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _PATH.search(message)
        field = None
        if match:
            message = message[: match.start()]
            field = match.group(1).lstrip(".") or None
        raise WireError(f"invalid value: {message}", key=key, field=field) from None
    except msgspec.DecodeError as exc:
        raise WireError(f"malformed JSON: {exc}", key=key) from None
    return result


def check_ip(obj: Any, attr: str, field: str, key: str | None) -> None:
    """Validate and canonicalise the IP text in ``obj.attr`` in place (freshly decoded records
    only: the record is not shared yet, so the frozen-struct bypass is safe)."""
    text = getattr(obj, attr)
    try:
        canonical = canonical_ip(text)
    except ValueError as exc:
        raise WireError(str(exc), key=key, field=field) from None
    if canonical != text:
        msgspec.structs.force_setattr(obj, attr, canonical)


def check_ip_key(text: str, field: str, key: str | None) -> None:
    """Validate an IP used as a map key (Go keeps those verbatim)."""
    try:
        validate_ip_text(text)
    except ValueError as exc:
        raise WireError(str(exc), key=key, field=field) from None


def check_mask(mask: bytes | None, field: str, key: str | None) -> None:
    """Validate a decoded ``net.IPMask`` (``None`` is a nil mask and always fine)."""
    if mask is None:
        return
    try:
        validate_mask(mask)
    except ValueError as exc:
        raise WireError(str(exc), key=key, field=field) from None


def ip_for_encode(text: str, field: str) -> str:
    """Canonical IP text for encoding; raises :class:`WireError` on invalid text."""
    try:
        return canonical_ip(text)
    except ValueError as exc:
        raise WireError(str(exc), field=field) from None


def sorted_map(mapping: dict[str, T] | None) -> dict[str, T] | None:
    """A Go map as encoding/json writes it: keys sorted byte-wise (``None`` stays ``null``)."""
    if mapping is None:
        return None
    if len(mapping) < 2:
        return mapping
    return dict(sorted(mapping.items()))
