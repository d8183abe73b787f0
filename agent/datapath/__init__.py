"""The agent's eBPF datapath: reconciler targets over a node's pinned maps
(:mod:`~agent.datapath.targets`) and the per-node manager that loads and attaches the programs and
feeds the reconcilers (:mod:`~agent.datapath.node`)."""
