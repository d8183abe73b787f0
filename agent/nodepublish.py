"""Publish this node's WireGuard public key and encryption key where the clustermesh-apiserver reads
them (Cilium's publication, reference §1.3), so that every other node of the mesh can peer with it.

- CiliumNode (``--source cilium``): the annotation ``network.cilium.io/wg-pub-key`` and
  ``spec.encryption.key`` (read by ``converters/ciliumnode.py``);
- Node (``--source kubernetes``): the annotations ``network.cilium.io/wg-pub-key`` and
  ``network.cilium.io/encryption-key`` (decimal; read by ``converters/kubernetes.py``);
- on both, while the node rotates its key, the annotation ``clustermesh.io/wg-next-pub-key`` with
  the key it rotates to (this mesh's, not Cilium's; exported in the node record's
  ``Annotations``, read by :func:`agent.records.node_next_pub_key`). Publishing without a next
  key removes it (the merge patch's null).

The agent does not know which source its API server uses, so both objects are written when they
exist (a cluster without the CiliumNode CRD, or without this node's CiliumNode, gets the Node
only). Each write is one JSON merge patch of just the fields that differ; nothing is written when
everything is already published (idempotent). An encryption key of 0 (a node that opted out of
node encryption) is Cilium's absent annotation: the Node's ``encryption-key`` is removed.

Withdrawal (:func:`withdraw_node_encryption`, a node whose encryption is switched off by the
``clustermesh.io/encryption=disabled`` label): the ``wg-pub-key`` and ``wg-next-pub-key``
annotations are removed from both objects, the Node's ``encryption-key`` annotation too and the
CiliumNode's ``spec.encryption.key`` set to 0, so that every other node sees it without a key (a
plaintext peer). Same idempotence and retries.

Transient failures (API unreachable, HTTP 409/429/5xx, the object not there yet) are retried with
a bounded backoff; a permanent one raises :class:`~meshcore.errors.NodePublishError` naming the
object and, for HTTP 403, the RBAC verb the agent's ClusterRole lacks.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final

from clustermesh_apiserver.converters.annotations import WIREGUARD_NEXT_PUB_KEY, WIREGUARD_PUB_KEY
from meshcore.backoff import Backoff
from meshcore.errors import K8sError, NodePublishError
from meshcore.k8s.client import K8sApi
from meshcore.log import get_logger

__all__ = [
    "ENCRYPTION_KEY_ANNOTATION",
    "WIREGUARD_PUB_KEY",
    "WIREGUARD_NEXT_PUB_KEY",
    "PublishTarget",
    "NODE",
    "CILIUM_NODE",
    "node_patch",
    "cilium_node_patch",
    "publish_with",
    "publish_node_encryption",
    "node_withdraw_patch",
    "cilium_node_withdraw_patch",
    "withdraw_with",
    "withdraw_node_encryption",
]

ENCRYPTION_KEY_ANNOTATION: Final = "network.cilium.io/encryption-key"
"""Cilium's ``annotation.CiliumEncryptionKey``: the node's encryption key on a core Node."""
DEFAULT_ATTEMPTS: Final = 6
_TRANSIENT_STATUS: Final = frozenset({404, 409, 429, 500, 502, 503, 504})

Obj = dict[str, Any]
_log = get_logger(__name__)


@dataclass(frozen=True)
class PublishTarget:
    """One kind of object the keys are published on: its kind, RBAC resource and REST path."""

    kind: str
    resource: str
    api_prefix: str

    def path(self, name: str) -> str:
        return f"{self.api_prefix}/{self.resource}/{name}"

    def describe(self, name: str) -> str:
        return f"{self.kind} {name}"


NODE: Final = PublishTarget("Node", "nodes", "/api/v1")
CILIUM_NODE: Final = PublishTarget("CiliumNode", "ciliumnodes", "/apis/cilium.io/v2")


def _annotations(obj: Obj) -> dict[str, Any]:
    return dict((obj.get("metadata") or {}).get("annotations") or {})


def _check_public_key(what: str, key: str) -> None:
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ValueError(f"{what} {key!r} is not the base64 of 32 bytes (a WireGuard public key)")


def _check(public_key: str, encryption_key: int, next_public_key: str | None = None) -> None:
    _check_public_key("public key", public_key)
    if next_public_key is not None:
        _check_public_key("next public key", next_public_key)
    if isinstance(encryption_key, bool) or not 0 <= encryption_key <= 0xFF:
        raise ValueError(f"encryption key {encryption_key!r} must be 0..255 (WireGuard: 255; opted out: 0)")


def _key_annotation_changes(obj: Obj, public_key: str, next_public_key: str | None) -> dict[str, str | None]:
    """The key annotations of ``obj`` that differ from the wanted ones (None: to remove)."""
    current = _annotations(obj)
    changes: dict[str, str | None] = {}
    if current.get(WIREGUARD_PUB_KEY) != public_key:
        changes[WIREGUARD_PUB_KEY] = public_key
    if current.get(WIREGUARD_NEXT_PUB_KEY) != next_public_key:
        changes[WIREGUARD_NEXT_PUB_KEY] = next_public_key
    return changes


def node_patch(node: Obj, *, public_key: str, encryption_key: int, next_public_key: str | None = None) -> Obj | None:
    """The merge patch that publishes the keys on a core Node, or None when it already carries them.
    ``next_public_key`` None removes the next-key annotation."""
    changes = _key_annotation_changes(node, public_key, next_public_key)
    wanted_key = str(encryption_key) if encryption_key else None
    current_key = _annotations(node).get(ENCRYPTION_KEY_ANNOTATION)
    if current_key != wanted_key:
        changes[ENCRYPTION_KEY_ANNOTATION] = wanted_key
    return {"metadata": {"annotations": changes}} if changes else None


def cilium_node_patch(
    cilium_node: Obj, *, public_key: str, encryption_key: int, next_public_key: str | None = None
) -> Obj | None:
    """The merge patch that publishes the keys on a CiliumNode, or None when it already carries them.
    ``next_public_key`` None removes the next-key annotation."""
    patch: Obj = {}
    changes = _key_annotation_changes(cilium_node, public_key, next_public_key)
    if changes:
        patch["metadata"] = {"annotations": changes}
    encryption = (cilium_node.get("spec") or {}).get("encryption") or {}
    if (encryption.get("key") or 0) != encryption_key:
        patch["spec"] = {"encryption": {"key": encryption_key}}
    return patch or None


def node_withdraw_patch(node: Obj) -> Obj | None:
    """The merge patch that removes the keys from a core Node, or None when it carries none."""
    current = _annotations(node)
    keys = (WIREGUARD_PUB_KEY, WIREGUARD_NEXT_PUB_KEY, ENCRYPTION_KEY_ANNOTATION)
    changes = {k: None for k in keys if k in current}
    return {"metadata": {"annotations": changes}} if changes else None


def cilium_node_withdraw_patch(cilium_node: Obj) -> Obj | None:
    """The merge patch that removes the public keys (current and next) from a CiliumNode and sets
    its encryption key to 0, or None when it already has none of them."""
    patch: Obj = {}
    current = _annotations(cilium_node)
    changes = {k: None for k in (WIREGUARD_PUB_KEY, WIREGUARD_NEXT_PUB_KEY) if k in current}
    if changes:
        patch["metadata"] = {"annotations": changes}
    encryption = (cilium_node.get("spec") or {}).get("encryption") or {}
    if encryption.get("key"):
        patch["spec"] = {"encryption": {"key": 0}}
    return patch or None


def _permanent(err: K8sError, target: PublishTarget, name: str, verb: str) -> NodePublishError:
    what = target.describe(name)
    if err.status == 403:
        return NodePublishError(
            f"cannot publish the WireGuard key on {what}: the API refused '{verb}' on {target.resource} "
            f"(HTTP 403): the agent's ClusterRole needs the verbs get and patch on {target.resource} "
            f"(clustermesh enable --encryption wireguard grants them): {err}",
            status=err.status,
        )
    return NodePublishError(f"cannot publish the WireGuard key on {what}: {err}", status=err.status)


def _transient(err: K8sError) -> bool:
    return err.status is None or err.status in _TRANSIENT_STATUS


async def _get(api: K8sApi, target: PublishTarget, name: str) -> Obj | None:
    """The object, or None when it (or its resource type) does not exist."""
    try:
        return await api.get(target.path(name))
    except K8sError as err:
        if err.status == 404:
            return None
        raise


PatchMaker = Callable[[Obj], Obj | None]


async def _publish_once(
    api: K8sApi, node_name: str, public_key: str, encryption_key: int, next_public_key: str | None
) -> list[str]:
    """One pass of the publication over both targets (see :func:`_patch_once`)."""
    return await _patch_once(api, node_name, (
        (NODE, partial(node_patch, public_key=public_key, encryption_key=encryption_key,
                       next_public_key=next_public_key)),
        (CILIUM_NODE, partial(cilium_node_patch, public_key=public_key, encryption_key=encryption_key,
                              next_public_key=next_public_key)),
    ))  # fmt: skip


async def _patch_once(api: K8sApi, node_name: str, makers: Sequence[tuple[PublishTarget, PatchMaker]]) -> list[str]:
    """One pass over the targets; the objects patched. Raises K8sError (with the target attached)."""
    patched: list[str] = []
    found = 0
    for target, make in makers:
        verb = "get"
        try:
            obj = await _get(api, target, node_name)
            if obj is None:
                continue
            found += 1
            patch = make(obj)
            if patch is None:
                continue
            verb = "patch"
            await api.patch(target.path(node_name), patch)
        except K8sError as err:
            raise _Failure(err, target, verb) from err
        patched.append(target.describe(node_name))
    if not found:
        raise _Failure(K8sError(f"neither Node {node_name} nor CiliumNode {node_name} exists", status=404), NODE, "get")
    return patched


class _Failure(Exception):
    def __init__(self, err: K8sError, target: PublishTarget, verb: str) -> None:
        super().__init__(str(err))
        self.err = err
        self.target = target
        self.verb = verb


async def publish_with(
    api: K8sApi,
    node_name: str,
    *,
    public_key: str,
    encryption_key: int,
    next_public_key: str | None = None,
    attempts: int = DEFAULT_ATTEMPTS,
    backoff: Backoff | None = None,
) -> list[str]:
    """:func:`publish_node_encryption` over an open client; returns the objects it patched (empty
    when everything was published already). At most ``attempts`` passes, ``backoff`` between them."""
    _check(public_key, encryption_key, next_public_key)
    log = _log.bind(node=node_name)
    patched = await _retrying(
        lambda: _publish_once(api, node_name, public_key, encryption_key, next_public_key),
        node_name,
        attempts=attempts,
        backoff=backoff,
        what="publishing",
    )
    if patched:
        log.info(
            "WireGuard key published",
            objects=patched,
            public_key=public_key,
            encryption_key=encryption_key,
            next_public_key=next_public_key,
        )
    return patched


async def _retrying(
    once: Callable[[], Awaitable[list[str]]], node_name: str, *, attempts: int, backoff: Backoff | None, what: str
) -> list[str]:
    delays = backoff or Backoff(initial=0.5, maximum=5.0)
    log = _log.bind(node=node_name)
    for attempt in range(1, max(1, attempts) + 1):
        try:
            return await once()
        except _Failure as failure:
            if not _transient(failure.err) or attempt >= attempts:
                raise _permanent(failure.err, failure.target, node_name, failure.verb) from failure.err
            log.warning(f"{what} the WireGuard key failed, retrying", error=str(failure.err), attempt=attempt)
            await delays.wait()
    raise AssertionError("unreachable: the loop returns or raises")


async def withdraw_with(
    api: K8sApi, node_name: str, *, attempts: int = DEFAULT_ATTEMPTS, backoff: Backoff | None = None
) -> list[str]:
    """:func:`withdraw_node_encryption` over an open client; returns the objects it patched (empty
    when nothing was published)."""
    makers: tuple[tuple[PublishTarget, PatchMaker], ...] = (
        (NODE, node_withdraw_patch),
        (CILIUM_NODE, cilium_node_withdraw_patch),
    )
    patched = await _retrying(
        lambda: _patch_once(api, node_name, makers), node_name, attempts=attempts, backoff=backoff, what="withdrawing"
    )
    if patched:
        _log.info("WireGuard key withdrawn", node=node_name, objects=patched)
    return patched


async def withdraw_node_encryption(kubeconfig: Path, node_name: str) -> None:
    """Remove this node's published WireGuard key from its Node and/or CiliumNode (see the module
    docstring); idempotent, raises as :func:`publish_node_encryption`."""
    async with await K8sApi.from_kubeconfig(kubeconfig) as api:
        await withdraw_with(api, node_name)


async def publish_node_encryption(
    kubeconfig: Path, node_name: str, *, public_key: str, encryption_key: int, next_public_key: str | None = None
) -> None:
    """Publish ``public_key`` (base64 WireGuard public key) and ``encryption_key`` (Cilium's
    ``EncryptionKey``: 255 with WireGuard, 0 for a node opted out of node encryption) on the Node
    and/or CiliumNode ``node_name`` of the cluster at ``kubeconfig`` (see the module docstring);
    with ``next_public_key`` (a rotation running), that key as ``clustermesh.io/wg-next-pub-key``,
    without it (None) that annotation removed.

    Idempotent; retries transient errors a bounded number of times; raises
    :class:`~meshcore.errors.NodePublishError` on a permanent failure, ``ValueError`` on a
    malformed key, :class:`~meshcore.errors.ConfigError` on an unusable kubeconfig."""
    async with await K8sApi.from_kubeconfig(kubeconfig) as api:
        await publish_with(
            api, node_name, public_key=public_key, encryption_key=encryption_key, next_public_key=next_public_key
        )
