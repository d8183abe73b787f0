"""``pods/exec`` (lab/kube/api/podexec.py) on the real API process (on etcd), directly and through the
lab's API front (lab/kube/front.py): the real kubectl and the official client's ``stream()`` run commands
in a container process that lives in its own network, mount and UTS namespaces and cgroup, registered in
a ``pod.json`` record exactly as the node runtime writes it."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import stream
from multidict import MultiDict

from lab.etcd import EtcdProcess
from lab.kube.api import podexec
from lab.kube.api.errors import ApiError
from lab.kube.front import close_code, is_websocket_upgrade, offered_protocols, websocket_headers
from lab.node import linux
from lab.supervisor.spec import cgroup_unified_root
from tests.lab.kube_api.apiproc import ApiProcess, FrontThread

KUBECTL = shutil.which("kubectl")
pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, cgroups, nsenter)")]
NODE = "n0"


@dataclass
class Container:
    """The container process of pod ``default/<name>`` (see the module docstring)."""

    name: str
    proc: subprocess.Popen[bytes]
    cgroup: Path
    workdir: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


def _wait(check: Callable[[], Any], within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {within} s")


@pytest.fixture
def api(etcd_tls: EtcdProcess, tmp_path: Path) -> Iterator[ApiProcess]:
    proc = ApiProcess(etcd_tls, tmp_path / "api").start()
    try:
        yield proc
    finally:
        proc.kill()


@pytest.fixture
def core(api: ApiProcess) -> Iterator[client.CoreV1Api]:
    with api.api_client() as c:
        yield client.CoreV1Api(c)


def _record(api: ApiProcess, pod: dict[str, Any], cgroup: Path, containers: dict[str, int | None]) -> None:
    md = pod["metadata"]
    d = api.log_root / NODE / "pods" / f"default_{md['name']}_{md['uid']}"
    d.mkdir(parents=True, exist_ok=True)
    entries = {name: {"pid": pid, "start_time": linux.start_time(pid) if pid else None, "state": "running"}
               for name, pid in containers.items()}
    (d / "pod.json").write_text(json.dumps({"uid": md["uid"], "namespace": "default", "name": md["name"],
                                            "node": NODE, "cgroup": str(cgroup), "containers": entries}))


@pytest.fixture
def container(api: ApiProcess, core: client.CoreV1Api, tmp_path: Path) -> Iterator[Container]:
    """Pod ``web`` (containers ``app``, running, and ``side``, not running) and its container process."""
    cgroup = cgroup_unified_root() / f"k8sapi-exec-{secrets.token_hex(4)}"
    cgroup.mkdir()
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    script = f'echo $$ > {cgroup}/cgroup.procs && hostname web-host && cd {workdir} && exec sleep 600'
    proc = subprocess.Popen(["unshare", "--net", "--mount", "--uts", "sh", "-c", script],
                            env={"PATH": "/usr/bin:/bin", "GREETING": "hello from the pod"})
    try:
        _wait(lambda: linux.cmdline(proc.pid)[:1] == ["sleep"], 10, "the container process runs")
        manifest: Any = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
                         "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "x"},
                                                                   {"name": "side", "image": "x"}]}}
        pod = core.api_client.sanitize_for_serialization(core.create_namespaced_pod("default", manifest))
        _record(api, pod, cgroup, {"app": proc.pid, "side": None})
        yield Container("web", proc, cgroup, workdir)
    finally:
        proc.kill()
        proc.wait(10)
        for pid in (int(p) for p in (cgroup / "cgroup.procs").read_text().split()):
            os.kill(pid, signal.SIGKILL)  # anything an exec left behind
        _wait(lambda: not (cgroup / "cgroup.procs").read_text().split(), 10, "the test cgroup empties")
        cgroup.rmdir()


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    if KUBECTL is None:
        pytest.skip("kubectl is not installed")
    return subprocess.run([KUBECTL, "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True,
                          timeout=60, input=stdin, env={**os.environ, **(env or {})})


# ----- pure parts -----


def test_exec_options_as_the_kubelet_reads_them() -> None:
    q = MultiDict([("command", "sh"), ("command", "-c"), ("command", "echo"), ("stdout", "true"), ("stderr", "1"),
                   ("container", "app")])
    assert podexec.exec_options(q) == podexec.ExecOptions(("sh", "-c", "echo"), "app", False, True, True, False)
    tty = podexec.exec_options(MultiDict([("command", "sh"), ("tty", "true"), ("stdin", "true"), ("stderr", "true")]))
    assert tty.tty and tty.stdin and not tty.stderr
    with pytest.raises(ApiError, match="at least 1 command"):
        podexec.exec_options(MultiDict([("stdout", "true")]))
    with pytest.raises(ApiError, match="at least 1 of stdin, stdout, stderr"):
        podexec.exec_options(MultiDict([("command", "true")]))


def test_container_choice_record_and_argv() -> None:
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}],
                                               "initContainers": [{"name": "i"}]}}
    assert podexec.container_name(pod, "i") == "i"
    with pytest.raises(ApiError, match="container z is not valid for pod p"):
        podexec.container_name(pod, "z")
    with pytest.raises(ApiError, match=r"choose one of: \[a b i\]"):
        podexec.container_name(pod, None)
    assert podexec.container_name({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}}, None) == "a"
    record = {"cgroup": "/cg", "containers": {"a": {"pid": 42, "start_time": 7}, "b": {"pid": None}}}
    assert podexec.container_process(record, "a", alive=lambda pid, st: (pid, st) == (42, 7)) == \
        podexec.ContainerProcess(42, "/cg")
    for rec, name in ((record, "b"), (record, "zz"), (None, "a")):
        with pytest.raises(ApiError, match=r'container not found \("\w+"\)'):
            podexec.container_process(rec, name, alive=lambda pid, st: True)
    with pytest.raises(ApiError, match="not running"):  # a recycled pid
        podexec.container_process(record, "a", alive=lambda pid, st: st != 7)
    argv = podexec.exec_argv(podexec.ContainerProcess(42, "/cg"), ("ls", "-l"), tty=True, nsenter="/ns",
                             setsid="/ss")
    assert argv == ["/bin/sh", "-c", podexec.JOIN_CGROUP, "/cg/cgroup.procs", "/ss", "--ctty", "/ns", "-t", "42",
                    "-n", "-m", "-u", "--wd", "--", "ls", "-l"]
    assert podexec.exec_argv(podexec.ContainerProcess(42, None), ("ls",), tty=False)[:3] == ["nsenter", "-t", "42"]


def test_exit_status_documents() -> None:
    assert podexec.exit_status(0, ("true",)) == {"metadata": {}, "status": "Success"}
    failed = podexec.exit_status(3, ("sh", "-c", "exit 3"))
    assert failed["status"] == "Failure" and failed["reason"] == "NonZeroExitCode"
    assert failed["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
    assert podexec.exit_status(-9, ("sleep",))["details"]["causes"][0]["message"] == "137"
    assert podexec.parse_environ(b"A=1\0B=x=y\0junk\0") == {"A": "1", "B": "x=y", "PATH": podexec.DEFAULT_PATH}


def test_front_websocket_helpers() -> None:
    headers = MultiDict([("Upgrade", "WebSocket"), ("Connection", "keep-alive, Upgrade"),
                         ("Sec-WebSocket-Protocol", "v5.channel.k8s.io, v4.channel.k8s.io"),
                         ("Sec-WebSocket-Protocol", "v4.channel.k8s.io,base64.channel.k8s.io"),
                         ("Sec-WebSocket-Key", "abc"), ("Sec-WebSocket-Version", "13"), ("Authorization", "Bearer t")])
    assert is_websocket_upgrade(headers)
    assert not is_websocket_upgrade(MultiDict([("Upgrade", "SPDY/3.1"), ("Connection", "Upgrade")]))
    assert offered_protocols(headers) == ("v5.channel.k8s.io", "v4.channel.k8s.io", "base64.channel.k8s.io")
    assert dict(websocket_headers(headers)) == {"Authorization": "Bearer t"}
    assert [close_code(c) for c in (None, 1000, 1005, 1006, 1011, 4001, 999)] == [1000, 1000, 1000, 1000, 1011, 4001,
                                                                                  1000]


# ----- the real API process -----


def test_kubectl_exec_separates_streams_and_returns_the_exit_code(api: ApiProcess, container: Container) -> None:
    out = kubectl(api.kubeconfig, "exec", "web", "-c", "app", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert out.returncode == 3, out.stderr
    assert out.stdout == "out\n"
    assert out.stderr.splitlines() == ["err", "command terminated with exit code 3"]
    ok = kubectl(api.kubeconfig, "exec", "web", "-c", "app", "--", "true")
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "", "")


def test_exec_runs_inside_the_container(api: ApiProcess, container: Container) -> None:
    script = ('hostname; pwd; echo "$GREETING"; readlink /proc/self/ns/net; readlink /proc/self/ns/mnt; '
              "cat /proc/self/cgroup")
    out = kubectl(api.kubeconfig, "exec", "web", "-c", "app", "--", "sh", "-c", script)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:3] == ["web-host", str(container.workdir), "hello from the pod"]
    assert lines[3:5] == [os.readlink(f"/proc/{container.pid}/ns/net"), os.readlink(f"/proc/{container.pid}/ns/mnt")]
    assert lines[3] != os.readlink("/proc/self/ns/net")
    assert any(line.endswith(f"/{container.cgroup.name}") for line in lines[5:])


def test_kubectl_exec_with_stdin(api: ApiProcess, container: Container) -> None:
    text = "".join(f"line {i}\n" for i in range(2000))
    out = kubectl(api.kubeconfig, "exec", "-i", "web", "-c", "app", "--", "cat", stdin=text)
    assert (out.returncode, out.stdout) == (0, text), out.stderr
    code = kubectl(api.kubeconfig, "exec", "-i", "web", "-c", "app", "--", "sh", "-c", "read x; exit $x", stdin="7\n")
    assert code.returncode == 7


def test_exec_errors_are_statuses(api: ApiProcess, container: Container) -> None:
    not_running = kubectl(api.kubeconfig, "exec", "web", "-c", "side", "--", "true")
    assert not_running.returncode == 1 and 'container not found ("side")' in not_running.stderr
    invalid = kubectl(api.kubeconfig, "exec", "web", "-c", "nope", "--", "true")
    assert "container nope is not valid for pod web" in invalid.stderr
    missing = kubectl(api.kubeconfig, "exec", "web", "-c", "app", "--", "no-such-command")
    assert missing.returncode == 127 and "no-such-command" in missing.stderr
    spdy = kubectl(api.kubeconfig, "exec", "web", "-c", "app", "--", "true",
                   env={"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false"})
    assert spdy.returncode == 1 and "over WebSocket only" in spdy.stderr and "SPDY/3.1" in spdy.stderr


def test_official_client_stream(core: client.CoreV1Api, container: Container) -> None:
    out = stream(core.connect_get_namespaced_pod_exec, "web", "default", container="app",
                 command=["sh", "-c", "echo hi; echo there >&2"], stdout=True, stderr=True, stdin=False, tty=False)
    assert sorted(out.splitlines()) == ["hi", "there"]
    ws = stream(core.connect_get_namespaced_pod_exec, "web", "default", container="app",
                command=["sh", "-c", "read x; echo got $x; echo oops >&2; cat; exit 5"], stdout=True, stderr=True,
                stdin=True, tty=False, _preload_content=False)
    ws.write_stdin("abc\n")
    ws.write_stdin(b"\x00binary\xff")
    ws.close_channel(0)  # v5: the command's stdin ends
    ws.run_forever(timeout=20)
    assert ws.read_stdout() == "got abc\n\x00binary\ufffd"
    assert ws.read_stderr() == "oops\n"
    assert ws.returncode == 5


def test_client_going_away_kills_the_command(core: client.CoreV1Api, container: Container) -> None:
    ws = stream(core.connect_get_namespaced_pod_exec, "web", "default", container="app",
                command=["sh", "-c", "echo $$; exec sleep 300"], stdout=True, stderr=True, stdin=False, tty=False,
                _preload_content=False)
    pid = int(ws.readline_stdout(timeout=10))
    assert linux.alive(pid)
    ws.close()
    _wait(lambda: not linux.alive(pid), 10, "the exec'd command is killed")


def test_tty_gets_a_terminal_and_resizes(core: client.CoreV1Api, container: Container) -> None:
    ws = stream(core.connect_get_namespaced_pod_exec, "web", "default", container="app",
                command=["sh", "-c", "read x; tty; stty size; echo $TERM; exit 2"], stdout=True, stderr=True,
                stdin=True, tty=True, _preload_content=False)
    ws.write_channel(podexec.RESIZE, json.dumps({"Width": 101, "Height": 33}))
    ws.write_stdin("go\n")
    ws.run_forever(timeout=20)
    lines = ws.read_stdout().splitlines()
    assert lines[0] == "go"  # the terminal echoes
    assert lines[1].startswith("/dev/pts/") and lines[2:] == ["33 101", "xterm"]
    assert ws.returncode == 2


# ----- through the front -----


@pytest.fixture
def front(api: ApiProcess) -> Iterator[FrontThread]:
    f = FrontThread(api).start()
    try:
        yield f
    finally:
        f.stop()


def test_exec_through_the_front(api: ApiProcess, front: FrontThread, container: Container, tmp_path: Path) -> None:
    kc = front.write_kubeconfig(api, tmp_path / "front-kubeconfig")
    out = kubectl(kc, "exec", "web", "-c", "app", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (out.returncode, out.stdout) == (3, "out\n")
    assert out.stderr.splitlines() == ["err", "command terminated with exit code 3"]
    text = "x" * 100_000 + "\n"
    piped = kubectl(kc, "exec", "-i", "web", "-c", "app", "--", "cat", stdin=text)
    assert (piped.returncode, piped.stdout) == (0, text)
    assert front.front.stats.websockets >= 2
    refused = kubectl(kc, "exec", "web", "-c", "side", "--", "true")
    assert 'container not found ("side")' in refused.stderr

    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kc), client_configuration=cfg)  # type: ignore[no-untyped-call]
    with client.ApiClient(cfg) as c:
        core = client.CoreV1Api(c)
        ws = stream(core.connect_get_namespaced_pod_exec, "web", "default", container="app",
                    command=["sh", "-c", "cat; exit 4"], stdout=True, stderr=True, stdin=True, tty=False,
                    _preload_content=False)
        ws.write_stdin("through the front\n")
        ws.close_channel(0)
        ws.run_forever(timeout=20)
        assert ws.read_stdout() == "through the front\n" and ws.returncode == 4
        with pytest.raises(ApiException) as err:  # the API's Status comes back through the front
            stream(core.connect_get_namespaced_pod_exec, "web", "default", container="side", command=["true"],
                   stdout=True, stderr=True, stdin=False, tty=False)
        assert "400" in str(err.value) and "container not found" in str(err.value)
