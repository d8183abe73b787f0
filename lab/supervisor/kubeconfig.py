"""Kubeconfig documents for a lab: one context per cluster, merged into (and removed from) a user's file.

The merge is what ``kind create cluster`` does: clusters, users and contexts named after the lab's
context (``<lab>-<cluster>``) are added or replaced, nothing else in the file changes, and
``current-context`` is set only when the file had none. Removal takes out exactly those names.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from meshcore.pki import write_private_file

Doc = dict[str, Any]


def context_entry(context: str, server: str, ca_pem: bytes) -> Doc:
    """A kubeconfig holding one cluster, user and context, all named ``context``."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": {
            "server": server, "certificate-authority-data": base64.b64encode(ca_pem).decode()}}],
        "users": [{"name": context, "user": {"token": "lab"}}],
        "contexts": [{"name": context, "context": {"cluster": context, "user": context}}],
    }


def _named(items: Any) -> list[Doc]:
    return [i for i in (items or []) if isinstance(i, dict) and "name" in i]


def merge(base: Doc | None, add: Doc) -> Doc:
    """``base`` with every cluster, user and context of ``add`` added or replaced by name (pure)."""
    out: Doc = dict(base or {"apiVersion": "v1", "kind": "Config", "preferences": {}})
    for section in ("clusters", "users", "contexts"):
        new = _named(add.get(section))
        names = {i["name"] for i in new}
        out[section] = [i for i in _named(out.get(section)) if i["name"] not in names] + new
    if not out.get("current-context") and add.get("contexts"):
        out["current-context"] = add["contexts"][0]["name"]
    return out


def remove(base: Doc, names: Iterable[str]) -> Doc:
    """``base`` without the clusters, users and contexts called one of ``names`` (pure)."""
    drop = set(names)
    out = dict(base)
    for section in ("clusters", "users", "contexts"):
        out[section] = [i for i in _named(out.get(section)) if i["name"] not in drop]
    if out.get("current-context") in drop:
        out["current-context"] = out["contexts"][0]["name"] if out["contexts"] else ""
    return out


def read(path: Path) -> Doc | None:
    """The kubeconfig at ``path``, or None if there is none; a clear error if it is not YAML."""
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return None
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not a valid kubeconfig ({err}); fix or move it, then retry") from None
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise ValueError(f"{path} is not a kubeconfig (a YAML mapping was expected)")
    return doc


def write(path: Path, doc: Doc) -> None:
    """Write ``doc`` to ``path`` atomically with mode 0600 (it can hold credentials)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private_file(path, yaml.safe_dump(doc, sort_keys=False).encode())


def default_user_kubeconfig() -> Path:
    """Where kubectl looks: the first entry of ``$KUBECONFIG``, else ``~/.kube/config``."""
    env = os.environ.get("KUBECONFIG", "")
    first = next((p for p in env.split(os.pathsep) if p), "")
    return Path(first) if first else Path.home() / ".kube" / "config"


def merge_into(path: Path, add: Doc) -> None:
    """Merge ``add`` into the kubeconfig file at ``path`` (created if missing)."""
    write(path, merge(read(path), add))


def remove_from(path: Path, names: Iterable[str]) -> bool:
    """Remove ``names`` from the kubeconfig at ``path``; False if the file does not exist."""
    doc = read(path)
    if doc is None:
        return False
    write(path, remove(doc, names))
    return True
