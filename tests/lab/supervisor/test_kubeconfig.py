"""Merging the lab's contexts into a user's kubeconfig, and taking exactly them out again."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml

from lab.supervisor import kubeconfig


def _user_doc() -> dict:  # type: ignore[type-arg]
    return {"apiVersion": "v1", "kind": "Config", "current-context": "prod",
            "clusters": [{"name": "prod", "cluster": {"server": "https://prod"}}],
            "users": [{"name": "prod", "user": {"token": "secret"}}],
            "contexts": [{"name": "prod", "context": {"cluster": "prod", "user": "prod"}}]}


def test_merge_adds_and_remove_takes_exactly_the_lab_contexts(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(_user_doc()))
    for ctx in ("lab-c1", "lab-c2"):
        kubeconfig.merge_into(path, kubeconfig.context_entry(ctx, f"https://127.0.0.1:1/{ctx}", b"CA"))
    doc = kubeconfig.read(path)
    assert doc is not None
    assert [c["name"] for c in doc["contexts"]] == ["prod", "lab-c1", "lab-c2"]
    assert doc["current-context"] == "prod"  # an existing current context is kept
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    kubeconfig.merge_into(path, kubeconfig.context_entry("lab-c1", "https://new", b"CA"))  # replaced, not doubled
    doc = kubeconfig.read(path)
    assert doc is not None and [c["cluster"]["server"] for c in doc["clusters"] if c["name"] == "lab-c1"] == [
        "https://new"]
    assert kubeconfig.remove_from(path, ["lab-c1", "lab-c2"])
    assert kubeconfig.read(path) == _user_doc()


def test_merge_into_a_missing_file_sets_the_current_context(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "config"
    kubeconfig.merge_into(path, kubeconfig.context_entry("lab-c1", "https://x", b"CA"))
    doc = kubeconfig.read(path)
    assert doc is not None and doc["current-context"] == "lab-c1"
    kubeconfig.remove_from(path, ["lab-c1"])
    doc = kubeconfig.read(path)
    assert doc is not None and doc["current-context"] == "" and doc["contexts"] == []


def test_a_broken_kubeconfig_is_reported_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text("clusters: [unclosed")
    with pytest.raises(ValueError, match="not a valid kubeconfig"):
        kubeconfig.merge_into(path, kubeconfig.context_entry("lab-c1", "https://x", b"CA"))
    assert path.read_text() == "clusters: [unclosed"
    assert not kubeconfig.remove_from(tmp_path / "absent", ["lab-c1"])


def test_default_path_follows_kubeconfig_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path}/a:{tmp_path}/b")
    assert kubeconfig.default_user_kubeconfig() == tmp_path / "a"
    monkeypatch.delenv("KUBECONFIG")
    assert kubeconfig.default_user_kubeconfig() == Path.home() / ".kube" / "config"
