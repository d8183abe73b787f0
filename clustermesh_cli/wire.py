"""``clustermesh wire``: encode and check Cilium kvstore values."""

from __future__ import annotations

import sys
from typing import Any, BinaryIO, NoReturn

import click
import msgspec

from meshcore.errors import MeshError, WireError
from meshcore.wire.gojson import go_indent
from meshcore.wire.identity import LabelSet, decode_identity
from meshcore.wire.registry import CODECS, Codec, check_key, codec_for, codec_for_key

__all__ = ["wire"]

_KINDS = click.Choice(sorted(CODECS), case_sensitive=False)


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    raise SystemExit(1)


def _read(source: BinaryIO) -> bytes:
    data = source.read()
    if not data.strip():
        _fail("no input: pipe one value on stdin (or use --input FILE)")
    return data


def _decode_identity_input(data: bytes, key: str | None) -> LabelSet:
    """An identity given as the kvstore string, a JSON string, or a JSON list of labels."""
    text = data.strip()
    if text.startswith((b"[", b'"')):
        try:
            value: Any = msgspec.json.decode(text, type=list[str] | str)
        except msgspec.MsgspecError as exc:
            raise WireError(f"expected a JSON list of label strings: {exc}", key=key) from None
        if isinstance(value, list):
            return LabelSet.from_strings(value)
        return decode_identity(value, key=key)
    return decode_identity(text, key=key)


def _decode(codec: Codec, data: bytes, key: str | None) -> Any:
    if codec.kind == "identity":
        return _decode_identity_input(data, key)
    return codec.decode(data, key=key)


def _resolve(kind: str | None, key: str | None) -> Codec:
    if kind is not None:
        return codec_for(kind.lower())
    if key is not None:
        return codec_for_key(key)
    raise click.UsageError("give --kind, or --key so that the kind can be told from the key")


@click.group(name="wire")
def wire() -> None:
    """Encode and check the values Cilium stores in etcd.

    \b
    Kinds and the keys they live under:
      node           cilium/state/nodes/v1/<cluster>/<node>
      service        cilium/state/services/v1/<cluster>/<namespace>/<name>
      ip             cilium/state/ip/v1/default/<ip>
      identity       cilium/state/identities/v1/id/<id>   (text: k8s:app=foo;...;)
      clusterconfig  cilium/cluster-config/<cluster>
      serviceexport  cilium/state/serviceexports/v1/<cluster>/<namespace>/<name>

    Cilium compares values byte for byte: field order, omitted empty fields, null versus {},
    sorted map keys, IPv6 text and string escapes all matter. `encode` produces exactly
    those bytes from any equivalent JSON.
    """


@wire.command()
@click.option("--kind", "-k", type=_KINDS, required=True, help="Record kind of the value.")
@click.option(
    "--input",
    "-i",
    "source",
    type=click.File("rb"),
    default="-",
    show_default="stdin",
    help="Read the value from this file.",
)
def encode(kind: str, source: BinaryIO) -> None:
    """Print Cilium's canonical bytes for one value read on stdin.

    The input may be pretty-printed and its keys in any order; missing fields take
    Cilium's defaults. The output is exactly the bytes Cilium would store, with no
    trailing newline, so it can be piped straight into `etcdctl put KEY`.

    \b
    Examples:
      clustermesh wire encode --kind node < node.json
      echo '["k8s:app=foo", "k8s:io.cilium.k8s.policy.cluster=c1"]' \\
        | clustermesh wire encode --kind identity
    """
    try:
        codec = codec_for(kind.lower())
        record = _decode(codec, _read(source), None)
        out = codec.encode(record)
    except MeshError as exc:
        _fail(str(exc))
    sys.stdout.buffer.write(out)
    sys.stdout.buffer.flush()


@wire.command()
@click.option("--kind", "-k", type=_KINDS, default=None, help="Record kind (default: from --key).")
@click.option("--key", default=None, help="The etcd key the value came from; checked against the value.")
@click.option(
    "--input",
    "-i",
    "source",
    type=click.File("rb"),
    default="-",
    show_default="stdin",
    help="Read the value from this file.",
)
def decode(kind: str | None, key: str | None, source: BinaryIO) -> None:
    """Check one value and pretty-print its canonical form.

    JSON values are printed the way `kvstore/list -o json` shows them (Go's json.Indent
    with two spaces, Cilium's field order); identities as their label string. With --key,
    errors name the key, and the value must match it (a node's cluster and name, a
    service's namespace and name, an ipcache entry's IP).

    \b
    Example:
      etcdctl get --print-value-only cilium/state/ip/v1/default/10.0.0.1 \\
        | clustermesh wire decode --key cilium/state/ip/v1/default/10.0.0.1
    """
    try:
        codec = _resolve(kind, key)
        record = _decode(codec, _read(source), key)
        if key is not None:
            check_key(key, record)
        out = codec.encode(record)
        if codec.is_json:
            out = go_indent(out)
    except MeshError as exc:
        _fail(str(exc))
    sys.stdout.buffer.write(out + b"\n")
    sys.stdout.buffer.flush()
