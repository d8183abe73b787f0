"""``clustermesh demo``: the richest real flow the project runs today (see :mod:`lab.demo`)."""

from __future__ import annotations

import click


@click.command()
def demo() -> None:
    """Run two clusters' etcds on loopback and show one reading the other.

    \b
    Cluster1 exports nodes, identities, endpoint IPs and a global service into its
    etcd in Cilium's exact keys and JSON (leased, with synced canaries, heartbeat and
    cluster config); cluster2 connects with mTLS as a read-only etcd user, waits for
    the canaries and keeps a validated copy, shown as tables. Midway, cluster1's etcd
    is SIGKILLed while its state changes; the reader converges after the restart.
    Needs root-free loopback only; takes about ten seconds.
    """
    from lab.demo import run_demo

    run_demo()
