"""Thin I/O for connect/disconnect: read a cluster's mesh facts and write its
``cilium-clustermesh`` Secret through the official (sync) ``kubernetes`` client.

Objects are handled as the API's JSON dicts (``sanitize_for_serialization``), so the pure code
in :mod:`~clustermesh_cli.mesh.access` works on exactly what ``kubectl get -o json`` shows.
Writes are optimistic: a Secret is replaced at the resourceVersion it was read at, so a
concurrent edit makes the write fail instead of being lost.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from clustermesh_cli.kubecontext import context_configuration
from clustermesh_cli.mesh.access import (
    MeshAccessError,
    cluster_identity,
    peer_access,
    pod_cidrs,
    secret_data,
    service_address,
)
from clustermesh_cli.mesh.peers import (
    APISERVER_SERVICE,
    CA_SECRET,
    CLUSTER_CONFIG_MAPS,
    DEFAULT_NAMESPACE,
    MESH_SECRET,
    REMOTE_CERT_SECRET,
    SECRET_LABELS,
    ClusterInfo,
    ConnectPlan,
    SecretChange,
)
from meshcore.errors import ConfigError

__all__ = ["REQUEST_TIMEOUT", "KubeCluster", "apply_plan", "kube_contexts", "open_clusters"]

REQUEST_TIMEOUT = 15.0  # seconds per API request
Obj = dict[str, Any]
T = TypeVar("T")


def kube_contexts(kubeconfig: str | Path | None) -> tuple[list[str], str | None]:
    """The context names of a kubeconfig (``None``: ``$KUBECONFIG`` or ``~/.kube/config``) and
    its current context."""
    try:
        contexts, current = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig) if kubeconfig is not None else None
        )
    except (ConfigException, OSError, ValueError) as err:
        raise MeshAccessError(f"cannot read kubeconfig {kubeconfig or '(default)'}: {err}") from None
    names = [str(c["name"]) for c in contexts or []]
    return names, (str(current["name"]) if current else None)


class KubeCluster:
    """One cluster, reached through one kubeconfig context."""

    def __init__(self, context: str, *, kubeconfig: str | Path | None = None,
                 namespace: str = DEFAULT_NAMESPACE) -> None:
        self.context = context
        self.namespace = namespace
        try:
            configuration = context_configuration(context, kubeconfig)
        except ConfigError as err:
            raise MeshAccessError(str(err)) from None
        self.server = str(configuration.host)
        self._api = client.ApiClient(configuration)
        self._core = client.CoreV1Api(self._api)
        self._secret: Obj | None = None  # the cilium-clustermesh Secret as last read or written

    def close(self) -> None:
        self._api.close()  # type: ignore[no-untyped-call]

    # ---- requests ----

    def _call(self, what: str, fn: Callable[..., T], *args: Any, missing_ok: bool = False) -> T | None:
        try:
            return fn(*args, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as err:
            if err.status == 404 and missing_ok:
                return None
            raise MeshAccessError(self._api_error(what, err)) from None
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise MeshAccessError(
                f"the Kubernetes API of context {self.context} ({self.server}) does not answer ({what}): "
                f"{type(err).__name__}: {err}; check that the cluster is running and the context is right"
            ) from None

    def _api_error(self, what: str, err: ApiException) -> str:
        message = str(err.reason or "")
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            message = json.loads(err.body or "{}").get("message") or message
        hint = ""
        if err.status == 404:
            hint = f": is the mesh enabled there? (clustermesh enable --context {self.context})"
        elif err.status in (401, 403):
            hint = ": the context's credentials may not do this"
        return f"context {self.context}: {what}: HTTP {err.status} {message}{hint}"

    def _json(self, obj: Any) -> Obj:
        result: Obj = self._api.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
        return result

    # ---- reading ----

    def _cluster_config(self) -> tuple[str, int, int]:
        for name in CLUSTER_CONFIG_MAPS:
            cm = self._call(f"read ConfigMap {self.namespace}/{name}", self._core.read_namespaced_config_map,
                            name, self.namespace, missing_ok=True)
            if cm is not None:
                where = f"ConfigMap {self.namespace}/{name} (context {self.context})"
                return cluster_identity(cm.data or {}, where=where)
        raise MeshAccessError(
            f"context {self.context}: no ConfigMap {' or '.join(CLUSTER_CONFIG_MAPS)} in namespace "
            f"{self.namespace} with the cluster's name and ID: run clustermesh enable --context {self.context} "
            "first (or pass the right --namespace)"
        )

    def _read_secret(self, name: str, *, missing_ok: bool = False) -> Obj | None:
        secret = self._call(f"read Secret {self.namespace}/{name}", self._core.read_namespaced_secret,
                            name, self.namespace, missing_ok=missing_ok)
        return None if secret is None else self._json(secret)

    def _required_secret(self, name: str) -> dict[str, bytes]:
        secret = self._read_secret(name, missing_ok=True)
        if secret is None:
            raise MeshAccessError(
                f"context {self.context}: Secret {self.namespace}/{name} does not exist: run clustermesh enable "
                f"--context {self.context} first"
            )
        return secret_data(secret)

    def read(self, *, need_access: bool = True) -> ClusterInfo:
        """The cluster's :class:`ClusterInfo`; without ``need_access`` (disconnect) only its name,
        ID and ``cilium-clustermesh`` Secret are read."""
        name, cluster_id, max_connected = self._cluster_config()
        self._secret = self._read_secret(MESH_SECRET, missing_ok=True)
        mesh = None if self._secret is None else secret_data(self._secret)
        version = None if self._secret is None else (self._secret.get("metadata") or {}).get("resourceVersion")
        info = ClusterInfo(context=self.context, name=name, cluster_id=cluster_id, namespace=self.namespace,
                           max_connected_clusters=max_connected, mesh_secret=mesh, mesh_secret_version=version)
        if not need_access:
            return info
        service = self._call(f"read Service {self.namespace}/{APISERVER_SERVICE}",
                             self._core.read_namespaced_service, APISERVER_SERVICE, self.namespace, missing_ok=True)
        if service is None:
            raise MeshAccessError(
                f"context {self.context}: Service {self.namespace}/{APISERVER_SERVICE} does not exist: run "
                f"clustermesh enable --context {self.context} first"
            )
        node_list = self._call("list Nodes", self._core.list_node)
        nodes = [self._json(n) for n in (node_list.items if node_list is not None else [])]
        addresses, port = service_address(self._json(service), nodes, context=self.context)
        access = peer_access(addresses, port, self._required_secret(CA_SECRET),
                             self._required_secret(REMOTE_CERT_SECRET), context=self.context)
        return ClusterInfo(context=self.context, name=name, cluster_id=cluster_id, namespace=self.namespace,
                           max_connected_clusters=max_connected, pod_cidrs=pod_cidrs(nodes), access=access,
                           mesh_secret=mesh, mesh_secret_version=version)

    # ---- writing ----

    def write(self, change: SecretChange, data: Mapping[str, bytes] | None = None) -> None:
        """Write ``change.after`` (or ``data``) to the Secret: create it when it was absent, else
        replace it at the resourceVersion last seen (a concurrent change fails the write)."""
        encoded = {k: base64.b64encode(v).decode() for k, v in (change.after if data is None else data).items()}
        what = f"write Secret {change.namespace}/{change.name}"
        try:
            if self._secret is None:
                body: Obj = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                             "metadata": {"name": change.name, "namespace": change.namespace,
                                          "labels": dict(SECRET_LABELS)},
                             "data": encoded}
                created = self._call(what, self._core.create_namespaced_secret, change.namespace, body)
                self._secret = self._json(created)
            else:
                body = {**self._secret, "data": encoded}
                body.pop("stringData", None)
                replaced = self._call(what, self._core.replace_namespaced_secret, change.name, change.namespace,
                                      body)
                self._secret = self._json(replaced)
        except MeshAccessError as err:
            if "HTTP 409" in str(err):
                raise MeshAccessError(
                    f"context {self.context}: Secret {change.namespace}/{change.name} was changed by someone else "
                    "while this command ran; run it again"
                ) from None
            raise

    def delete_secret(self, change: SecretChange) -> None:
        """Delete the Secret (undoing a create)."""
        self._call(f"delete Secret {change.namespace}/{change.name}", self._core.delete_namespaced_secret,
                   change.name, change.namespace, missing_ok=True)
        self._secret = None


@contextlib.contextmanager
def open_clusters(contexts: Sequence[str], *, kubeconfig: str | Path | None = None,
                  namespace: str = DEFAULT_NAMESPACE) -> Iterator[list[KubeCluster]]:
    """A :class:`KubeCluster` per context, checked to exist in the kubeconfig; closed on exit."""
    known, _ = kube_contexts(kubeconfig)
    for ctx in contexts:
        if ctx not in known:
            raise MeshAccessError(
                f"context {ctx!r} is not in kubeconfig {kubeconfig or '(default: $KUBECONFIG or ~/.kube/config)'}; "
                f"its contexts: {', '.join(known) or 'none'}"
            )
    opened: list[KubeCluster] = []
    try:
        for ctx in contexts:
            opened.append(KubeCluster(ctx, kubeconfig=kubeconfig, namespace=namespace))
        yield opened
    finally:
        for cluster in opened:
            cluster.close()


def apply_plan(plan: ConnectPlan, clusters: Mapping[str, KubeCluster]) -> list[SecretChange]:
    """Write every changed Secret of ``plan`` (``clusters`` by context); the changes written.

    If a later write fails, the earlier ones are undone (the Secret restored, or deleted if this
    call created it) so that a failed connect leaves both sides as they were; the error says
    whether undoing worked."""
    written: list[SecretChange] = []
    for change in plan.changes:
        if not change.changed:
            continue
        try:
            clusters[change.context].write(change)
        except MeshAccessError as err:
            if not written:
                raise
            undo_failed = []
            for done in reversed(written):
                cluster = clusters[done.context]
                try:
                    if done.create:
                        cluster.delete_secret(done)
                    else:
                        cluster.write(done, dict(done.before or {}))
                except MeshAccessError as undo_err:
                    undo_failed.append(f"{done.cluster}: {undo_err}")
            if undo_failed:
                raise MeshAccessError(
                    f"{err}; undoing the earlier writes failed too ({'; '.join(undo_failed)}): the clusters may "
                    "be connected one way only; run the same command again once the API answers"
                ) from None
            raise MeshAccessError(f"{err} (the other cluster's Secret was restored: nothing changed)") from None
        written.append(change)
    return written
