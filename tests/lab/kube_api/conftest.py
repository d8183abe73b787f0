"""Fixtures for the Kubernetes API emulator tests: a server in a background thread, its kubeconfig, an
official sync client bound to it, and a ``kubectl`` runner (real binary, loopback only, bounded)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from lab.kube.api import K8sApiServer

KUBECTL = shutil.which("kubectl")


@pytest.fixture
def k8s_server() -> Iterator[K8sApiServer]:
    """An emulator running on its own loop in a thread (Cilium and MCS CRDs installed)."""
    server = K8sApiServer(bookmark_interval=0.2).start_in_thread()
    try:
        yield server
    finally:
        server.stop_thread()


@pytest.fixture
def kubeconfig(k8s_server: K8sApiServer, tmp_path: Path) -> Path:
    """A kubeconfig file for ``k8s_server``."""
    return k8s_server.write_kubeconfig(tmp_path / "kubeconfig", context_name="emu")


@pytest.fixture
def api_client(kubeconfig: Path) -> Iterator[client.ApiClient]:
    """The official sync client, configured from the kubeconfig file."""
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    with client.ApiClient(cfg) as api:
        yield api


Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def kubectl(kubeconfig: Path, tmp_path: Path) -> Kubectl:
    """Run the real kubectl against the emulator: ``kubectl("get", "nodes")``; ``check=False`` to allow failure."""
    if KUBECTL is None:
        pytest.skip("kubectl is not installed")
    kubectl_bin: str = KUBECTL

    def run(*args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [kubectl_bin, "--kubeconfig", str(kubeconfig), "--cache-dir", str(tmp_path / "kcache"), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, input=stdin)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    return run
