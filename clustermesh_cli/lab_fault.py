"""``clustermesh lab fault``: scripted faults on a running lab, each with its counterpart.

Network faults sit in the lab's underlay namespace (nftables drop rules, a tc BPF loss program),
named after the cluster pair, so ``heal A B`` undoes exactly what ``partition A B`` and ``loss A B``
did and ``lab down`` removes every one with the namespace. Process faults go through the lab's
supervisor (etcd, API, controllers, node runtimes) or straight to a pod's cgroup.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json

import click

from lab import faults
from lab.net import names
from lab.supervisor import control, podref
from lab.supervisor.spec import DEFAULT_NAME, LabSpec, LabSpecError, load, validate_lab_name
from meshcore.cliopts import CONTEXT_SETTINGS

_COMPONENT_HELP = """COMPONENT is one of: etcd/<cluster>, api/<cluster>, controllers/<cluster>,
runtime/<node> (a node's runtime, e.g. runtime/c1-n0), or pod/[<namespace>/]<name> (with --context)."""


def _spec(name: str) -> LabSpec:
    try:
        return load(validate_lab_name(name))
    except LabSpecError as err:
        raise click.ClickException(str(err)) from None


def _nodes(spec: LabSpec, cluster: str) -> list[faults.NodeRef]:
    try:
        c = spec.cluster(cluster)
    except LabSpecError as err:
        raise click.BadParameter(str(err)) from None
    return [
        faults.NodeRef(cluster=c.name, ns=n.netns, underlay_ifname=names.node_underlay_ifname(spec.name),
                       underlay_ip=ipaddress.IPv4Address(n.internal_ip),
                       underlay_mac=names.node_underlay_mac(ipaddress.IPv4Address(n.internal_ip)))
        for n in c.nodes
    ]


def _pair(a: str, b: str, kind: str) -> str:
    first, second = sorted((a, b))
    return f"{kind}-{first}-{second}"


def _check_pair(a: str, b: str) -> None:
    if a == b:
        raise click.BadParameter("name two different clusters")


@click.group(context_settings=CONTEXT_SETTINGS)
def fault() -> None:
    """Break a running lab on purpose, and mend it.

    \b
      clustermesh lab fault partition c1 c2     # all traffic between their nodes dropped
      clustermesh lab fault loss c1 c2 30       # 30% of it dropped
      clustermesh lab fault heal c1 c2          # both undone
      clustermesh lab fault kill api/c1         # SIGKILL; `start api/c1` brings it back
      clustermesh lab fault pause etcd/c2       # SIGSTOP; `resume etcd/c2`
      clustermesh lab fault kill pod/echo-abcde --context lab-c1
      clustermesh lab fault list
    """


@fault.command()
@click.option("--name", default=DEFAULT_NAME, show_default=True, metavar="LAB", help="Which lab.")
@click.argument("cluster_a")
@click.argument("cluster_b")
def partition(name: str, cluster_a: str, cluster_b: str) -> None:
    """Drop all traffic between the nodes of CLUSTER_A and CLUSTER_B, both ways, established
    connections included (until `heal`)."""
    _check_pair(cluster_a, cluster_b)
    spec = _spec(name)
    try:
        faults.partition(spec.underlay_ns, _nodes(spec, cluster_a), _nodes(spec, cluster_b),
                         name=_pair(cluster_a, cluster_b, "partition"))
    except faults.FaultError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"partitioned {cluster_a} from {cluster_b}")


@fault.command()
@click.option("--name", default=DEFAULT_NAME, show_default=True, metavar="LAB", help="Which lab.")
@click.argument("cluster_a")
@click.argument("cluster_b")
@click.argument("percent", type=click.FloatRange(0, 100, min_open=True))
def loss(name: str, cluster_a: str, cluster_b: str, percent: float) -> None:
    """Drop PERCENT of the packets between the nodes of CLUSTER_A and CLUSTER_B, both ways."""
    _check_pair(cluster_a, cluster_b)
    spec = _spec(name)
    fname = _pair(cluster_a, cluster_b, "loss")
    with contextlib.suppress(faults.UnknownFault):
        faults.clear_loss(spec.underlay_ns, name=fname)  # a new percentage replaces the old one
    try:
        faults.loss(spec.underlay_ns, _nodes(spec, cluster_a), _nodes(spec, cluster_b), percent, name=fname)
    except faults.FaultError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"dropping {percent:g}% between {cluster_a} and {cluster_b}")


