"""The agent's eBPF datapath: reconciler targets over a node's pinned maps
(:mod:`~agent.datapath.targets`), the per-node manager that loads and attaches the programs and
feeds the reconcilers (:mod:`~agent.datapath.node`), and WireGuard encryption
(:mod:`~agent.datapath.wireguard`, with the policy routing of :mod:`~agent.datapath.steering`)."""
