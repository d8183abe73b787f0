"""``clustermesh demo``: the product tour on a lab of this machine (:mod:`lab.tour`), and
``clustermesh demo kvstore``: the two-etcd flow under the mesh (:mod:`lab.demo`)."""

from __future__ import annotations

import sys

import click

from meshcore.cliopts import CONTEXT_SETTINGS

__all__ = ["demo"]


@click.group(invoke_without_command=True, context_settings=CONTEXT_SETTINGS)
@click.option("--name", default="tour", show_default=True, envvar="CLUSTERMESH_TOUR_NAME", show_envvar=True,
              metavar="LAB", help="The tour's lab (2-7 characters of [a-z0-9]); it must not exist yet.")
@click.pass_context
def demo(ctx: click.Context, name: str) -> None:
    """The product tour, from nothing (what `make demo` runs; needs root, one to two minutes).

    \b
     1. clustermesh lab up --no-mesh --clusters 2 --nodes 2     two bare clusters
     2. clustermesh enable --context <lab>-c1, then c2           install the mesh in each
     3. clustermesh connect --context <lab>-c1 --destination-context <lab>-c2
     4. clustermesh status --wait                                every agent has its peer ready
     5. kubectl apply -f lab/examples/ in both                   echo Deployment + Service, a client
     6. a request from c1's client to a c2 echo pod by pod IP
     7. the echo Service made global: affinity local answers from c1 only, remote from c2 only
     8. a CiliumNetworkPolicy in c2 denying cluster c1: the request is dropped, and counted
        (clustermesh bpf dump counters: policy_denied)
     9. clustermesh lab down (always, also after a failure or Ctrl-C)

    Each step prints its commands and their output; a summary table (step, result, time) ends
    it. Exit status: 0 if every step passed, 1 if one failed, 2 if it could not start (the lab
    name is taken, not root, a missing tool), 130 if interrupted.

    `clustermesh demo kvstore` runs the older, root-free flow: two etcds, one exporting Cilium
    records, the other reading them as a read-only peer.
    """
    if ctx.invoked_subcommand is not None:
        return
    from lab.tour import run_tour

    sys.exit(run_tour(name))


@demo.command(context_settings=CONTEXT_SETTINGS)
def kvstore() -> None:
    """Two clusters' etcds on loopback, one reading the other (no root, about ten seconds).

    \b
    Cluster1 exports nodes, identities, endpoint IPs and a global service into its
    etcd in Cilium's exact keys and JSON (leased, with synced canaries, heartbeat and
    cluster config); cluster2 connects with mTLS as a read-only etcd user, waits for
    the canaries and keeps a validated copy, shown as tables. Midway, cluster1's etcd
    is SIGKILLed while its state changes; the reader converges after the restart.
    """
    from lab.demo import run_demo

    run_demo()