@fault.command()
@click.option("--name", default=DEFAULT_NAME, show_default=True, metavar="LAB", help="Which lab.")
@click.argument("cluster_a")
@click.argument("cluster_b")
def heal(name: str, cluster_a: str, cluster_b: str) -> None:
    """Undo `partition` and `loss` between CLUSTER_A and CLUSTER_B."""
    _check_pair(cluster_a, cluster_b)
    spec = _spec(name)
    undone = 0
    for undo, kind in ((faults.heal, "partition"), (faults.clear_loss, "loss")):
        try:
            undo(spec.underlay_ns, name=_pair(cluster_a, cluster_b, kind))
            undone += 1
        except faults.UnknownFault:
            pass
    if not undone:
        click.echo(f"no fault between {cluster_a} and {cluster_b}")
        return
    click.echo(f"healed {cluster_a} <-> {cluster_b}")


@fault.command(name="list")
@click.option("--name", default=DEFAULT_NAME, show_default=True, metavar="LAB", help="Which lab.")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def list_(name: str, output: str) -> None:
    """The network faults in place now (read back from the kernel)."""
    spec = _spec(name)
    active = faults.active_faults(spec.underlay_ns)
    if output == "json":
        click.echo(json.dumps([dataclasses.asdict(f) for f in active], indent=2))
        return
    if not active:
        click.echo("no network faults")
    for f in active:
        click.echo(f.describe())


def _process_fault(name: str, component: str, action: str, context: str | None) -> None:
    spec = _spec(name)
    kind, _, rest = component.partition("/")
    if kind == "pod":
        namespace, _, pod = rest.rpartition("/")
        try:
            ref = podref.find(spec, context, namespace or "default", pod)
        except podref.PodNotFound as err:
            raise click.ClickException(str(err)) from None
        if action == "start":
            raise click.BadParameter("pods are restarted by their node runtime (restartPolicy); "
                                     "use `resume` after `pause`")
        act = {"kill": faults.kill_cgroup, "pause": faults.pause_cgroup, "resume": faults.resume_cgroup}[action]
        try:
            hit = act(ref.cgroup)
        except faults.FaultError as err:
            raise click.ClickException(str(err)) from None
        click.echo(f"{action}: pod {ref.namespace}/{ref.name} ({len(hit)} processes)")
        return
    if kind not in ("etcd", "api", "controllers", "runtime") or not rest:
        raise click.BadParameter(f"unknown component {component!r}. {_COMPONENT_HELP}")
    try:
        out = control.request(spec.name, "POST", f"/components/{kind}/{rest}/{action}")
    except control.SupervisorUnavailable as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"{action}: {out['name']} is {out['state']} (pid {out.get('pid')})")


def _process_command(action: str, doc: str) -> click.Command:
    @click.command(name=action, help=f"{doc}\n\n{_COMPONENT_HELP}")
    @click.option("--name", default=DEFAULT_NAME, show_default=True, metavar="LAB", help="Which lab.")
    @click.option("--context", default=None, help="For pods: the cluster (context or name).")
    @click.argument("component")
    def command(name: str, context: str | None, component: str) -> None:
        _process_fault(name, component, action, context)

    return command


for _action, _doc in (("kill", "SIGKILL a lab component (a crash)."),
                      ("pause", "SIGSTOP a lab component (a hang; connections stay open)."),
                      ("resume", "SIGCONT a paused component."),
                      ("start", "Start a killed component again (same ports, same data).")):
    fault.add_command(_process_command(_action, _doc))
