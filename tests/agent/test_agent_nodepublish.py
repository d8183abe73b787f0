"""agent.nodepublish: the merge patches (pure), and the client's behaviour against a scripted HTTP API
on loopback: 403 names the object and the missing verb, transient errors are retried (bounded),
a missing object is tolerated when the other one exists. The export through the real API emulator
and clustermesh-apiserver is in tests/clustermesh_apiserver/test_apisrv_node_encryption.py."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agent.nodepublish import (
    ENCRYPTION_KEY_ANNOTATION,
    WIREGUARD_NEXT_PUB_KEY,
    WIREGUARD_PUB_KEY,
    cilium_node_patch,
    cilium_node_withdraw_patch,
    node_patch,
    node_withdraw_patch,
    publish_node_encryption,
    publish_with,
)
from meshcore.backoff import Backoff
from meshcore.errors import MeshError, NodePublishError
from meshcore.k8s.client import K8sApi

PUB = base64.b64encode(bytes(range(32))).decode()
NEXT = base64.b64encode(bytes(range(1, 33))).decode()
NODE_PATH = "/api/v1/nodes/n1"
CN_PATH = "/apis/cilium.io/v2/ciliumnodes/n1"


def node(annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"kind": "Node", "metadata": {"name": "n1", **({"annotations": annotations} if annotations else {})}}


# ---- pure ----


def test_node_patch_sets_only_what_differs() -> None:
    assert node_patch(node(), public_key=PUB, encryption_key=255) == {
        "metadata": {"annotations": {WIREGUARD_PUB_KEY: PUB, ENCRYPTION_KEY_ANNOTATION: "255"}}
    }
    done = node({WIREGUARD_PUB_KEY: PUB, ENCRYPTION_KEY_ANNOTATION: "255", "other": "x"})
    assert node_patch(done, public_key=PUB, encryption_key=255) is None
    # opted out (key 0): Cilium's absent annotation, removed by the merge patch's null
    assert node_patch(done, public_key=PUB, encryption_key=0) == {
        "metadata": {"annotations": {ENCRYPTION_KEY_ANNOTATION: None}}
    }
    assert node_patch(node({WIREGUARD_PUB_KEY: PUB}), public_key=PUB, encryption_key=0) is None


def test_cilium_node_patch_sets_annotation_and_spec_encryption_key() -> None:
    bare: dict[str, Any] = {"kind": "CiliumNode", "metadata": {"name": "n1"}, "spec": {"addresses": []}}
    assert cilium_node_patch(bare, public_key=PUB, encryption_key=255) == {
        "metadata": {"annotations": {WIREGUARD_PUB_KEY: PUB}},
        "spec": {"encryption": {"key": 255}},
    }
    done = {
        **bare,
        "metadata": {"name": "n1", "annotations": {WIREGUARD_PUB_KEY: PUB}},
        "spec": {"encryption": {"key": 255}},
    }
    assert cilium_node_patch(done, public_key=PUB, encryption_key=255) is None
    assert cilium_node_patch(bare, public_key=PUB, encryption_key=0) == {
        "metadata": {"annotations": {WIREGUARD_PUB_KEY: PUB}}
    }


def test_node_patch_sets_then_removes_the_next_key() -> None:
    done = node({WIREGUARD_PUB_KEY: PUB, ENCRYPTION_KEY_ANNOTATION: "255"})
    assert node_patch(done, public_key=PUB, encryption_key=255, next_public_key=NEXT) == {
        "metadata": {"annotations": {WIREGUARD_NEXT_PUB_KEY: NEXT}}
    }
    rotating = node({WIREGUARD_PUB_KEY: PUB, ENCRYPTION_KEY_ANNOTATION: "255", WIREGUARD_NEXT_PUB_KEY: NEXT})
    assert node_patch(rotating, public_key=PUB, encryption_key=255, next_public_key=NEXT) is None
    # the rotation committed: the next key is the current one, the announcement goes (merge patch null)
    assert node_patch(rotating, public_key=NEXT, encryption_key=255) == {
        "metadata": {"annotations": {WIREGUARD_PUB_KEY: NEXT, WIREGUARD_NEXT_PUB_KEY: None}}
    }
    assert node_patch(done, public_key=PUB, encryption_key=255, next_public_key=None) is None


def test_cilium_node_patch_sets_then_removes_the_next_key() -> None:
    done: dict[str, Any] = {
        "kind": "CiliumNode",
        "metadata": {"name": "n1", "annotations": {WIREGUARD_PUB_KEY: PUB}},
        "spec": {"encryption": {"key": 255}},
    }
    assert cilium_node_patch(done, public_key=PUB, encryption_key=255, next_public_key=NEXT) == {
        "metadata": {"annotations": {WIREGUARD_NEXT_PUB_KEY: NEXT}}
    }
    rotating = {
        **done,
        "metadata": {"name": "n1", "annotations": {WIREGUARD_PUB_KEY: PUB, WIREGUARD_NEXT_PUB_KEY: NEXT}},
    }
    assert cilium_node_patch(rotating, public_key=PUB, encryption_key=255, next_public_key=NEXT) is None
    assert cilium_node_patch(rotating, public_key=PUB, encryption_key=255) == {
        "metadata": {"annotations": {WIREGUARD_NEXT_PUB_KEY: None}}
    }
    assert cilium_node_patch(done, public_key=PUB, encryption_key=255) is None


def test_withdraw_patches_remove_the_next_key_too() -> None:
    n = node({WIREGUARD_PUB_KEY: PUB, WIREGUARD_NEXT_PUB_KEY: NEXT, "other": "x"})
    assert node_withdraw_patch(n) == {
        "metadata": {"annotations": {WIREGUARD_PUB_KEY: None, WIREGUARD_NEXT_PUB_KEY: None}}
    }
    assert node_withdraw_patch(node({"other": "x"})) is None
    cn = {"metadata": {"name": "n1", "annotations": {WIREGUARD_NEXT_PUB_KEY: NEXT}}, "spec": {}}
    assert cilium_node_withdraw_patch(cn) == {"metadata": {"annotations": {WIREGUARD_NEXT_PUB_KEY: None}}}


@pytest.mark.parametrize(("key", "enc"), [("short", 255), (PUB, 256), (PUB, -1), (PUB + "=", 255)])
async def test_malformed_keys_are_refused_before_any_request(key: str, enc: int) -> None:
    with pytest.raises(ValueError):
        await publish_with(None, "n1", public_key=key, encryption_key=enc)  # type: ignore[arg-type]


@pytest.mark.parametrize("next_key", ["", "short", PUB + "=", base64.b64encode(bytes(31)).decode()])
async def test_a_malformed_next_key_is_refused_before_any_request(next_key: str) -> None:
    with pytest.raises(ValueError, match="next public key"):
        await publish_with(None, "n1", public_key=PUB, encryption_key=255, next_public_key=next_key)  # type: ignore[arg-type]


# ---- against a scripted API ----

Handler = Callable[[web.Request], web.Response]


def status(code: int, message: str) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "code": code}
    return web.json_response(body, status=code)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Callable[[Handler], Any]]:
    """``await api(handler)``: an HTTP server on loopback answering every request with ``handler``
    (``on_request``, if given, is awaited first with each PATCH); returns a kubeconfig for it."""
    runners: list[web.AppRunner] = []

    async def start(handler: Handler, on_request: Callable[[web.Request], Awaitable[None]] | None = None) -> Path:
        async def any_request(request: web.Request) -> web.Response:
            if on_request is not None and request.method == "PATCH":
                await on_request(request)
            return handler(request)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", any_request)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        path = tmp_path / "kubeconfig"
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "t",
                    "clusters": [{"name": "t", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                    "users": [{"name": "t", "user": {"token": "x"}}],
                    "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}],
                }
            )
        )
        return path

    try:
        yield start
    finally:
        for runner in runners:
            await runner.cleanup()


async def test_forbidden_patch_names_the_object_and_the_verb(api: Any) -> None:
    seen: list[str] = []

    def handler(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path}")
        if request.path == NODE_PATH and request.method == "GET":
            return web.json_response(node())
        if request.path == NODE_PATH:
            return status(
                403,
                'nodes "n1" is forbidden: User "system:serviceaccount:kube-system:clustermesh-agent" '
                'cannot patch resource "nodes"',
            )
        return status(404, "not found")

    kubeconfig = await api(handler)
    with pytest.raises(NodePublishError) as err:
        await publish_node_encryption(kubeconfig, "n1", public_key=PUB, encryption_key=255)
    text = str(err.value)
    assert "Node n1" in text and "'patch' on nodes" in text and "HTTP 403" in text
    assert err.value.status == 403 and isinstance(err.value, MeshError)
    assert seen == [f"GET {NODE_PATH}", f"PATCH {NODE_PATH}"]  # permanent: not retried


async def test_transient_errors_are_retried_then_the_patch_is_a_merge_patch(api: Any) -> None:
    answers = iter([503, 429])
    patches: list[tuple[str, Any]] = []

    def handler(request: web.Request) -> web.Response:
        if request.path == NODE_PATH and request.method == "GET":
            code = next(answers, 200)
            return web.json_response(node()) if code == 200 else status(code, "busy")
        if request.path == NODE_PATH and request.method == "PATCH":
            patches.append((request.content_type, None))
            return web.json_response(node({WIREGUARD_PUB_KEY: PUB}))
        return status(404, "the server could not find the requested resource")

    kubeconfig = await api(handler)
    async with await K8sApi.from_kubeconfig(kubeconfig) as client:
        patched = await publish_with(
            client, "n1", public_key=PUB, encryption_key=255, backoff=Backoff(initial=0.01, maximum=0.02)
        )
    assert patched == ["Node n1"]  # the CiliumNode (404: no CRD) is skipped
    assert patches == [("application/merge-patch+json", None)]


async def test_the_next_key_is_published_on_both_objects(api: Any) -> None:
    bodies: dict[str, Any] = {}

    def handler(request: web.Request) -> web.Response:
        if request.method == "GET" and request.path == NODE_PATH:
            return web.json_response(node({WIREGUARD_PUB_KEY: PUB, ENCRYPTION_KEY_ANNOTATION: "255"}))
        if request.method == "GET" and request.path == CN_PATH:
            return web.json_response({"kind": "CiliumNode", "metadata": {"name": "n1"}})
        return web.json_response({"kind": "Node", "metadata": {"name": "n1"}})

    async def record(request: web.Request) -> None:
        bodies[request.path] = await request.json()

    kubeconfig = await api(handler, on_request=record)
    await publish_node_encryption(kubeconfig, "n1", public_key=PUB, encryption_key=255, next_public_key=NEXT)
    assert bodies == {
        NODE_PATH: {"metadata": {"annotations": {WIREGUARD_NEXT_PUB_KEY: NEXT}}},
        CN_PATH: {
            "metadata": {"annotations": {WIREGUARD_PUB_KEY: PUB, WIREGUARD_NEXT_PUB_KEY: NEXT}},
            "spec": {"encryption": {"key": 255}},
        },
    }


async def test_retries_are_bounded_and_a_missing_node_is_named(api: Any) -> None:
    calls: list[str] = []

    def handler(request: web.Request) -> web.Response:
        calls.append(request.path)
        return status(404, "not found")

    kubeconfig = await api(handler)
    async with await K8sApi.from_kubeconfig(kubeconfig) as client:
        with pytest.raises(NodePublishError) as err:
            await publish_with(
                client,
                "n1",
                public_key=PUB,
                encryption_key=255,
                attempts=3,
                backoff=Backoff(initial=0.01, maximum=0.02),
            )
    assert "neither Node n1 nor CiliumNode n1 exists" in str(err.value)
    assert calls == [NODE_PATH, CN_PATH] * 3
