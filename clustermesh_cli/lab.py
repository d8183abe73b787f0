"""``clustermesh lab``: whole Kubernetes clusters on this machine, driven through their own APIs.

``lab up`` starts a supervisor that builds the clusters (lab/README.md has the plan) and returns
once every node is Ready; ``kubectl --context <lab>-c1 ...`` then works as on any cluster. The other
commands read the lab's spec and state files, so they work whatever shell started the lab.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from clustermesh_apiserver.converters.annotations import WIREGUARD_PUB_KEY
from clustermesh_cli.install.options import InstallOptionsError
from clustermesh_cli.lab_fault import fault
from lab import echo as echo_server
from lab.etcd import LOOPBACK
from lab.mesh import install_mesh, lab_install_options
from lab.supervisor import apiclient, cleanup, control, kubeconfig, podref, progress
from lab.supervisor.spec import (
    DEFAULT_NAME,
    ENCRYPTION_MODES,
    LabSpec,
    LabSpecError,
    labs_present,
    load,
    plan,
    validate_lab_name,
    wireguard_device_template,
)
from meshcore.cliopts import CONTEXT_SETTINGS
from meshcore.duration import Duration
from meshcore.errors import MeshError

_UP_BASE_TIMEOUT = 90.0
_UP_PER_NODE_TIMEOUT = 10.0
_MESH_BASE_TIMEOUT = 120.0
_MESH_PER_NODE_TIMEOUT = 15.0


def _name_option(f: Any) -> Any:
    return click.option("--name", "name", default=DEFAULT_NAME, show_default=True, metavar="LAB",
                        help="Which lab (2-7 characters of [a-z0-9]).")(f)


def _free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports on 127.0.0.1 that were free a moment ago (bound together, so no repeats)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(n)]
        for s in socks:
            s.bind((LOOPBACK, 0))
        return [int(s.getsockname()[1]) for s in socks]


def _fail(msg: str) -> None:
    raise click.ClickException(msg)


def _load(name: str) -> LabSpec:
    try:
        return load(validate_lab_name(name))
    except LabSpecError as err:
        others = [n for n in labs_present() if n != name]
        hint = f" (labs on this machine: {', '.join(others)})" if others else ""
        raise click.ClickException(f"{err}{hint}") from None


def _need_root() -> None:
    if os.geteuid() != 0:
        _fail("the lab needs root (it creates network namespaces, cgroups and bpffs directories)")


@click.group(context_settings=CONTEXT_SETTINGS)
def lab() -> None:
    """Whole Kubernetes clusters on this machine, without Docker.

    Each cluster has its own etcd, Kubernetes API, scheduler and controllers, and one node
    runtime per node that runs Pods as processes in network namespaces. Drive it as any cluster:

    \b
      clustermesh lab up --clusters 2 --nodes 2
      kubectl --context lab-c1 apply -f lab/examples/
      kubectl --context lab-c1 get pods -o wide
      clustermesh lab exec --context lab-c1 client -- curl -s http://<pod ip>:8080/
      clustermesh lab fault partition c1 c2      # and: heal, loss, kill, pause, resume, start
      clustermesh lab down
    """


@lab.command()
@click.option("--clusters", type=click.IntRange(1, 16), default=2, show_default=True, help="How many clusters.")
@click.option("--nodes", type=click.IntRange(1, 16), default=2, show_default=True, help="Nodes per cluster.")
@_name_option
@click.option("--routing-mode", type=click.Choice(["tunnel", "native"]), default="tunnel", show_default=True,
              help="How the mesh will route between clusters (recorded for the agents).")
@click.option("--kubeconfig", "kubeconfig_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Kubeconfig to add the lab's contexts to [default: $KUBECONFIG or ~/.kube/config].")
@click.option("--no-kubeconfig", is_flag=True, help="Do not touch any kubeconfig but the lab's own.")
@click.option("--timeout", type=float, default=None, help="Seconds to wait for the lab to be ready.")
@click.option("--no-mesh", is_flag=True, help="Bare clusters: do not enable clustermesh nor connect them.")
@click.option("--source", type=click.Choice(["cilium", "kubernetes"]), default="kubernetes", show_default=True,
              help="What the clustermesh API servers export (the lab's pods have no Cilium CRDs unless you add them).")
@click.option("--mesh-timeout", type=float, default=None,
              help="Seconds to wait for the mesh (API servers, agents, every peer ready).  "
              "[default: 120 + 15 per node]")
@click.option("--encryption", type=click.Choice(ENCRYPTION_MODES), default="none", show_default=True,
              help="`clustermesh enable --encryption` of every cluster: wireguard encrypts pod traffic between "
              "nodes with WireGuard (wireguard-go here; each node's device is cmwg<3 hex of the lab><8 hex of "
              "the node>, since device names are global on this host). Also recorded for a later `clustermesh "
              "enable` of a --no-mesh lab.")
@click.option("--encryption-strict-mode-cidr", default=None, metavar="CIDR",
              help="`clustermesh enable --encryption-strict-mode-cidr` of every cluster (with --encryption "
              "wireguard): pod traffic within this IPv4 CIDR that would leave a node unencrypted is dropped.")
@click.option("--wireguard-key-rotation-interval", type=Duration(allow_zero=True), default="0", show_default=True,
              metavar="DURATION", help="`clustermesh enable --wireguard-key-rotation-interval` of every cluster (with "
              "--encryption wireguard): each agent rotates its node's key when it is this old (e.g. 10m; 0 = off).")
def up(clusters: int, nodes: int, name: str, routing_mode: str, kubeconfig_path: Path | None, no_kubeconfig: bool,
       timeout: float | None, no_mesh: bool, source: str, mesh_timeout: float | None, encryption: str,
       encryption_strict_mode_cidr: str | None, wireguard_key_rotation_interval: float) -> None:
    """Build a lab: CLUSTERS clusters of NODES nodes, each with its own Kubernetes API, and mesh them.

    Leftovers of a lab of the same name that is not running (e.g. a `lab up` killed half way)
    are removed first. Contexts are named <lab>-c1, <lab>-c2, ... Unless --no-mesh, it then runs
    what a user would: `clustermesh enable` on each cluster (name cN, ID N) and `clustermesh
    connect` on every pair, and waits until every agent has every peer ready.

    \b
      clustermesh lab up --clusters 2 --nodes 2                # meshed
      clustermesh lab up --encryption wireguard                # meshed, WireGuard between nodes
      clustermesh lab up --no-mesh                             # bare; then, by hand:
      clustermesh enable --context lab-c1 && clustermesh enable --context lab-c2
      clustermesh connect --context lab-c1 --destination-context lab-c2
    """
    _need_root()
    try:
        validate_lab_name(name)
    except LabSpecError as err:
        raise click.BadParameter(str(err), param_hint="--name") from None
    _check_encryption(name, encryption, encryption_strict_mode_cidr, wireguard_key_rotation_interval)
    pid = control.supervisor_pid(name)
    if pid is not None:
        _fail(f"lab {name!r} is up already (supervisor pid {pid}); use `clustermesh lab down --name {name}` "
              "first, or pick another --name")
    leftovers = cleanup.sweep(name)
    if not leftovers.empty:
        click.echo(f"removed leftovers of an earlier lab {name!r}")
    merged = None if no_kubeconfig else str(kubeconfig_path or kubeconfig.default_user_kubeconfig())
    ports = _free_ports(2 * clusters)
    spec = plan(name, clusters, nodes, routing_mode=routing_mode,  # type: ignore[arg-type]
                api_ports=ports[:clusters], api_internal_ports=ports[clusters:], kubeconfig_merged=merged,
                encryption=encryption, encryption_strict_mode_cidr=encryption_strict_mode_cidr,
                wireguard_key_rotation_interval=wireguard_key_rotation_interval)
    spec.save()
    t0 = time.monotonic()
    proc = control.spawn_supervisor(spec)
    limit = timeout or _UP_BASE_TIMEOUT + _UP_PER_NODE_TIMEOUT * clusters * nodes
    outcome = None
    for line in progress.follow(spec.state_dir / "progress.log", alive=lambda: proc.poll() is None, timeout=limit):
        if line.get("final"):
            outcome = line
            break
        click.echo(f"  [{line.get('t', 0):6.1f}s] {line['msg']}")
    if outcome is None or outcome["final"] != progress.READY:
        msg = outcome["msg"] if outcome else "no outcome"
        click.echo(f"lab {name!r} failed: {msg}", err=True)
        click.echo(f"logs are under {spec.state_dir}; `clustermesh lab down --name {name}` removes it all", err=True)
        sys.exit(1)
    click.echo(f"lab {name!r} is up in {time.monotonic() - t0:.1f} s: {clusters} cluster(s) x {nodes} node(s)")
    for c in spec.clusters:
        click.echo(f"  kubectl --context {c.context} get nodes    # cluster {c.name}, id {c.cluster_id}")
    where = merged or str(spec.kubeconfig)
    click.echo(f"contexts are in {where}" + ("" if merged else f" (export KUBECONFIG={spec.kubeconfig})"))
    if not no_mesh:
        _mesh(spec, source, mesh_timeout or _MESH_BASE_TIMEOUT + _MESH_PER_NODE_TIMEOUT * clusters * nodes)


def _check_encryption(name: str, encryption: str, strict_mode_cidr: str | None, rotation_interval: float = 0.0
                      ) -> None:
    """Refuse bad encryption flags before anything is built, with the install's own messages, and a
    lab whose WireGuard device names another encrypted lab on this machine would share."""
    spec = plan(name, 1, 1, encryption=encryption, encryption_strict_mode_cidr=strict_mode_cidr,
                wireguard_key_rotation_interval=rotation_interval)
    try:
        lab_install_options(spec, spec.clusters[0])
    except InstallOptionsError as err:
        raise click.UsageError(str(err)) from None
    if encryption == "none":
        return
    for other in labs_present():
        if other != name and wireguard_device_template(other) == spec.wireguard_device:
            raise click.UsageError(f"lab {other!r} on this machine names its WireGuard devices "
                                   f"{spec.wireguard_device} too (device names are global here): pick another --name")


def _mesh(spec: LabSpec, source: str, timeout: float) -> None:
    t0 = time.monotonic()
    click.echo(f"meshing lab {spec.name!r}: enable on {len(spec.clusters)} cluster(s), connect every pair")
    try:
        install_mesh(spec, source=source, timeout=timeout, echo=lambda line: click.echo(f"  {line}"))
    except MeshError as err:
        click.echo(f"the mesh of lab {spec.name!r} failed: {err}", err=True)
        click.echo(f"the lab stays up for a look (clustermesh lab status --name {spec.name}); "
                   f"`clustermesh lab down --name {spec.name}` removes it all", err=True)
        sys.exit(1)
    click.echo(f"mesh of lab {spec.name!r} is ready in {time.monotonic() - t0:.1f} s")


@lab.command()
@_name_option
def down(name: str) -> None:
    """Remove a lab completely: processes, pods, namespaces, mounts, cgroups, pins and contexts."""
    _need_root()
    try:
        validate_lab_name(name)
    except LabSpecError as err:
        raise click.BadParameter(str(err), param_hint="--name") from None
    report = cleanup.sweep(name)
    if report.empty:
        click.echo(f"no lab {name!r} here: nothing to remove")
        return
    click.echo(f"lab {name!r} removed: {len(report.processes)} processes, {len(report.namespaces)} namespaces, "
               f"{len(report.mounts)} mounts, {len(report.cgroups)} cgroups, {len(report.contexts)} contexts")


def _status_doc(spec: LabSpec) -> dict[str, Any]:
    try:
        sup = control.request(spec.name, "GET", "/status", timeout=5)
    except control.SupervisorUnavailable as err:
        sup = {"ready": False, "components": [], "error": str(err)}
    comps = sup.get("components", [])
    clusters, nodes, pods = [], [], []
    for c in spec.clusters:
        etcd: dict[str, Any] = next((x for x in comps if x["name"] == f"etcd/{c.name}"), {})
        up = apiclient.api_ready(spec, c)
        clusters.append({"name": c.name, "id": c.cluster_id, "context": c.context, "api": apiclient.api_url(c),
                         "api_ready": up, "kubeconfig": str(spec.kubeconfig), "etcd": etcd.get("endpoint"),
                         "pod_cidr": c.pod_cidr, "service_cidr": c.service_cidr})
        ready = set()
        wg_keys: dict[str, str] = {}
        if up:
            for obj in apiclient.list_items(spec, c, "/api/v1/nodes"):
                key = ((obj.get("metadata") or {}).get("annotations") or {}).get(WIREGUARD_PUB_KEY)
                if key:
                    wg_keys[obj["metadata"]["name"]] = str(key)
                if any(k.get("type") == "Ready" and k.get("status") == "True"
                       for k in (obj.get("status") or {}).get("conditions") or []):
                    ready.add(obj["metadata"]["name"])
            for p in apiclient.list_items(spec, c, "/api/v1/pods"):
                md, st = p["metadata"], p.get("status") or {}
                pods.append({"cluster": c.name, "namespace": md.get("namespace"), "name": md["name"],
                             "node": (p.get("spec") or {}).get("nodeName"), "ip": st.get("podIP"),
                             "phase": "Terminating" if md.get("deletionTimestamp") else st.get("phase", "Pending")})
        for n in c.nodes:
            nodes.append({"cluster": c.name, "name": n.name, "ip": n.internal_ip, "pod_cidr": n.pod_cidr,
                          "netns": n.netns, "ready": n.name in ready, "wg_pub_key": wg_keys.get(n.name)})
    for comp in comps:
        comp["healthy"] = comp.get("state") == "running"
    return {"name": spec.name, "ready": sup.get("ready", False), "routing_mode": spec.routing_mode,
            "encryption": spec.encryption, "encryption_strict_mode_cidr": spec.encryption_strict_mode_cidr,
            "state_dir": str(spec.state_dir), "clusters": clusters, "nodes": nodes, "pods": pods,
            "processes": comps, **({"error": sup["error"]} if "error" in sup else {})}


def _encryption_text(spec: LabSpec) -> str:
    if spec.encryption == "none":
        return "none"
    strict = f", strict mode {spec.encryption_strict_mode_cidr}" if spec.encryption_strict_mode_cidr else ""
    return f"{spec.encryption} (devices {spec.wireguard_device}{strict})"


def _table(title: str, rows: list[dict[str, Any]], cols: list[str]) -> Table:
    t = Table(title=title, title_justify="left")
    for c in cols:
        t.add_column(c.upper())
    for r in rows:
        t.add_row(*("" if r.get(c) is None else str(r.get(c)) for c in cols))
    return t


@lab.command()
@_name_option
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def status(name: str, output: str) -> None:
    """Clusters, nodes, pods and every lab process with its PID and health."""
    spec = _load(name)
    doc = _status_doc(spec)
    if output == "json":
        click.echo(json.dumps(doc, indent=2))
        return
    console = Console(width=160)
    console.print(f"lab {spec.name}: {'ready' if doc['ready'] else 'NOT READY'} ({spec.state_dir})")
    console.print(f"routing mode {spec.routing_mode}, encryption {_encryption_text(spec)}")
    if "error" in doc:
        console.print(f"[red]{doc['error']}[/red]")
    console.print(_table("clusters", doc["clusters"], ["name", "id", "context", "api", "api_ready", "etcd"]))
    node_cols = ["cluster", "name", "ip", "pod_cidr", "ready"] + (["wg_pub_key"] if spec.encryption != "none" else [])
    console.print(_table("nodes", doc["nodes"], node_cols))
    console.print(_table("pods", doc["pods"], ["cluster", "namespace", "name", "node", "ip", "phase"]))
    console.print(_table("processes", doc["processes"], ["name", "pid", "state", "healthy", "log"]))


def _context_option(f: Any) -> Any:
    f = click.option("-n", "--namespace", default="default", show_default=True, help="The pod's namespace.")(f)
    return click.option("--context", default=None,
                        help="Cluster context (<lab>-cN) or cluster name [default: the first cluster].")(f)


def _pod(spec: LabSpec, context: str | None, namespace: str, pod: str) -> podref.PodRef:
    try:
        return podref.find(spec, context, namespace, pod)
    except podref.PodNotFound as err:
        raise click.ClickException(str(err)) from None


@lab.command(name="exec", context_settings={**CONTEXT_SETTINGS, "ignore_unknown_options": True})
@_name_option
@_context_option
@click.option("-c", "--container", default=None, help="Container name [default: the first].")
@click.argument("pod")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(name: str, context: str | None, namespace: str, container: str | None, pod: str,
          command: tuple[str, ...]) -> None:
    """Run COMMAND inside POD: its network and mount namespaces, cgroup and environment.

    \b
      clustermesh lab exec --context lab-c1 client -- curl -s http://10.1.1.2:8080/
    """
    _need_root()
    spec = _load(name)
    ref = _pod(spec, context, namespace, pod)
    argv = podref.exec_argv(ref, container, list(command))
    env = podref.container_env(ref, container)
    podref.join_cgroup(ref)
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as err:
        _fail(f"cannot run {argv[0]}: {err}")


@lab.command()
@_name_option
@_context_option
@click.option("-c", "--container", default=None, help="Container name [default: the first].")
@click.option("-p", "--previous", is_flag=True, help="The log of the previous run of the container.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (until Ctrl-C).")
@click.argument("pod")
def logs(name: str, context: str | None, namespace: str, container: str | None, previous: bool, follow: bool,
         pod: str) -> None:
    """Print a pod's container log (also served as `kubectl logs`)."""
    spec = _load(name)
    ref = _pod(spec, context, namespace, pod)
    path = podref.log_path(ref, container, previous=previous)
    if path is None:
        _fail(f"no log yet for pod {namespace}/{pod}" + (f" container {container}" if container else ""))
    assert path is not None
    with open(path, "rb") as f:
        sys.stdout.buffer.write(f.read())
        sys.stdout.flush()
        while follow:
            chunk = f.read()
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
            else:
                time.sleep(0.2)


@lab.command()
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--host", default="0.0.0.0", show_default=True)
def echo(port: int, host: str) -> None:
    """Serve HTTP and TCP on one port, answering with this pod's cluster, node and pod name.

    HTTP requests get JSON ({"cluster", "node", "pod", "namespace", "ip", "path", "client"}); a
    plain TCP connection gets "<cluster> <node> <pod>: <line>" for each line it sends.
    """
    import asyncio

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        asyncio.run(echo_server.serve(port, host))
    except KeyboardInterrupt:
        pass


lab.add_command(fault)
