"""Per-node agent: watches remote clusters' etcds and turns their state into datapath state."""
