"""eBPF datapath: C sources, documented map layouts, loader and pinned-map handles."""
