"""Being connected to remote clusters: config directory, connections, cluster config, heartbeat,
cluster IDs and status; shared by the agent and KVStoreMesh (see :mod:`.types`)."""
