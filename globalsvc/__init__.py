"""Global services: merging remote backends, affinity, health-driven failover, MCS-API."""
