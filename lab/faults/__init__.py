"""The lab's fault injection: network partitions and packet loss between node sets on the underlay,
and kill/pause/resume of processes or of every process of a pod's cgroup.

- :mod:`lab.faults.partitions`: ``partition`` / ``heal``, stateless nftables drop rules (bridge
  family) on the underlay bridge, matched on the nodes' underlay MACs, one table per partition.
- :mod:`lab.faults.losses`: ``loss`` / ``clear_loss``, a tc BPF program (``loss.c``, bcc) at the
  ingress of the nodes' bridge ports dropping a percentage with ``bpf_get_prandom_u32``.
- :mod:`lab.faults.processes`: ``signal_pids``, ``kill/pause/resume_pids``, ``cgroup_pids``,
  ``kill/pause/resume_cgroup``, all verified from ``/proc``.

Network faults keep no state outside the kernel: :func:`active_faults` reads them back from the
underlay namespace (nft ruleset, tc filters and their programs' maps), :func:`clear_all` removes
them. Only frames between the named nodes are touched; nothing outside the lab's namespaces is.
"""

from __future__ import annotations

from lab.faults import nsexec
from lab.faults.losses import clear_all_losses, clear_loss, list_losses, loss
from lab.faults.model import (
    FaultError,
    FaultKind,
    FaultRecord,
    InvalidFault,
    NodeRef,
    UnknownFault,
    underlay_ip_of_mac,
)
from lab.faults.partitions import heal, heal_all, list_partitions, partition
from lab.faults.processes import (
    cgroup_pids,
    kill_cgroup,
    kill_pids,
    pause_cgroup,
    pause_pids,
    proc_state,
    resume_cgroup,
    resume_pids,
    signal_pids,
)


def active_faults(underlay_ns: str) -> list[FaultRecord]:
    """Every partition and loss in place in ``underlay_ns`` (partitions first, each kind by name),
    read back from the kernel. :class:`FaultError` if the namespace does not exist."""
    nsexec.require_namespace(underlay_ns)
    return [*list_partitions(underlay_ns), *list_losses(underlay_ns)]


def clear_all(underlay_ns: str) -> list[FaultRecord]:
    """Remove every partition and loss in ``underlay_ns``; return what was in place. A namespace
    that does not exist has nothing in place (so ``lab down`` may call this at any stage)."""
    if not nsexec.namespace_exists(underlay_ns):
        return []
    before = active_faults(underlay_ns)
    heal_all(underlay_ns)
    clear_all_losses(underlay_ns)
    return before


__all__ = [
    "FaultError",
    "FaultKind",
    "FaultRecord",
    "InvalidFault",
    "NodeRef",
    "UnknownFault",
    "active_faults",
    "cgroup_pids",
    "clear_all",
    "clear_all_losses",
    "clear_loss",
    "heal",
    "heal_all",
    "kill_cgroup",
    "kill_pids",
    "list_losses",
    "list_partitions",
    "loss",
    "partition",
    "pause_cgroup",
    "pause_pids",
    "proc_state",
    "resume_cgroup",
    "resume_pids",
    "signal_pids",
    "underlay_ip_of_mac",
]
