"""The clustermesh-apiserver pod's etcd-init and etcd containers, run exactly as rendered.

The commands, arguments and volume mounts of the rendered Deployment run in a private mount, network
and PID namespace (so port 2379 and the mount paths are the pod's own, and everything dies with the
namespace), with the Secret volumes materialised from real certificates: etcd-init must create the
users and enable auth, the etcd container must then serve the same data with client-certificate
auth, the remote certificate must be read-only, and a second etcd-init (a pod restart with the same
emptyDir) must succeed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
RESULT_MARK = "POD-RESULT "
DRIVER_TIMEOUT = 240.0

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (private mount and network namespaces)"),
    pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1) from util-linux"),
    pytest.mark.skipif(shutil.which("etcd") is None, reason="needs etcd on PATH (Debian etcd-server)"),
]


def _pod(tmp: Path) -> dict[str, Any]:
    """Render the Deployment and write its Secret volumes (real certificates) under ``tmp``."""
    from clustermesh_cli.install import (
        InstallOptions,
        certificate_secrets,
        issue_cluster_certificates,
        names,
        render_manifests,
    )
    from clustermesh_cli.install.secrets import secret_data
    from meshcore.pki import CertificateAuthority

    options = InstallOptions(cluster_name="c1", cluster_id=1)
    deployment = next(o for o in render_manifests(options) if o["kind"] == "Deployment")
    ca = CertificateAuthority.create()
    certs = issue_cluster_certificates(ca, "c1", options.namespace)
    secrets = {s["metadata"]["name"]: secret_data(s) for s in certificate_secrets(options.namespace, certs)}
    for name, data in secrets.items():
        (tmp / name).mkdir(mode=0o700)
        for key, value in data.items():
            (tmp / name / key).write_bytes(value)
            (tmp / name / key).chmod(0o400)
    assert names.SERVER_CERT_SECRET in secrets
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


# ---- inside the namespaces ----

def _sources(pod: dict[str, Any], tmp: Path) -> dict[str, Path]:
    out = {}
    for v in pod["volumes"]:
        if "secret" in v:
            out[v["name"]] = tmp / v["secret"]["secretName"]
        elif "emptyDir" in v:
            out[v["name"]] = tmp / "volumes" / v["name"]
            out[v["name"]].mkdir(parents=True)
        else:
            raise AssertionError(f"unexpected volume {v}")
    return out


def _mount_volumes(pod: dict[str, Any], tmp: Path) -> None:
    """Bind every container's mounts (private namespace: the host is untouched; tmpfs over /var/lib and
    /run provides the mount points)."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for top in ("/var/lib", "/run"):
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", top], check=True)
    sources = _sources(pod, tmp)
    seen: set[str] = set()
    for c in [*pod["initContainers"], *pod["containers"]]:
        for m in c.get("volumeMounts", []):
            if m["mountPath"] in seen:
                continue
            seen.add(m["mountPath"])
            Path(m["mountPath"]).mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", "--bind", str(sources[m["name"]]), m["mountPath"]], check=True)


def _argv(c: dict[str, Any]) -> list[str]:
    return [*c["command"], *c.get("args", [])]


def _client(tmp: Path, secret: str) -> Any:
    from meshcore.kvstore.client import EtcdClient
    from meshcore.kvstore.config import EtcdClientConfig

    d = tmp / secret
    return EtcdClient(EtcdClientConfig(endpoints=["https://127.0.0.1:2379"], trusted_ca_file=d / "ca.crt",
                                       cert_file=d / "tls.crt", key_file=d / "tls.key", dial_timeout=2.0))


async def _wait_serving(tmp: Path, within: float = 30.0) -> None:
    from meshcore.errors import KVStoreUnavailableError

    deadline = time.monotonic() + within
    while True:
        try:
            async with _client(tmp, "clustermesh-apiserver-admin-cert") as c:
                await c.get("cilium/.heartbeat")
                return
        except KVStoreUnavailableError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


