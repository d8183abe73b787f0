"""Being connected to remote clusters (config directory, connections, cluster config, heartbeat, IDs, status), shared by the agent and KVStoreMesh."""
