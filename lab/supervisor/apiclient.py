"""A few synchronous reads of a lab cluster's Kubernetes API, for the supervisor's readiness checks
and the CLI's status tables (the lab's own code; the product talks to Kubernetes through the
official client only)."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from lab.supervisor.spec import ClusterSpec, LabSpec


def api_ca_file(spec: LabSpec, cluster: ClusterSpec) -> Path:
    """The CA that signed the cluster API's serving certificate."""
    return spec.cluster_dir(cluster.name) / "api" / "tls" / "ca.crt"


def api_url(cluster: ClusterSpec) -> str:
    return f"https://127.0.0.1:{cluster.api_port}"


def api_get(spec: LabSpec, cluster: ClusterSpec, path: str, *, timeout: float = 3.0) -> Any:
    """GET ``path`` from the cluster's API; returns the decoded JSON (raises ``OSError`` subclasses
    when the API is down, ``urllib.error.HTTPError`` on an error status)."""
    return api_request(spec, cluster, "GET", path, timeout=timeout)


def api_request(spec: LabSpec, cluster: ClusterSpec, method: str, path: str, body: Any = None, *,
                timeout: float = 3.0) -> Any:
    """One request with an optional JSON body; the decoded JSON answer (errors as :func:`api_get`)."""
    ctx = ssl.create_default_context(cafile=str(api_ca_file(spec, cluster)))
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": "Bearer lab", **({"Content-Type": "application/json"} if data else {})}
    req = urllib.request.Request(api_url(cluster) + path, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
        body = resp.read()
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        return body.decode(errors="replace")


def api_ready(spec: LabSpec, cluster: ClusterSpec) -> bool:
    """True when ``/readyz`` answers 200."""
    try:
        api_get(spec, cluster, "/readyz", timeout=1.0)
        return True
    except (OSError, ssl.SSLError, ValueError):
        return False


def ready_nodes(spec: LabSpec, cluster: ClusterSpec) -> set[str]:
    """Names of the cluster's Nodes whose Ready condition is True."""
    doc = api_get(spec, cluster, "/api/v1/nodes")
    out = set()
    for node in doc.get("items", []):
        for cond in (node.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "Ready" and cond.get("status") == "True":
                out.add(node["metadata"]["name"])
    return out


def list_items(spec: LabSpec, cluster: ClusterSpec, path: str) -> list[dict[str, Any]]:
    """The ``items`` of a list request (empty when the API cannot be reached)."""
    try:
        doc = api_get(spec, cluster, path)
    except (OSError, urllib.error.URLError, ssl.SSLError):
        return []
    return list(doc.get("items") or []) if isinstance(doc, dict) else []