async def _check_auth(tmp: Path, *, write: bool) -> dict[str, Any]:
    from meshcore.errors import KVStoreAuthError, KVStoreUnavailableError

    result: dict[str, Any] = {}
    key = "cilium/state/nodes/v1/c1/n1"
    async with _client(tmp, "clustermesh-apiserver-admin-cert") as admin:
        if write:
            await admin.put(key, b"{}")
        result["admin_reads"] = (await admin.get(key)) is not None
    async with _client(tmp, "clustermesh-apiserver-remote-cert") as remote:
        result["remote_reads_state"] = (await remote.get(key)) is not None
        try:
            await remote.put(key, b"evil")
            result["remote_write"] = "allowed"
        except KVStoreAuthError:
            result["remote_write"] = "denied"
    async with _client(tmp, "clustermesh-apiserver-local-cert") as local:
        try:
            await local.get(key)
            result["local_reads_state"] = True
        except KVStoreAuthError:
            result["local_reads_state"] = False
    from meshcore.kvstore.client import EtcdClient
    from meshcore.kvstore.config import EtcdClientConfig

    anonymous = EtcdClient(EtcdClientConfig(endpoints=["https://127.0.0.1:2379"], dial_timeout=2.0,
                                            trusted_ca_file=tmp / "clustermesh-apiserver-admin-cert" / "ca.crt"))
    try:
        await anonymous.connect()
        await anonymous.get(key)
        result["no_client_cert"] = "served"
    except (KVStoreUnavailableError, KVStoreAuthError):
        result["no_client_cert"] = "refused"
    finally:
        await anonymous.close()
    return result


def _run_init(init: dict[str, Any], env: dict[str, str], log: Path) -> int:
    with open(log, "ab") as out:
        return subprocess.run(_argv(init), env=env, stdout=out, stderr=subprocess.STDOUT, timeout=150).returncode


def driver(tmp: Path) -> None:
    pod = json.loads((tmp / "pod.json").read_text())
    _mount_volumes(pod, tmp)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)}
    init = pod["initContainers"][0]
    etcd = next(c for c in pod["containers"] if c["name"] == "etcd")
    result: dict[str, Any] = {"init_rc": _run_init(init, env, tmp / "init.log")}
    if result["init_rc"] == 0:
        with open(tmp / "etcd.log", "ab") as out:
            proc = subprocess.Popen(_argv(etcd), env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            asyncio.run(_wait_serving(tmp))
            result["first"] = asyncio.run(_check_auth(tmp, write=True))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        result["reinit_rc"] = _run_init(init, env, tmp / "init.log")
        with open(tmp / "etcd.log", "ab") as out:
            proc = subprocess.Popen(_argv(etcd), env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            asyncio.run(_wait_serving(tmp))
            result["after_restart"] = asyncio.run(_check_auth(tmp, write=False))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    print(RESULT_MARK + json.dumps(result), flush=True)


# ---- the test ----

def test_apiserver_pod_etcd_init_and_etcd_run_as_rendered(tmp_path: Path) -> None:
    pod = _pod(tmp_path)
    (tmp_path / "pod.json").write_text(json.dumps(pod))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
               PYTHONPATH=str(REPO))
    cmd = ["unshare", "--mount", "--net", "--pid", "--fork", "--kill-child", "--propagation", "private",
           sys.executable, __file__, "--driver", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=DRIVER_TIMEOUT)
    logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(tmp_path.glob("*.log")))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARK)]
    assert proc.returncode == 0 and lines, f"driver failed ({proc.returncode}): {proc.stderr[-3000:]}\n{logs}"
    result = json.loads(lines[-1][len(RESULT_MARK):])
    assert result["init_rc"] == 0, logs
    expected = {"admin_reads": True, "remote_reads_state": True, "remote_write": "denied",
                "local_reads_state": False, "no_client_cert": "refused"}
    assert result["first"] == expected, logs
    assert result["reinit_rc"] == 0, f"etcd-init must succeed again over the same data (pod restart)\n{logs}"
    assert result["after_restart"] == expected, logs


if __name__ == "__main__":
    if sys.argv[1:2] == ["--driver"]:
        driver(Path(sys.argv[2]))
